"""How hard is the generated corpus? EER/minDCF of MFCC mean+std cosine vs a trivial baseline.

Generates a ``SyntheticCorpus``, renders every utterance (timing it), embeds each with
``mfcc_mean_std`` (mean-centred over the corpus, length-normalised) and scores all
target/non-target pairs (or a fixed-seed sample of them) with the cosine. The named
baseline embeds each utterance by what carries no speaker information by construction:
its duration, peak level and RMS level (same centring and normalisation); it should sit
near 50% EER, which shows the MFCC figure is not a fluke of the trial list.

    python benchmarks/bench_synthetic_mfcc_eer.py --speakers 40 --utts 12 --seed 0
    python benchmarks/bench_synthetic_mfcc_eer.py --set snr_db_range=[10,30] --set trait_spread=1.2
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from sv_kedro.audio.features import mfcc_mean_std
from sv_kedro.audio.synthetic import SyntheticCorpus, SyntheticCorpusConfig
from sv_kedro.scoring.metrics import verification_metrics
from sv_kedro.utils.atomic import atomic_write_path


def centred_unit(embeddings: np.ndarray) -> np.ndarray:
    """Subtract the corpus mean, then scale each row to unit length: ``[n, dim]``."""
    centred = embeddings - embeddings.mean(axis=0, keepdims=True)
    return centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)


def trial_pairs(speakers: np.ndarray, max_trials: int | None, seed: int) -> tuple[np.ndarray, ...]:
    """All unordered pairs (i < j) or a fixed-seed sample of them: ``(i, j, label)``."""
    first, second = np.triu_indices(speakers.size, k=1)
    if max_trials is not None and first.size > max_trials:
        keep = np.sort(np.random.default_rng(seed).choice(first.size, max_trials, replace=False))
        first, second = first[keep], second[keep]
    return first, second, (speakers[first] == speakers[second]).astype(np.int8)


def cosine_metrics(embeddings: np.ndarray, first, second, labels) -> dict[str, float]:
    unit = centred_unit(embeddings)
    scores = np.einsum("nd,nd->n", unit[first], unit[second])
    metrics = verification_metrics(scores, labels)
    metrics["mean_target_cosine"] = float(scores[labels == 1].mean())
    metrics["mean_nontarget_cosine"] = float(scores[labels == 0].mean())
    # Same-speaker pairs that are near copies would make the task trivial.
    metrics["near_identical_target_share"] = float(np.mean(scores[labels == 1] > 0.99))
    return metrics


def parse_overrides(items: list[str]) -> dict[str, object]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value (JSON value), got {item!r}")
        overrides[key] = json.loads(value)
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", type=int, default=40)
    parser.add_argument("--utts", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-trials", type=int, default=None, help="sample this many pairs")
    parser.add_argument("--trial-seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="config override key=JSON")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one utterance at a time: measure one core, no thread spinning

    config = SyntheticCorpusConfig.from_dict(
        {
            "n_speakers": args.speakers,
            "utterances_per_speaker": args.utts,
            "seed": args.seed,
            **parse_overrides(args.set),
        }
    )
    corpus = SyntheticCorpus(config)
    utterances = corpus.utterances()

    start, cpu_start = time.perf_counter(), time.process_time()
    waves = [corpus.render(utt.utt_id) for utt in utterances]
    render_s, render_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    audio_s = sum(utt.duration for utt in utterances)

    start = time.perf_counter()
    mfcc = np.stack([mfcc_mean_std(wave, config.sample_rate) for wave in waves])
    embed_s = time.perf_counter() - start
    trivial = np.stack(
        [
            [utt.duration, np.log(np.abs(w).max()), 0.5 * np.log(np.mean(np.square(w)))]
            for utt, w in zip(utterances, waves, strict=True)
        ]
    )
    trivial = (trivial - trivial.mean(0)) / trivial.std(0)

    speakers = np.array([utt.speaker for utt in utterances])
    first, second, labels = trial_pairs(speakers, args.max_trials, args.trial_seed)
    results = {
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "render_utterances_per_s": len(waves) / render_s,
        "render_ms_per_3s_audio": 3000.0 * render_s / audio_s,
        "render_cpu_ms_per_3s_audio": 3000.0 * render_cpu_s / audio_s,
        "mfcc_utterances_per_s": len(waves) / embed_s,
        "mfcc_mean_std_cosine": cosine_metrics(mfcc, first, second, labels),
        "trivial_duration_level_cosine": cosine_metrics(trivial, first, second, labels),
    }
    print(
        f"corpus: {config.n_speakers} speakers x {config.utterances_per_speaker} utts, "
        f"seed {config.seed}, {audio_s / 60:.1f} min of audio"
    )
    print(
        f"render: {results['render_utterances_per_s']:.1f} utt/s, "
        f"{results['render_ms_per_3s_audio']:.1f} ms wall / "
        f"{results['render_cpu_ms_per_3s_audio']:.1f} ms CPU per 3 s of audio (one core); "
        f"MFCC {results['mfcc_utterances_per_s']:.0f} utt/s"
    )
    print(f"trials: {labels.size} ({int(labels.sum())} target)")
    for name in ("mfcc_mean_std_cosine", "trivial_duration_level_cosine"):
        m = results[name]
        print(
            f"{name:32s} EER {100 * m['eer']:5.2f}%  minDCF(0.01) {m['min_dcf_0.01']:.3f}  "
            f"minDCF(0.05) {m['min_dcf_0.05']:.3f}  mean cos target {m['mean_target_cosine']:+.3f} "
            f"non-target {m['mean_nontarget_cosine']:+.3f}  "
            f"target pairs > 0.99: {100 * m['near_identical_target_share']:.1f}%"
        )
    if args.json:
        with atomic_write_path(args.json) as tmp:
            tmp.write_text(json.dumps(results, indent=2, default=list))


if __name__ == "__main__":
    main()
