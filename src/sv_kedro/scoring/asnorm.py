"""Adaptive symmetric score normalisation (AS-norm).

Each side of a trial is scored against a cohort (per-speaker mean embeddings of the
training set); the top-N cohort scores give that side's mean and standard deviation, and

    s' = ½ [(s − μ_e) / σ_e + (s − μ_t) / σ_t].

The statistics depend on one utterance only, so they are computed once per utterance,
not once per trial, in chunks of utterances: memory is O(chunk x cohort).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from sv_kedro.scoring.cosine import normalise_embeddings, trial_rows
from sv_kedro.scoring.embedding_table import EmbeddingError, EmbeddingTable


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
    codes, _ = pd.factorize(labels[valid])
    vectors = normalise_embeddings(np.asarray(table.vectors)[valid])
    sums = np.zeros((codes.max() + 1, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, vectors)
    return normalise_embeddings(sums.astype(np.float32))


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
    if cohort.ndim != 2 or cohort.shape[1] != vectors.shape[1]:
        raise ValueError(f"cohort {cohort.shape} does not match embeddings {vectors.shape}")
    k = min(top_n, cohort.shape[0])
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
    enrol, test = trial_rows(table, trials)
    used = np.unique(np.r_[enrol, test])
    mean, std = cohort_statistics(np.asarray(table.vectors[used]), cohort, top_n, chunk)
    std = np.maximum(std, 1e-8)
    position = np.full(len(table), -1, dtype=np.int64)
    position[used] = np.arange(len(used))
    e, t = position[enrol], position[test]
    scores = np.asarray(scores, dtype=np.float64)
    return 0.5 * ((scores - mean[e]) / std[e] + (scores - mean[t]) / std[t])
