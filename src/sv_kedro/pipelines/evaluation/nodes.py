"""Evaluation nodes: embed, score every trial set with every back-end, compare systems."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sv_kedro.api import model_from_checkpoint
from sv_kedro.corpus.shards import check_shards_hold
from sv_kedro.pipelines.evaluation.options import (
    BACKENDS,
    PAIR_BACKEND,
    PAIRED_ARCHITECTURE,
    SCORING,
    CosineOptions,
    ScoringOptions,
    check_test_extraction,
    scoring_options,
)
from sv_kedro.scoring.asnorm import as_norm_scores, speaker_cohort
from sv_kedro.scoring.cosine import cosine_scores, fuse_scores, paired_dot, trial_rows
from sv_kedro.scoring.embedding_table import EmbeddingError, EmbeddingTable
from sv_kedro.scoring.extraction_launch import extract_from_checkpoint
from sv_kedro.scoring.metrics import verification_metrics
from sv_kedro.scoring.pair_scoring import score_pairs_batched
from sv_kedro.scoring.plda import lda_plda_pipeline_fit, plda_scores
from sv_kedro.scoring.plots import det_curve_figure, score_histogram_figure
from sv_kedro.utils.params import check_keys

__all__ = ["BACKENDS", "PAIR_BACKEND", "SCORING", "ScoringOptions", "scoring_options"]

log = logging.getLogger(__name__)

COMPARISON_KEYS = ("main_backend",)


def embed_test_utterances(
    checkpoint: dict[str, Any],
    test_manifest: pd.DataFrame,
    extraction: dict[str, Any],
    scoring: dict[str, Any],
) -> tuple[EmbeddingTable, EmbeddingTable]:
    """Full-utterance and mean-crop embeddings of every test utterance.

    ``scoring`` is only checked here: Kedro may run this node first, and a misspelt
    scoring key should stop the run before hours of extraction, not after them.
    """
    scoring_options(scoring)
    check_test_extraction(extraction)
    result = extract_from_checkpoint(checkpoint, test_manifest, extraction, "evaluation.extraction")
    assert result.crops is not None
    return result.full, result.crops


def embed_cohort_utterances(
    checkpoint: dict[str, Any],
    train_manifest: pd.DataFrame,
    extraction: dict[str, Any],
    scoring: dict[str, Any],
) -> EmbeddingTable:
    """Full-utterance embeddings of (at most ``cohort_utts_per_speaker`` per speaker)
    training utterances: the AS-norm cohort and the LDA/PLDA training set.

    ``scoring.cohort_shard_dir``: read them from the training manifest's WebDataset shards
    (``data_engineering.shards``) instead of its files. The cohort is a part of that
    manifest, so the whole manifest is checked against the shards here.
    """
    # Checked here, before the cohort's extraction, not after it in the scoring node.
    options = scoring_options(scoring)
    check_test_extraction(extraction)
    per_speaker = options.cohort_utts_per_speaker
    subset = (
        train_manifest.sort_values("utt_id")
        .groupby("speaker", sort=True, group_keys=False)
        .head(per_speaker)
        .reset_index(drop=True)
    )
    settings = {**extraction, "n_crops": 0}
    shard_dir = options.cohort_shard_dir
    if shard_dir:
        check_shards_hold(train_manifest, shard_dir)
        settings["shard_dir"] = str(shard_dir)
    return extract_from_checkpoint(checkpoint, subset, settings, "evaluation.extraction").full


def _trial_sets(
    test_trials: pd.DataFrame, trial_lists: Mapping[str, Callable[[], pd.DataFrame]] | None
) -> dict[str, pd.DataFrame]:
    sets = {"test": test_trials}
    for name, load in sorted((trial_lists or {}).items()):
        trials = load() if callable(load) else load
        if not trials.equals(test_trials):
            sets[name] = trials
    return sets


def _backend_scores(
    trials: pd.DataFrame,
    full: EmbeddingTable,
    crops: EmbeddingTable,
    cohort: EmbeddingTable,
    train_manifest: pd.DataFrame,
    options: ScoringOptions,
) -> dict[str, np.ndarray]:
    wanted = list(options.backends)
    _check_usable(trials, full, crops, cohort, options)
    plain = cosine_scores(full, trials)
    scores: dict[str, np.ndarray] = {
        "cosine": _cosine_backend(full, trials, cohort, options.cosine, plain)
    }
    enrol, test = trial_rows(crops, trials)
    # Crop vectors are means of unit vectors: their dot product is the mean crop-pair cosine.
    scores["cosine_crops"] = paired_dot(crops.vectors, crops.vectors, enrol, test)
    # The paper's fusion (and AS-norm on it) keeps the plain cosine of the full vectors.
    scores["fusion"] = fuse_scores([plain, scores["cosine_crops"]])
    speakers = train_manifest.set_index("utt_id")["speaker"].astype(str)
    if "asnorm" in wanted:
        cohort_vectors = speaker_cohort(cohort, speakers)
        fused_table = _fused_table(full, crops)
        scores["asnorm"] = as_norm_scores(
            scores["fusion"], fused_table, trials, cohort_vectors, options.top_n
        )
    if "plda" in wanted:
        labels = speakers.reindex(cohort.keys_).to_numpy()
        lda_dim = options.lda_dim
        n_speakers = len(pd.unique(labels))
        if lda_dim:
            lda_dim = min(lda_dim, n_speakers - 1, full.dim)
        lda, plda = lda_plda_pipeline_fit(np.asarray(cohort.vectors), labels, lda_dim)
        scores["plda"] = plda_scores(full, trials, lda, plda)
    return {name: scores[name] for name in wanted}


def _check_usable(
    trials: pd.DataFrame,
    full: EmbeddingTable,
    crops: EmbeddingTable,
    cohort: EmbeddingTable,
    options: ScoringOptions,
) -> None:
    """Raise naming the utterances whose embeddings hold NaN/inf or are all zeros.

    A zero vector scores 0 against everything and a NaN one NaN; the first would reach
    the metrics as a plausible score, the second as a NaN no one can trace to its
    utterance. The cohort is checked when a back-end reads it.
    """
    named = sorted(set(trials["enrol"].astype(str)) | set(trials["test"].astype(str)))
    tables = {"test (full-utterance)": (full, named), "test (crop)": (crops, named)}
    if {"asnorm", "plda"} & set(options.backends) or options.cosine.mean_centre:
        tables["cohort (training)"] = (cohort, cohort.keys_)
    for what, (table, keys) in tables.items():
        if (table.positions(keys) < 0).any():
            continue  # trial_rows names the utterances that have no embedding
        try:
            table.subset(keys).check_usable()
        except EmbeddingError as exc:
            raise EmbeddingError(f"{what} embeddings: {exc}") from exc


def _cosine_backend(
    full: EmbeddingTable,
    trials: pd.DataFrame,
    cohort: EmbeddingTable,
    options: CosineOptions,
    plain: np.ndarray,
) -> np.ndarray:
    """The ``cosine`` back-end with ``scoring.cosine``'s options: ``mean_centre`` subtracts
    the mean of the cohort (training) embeddings first; ``length_norm: false`` scores the
    plain dot product. ``plain`` is the default (uncentred cosine), already computed."""
    if not options.mean_centre and options.length_norm:
        return plain
    mean = (
        np.asarray(cohort.vectors, dtype=np.float64).mean(axis=0) if options.mean_centre else None
    )
    return cosine_scores(full, trials, mean=mean, length_norm=options.length_norm)


def _fused_table(full: EmbeddingTable, crops: EmbeddingTable) -> EmbeddingTable:
    """Unit full vector plus mean crop vector: cohort statistics for the fused score."""
    unit = full.vectors / np.linalg.norm(full.vectors, axis=1, keepdims=True).clip(1e-12)
    return EmbeddingTable(full.keys_, ((unit + crops.vectors) / 2).astype(np.float32))


def score_trial_sets(
    test_embeddings: EmbeddingTable,
    test_crop_embeddings: EmbeddingTable,
    cohort_embeddings: EmbeddingTable,
    train_manifest: pd.DataFrame,
    test_trials: pd.DataFrame,
    trial_lists: Mapping[str, Callable[[], pd.DataFrame]] | None,
    scoring: dict[str, Any],
    checkpoint: Mapping[str, Any] | None = None,
    test_manifest: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, dict[str, Any], Figure]:
    """Scores (one row per trial and back-end column), metrics and a score histogram.

    A paired (BCE) checkpoint (``architecture: ssl_paired``) also gets the ``pair``
    back-end, its real score (each trial scored jointly, full utterances capped at
    ``scoring.pair_max_seconds``), which is then its main back-end; its cosine back-ends
    only use the mean-frame vectors the BCE objective never trained.
    """
    options = scoring_options(scoring)
    rows = []
    metrics: dict[str, Any] = {}
    pair_model = None
    if checkpoint is not None and checkpoint.get("architecture") == PAIRED_ARCHITECTURE:
        if test_manifest is None:
            raise ValueError("score_trial_sets: the paired model needs test_manifest")
        pair_model = model_from_checkpoint(checkpoint)
    for set_name, trials in _trial_sets(test_trials, trial_lists).items():
        if trials["label"].isna().any():
            raise ValueError(f"trial set {set_name!r} has unlabelled trials; cannot compute EER")
        labels = trials["label"].to_numpy(dtype=int)
        by_backend = _backend_scores(
            trials,
            test_embeddings,
            test_crop_embeddings,
            cohort_embeddings,
            train_manifest,
            options,
        )
        frame = pd.DataFrame(
            {
                "trial_set": set_name,
                "label": labels,
                "enrol": trials["enrol"].astype(str).to_numpy(),
                "test": trials["test"].astype(str).to_numpy(),
            }
        )
        if pair_model is not None:
            by_backend[PAIR_BACKEND] = score_pairs_batched(
                pair_model,
                test_manifest,
                trials,
                options.pair_max_seconds,
                options.pair_batch_size,
            )
        for backend, values in by_backend.items():
            frame[backend] = values
            metrics.setdefault(set_name, {})[backend] = _metrics(values, labels, frame, backend)
        rows.append(frame)
    scores = pd.concat(rows, ignore_index=True)
    main_backend = PAIR_BACKEND if pair_model is not None else options.main_backend
    main = scores[scores.trial_set == "test"]
    figure = score_histogram_figure(
        main[main_backend].to_numpy(), main["label"].to_numpy(), title=f"{main_backend} scores"
    )
    return scores, metrics, figure


def _metrics(
    values: np.ndarray, labels: np.ndarray, frame: pd.DataFrame, backend: str
) -> dict[str, float]:
    """``verification_metrics``, its errors naming the trial set, back-end and trials."""
    try:
        return verification_metrics(values, labels)
    except ValueError as exc:
        bad = np.flatnonzero(~np.isfinite(values))[:3]
        trials = [f"{frame['enrol'].iat[i]} {frame['test'].iat[i]}" for i in bad]
        where = f", e.g. trials {trials}" if trials else ""
        raise ValueError(
            f"trial set {frame['trial_set'].iat[0]!r}, back-end {backend!r}: {exc}{where}"
        ) from exc


def compare_systems(
    comparison: dict[str, Any], **system_outputs: Any
) -> tuple[pd.DataFrame, str, Figure]:
    """One table of EER and both minDCFs per system, trial set and back-end, and one DET plot.

    ``system_outputs`` holds ``<system>__metrics`` (dicts) and ``<system>__scores``
    (DataFrames) for every evaluated system.
    """
    comparison = dict(comparison or {})
    check_keys(comparison, COMPARISON_KEYS, "evaluation.comparison")
    main_backend = comparison.get("main_backend", "fusion")
    # Every system is scored by its own back-ends (and a paired one by pair), so the
    # name is checked against all of them rather than one system's selection.
    if main_backend not in (*BACKENDS, PAIR_BACKEND):
        raise ValueError(
            f"evaluation.comparison.main_backend: unknown {main_backend!r}; "
            f"choose from {[*BACKENDS, PAIR_BACKEND]}"
        )
    rows = []
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    skipped: list[str] = []
    systems = sorted({key.rsplit("__", 1)[0] for key in system_outputs})
    for system in systems:
        metrics = system_outputs[f"{system}__metrics"]
        for trial_set, by_backend in metrics.items():
            for backend, values in by_backend.items():
                rows.append(
                    {
                        "system": system,
                        "trial_set": trial_set,
                        "backend": backend,
                        "eer_percent": round(100 * values["eer"], 3),
                        "min_dcf_0.01": round(values["min_dcf_0.01"], 4),
                        "min_dcf_0.05": round(values["min_dcf_0.05"], 4),
                        "n_trials": values["n_trials"],
                    }
                )
        scores = system_outputs[f"{system}__scores"]
        main = scores[scores.trial_set == "test"]
        # A paired model's own score is its pair back-end, whatever the others use.
        backend = PAIR_BACKEND if PAIR_BACKEND in main else main_backend
        if backend in main:
            curves[system] = (main[backend].to_numpy(), main["label"].to_numpy())
        else:
            skipped.append(system)
    if skipped:
        # Said aloud: a system absent from the plot reads as one that was never run.
        log.warning(
            "evaluation.comparison: the DET plot (%s) leaves out %s, which did not score "
            "with that back-end (evaluation.scoring.backends)",
            main_backend,
            skipped,
        )
    table = pd.DataFrame(rows).sort_values(["trial_set", "backend", "eer_percent"])
    table = table.reset_index(drop=True)
    return table, _markdown(table), det_curve_figure(curves, title=f"DET ({main_backend})")


def _markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    lines = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(["# System comparison", "", header, rule, *lines, ""])
