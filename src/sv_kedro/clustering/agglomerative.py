"""Agglomerative clustering (AHC) of k-means centroids in bounded memory: 50,000 -> 7,500.

The original recipe runs scikit-learn's ``AgglomerativeClustering`` with its defaults — Ward
linkage on a dense distance matrix — over the k-means centroids. A dense 50k x 50k matrix is
10-20 GB, so here merges are restricted to a sparse k-nearest-neighbour graph (built with
faiss), exactly like scikit-learn's ``connectivity=`` option: two clusters may merge only when
some member of one is among the ``knn`` nearest neighbours of some member of the other, and
among those candidate pairs the one with the smallest linkage cost merges first. Memory is
``O(k1 * (d + knn))``.

Linkages (each cluster keeps only its weight and its weighted mean, so costs are exact):

``"ward"`` (default, the paper's recipe)
    increase of the within-cluster sum of squares, ``w_a w_b / (w_a + w_b) * |m_a - m_b|^2``
    on the centroids as given. With ``weights=None`` every centroid weighs 1 (as scikit-learn
    does); with the k-means cluster sizes as weights Ward merges as if on the points.
``"average"``
    UPGMA on cosine distance: the mean of ``1 - cos`` over all member pairs, which for
    L2-normalised members equals ``1 - m_a . m_b`` with ``m`` the weighted member means.

A kNN graph may fall into several connected components; they are joined (Boruvka-style,
through the nearest members of nearest components) so that any ``k2 >= 1`` is reachable.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import faiss
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from sv_kedro.clustering.kmeans import (
    ClusteringInputError,
    check_cluster_count,
    faiss_threads,
    prepare_vectors,
)

LINKAGES = ("ward", "average")
# Above this many centroids the kNN graph comes from an IVF index instead of an exact scan.
EXACT_GRAPH_MAX_POINTS = 20_000


@dataclass(frozen=True)
class AgglomerationPath:
    """The merges of one agglomeration, in order: ``merges`` ``[m, 2]`` rows of
    ``(kept root, absorbed root)`` over ``n_points`` inputs, down to ``n_points - m`` clusters.

    Greedy merging never revisits a merge, so the clustering at any count ``k`` on the path
    is its first ``n_points - k`` merges: one run serves every cut.
    """

    merges: np.ndarray
    n_points: int

    @property
    def min_clusters(self) -> int:
        return self.n_points - int(self.merges.shape[0])

    def labels(self, k: int) -> np.ndarray:
        """Labels ``[n_points]`` in ``0..k-1`` (numbered by first appearance) at ``k`` clusters."""
        if not self.min_clusters <= k <= self.n_points:
            raise ClusteringInputError(
                f"this agglomeration reaches {self.min_clusters}..{self.n_points} clusters, not {k}"
            )
        done = self.merges[: self.n_points - k]
        roots = np.arange(self.n_points)
        roots[done[:, 1]] = done[:, 0]  # each cluster is absorbed at most once: a forest
        while True:  # pointer jumping: every row points at its final root
            hop = roots[roots]
            if np.array_equal(hop, roots):
                break
            roots = hop
        _, labels = np.unique(roots, return_inverse=True)
        return _relabel_by_first_appearance(labels)


def agglomerate_centroids(
    centroids: np.ndarray,
    k2: int,
    linkage: str = "ward",
    weights: np.ndarray | None = None,
    knn: int = 16,
    seed: int = 0,
    threads: int | None = None,
) -> np.ndarray:
    """Merge ``centroids`` ``[k1, d]`` into ``k2`` clusters; returns labels ``[k1]`` in
    ``0..k2-1`` (numbered by first appearance). ``weights`` ``[k1]`` (positive, e.g. k-means
    cluster sizes) default to 1. ``seed`` fixes the IVF training of the approximate graph.
    """
    path = agglomeration_path(centroids, k2, linkage, weights, knn, seed, threads)
    return path.labels(k2)


def agglomeration_path(
    centroids: np.ndarray,
    min_clusters: int,
    linkage: str = "ward",
    weights: np.ndarray | None = None,
    knn: int = 16,
    seed: int = 0,
    threads: int | None = None,
) -> AgglomerationPath:
    """Merge ``centroids`` ``[k1, d]`` down to ``min_clusters``, keeping every merge (see
    :func:`agglomerate_centroids` for the arguments)."""
    if linkage not in LINKAGES:
        raise ClusteringInputError(f"linkage must be one of {LINKAGES}, got {linkage!r}")
    vectors = prepare_vectors(centroids, spherical=linkage == "average")
    k1 = vectors.shape[0]
    check_cluster_count(min_clusters, k1, "k2")
    if knn < 1:
        raise ClusteringInputError(f"knn must be >= 1, got {knn}")
    w = _check_weights(weights, k1)
    if min_clusters == k1:
        return AgglomerationPath(np.empty((0, 2), dtype=np.int64), k1)
    with faiss_threads(threads):
        graph = knn_graph(vectors, knn, seed)
    graph = connect_components(graph, vectors)
    return AgglomerationPath(_merge(vectors, w, graph, min_clusters, linkage), k1)


def _check_weights(weights: np.ndarray | None, k1: int) -> np.ndarray:
    if weights is None:
        return np.ones(k1, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != k1:
        raise ClusteringInputError(f"{w.shape[0]} weights given for {k1} centroids")
    bad = np.flatnonzero(~np.isfinite(w) | (w <= 0))
    if bad.size:
        raise ClusteringInputError(
            f"weights must be positive and finite; bad at indices {bad[:10].tolist()}"
        )
    return w


def knn_graph(vectors: np.ndarray, knn: int, seed: int = 0) -> sp.csr_matrix:
    """Symmetric boolean kNN graph ``[k1, k1]`` (sparse, no self loops) by L2 distance.

    Exact for up to ``EXACT_GRAPH_MAX_POINTS`` points; above, an IVF index (``4 * sqrt(k1)``
    lists, 16 probed) keeps the build to seconds instead of a ``k1^2 d`` scan.
    """
    n, d = vectors.shape
    neighbours = min(knn + 1, n)
    if n <= EXACT_GRAPH_MAX_POINTS:
        _, found = faiss.knn(vectors, vectors, neighbours)
    else:
        n_lists = round(4 * np.sqrt(n))
        quantizer = faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quantizer, d, n_lists)
        index.cp.seed = seed
        index.cp.min_points_per_centroid = 1
        index.train(vectors)
        index.add(vectors)
        index.nprobe = 16
        _, found = index.search(vectors, neighbours)
    rows = np.repeat(np.arange(n), neighbours)
    cols = found.reshape(-1)
    keep = (cols >= 0) & (cols != rows)
    graph = sp.coo_matrix(
        (np.ones(int(keep.sum()), dtype=bool), (rows[keep], cols[keep])), shape=(n, n)
    ).tocsr()
    return (graph + graph.T).tocsr()


def connect_components(graph: sp.csr_matrix, vectors: np.ndarray) -> sp.csr_matrix:
    """Add edges until ``graph`` is connected: each round links every component to its nearest
    component (by mean) through the members nearest each other's mean; rounds at least halve
    the number of components, and each costs ``O(k1 * d)``."""
    n_components, component = connected_components(graph, directed=False)
    extra_rows: list[int] = []
    extra_cols: list[int] = []
    while n_components > 1:
        sizes = np.bincount(component, minlength=n_components)
        means = np.zeros((n_components, vectors.shape[1]), dtype=np.float64)
        np.add.at(means, component, vectors)
        means = (means / sizes[:, None]).astype(np.float32)
        nearest_other = faiss.knn(means, means, 2)[1]
        for comp in range(n_components):
            other = int(
                nearest_other[comp, 1] if nearest_other[comp, 0] == comp else nearest_other[comp, 0]
            )
            extra_rows.append(_closest_member(vectors, component, comp, means[other]))
            extra_cols.append(_closest_member(vectors, component, other, means[comp]))
        extra = sp.coo_matrix(
            (np.ones(len(extra_rows), dtype=bool), (extra_rows, extra_cols)), shape=graph.shape
        )
        graph = (graph + extra + extra.T).tocsr()
        n_components, component = connected_components(graph, directed=False)
    return graph


def _closest_member(
    vectors: np.ndarray, component: np.ndarray, comp: int, target: np.ndarray
) -> int:
    members = np.flatnonzero(component == comp)
    distances = ((vectors[members] - target) ** 2).sum(axis=1)
    return int(members[np.argmin(distances)])


def _merge(
    vectors: np.ndarray, weights: np.ndarray, graph: sp.csr_matrix, k2: int, linkage: str
) -> np.ndarray:
    """Greedy graph-constrained merging down to ``k2`` clusters; returns the merges
    ``[k1 - k2, 2]`` as ``(kept, absorbed)`` in order.

    A heap of candidate pairs with lazy invalidation: a cluster's ``version`` changes when it
    absorbs another, which voids every queued pair that mentions its old state.
    """
    k1 = vectors.shape[0]
    means = vectors.astype(np.float64)
    w = weights.copy()
    version = np.zeros(k1, dtype=np.int64)
    parent = np.arange(k1)
    indptr, indices = graph.indptr, graph.indices
    neighbours = [set(indices[indptr[i] : indptr[i + 1]].tolist()) for i in range(k1)]

    upper = sp.triu(graph, k=1).tocoo()
    costs = _linkage_cost(means, w, upper.row, upper.col, linkage)
    heap = list(
        zip(
            costs.tolist(),
            upper.row.tolist(),
            upper.col.tolist(),
            [0] * costs.size,
            [0] * costs.size,
            strict=True,
        )
    )
    heapq.heapify(heap)

    clusters = k1
    merges = np.empty((k1 - k2, 2), dtype=np.int64)
    while clusters > k2:
        _, a, b, version_a, version_b = heapq.heappop(heap)
        if version[a] != version_a or version[b] != version_b or parent[a] != a or parent[b] != b:
            continue
        total = w[a] + w[b]
        means[a] = (w[a] * means[a] + w[b] * means[b]) / total
        w[a] = total
        parent[b] = a
        merges[k1 - clusters] = (a, b)
        version[a] += 1
        clusters -= 1
        for other in neighbours[b]:
            neighbours[other].discard(b)
            if other != a:
                neighbours[other].add(a)
        merged = (neighbours[a] | neighbours[b]) - {a, b}
        neighbours[a] = merged
        neighbours[b] = set()
        if not merged:
            continue
        others = np.fromiter(merged, dtype=np.int64, count=len(merged))
        others.sort()
        new_costs = _linkage_cost(means, w, np.full(others.size, a), others, linkage)
        for cost, other in zip(new_costs.tolist(), others.tolist(), strict=True):
            first, second = (a, other) if a < other else (other, a)
            heapq.heappush(heap, (cost, first, second, int(version[first]), int(version[second])))

    return merges


def _linkage_cost(
    means: np.ndarray, w: np.ndarray, left: np.ndarray, right: np.ndarray, linkage: str
) -> np.ndarray:
    if linkage == "ward":
        squared = ((means[left] - means[right]) ** 2).sum(axis=1)
        return w[left] * w[right] / (w[left] + w[right]) * squared
    return 1.0 - (means[left] * means[right]).sum(axis=1)


def _relabel_by_first_appearance(labels: np.ndarray) -> np.ndarray:
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[labels]
