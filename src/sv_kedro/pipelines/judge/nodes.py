"""judge: score any checkpoint (or embeddings file) on any audio folder and trial list.

Everything comes from ``--params`` (no config files to write)::

    kedro run --pipeline judge --params \\
        "judge.checkpoint=data/06_models/ecapa_tdnn/checkpoint.pt,judge.audio_root=/data/corpus"

The checkpoint, embeddings file, audio root and trial list are raw inputs named by path,
like the corpus roots of data_engineering; the results go through the catalog.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from sv_kedro.corpus.folder_source import scan_folder_roots
from sv_kedro.corpus.trials import check_trials_against_manifest, generate_trials
from sv_kedro.corpus.validation import ValidationPolicy, validate_manifest
from sv_kedro.scoring.cosine import cosine_scores, fuse_scores, paired_dot, trial_rows
from sv_kedro.scoring.embedding_table import EmbeddingTable
from sv_kedro.scoring.extraction_launch import extract_from_checkpoint
from sv_kedro.scoring.metrics import verification_metrics
from sv_kedro.scoring.trial_list import read_trial_list
from sv_kedro.training.checkpoint import load_checkpoint
from sv_kedro.utils.paths import resolve_path, split_roots

log = logging.getLogger(__name__)


class JudgeError(ValueError):
    """A judge parameter that cannot be used."""


def scan_judged_audio(judge: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Manifest of ``judge.audio_root`` (``<speaker>/[<session>/]<utt>``), validated."""
    if not judge.get("audio_root"):
        raise JudgeError('set the audio to judge: --params "judge.audio_root=/path/to/corpus"')
    roots = [resolve_path(root) for root in split_roots(judge["audio_root"], "judge.audio_root")]
    raw = scan_folder_roots(roots, workers=int(judge.get("workers", 0)))
    policy = ValidationPolicy(**dict(judge.get("validation") or {}))
    manifest, report = validate_manifest(raw, policy, resolve_path(judge["fixed_dir"]))
    if manifest.empty:
        raise JudgeError(f"{roots}: no usable audio ({report['reason'].value_counts().to_dict()})")
    return manifest, report


def judged_trials(manifest: pd.DataFrame, judge: dict[str, Any]) -> pd.DataFrame:
    """``judge.trial_list`` (checked against the audio), or a list generated from it."""
    if judge.get("trial_list"):
        trials = read_trial_list(resolve_path(judge["trial_list"]))
        check_trials_against_manifest(trials, manifest, str(judge["trial_list"]))
        return trials
    generated = dict(judge.get("generated_trials") or {})
    return generate_trials(
        manifest,
        int(generated.get("targets_per_utt", 4)),
        int(generated.get("nontargets_per_utt", 8)),
        int(generated.get("seed", 0)),
        allow_singletons=True,
    )


def judged_embeddings(
    manifest: pd.DataFrame, judge: dict[str, Any]
) -> tuple[EmbeddingTable, EmbeddingTable | None]:
    """Full and crop embeddings from ``judge.checkpoint``, or ``judge.embeddings`` as given."""
    checkpoint, embeddings = judge.get("checkpoint"), judge.get("embeddings")
    if bool(checkpoint) == bool(embeddings):
        raise JudgeError(
            "set exactly one of judge.checkpoint (a model) and judge.embeddings (a .pt or "
            f"compact embeddings file); got checkpoint={checkpoint!r}, embeddings={embeddings!r}"
        )
    if embeddings:
        from sv_kedro.datasets.embeddings_dataset import EmbeddingsDataset

        table = EmbeddingsDataset(filepath=str(resolve_path(embeddings))).load()
        return table, None
    options = dict(judge.get("extraction") or {})
    result = extract_from_checkpoint(load_checkpoint(resolve_path(checkpoint)), manifest, options)
    return result.full, result.crops


def score_judged_trials(
    trials: pd.DataFrame, embeddings: tuple[EmbeddingTable, EmbeddingTable | None]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Cosine (and, with crops, crop and fused) scores; EER and both minDCFs for each."""
    full, crops = embeddings
    for_trials = set(trials["enrol"].astype(str)) | set(trials["test"].astype(str))
    full.subset(sorted(for_trials)).check_finite()
    labels = trials["label"].to_numpy(dtype=int)
    scores = {"cosine": cosine_scores(full, trials)}
    if crops is not None:
        enrol, test = trial_rows(crops, trials)
        scores["cosine_crops"] = paired_dot(crops.vectors, crops.vectors, enrol, test)
        scores["fusion"] = fuse_scores([scores["cosine"], scores["cosine_crops"]])
    frame = trials.assign(**scores)
    metrics = {name: verification_metrics(values, labels) for name, values in scores.items()}
    log.info("judge: %s", {k: f"EER {v['eer']:.2%}" for k, v in metrics.items()})
    return frame, metrics
