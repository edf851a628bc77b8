"""Real speech on CPU: ECAPA-TDNN trained for a bounded time, judged on unseen speakers.

speechocean762 (125 speakers, 10 read sentences each): 25 speakers (seeded draw) are held
out for testing, the other 100 train, together with LibriSpeech (251 speakers, one ~12 s
utterance each) and Arabic Speech Commands (30 speakers) unless ``--no-extra``. Training
uses the project's own path (``systems.runner.train_speaker_system``: speaker-balanced
batches, noise + reverberation augmentation from ``shared/data/noise`` and ``rir``, AAM
softmax, one-cycle LR); the number of steps is set from a timed calibration so that
training ends within ``--minutes``. Test trials: every pair of the 250 test utterances
(1,125 target, 30,000 non-target).

Anchors: MFCC mean+std cosine, measured here on the same trials (about 25% EER), and the
published figure of a pretrained GE2E d-vector encoder (Resemblyzer, trained on thousands
of speakers), about 7.3% EER on these speakers: quoted, not measured (no downloads).

    python benchmarks/bench_real_speech_ecapa.py --minutes 25
    python benchmarks/bench_real_speech_ecapa.py --minutes 2 --channels 64   # smoke run
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sv_kedro.api import model_from_checkpoint
from sv_kedro.audio.crops import evaluation_inputs
from sv_kedro.audio.features import mfcc_mean_std
from sv_kedro.corpus.folder_source import scan_folder_roots
from sv_kedro.scoring.asnorm import as_norm_scores, speaker_cohort
from sv_kedro.scoring.cosine import cosine_scores, fuse_scores, paired_dot, trial_rows
from sv_kedro.scoring.embedding_table import EmbeddingTable
from sv_kedro.scoring.extraction import ExtractionConfig, extract_embeddings
from sv_kedro.scoring.metrics import verification_metrics
from sv_kedro.systems.loaders import build_loader
from sv_kedro.systems.runner import build_system_model, train_speaker_system
from sv_kedro.systems.tasks import build_task
from sv_kedro.training.config import TrainConfig
from sv_kedro.training.task import LoaderRequest, TrainState

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GE2E_PUBLISHED_EER = 0.073


def split_speakers(manifest: pd.DataFrame, n_test: int, seed: int) -> tuple[list[str], list[str]]:
    speakers = np.array(sorted(manifest["speaker"].unique()))
    order = np.random.default_rng(seed).permutation(len(speakers))
    return sorted(speakers[order[n_test:]]), sorted(speakers[order[:n_test]])


def all_pairs(test: pd.DataFrame) -> pd.DataFrame:
    ids = test["utt_id"].to_numpy()
    speakers = test["speaker"].to_numpy()
    first, second = np.triu_indices(len(ids), k=1)
    labels = (speakers[first] == speakers[second]).astype(np.int8)
    return pd.DataFrame(
        {"label": pd.array(labels, dtype="Int8"), "enrol": ids[first], "test": ids[second]}
    )


def metrics_row(name: str, scores: np.ndarray, trials: pd.DataFrame) -> dict[str, float | str]:
    values = verification_metrics(scores, trials["label"].to_numpy(dtype=int))
    return {
        "system": name,
        "eer_percent": round(100 * values["eer"], 2),
        "min_dcf_0.01": round(values["min_dcf_0.01"], 4),
        "min_dcf_0.05": round(values["min_dcf_0.05"], 4),
    }


def markdown_table(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join("" if v is None else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def mfcc_vectors(manifest: pd.DataFrame) -> np.ndarray:
    """MFCC mean+std of each utterance, ``[n, 60]``."""
    return np.stack([mfcc_mean_std(evaluation_inputs(p, n_crops=0).full) for p in manifest["path"]])


def mfcc_scores(test: pd.DataFrame, trials: pd.DataFrame, centre: np.ndarray | None) -> np.ndarray:
    """Cosine of MFCC mean+std vectors, optionally minus a mean vector ``centre``."""
    vectors = mfcc_vectors(test)
    if centre is not None:
        vectors = vectors - centre
    table = EmbeddingTable(list(test["utt_id"]), vectors.astype(np.float32))
    return cosine_scores(table, trials)


def model_config(args: argparse.Namespace) -> dict:
    channels = args.channels
    return {
        "architecture": "ecapa_tdnn",
        "fbank": {"n_mels": 80},
        "ecapa": {
            "channels": channels,
            "embedding_dim": 192,
            "mfa_channels": 3 * channels,
            "attention_dim": 64,
            "se_bottleneck": 64,
            "scale": 4,
        },
    }


def seconds_per_step(train, model, loss, data, training, steps: int = 12) -> float:
    """Time a few real optimiser steps (loader included) of a throw-away model."""
    config = TrainConfig.from_dict({**training, "max_steps": steps})
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "train.parquet"
        train.to_parquet(manifest, index=False)
        network = build_system_model({**model, "n_classes": int(train["speaker_index"].max()) + 1})
        optimizer = config.build_optimizer(network)
        task = build_task({"loss": loss})
        loader = build_loader({**data, "manifest_path": str(manifest)})(
            LoaderRequest(0, 0, 0, 1, 0)
        )
        batches = iter(loader)
        start = None
        for step in range(steps):
            if step == 2:
                start = time.perf_counter()  # the first steps warm up allocators
            batch = next(batches)
            output = task.compute_loss(network, batch, TrainState(step=step, model=network))
            optimizer.zero_grad()
            output.loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) / (steps - 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=25.0, help="training time budget")
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--crop-seconds", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-extra", action="store_true", help="speechocean762 speakers only")
    parser.add_argument("--out", type=Path, default=Path("data/08_reporting/benchmarks"))
    parser.add_argument("--work", type=Path, default=Path("data/06_models/bench_real_speech_ecapa"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    so = scan_folder_roots([args.data / "speechocean762_train"], progress=False)
    train_speakers, test_speakers = split_speakers(so, 25, args.seed)
    test = so[so["speaker"].isin(test_speakers)].reset_index(drop=True)
    train = so[so["speaker"].isin(train_speakers)]
    if not args.no_extra:
        extra = scan_folder_roots(
            [args.data / "librispeech_cohort", args.data / "arabic_speech_commands"],
            progress=False,
        )
        train = pd.concat([train, extra], ignore_index=True)
    codes = {s: i for i, s in enumerate(sorted(train["speaker"].unique()))}
    train = train.assign(speaker_index=train["speaker"].map(codes)).reset_index(drop=True)
    trials = all_pairs(test)
    print(
        f"train: {len(train)} utts, {len(codes)} speakers; test: {len(test)} utts, "
        f"{len(test_speakers)} speakers, {len(trials)} trials"
    )

    # The anchor: raw cosine; and centred on training utterances (no test statistics).
    centre = mfcc_vectors(train.groupby("speaker", group_keys=False).head(2)).mean(0)
    rows = [
        metrics_row("MFCC mean+std cosine (measured)", mfcc_scores(test, trials, None), trials),
        metrics_row(
            "MFCC mean+std, train-mean centred, cosine (measured)",
            mfcc_scores(test, trials, centre),
            trials,
        ),
    ]

    model = model_config(args)
    loss = {"name": "aam", "margin": 0.2, "scale": 30.0}
    data = {
        "batch_size": args.batch_size,
        "crop_seconds": args.crop_seconds,
        "crop_mode": "random",
        "num_workers": 0,
        "augmentation": {
            "weights": {"none": 2, "reverb": 1, "noise": 1, "reverb+noise": 1},
            "noise_dirs": [str(args.data / "noise")],
            "rir_dirs": [str(args.data / "rir")],
            "babble_from_manifest": False,
        },
    }
    training = {
        "epochs": None,
        "optimizer": "adam",
        "lr": args.lr,
        "weight_decay": 2e-5,
        "schedule": {
            "kind": "one_cycle",
            "warmup_ratio": 0.15,
            "initial_lr_scale": 0.05,
            "final_lr_scale": 0.005,
        },
        "grad_clip": 5.0,
        "log_every": 50,
        "seed": args.seed,
        "encoder_prefix": "frontend.",
        "progress_bar": False,
    }
    step_s = seconds_per_step(train, model, loss, data, training)
    budget_s = 60 * args.minutes - (time.perf_counter() - started)
    max_steps = max(20, int(0.9 * budget_s / step_s))
    print(f"{step_s:.2f} s/step -> {max_steps} steps in {budget_s / 60:.1f} min")
    training["max_steps"] = max_steps
    train_start = time.perf_counter()
    checkpoint, metrics = train_speaker_system(
        train,
        None,
        None,
        model,
        loss,
        training,
        data,
        {"work_dir": str(args.work / f"steps{max_steps}_seed{args.seed}"), "resume": True},
    )
    train_s = time.perf_counter() - train_start

    network = model_from_checkpoint(checkpoint)
    config = ExtractionConfig(n_crops=3, crop_seconds=2.0, max_seconds=20.0, device="cpu")
    embedded = extract_embeddings(network, test, config, progress=False)
    full, crops = embedded.full, embedded.crops
    cos = cosine_scores(full, trials)
    enrol, other = trial_rows(crops, trials)
    fusion = fuse_scores([cos, paired_dot(crops.vectors, crops.vectors, enrol, other)])
    cohort_utts = train.groupby("speaker", group_keys=False).head(3)
    cohort = extract_embeddings(
        network, cohort_utts, ExtractionConfig(n_crops=0, device="cpu"), progress=False
    ).full
    speakers = cohort_utts.set_index("utt_id")["speaker"].astype(str)
    unit = full.vectors / np.linalg.norm(full.vectors, axis=1, keepdims=True)
    fused_table = EmbeddingTable(full.keys_, ((unit + crops.vectors) / 2).astype(np.float32))
    asnorm = as_norm_scores(fusion, fused_table, trials, speaker_cohort(cohort, speakers), 100)
    rows += [
        metrics_row("ECAPA-TDNN cosine (measured)", cos, trials),
        metrics_row("ECAPA-TDNN full+crops fusion (measured)", fusion, trials),
        metrics_row("ECAPA-TDNN fusion + AS-norm (measured)", asnorm, trials),
        {
            "system": "GE2E d-vector, Resemblyzer (published, quoted)",
            "eer_percent": 100 * GE2E_PUBLISHED_EER,
            "min_dcf_0.01": None,
            "min_dcf_0.05": None,
        },
    ]
    table = pd.DataFrame(rows)
    train_rows = metrics[metrics["kind"] == "train"]
    summary = {
        "train_speakers": len(codes),
        "train_utterances": len(train),
        "test_speakers": len(test_speakers),
        "test_trials": len(trials),
        "steps": max_steps,
        "seconds_per_step_calibrated": round(step_s, 3),
        "train_minutes": round(train_s / 60, 2),
        "total_minutes": round((time.perf_counter() - started) / 60, 2),
        "final_train_loss": float(train_rows["loss"].iloc[-1]),
        "final_train_acc": float(train_rows["acc"].iloc[-1]),
        "model": model,
        "threads": args.threads,
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "real_speech_ecapa.json").write_text(json.dumps(summary, indent=2, default=str))
    markdown = markdown_table(table)
    (args.out / "real_speech_ecapa.md").write_text(markdown)
    print(markdown)
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=2, default=str))


if __name__ == "__main__":
    main()
