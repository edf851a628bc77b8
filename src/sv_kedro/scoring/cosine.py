"""Cosine scoring of trial lists, in bounded memory.

Trials are resolved to row indices once (a vectorised lookup, not a Python loop), then
scored chunk by chunk, so memory stays O(chunk x dim) whatever the number of trials.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from sv_kedro.scoring.embedding_table import EmbeddingError, EmbeddingTable

DEFAULT_CHUNK = 2_048
NORMALISE_CHUNK = 8_192
# Below this norm a row is normalised before its dot products (float32 stays precise).
MIN_RAW_NORM = 1e-12


def _lookup(table: EmbeddingTable, column: pd.Series) -> np.ndarray:
    """Positions of ``column``'s values in ``table`` (-1 where absent).

    A categorical column is resolved through its categories, so each distinct utterance
    is hashed once rather than once per trial.
    """
    if isinstance(column.dtype, pd.CategoricalDtype):
        return _rows_of_codes(_category_rows(table, column.cat.categories), column)
    return table.positions(column.astype(str).to_numpy())


def _category_rows(table: EmbeddingTable, categories: pd.Index) -> np.ndarray:
    if categories.inferred_type != "string":
        categories = categories.astype(str)
    return table.positions(categories.to_numpy())


def _share_categories(a: pd.Series, b: pd.Series) -> bool:
    if not (isinstance(a.dtype, pd.CategoricalDtype) and isinstance(b.dtype, pd.CategoricalDtype)):
        return False
    left, right = a.cat.categories, b.cat.categories
    return left is right or left.equals(right)


def _rows_of_codes(category_rows: np.ndarray, column: pd.Series) -> np.ndarray:
    codes = column.cat.codes.to_numpy()
    return np.where(codes >= 0, category_rows[codes], -1)


def trial_rows(table: EmbeddingTable, trials: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of each trial's enrolment and test utterance in ``table``.

    Raises ``EmbeddingError`` naming utterances the trial list needs but ``table`` lacks.
    """
    enrol_column, test_column = trials["enrol"], trials["test"]
    if _share_categories(enrol_column, test_column):
        # One lookup for both sides (``trials_frame`` builds them so).
        category_rows = _category_rows(table, enrol_column.cat.categories)
        enrol = _rows_of_codes(category_rows, enrol_column)
        test = _rows_of_codes(category_rows, test_column)
    else:
        enrol = _lookup(table, enrol_column)
        test = _lookup(table, test_column)
    if (enrol < 0).any() or (test < 0).any():
        missing = pd.unique(
            np.r_[
                trials["enrol"].to_numpy(dtype=str)[enrol < 0],
                trials["test"].to_numpy(dtype=str)[test < 0],
            ]
        )
        raise EmbeddingError(
            f"{len(missing)} utterance(s) in the trial list have no embedding, "
            f"e.g. {[str(utt) for utt in missing[:5]]}" + table.near_misses(missing[:100])
        )
    return enrol, test


def normalise_embeddings(
    vectors: np.ndarray, mean: np.ndarray | None = None, length_norm: bool = True
) -> np.ndarray:
    """Subtract ``mean`` (``[dim]``; e.g. the training-set mean) and L2-normalise rows."""
    out = _centred(vectors, mean)
    return _unit_rows(out)[0] if length_norm else out


def _centred(vectors: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    out = np.asarray(vectors, dtype=np.float32)
    if mean is not None:
        out = out - np.asarray(mean, dtype=np.float32)
    return np.ascontiguousarray(out, dtype=np.float32)


def _unit_rows(out: np.ndarray, norms: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``out [n, dim]`` scaled to unit length, and the indices of rows holding NaN
    or inf (found from the norms, without a pass of its own).

    ``norms`` are ``_row_norms(out)`` when the caller already has them. Blocks of rows are
    divided one thread per core. A finite row whose squares overflow float32 (values ~1e20)
    gets a float64 norm, so it keeps its direction instead of collapsing to zero.
    """
    norms = _row_norms(out) if norms is None else norms
    divisors = np.maximum(norms, 1e-12)
    unit = np.empty(out.shape, dtype=np.float32)

    def normalise_block(start: int, stop: int) -> None:
        with np.errstate(invalid="ignore"):  # inf / inf in rows the caller is told about
            np.divide(out[start:stop], divisors[start:stop, None], out=unit[start:stop])

    _in_row_blocks(len(out), NORMALISE_CHUNK, normalise_block)
    suspect = np.flatnonzero(~np.isfinite(norms))
    if not suspect.size:
        return unit, suspect
    finite = np.isfinite(out[suspect]).all(axis=1)
    wide = out[suspect[finite]].astype(np.float64)
    wide_norms = np.sqrt(np.einsum("ij,ij->i", wide, wide))
    unit[suspect[finite]] = wide / np.maximum(wide_norms, 1e-12)[:, None]
    return unit, suspect[~finite]


def _in_row_blocks(
    n_rows: int, block: int, work: Callable[[int, int], None], threads: int = 0
) -> None:
    """Call ``work(start, stop)`` for consecutive row blocks, on ``threads`` threads.

    The blocks write disjoint rows, and NumPy releases the GIL in the array kernels, so
    the threads run in parallel (0: one per core).
    """
    starts = range(0, n_rows, block)
    workers = threads or os.cpu_count() or 1
    if workers == 1 or len(starts) <= 1:
        for start in starts:
            work(start, min(start + block, n_rows))
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda start: work(start, min(start + block, n_rows)), starts))


def paired_dot(
    left: np.ndarray,
    right: np.ndarray,
    left_rows: np.ndarray,
    right_rows: np.ndarray,
    chunk: int = DEFAULT_CHUNK,
    threads: int = 0,
) -> np.ndarray:
    """``sum(left[left_rows[i]] * right[right_rows[i]])`` for each i (``[n]`` float64).

    Gathering rows is memory-bound: small chunks keep the gathered blocks in cache, and the
    chunks run on ``threads`` threads (0: one per core).
    """
    scores = np.empty(len(left_rows), dtype=np.float64)

    def score_block(start: int, stop: int) -> None:
        a = np.take(left, left_rows[start:stop], axis=0)
        b = np.take(right, right_rows[start:stop], axis=0)
        scores[start:stop] = np.einsum("ij,ij->i", a, b)

    _in_row_blocks(len(left_rows), chunk, score_block, threads)
    return scores


def cosine_scores(
    table: EmbeddingTable,
    trials: pd.DataFrame,
    mean: np.ndarray | None = None,
    length_norm: bool = True,
    chunk: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """Cosine similarity per trial (``[n_trials]`` float64).

    With ``length_norm`` each dot product is divided by the two rows' norms (the cosine);
    without it, the plain dot product is the score. ``mean`` centres the embeddings first.
    Only the utterances the trials use are touched, so a huge table with a small trial
    list stays cheap.
    """
    enrol, test = trial_rows(table, trials)
    if len(table) <= 2 * len(enrol):
        # Taking every row's norm is cheaper than finding the used ones.
        rows = np.arange(len(table))
        vectors = np.asarray(table.vectors)
    else:
        rows = np.unique(np.r_[enrol, test])
        vectors = np.asarray(table.vectors[rows])
        remap = np.full(len(table), -1, dtype=np.int64)
        remap[rows] = np.arange(len(rows))
        enrol, test = remap[enrol], remap[test]
    if mean is not None:
        mean = np.asarray(mean)
        # A mean of another dimension would fail as a bare broadcast error, or (dim 1)
        # broadcast silently and shift every coordinate by one number.
        if mean.shape != (table.dim,):
            raise EmbeddingError(
                f"the centring mean has shape {mean.shape}; the embeddings need ({table.dim},)"
            )
        if not np.isfinite(mean).all():
            raise EmbeddingError("the centring mean contains NaN or inf")
    centred = _centred(vectors, mean)
    if length_norm:
        norms = _row_norms(centred)
        if np.isfinite(norms).all() and norms.min() >= MIN_RAW_NORM:
            # Dot products of the raw rows divided by the two norms: the same cosine as
            # normalising every row first (within float32 rounding, as the torch loop
            # itself), without writing a normalised copy of the table.
            dots = paired_dot(centred, centred, enrol, test, chunk=chunk).astype(np.float32)
            return (dots / (norms[enrol] * norms[test])).astype(np.float64)
        # NaN/inf rows, finite rows whose squares overflow float32, or rows so short
        # that their raw products would lose float32 precision: the normalising path
        # names the first and rescues the others.
        normed, non_finite = _unit_rows(centred, norms)
    else:
        normed, non_finite = centred, _non_finite_rows(vectors)
    if non_finite.size:
        names = [table.keys_[i] for i in rows[non_finite][:5]]
        raise EmbeddingError(f"{len(non_finite)} embedding(s) contain NaN or inf, e.g. {names}")
    return paired_dot(normed, normed, enrol, test, chunk=chunk)


def _row_norms(vectors: np.ndarray) -> np.ndarray:
    """L2 norm of each row of ``vectors [n, dim]`` (float32; inf where the squares overflow)."""
    norms = np.empty(len(vectors), dtype=np.float32)

    def norm_block(start: int, stop: int) -> None:
        block = vectors[start:stop]
        # einsum's row-wise dot is about twice as fast as ``np.linalg.norm`` here.
        norms[start:stop] = np.sqrt(np.einsum("ij,ij->i", block, block))

    with np.errstate(over="ignore", invalid="ignore"):
        _in_row_blocks(len(vectors), NORMALISE_CHUNK, norm_block)
    return norms


def _non_finite_rows(vectors: np.ndarray) -> np.ndarray:
    # A row holds NaN or inf exactly when its sum does: one pass, no boolean matrix.
    return np.flatnonzero(~np.isfinite(vectors.sum(axis=1, dtype=np.float64)))


def fuse_scores(
    score_sets: Sequence[np.ndarray], weights: Sequence[float] | None = None
) -> np.ndarray:
    """Weighted mean of several score arrays for the same trials (full and crop scores)."""
    if not score_sets:
        raise ValueError("no scores to fuse")
    shapes = {np.shape(s) for s in score_sets}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"score arrays must be 1-D and not differ in length: {sorted(shapes)}")
    w = np.ones(len(score_sets)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(score_sets),):
        raise ValueError(f"{w.size} weights for {len(score_sets)} score arrays")
    # Zero-sum weights give NaN (0/0); negative ones turn a score upside down.
    if not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
        raise ValueError(f"fusion weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    stacked = np.stack([np.asarray(s, dtype=np.float64) for s in score_sets])
    return (w[:, None] * stacked).sum(axis=0) / w.sum()
