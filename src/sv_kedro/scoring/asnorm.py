"""Adaptive symmetric score normalisation (AS-norm).

Each side of a trial is scored against a cohort (per-speaker mean embeddings of the
training set); the top-N cohort scores give that side's mean and standard deviation, and

    s' = ½ [(s − μ_e) / σ_e + (s − μ_t) / σ_t].

The statistics depend on one utterance only, so they are computed once per utterance,
not once per trial, in chunks of utterances: memory is O(chunk x cohort).
"""

from __future__ import annotations

import logging
from numbers import Integral

import numpy as np
import pandas as pd
import torch

from sv_kedro.scoring.cosine import normalise_embeddings, trial_rows
from sv_kedro.scoring.embedding_table import EmbeddingError, EmbeddingTable

log = logging.getLogger(__name__)


def speaker_cohort(table: EmbeddingTable, speakers: pd.Series | dict[str, str]) -> np.ndarray:
    """Per-speaker mean of length-normalised embeddings: ``[n_speakers, dim]``, L2-normalised.

    ``speakers`` maps utterance id to speaker (a Series indexed by utt_id, or a dict);
    utterances of the table without a speaker are ignored.
    """
    mapping = pd.Series(speakers) if isinstance(speakers, dict) else speakers
    labels = mapping.reindex(table.keys_)
    valid = labels.notna().to_numpy()
    if not valid.any():
        raise EmbeddingError("no cohort utterance has a known speaker")
    members = np.flatnonzero(valid)
    # A NaN or all-zero member would make its speaker's mean NaN or pull it to nothing,
    # and every AS-norm score would inherit that silently.
    table.subset([table.keys_[i] for i in members]).check_usable()
    codes, names = pd.factorize(labels[valid])
    vectors = normalise_embeddings(np.asarray(table.vectors)[valid])
    sums = np.zeros((codes.max() + 1, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, vectors)
    cancelled = np.flatnonzero(np.linalg.norm(sums, axis=1) < 1e-6)
    if cancelled.size:
        raise EmbeddingError(
            f"AS-norm cohort: the embeddings of {cancelled.size} speaker(s) cancel out (their "
            f"mean has no direction), e.g. {[str(names[i]) for i in cancelled[:5]]}"
        )
    return normalise_embeddings(sums.astype(np.float32))


def _check_counts(top_n: object, chunk: object) -> None:
    # top_n 1 gives a standard deviation of 0 (scores scaled by 1e8); chunk <= 0 would
    # leave the statistics unwritten (np.empty) or stop on a bare range() error.
    for name, value, minimum in (("top_n", top_n, 2), ("chunk", chunk, 1)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
            raise ValueError(f"AS-norm: {name} must be an integer >= {minimum}, got {value!r}")


def _check_cohort(cohort: np.ndarray, dim: int) -> None:
    if cohort.ndim != 2 or cohort.shape[1] != dim:
        raise ValueError(f"AS-norm cohort {cohort.shape} does not match embeddings of dim {dim}")
    if len(cohort) < 2:
        raise EmbeddingError(
            f"AS-norm cohort has {len(cohort)} vector(s); its top-N statistics need at "
            "least 2 (the cohort is one mean embedding per training speaker)"
        )
    finite = np.isfinite(cohort).all(axis=1)
    zero = ~np.any(cohort, axis=1)
    if not finite.all() or zero.any():
        bad = np.flatnonzero(~finite | zero)
        raise EmbeddingError(
            f"AS-norm cohort: {bad.size} vector(s) hold NaN/inf or are all zeros, at cohort "
            f"rows {bad[:5].tolist()}"
        )


def cohort_statistics(
    vectors: np.ndarray,
    cohort: np.ndarray,
    top_n: int = 300,
    chunk: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each row's ``top_n`` highest cosine scores against ``cohort``.

    ``vectors``: ``[n, dim]`` (normalised here), ``cohort``: ``[m, dim]``. Returns two
    ``[n]`` float64 arrays. Uses torch for the matmul and top-k (multi-threaded).
    """
    _check_counts(top_n, chunk)
    _check_cohort(np.asarray(cohort), vectors.shape[1])
    k = min(top_n, cohort.shape[0])
    if k < top_n:  # the usual case for small corpora (base: 32 speakers): said, not warned
        log.info(
            "AS-norm: the cohort has %d vector(s), fewer than top_n=%d; statistics use all %d",
            cohort.shape[0],
            top_n,
            k,
        )
    cohort_t = torch.from_numpy(normalise_embeddings(cohort))
    means = np.empty(len(vectors), dtype=np.float64)
    stds = np.empty(len(vectors), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(vectors), chunk):
            block = torch.from_numpy(normalise_embeddings(vectors[start : start + chunk]))
            top = torch.topk(block @ cohort_t.T, k, dim=1, sorted=False).values.double()
            means[start : start + chunk] = top.mean(dim=1).numpy()
            stds[start : start + chunk] = top.std(dim=1, unbiased=False).numpy()
    return means, stds


def as_norm_scores(
    scores: np.ndarray,
    table: EmbeddingTable,
    trials: pd.DataFrame,
    cohort: np.ndarray,
    top_n: int = 300,
    chunk: int = 4096,
) -> np.ndarray:
    """AS-norm of raw cosine ``scores`` for ``trials`` (``[n_trials]``)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(trials),):
        raise ValueError(f"AS-norm: scores of shape {scores.shape} for {len(trials)} trials")
    enrol, test = trial_rows(table, trials)
    used = np.unique(np.r_[enrol, test])
    mean, std = cohort_statistics(np.asarray(table.vectors[used]), cohort, top_n, chunk)
    flat = np.flatnonzero(~(std > 1e-6))
    if flat.size:
        # The score would be divided by (nearly) nothing: an all-zero or NaN embedding,
        # or a cohort whose top-N members are the same vector.
        names = [table.keys_[i] for i in used[flat[:5]]]
        raise EmbeddingError(
            f"AS-norm: {flat.size} utterance(s) score (nearly) the same against all of their "
            f"top-{min(top_n, len(cohort))} cohort vectors, so their scores cannot be "
            f"normalised, e.g. {names} (an all-zero or NaN embedding, or a cohort of copies)"
        )
    position = np.full(len(table), -1, dtype=np.int64)
    position[used] = np.arange(len(used))
    e, t = position[enrol], position[test]
    return 0.5 * ((scores - mean[e]) / std[e] + (scores - mean[t]) / std[t])
