"""k-means with faiss, sized for VoxCeleb2 (1.09M utterances -> 50,000 clusters) on 2 CPU cores.

Three ways to run Lloyd's algorithm, chosen by ``assignment``:

``"exact"``
    ``faiss.Kmeans`` (flat index, BLAS distances) trained on at most
    ``max_points_per_centroid * k`` points, then an exact assignment of every point. The
    reference; each iteration costs ``2 * n * k * d`` flop (3e13 at VoxCeleb2 scale).
``"two_level"``
    Coarse-then-fine k-means followed by global Lloyd refinement:

    1. coarse k-means to ``coarse_k`` (about ``sqrt(k) / 2``) cells on a subsample, exact
       assignment of every point to its cell;
    2. inside each cell, exact k-means with a share of the ``k`` centroids proportional to the
       cell's size (the initialisation), then one assignment of every point to the nearest
       centroid among those in the cells its points' ``nprobe`` nearest coarse centroids
       point to (at most ``max_probe_cells`` cells; exact BLAS distances inside that set);
    3. ``refine_iter`` global Lloyd iterations: move each centroid to its points' mean, find
       each centroid's ``candidates`` nearest centroids, and let each point choose among its
       current centroid's candidates (itself included, so no point ever gets farther).

    Every step is a real Lloyd step (assign to the nearest centre, move the centre to the
    mean); only the nearest-centre search is restricted to a neighbourhood, so centroids move
    freely across cell borders. Cost is about ``2 * n * d * (coarse_k + n_iter * k / coarse_k
    + refine_iter * candidates)`` flop instead of ``2 * n * d * k * n_iter``: at VoxCeleb2
    scale minutes instead of hours on 2 cores. Deterministic for a seed, whatever the thread
    count of the per-cell work. Its quality against exact k-means is measured in
    ``tests/clustering`` and ``benchmarks/bench_clustering.py`` (NMI, inertia, agreement with
    the exact nearest centroid); in heavily overlapping data a few percent of points end at a
    near-nearest rather than the nearest centroid.
``"hnsw"``
    ``faiss.Clustering`` whose assignment index is an ``IndexHNSWFlat`` graph over the
    centroids (rebuilt each iteration), then a final HNSW assignment of all points. Useful on
    many-core machines; graph construction is multi-threaded and so only reproducible with
    ``threads=1``. On 2 cores it is slower than ``"two_level"`` (building a 50k-centroid graph
    takes tens of seconds per iteration).
``"auto"``
    ``"exact"`` when one iteration costs at most ``1e10`` multiply-adds, else ``"two_level"``.

``spherical=True`` is cosine k-means: rows are L2-normalised, centroids are re-normalised after
each update, and the nearest centre by L2 is then the most cosine-similar one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import faiss
import numpy as np

ASSIGNMENTS = ("exact", "two_level", "hnsw", "auto")
# Multiply-adds per iteration up to which "auto" uses exact k-means (a second or so on 2 cores).
AUTO_EXACT_MAX_WORK = 1e10
# The coarse stage only needs rough cells, so it trains on a small sample per cell.
_COARSE_POINTS_PER_CENTROID = 64
_HNSW_NEIGHBOURS = 32
_HNSW_EF_SEARCH = 64


class ClusteringInputError(ValueError):
    """Vectors or cluster counts that clustering cannot use; the message says which."""


@dataclass(frozen=True)
class KMeansResult:
    """``centroids`` ``[k, d]`` float32, ``assignments`` ``[n]`` int64 in ``0..k-1``.

    ``inertia`` is the sum over points of the squared L2 distance to their centroid, measured
    on the L2-normalised rows when the clustering was spherical. ``method`` is the assignment
    actually used (``"auto"`` resolved).
    """

    centroids: np.ndarray
    assignments: np.ndarray
    inertia: float
    method: str


def kmeans(
    vectors: np.ndarray,
    k: int,
    n_iter: int = 20,
    seed: int = 0,
    spherical: bool = True,
    max_points_per_centroid: int = 256,
    assignment: str = "auto",
    threads: int | None = None,
    coarse_k: int | None = None,
    nprobe: int = 8,
    refine_iter: int = 8,
    max_probe_cells: int | None = None,
    candidates: int = 32,
) -> KMeansResult:
    """Cluster ``vectors`` ``[n, d]`` (float32 or float64) into ``k`` clusters.

    ``max_points_per_centroid`` caps the training sample of each (exact or per-cell) k-means
    at ``k * max_points_per_centroid`` points, as in faiss; every point is still assigned at
    the end. ``threads`` sets faiss's OpenMP threads for this call (restored afterwards).
    ``coarse_k``, ``nprobe``, ``max_probe_cells`` (default ``4 * nprobe``), ``refine_iter``
    and ``candidates`` tune ``"two_level"`` (see the module doc).
    """
    if assignment not in ASSIGNMENTS:
        raise ClusteringInputError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}")
    if n_iter < 1:
        raise ClusteringInputError(f"n_iter must be >= 1, got {n_iter}")
    if seed < 0:
        # faiss would draw a fresh random seed: the clustering would not repeat.
        raise ClusteringInputError(f"seed must be >= 0, got {seed}")
    if max_points_per_centroid < 1:
        # faiss would stop with an assertion naming its C++ internals instead.
        raise ClusteringInputError(
            f"max_points_per_centroid must be >= 1, got {max_points_per_centroid}"
        )
    x = prepare_vectors(vectors, spherical=spherical)
    n, d = x.shape
    check_cluster_count(k, n, "k")
    if assignment == "auto":
        assignment = resolve_auto_assignment(n, k, d, max_points_per_centroid)
    with faiss_threads(threads):
        if assignment == "exact" or k == n:
            centroids = _train_flat(x, k, n_iter, seed, spherical, max_points_per_centroid)
            distances, labels = _nearest(x, centroids)
            method = "exact"
        elif assignment == "hnsw":
            centroids, distances, labels = _hnsw_kmeans(
                x, k, n_iter, seed, spherical, max_points_per_centroid
            )
            method = "hnsw"
        else:
            # Imported here: two_level builds on this module's flat k-means helpers.
            from sv_kedro.clustering.two_level import two_level_kmeans

            centroids, distances, labels = two_level_kmeans(
                x,
                k,
                n_iter,
                seed,
                spherical,
                max_points_per_centroid,
                coarse_k,
                nprobe,
                refine_iter,
                4 * nprobe if max_probe_cells is None else max_probe_cells,
                candidates,
            )
            method = "two_level"
    return KMeansResult(
        centroids=np.ascontiguousarray(centroids, dtype=np.float32),
        assignments=labels.astype(np.int64, copy=False),
        inertia=float(np.maximum(distances, 0.0).sum(dtype=np.float64)),
        method=method,
    )


def resolve_auto_assignment(n: int, k: int, d: int, max_points_per_centroid: int = 256) -> str:
    """What ``assignment="auto"`` runs: ``"exact"`` while one training iteration costs at most
    ``AUTO_EXACT_MAX_WORK`` multiply-adds, else ``"two_level"``."""
    train_points = min(n, k * max_points_per_centroid)
    return "exact" if train_points * k * d <= AUTO_EXACT_MAX_WORK else "two_level"


def prepare_vectors(vectors: np.ndarray, spherical: bool) -> np.ndarray:
    """Validate ``[n, d]`` vectors; return C-contiguous float32, L2-normalised if ``spherical``.

    Raises naming the row indices that hold NaN/inf (or have zero norm when spherical).
    """
    array = np.asarray(vectors)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ClusteringInputError(f"vectors must be a non-empty [n, d] array, got {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ClusteringInputError(f"vectors must be floating point, got dtype {array.dtype}")
    bad = _nonfinite_rows(array)
    if bad.size:
        raise ClusteringInputError(
            f"{bad.size} row(s) contain NaN or inf, e.g. row indices {bad[:10].tolist()}"
        )
    x = np.ascontiguousarray(array, dtype=np.float32)  # no copy when already float32
    if spherical:
        norms = np.sqrt(np.einsum("ij,ij->i", x, x))
        # Squares overflow float32 above ~1e19 and underflow below ~1e-23: such rows would
        # come out as all zeros (then "every vector is the same") or be called zero vectors.
        odd = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
        if odd.size:
            norms[odd] = np.linalg.norm(x[odd].astype(np.float64), axis=1)
        zero = np.flatnonzero(norms == 0)
        if zero.size:
            raise ClusteringInputError(
                f"{zero.size} row(s) have zero norm and cannot be L2-normalised for spherical "
                f"k-means, e.g. row indices {zero[:10].tolist()}"
            )
        # Already unit-norm rows (e.g. from a previous call) are used as they are, uncopied.
        if not np.allclose(norms, 1.0, rtol=0.0, atol=1e-4):
            x = x / norms[:, None]
    return x


def check_cluster_count(k: int, n: int, name: str) -> None:
    """Raise unless ``1 <= k <= n`` (``name`` is how the caller calls ``k``)."""
    if int(k) != k or k < 1:
        raise ClusteringInputError(f"{name} must be a positive integer, got {k!r}")
    if k > n:
        raise ClusteringInputError(f"{name}={k} clusters requested but only {n} vectors given")


@contextmanager
def faiss_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` OpenMP threads in faiss, restoring the previous count."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise ClusteringInputError(f"threads must be >= 1, got {threads}")
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(threads))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _nonfinite_rows(array: np.ndarray, chunk: int = 65536) -> np.ndarray:
    # Chunked so a 1M x 256 input does not need a 1 GB boolean temporary.
    bad = [
        start + np.flatnonzero(~np.isfinite(array[start : start + chunk]).all(axis=1))
        for start in range(0, array.shape[0], chunk)
    ]
    return np.concatenate(bad)


def _clustering_parameters(
    n_iter: int, seed: int, spherical: bool, max_points_per_centroid: int
) -> faiss.ClusteringParameters:
    params = faiss.ClusteringParameters()
    params.niter = n_iter
    params.seed = seed
    params.spherical = spherical
    params.max_points_per_centroid = max_points_per_centroid
    # Small cells legitimately have few points per centroid; faiss would only print warnings.
    params.min_points_per_centroid = 1
    params.verbose = False
    return params


def _train_flat(
    x: np.ndarray, k: int, n_iter: int, seed: int, spherical: bool, max_points_per_centroid: int
) -> np.ndarray:
    """Exact (flat index) faiss k-means; returns centroids ``[k, d]``."""
    n, d = x.shape
    if k == 1:
        return _normalised_mean(x, spherical)
    if k == n:
        return x.copy()
    clustering = faiss.Clustering(
        d, k, _clustering_parameters(n_iter, seed, spherical, max_points_per_centroid)
    )
    index = faiss.IndexFlatL2(d)
    clustering.train(x, index)
    return faiss.vector_to_array(clustering.centroids).reshape(k, d)


def _nearest(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest centroid: squared distances ``[n]`` and labels ``[n]``."""
    distances, labels = faiss.knn(x, np.ascontiguousarray(centroids, dtype=np.float32), 1)
    return distances[:, 0], labels[:, 0]


def _normalised_mean(x: np.ndarray, spherical: bool) -> np.ndarray:
    mean = x.mean(axis=0, dtype=np.float64)[None, :]
    if spherical:
        mean /= max(np.linalg.norm(mean), 1e-12)
    return mean.astype(np.float32)


def _hnsw_kmeans(
    x: np.ndarray, k: int, n_iter: int, seed: int, spherical: bool, max_points_per_centroid: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = x.shape[1]
    clustering = faiss.Clustering(
        d, k, _clustering_parameters(n_iter, seed, spherical, max_points_per_centroid)
    )
    index = faiss.IndexHNSWFlat(d, _HNSW_NEIGHBOURS)
    index.hnsw.efSearch = _HNSW_EF_SEARCH
    clustering.train(x, index)
    centroids = faiss.vector_to_array(clustering.centroids).reshape(k, d)
    # faiss leaves the index holding the final centroids: reuse it for the final assignment.
    distances, labels = index.search(x, 1)
    return centroids, distances[:, 0], labels[:, 0]
