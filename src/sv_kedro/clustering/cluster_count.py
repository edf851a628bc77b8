"""How many pseudo-speakers, without labels: the cosine silhouette along the AHC path.

An unlabeled corpus does not say how many speakers it holds, and ``k2`` set from the true
count is a label leak. ``choose_cluster_count`` cuts one agglomeration (see
``agglomerative.agglomeration_path``) at a geometric grid of cluster counts and keeps the
count whose utterance-level clustering has the highest mean silhouette (Rousseeuw 1987)
under cosine distance.

The silhouette is computed from cluster sums, never from a pairwise distance matrix: for
unit vectors the mean cosine distance from ``x`` to the members of a cluster with sum ``S``
and size ``m`` is ``1 - x.S / m``, so one ``[n, d] x [d, k]`` product per count gives every
point's own-cluster and nearest-other-cluster distance exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sv_kedro.clustering.kmeans import ClusteringInputError

_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class ClusterCountChoice:
    """``k``: the chosen count; ``scores``: ``DataFrame[k, silhouette]``, one row per count
    tried, in increasing ``k``."""

    k: int
    scores: pd.DataFrame


def cosine_silhouette(
    x: np.ndarray,
    labels: np.ndarray,
    sample: int | None = 20_000,
    seed: int = 0,
    chunk: int = 4096,
) -> float:
    """Mean silhouette of ``labels`` ``[n]`` on vectors ``x`` ``[n, d]`` under cosine distance
    (rows are L2-normalised here; ``k2: auto`` also sees unnormalised vectors when
    ``spherical`` is off).

    Points in singleton clusters score 0 (Rousseeuw's convention). With more than ``sample``
    points, the mean is over a seeded sample of that many, each still scored against the
    full clusters. Needs at least 2 clusters.
    """
    x = np.asarray(x, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    n = x.shape[0]
    if labels.shape[0] != n:
        raise ClusteringInputError(f"{labels.shape[0]} labels for {n} vectors")
    _, labels = np.unique(labels, return_inverse=True)
    k = int(labels.max()) + 1 if n else 0
    if k < 2:
        raise ClusteringInputError(f"a silhouette needs at least 2 clusters, got {k}")
    membership = sp.csr_matrix((np.ones(n, dtype=np.float32), (labels, np.arange(n))), (k, n))
    sums = np.asarray(membership @ x, dtype=np.float32)  # [k, d]
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    rows = np.arange(n)
    if sample is not None and n > sample:
        rows = np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    total = 0.0
    chunk = max(1, min(chunk, _CHUNK_ELEMENTS // k))  # [chunk, k] float64 stays ~128 MB
    for start in range(0, rows.size, chunk):
        part = rows[start : start + chunk]
        own = labels[part]
        dots = (x[part] @ sums.T).astype(np.float64)  # [chunk, k]
        self_dot = np.einsum("ij,ij->i", x[part], x[part]).astype(np.float64)
        own_size = counts[own]
        inside = 1.0 - (dots[np.arange(part.size), own] - self_dot) / np.maximum(own_size - 1, 1)
        mean_distance = 1.0 - dots / counts[None, :]
        mean_distance[np.arange(part.size), own] = np.inf
        nearest = mean_distance.min(axis=1)
        score = (nearest - inside) / np.maximum(np.maximum(inside, nearest), 1e-12)
        total += float(np.where(own_size > 1, score, 0.0).sum())
    return total / rows.size


def count_grid(low: int, high: int, points: int) -> list[int]:
    """About ``points`` distinct counts from ``low`` to ``high`` (both kept), geometric."""
    if not 2 <= low <= high:
        raise ClusteringInputError(f"need 2 <= min <= max cluster counts, got {low}, {high}")
    if points < 1:
        raise ClusteringInputError(f"points must be >= 1, got {points}")
    grid = np.geomspace(low, high, num=max(points, 2))
    return sorted({int(k) for k in np.rint(grid)} | {low, high})


def choose_cluster_count(
    x: np.ndarray,
    labels_at: Callable[[int], np.ndarray],
    candidates: Sequence[int],
    sample: int | None = 20_000,
    seed: int = 0,
) -> ClusterCountChoice:
    """The candidate count whose clustering (``labels_at(k)`` ``[n]``) of vectors ``x``
    ``[n, d]`` has the highest cosine silhouette; ties go to the larger count (over-clustering
    costs pseudo-label training less than merging speakers)."""
    if not candidates:
        raise ClusteringInputError("no candidate cluster counts")
    ks = sorted({int(k) for k in candidates})
    scores = [cosine_silhouette(x, labels_at(k), sample=sample, seed=seed) for k in ks]
    best = max(range(len(ks)), key=lambda i: (scores[i], ks[i]))
    return ClusterCountChoice(ks[best], pd.DataFrame({"k": ks, "silhouette": scores}))
