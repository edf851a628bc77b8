"""Graph-constrained AHC: equals scikit-learn's dense AHC, bounded memory, components, errors."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_rand_score

from sv_kedro.clustering import agglomerative
from sv_kedro.clustering.agglomerative import agglomerate_centroids, connect_components, knn_graph
from sv_kedro.clustering.kmeans import ClusteringInputError


def blobs(n: int, dim: int, n_groups: int, spread: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_groups, dim))
    return (centres[rng.integers(0, n_groups, n)] + spread * rng.normal(size=(n, dim))).astype(
        np.float32
    )


def test_ward_on_a_knn_graph_reproduces_dense_sklearn_ward() -> None:
    points = blobs(1500, 16, 60, spread=0.3)
    dense = AgglomerativeClustering(n_clusters=200).fit_predict(points)
    ours = agglomerate_centroids(points, 200, linkage="ward", knn=16)
    assert adjusted_rand_score(dense, ours) > 0.999
    assert np.array_equal(np.unique(ours), np.arange(200))


def test_weighted_ward_equals_ward_on_repeated_points() -> None:
    points = blobs(60, 4, 6, spread=0.5, seed=1).astype(np.float64)
    weights = np.random.default_rng(2).integers(1, 4, 60)
    repeated = np.repeat(points, weights, axis=0)
    dense = AgglomerativeClustering(n_clusters=8).fit_predict(repeated)
    first_copy = np.concatenate([[0], np.cumsum(weights)[:-1]])
    ours = agglomerate_centroids(points, 8, weights=weights, knn=59)
    assert adjusted_rand_score(dense[first_copy], ours) == pytest.approx(1.0)


def test_average_linkage_is_cosine_upgma() -> None:
    points = blobs(300, 8, 12, spread=0.4, seed=3)
    dense = AgglomerativeClustering(n_clusters=20, linkage="average", metric="cosine")
    ours = agglomerate_centroids(points, 20, linkage="average", knn=299)
    assert adjusted_rand_score(dense.fit_predict(points), ours) == pytest.approx(1.0)


def test_large_k1_never_builds_a_dense_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    # Force the IVF graph path at k1 = 3000 (it is the 50k path, made quick).
    monkeypatch.setattr(agglomerative, "EXACT_GRAPH_MAX_POINTS", 1000)
    k1 = 3000
    centroids = blobs(k1, 32, 300, spread=0.2, seed=4)
    tracemalloc.start()
    labels = agglomerate_centroids(centroids, 450, knn=10, seed=0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    dense_float32 = k1 * k1 * 4
    assert peak < dense_float32 / 2, f"peak {peak / 1e6:.1f} MB"
    assert labels.shape == (k1,) and np.unique(labels).size == 450
    again = agglomerate_centroids(centroids, 450, knn=10, seed=0)
    np.testing.assert_array_equal(labels, again)


def test_disconnected_graph_is_joined_so_any_k2_is_reachable() -> None:
    near = blobs(40, 3, 1, spread=0.1, seed=5)
    far = near[:30] + 100.0
    points = np.concatenate([near, far, near[:5] - 100.0])
    graph = knn_graph(points, knn=2)
    joined = connect_components(graph, points)
    from scipy.sparse.csgraph import connected_components

    assert connected_components(graph, directed=False)[0] > 1
    assert connected_components(joined, directed=False)[0] == 1
    labels = agglomerate_centroids(points, 3, knn=2, linkage="ward")
    assert np.unique(labels[:40]).size == 1 and np.unique(labels[40:70]).size == 1
    assert np.unique(labels).size == 3
    assert (agglomerate_centroids(points, 1, knn=2) == 0).all()


def test_errors_name_the_problem() -> None:
    points = blobs(20, 3, 2, spread=0.1)
    with pytest.raises(ClusteringInputError, match="k2=30 clusters requested but only 20"):
        agglomerate_centroids(points, 30)
    with pytest.raises(ClusteringInputError, match="linkage must be one of"):
        agglomerate_centroids(points, 3, linkage="single")
    with pytest.raises(ClusteringInputError, match=r"bad at indices \[2\]"):
        agglomerate_centroids(points, 3, weights=np.r_[1.0, 1.0, -1.0, np.ones(17)])
    with pytest.raises(ClusteringInputError, match="3 weights given for 20"):
        agglomerate_centroids(points, 3, weights=np.ones(3))
    np.testing.assert_array_equal(agglomerate_centroids(points, 20), np.arange(20))
