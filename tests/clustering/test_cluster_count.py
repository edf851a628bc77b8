"""Label-free cluster count: exact cosine silhouette, one AHC path for every cut, the choice."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import silhouette_samples, silhouette_score

from sv_kedro.clustering.agglomerative import agglomerate_centroids, agglomeration_path
from sv_kedro.clustering.cluster_count import (
    choose_cluster_count,
    cosine_silhouette,
    count_grid,
)
from sv_kedro.clustering.kmeans import ClusteringInputError


def unit_blobs(n: int, dim: int, n_groups: int, spread: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_groups, dim))
    groups = rng.integers(0, n_groups, n)
    x = centres[groups] + spread * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), groups


def test_cosine_silhouette_equals_sklearn_including_singletons() -> None:
    x, _ = unit_blobs(300, 8, 5, spread=0.8)
    labels = np.random.default_rng(1).integers(0, 6, 300)
    labels[17] = 6  # a singleton cluster scores 0, as in scikit-learn
    expected = silhouette_score(x.astype(np.float64), labels, metric="cosine")
    assert cosine_silhouette(x, labels, chunk=64) == pytest.approx(expected, abs=1e-5)
    # Cosine distance ignores length: rows scaled anyhow (spherical off) score the same.
    scaled = x * np.random.default_rng(2).uniform(0.1, 10.0, (300, 1)).astype(np.float32)
    assert cosine_silhouette(scaled, labels) == pytest.approx(expected, abs=1e-5)


def test_a_sampled_silhouette_averages_the_sampled_points_against_full_clusters() -> None:
    x, groups = unit_blobs(500, 8, 7, spread=0.6)
    per_point = silhouette_samples(x.astype(np.float64), groups, metric="cosine")
    rows = np.sort(np.random.default_rng(3).choice(500, 120, replace=False))
    sampled = cosine_silhouette(x, groups, sample=120, seed=3)
    assert sampled == pytest.approx(per_point[rows].mean(), abs=1e-5)
    assert sampled != pytest.approx(per_point.mean(), abs=1e-4)


def test_silhouette_refuses_one_cluster_and_misaligned_labels() -> None:
    x, _ = unit_blobs(20, 4, 2, spread=0.1)
    with pytest.raises(ClusteringInputError, match="at least 2 clusters"):
        cosine_silhouette(x, np.zeros(20, dtype=int))
    with pytest.raises(ClusteringInputError, match="19 labels for 20 vectors"):
        cosine_silhouette(x, np.zeros(19, dtype=int))


def test_every_cut_of_one_path_equals_agglomerating_to_that_count() -> None:
    x, _ = unit_blobs(400, 16, 30, spread=0.4)
    path = agglomeration_path(x, 5, linkage="ward", knn=8)
    assert path.min_clusters == 5
    for k in (5, 17, 60, 400):
        cut = path.labels(k)
        assert np.array_equal(cut, agglomerate_centroids(x, k, linkage="ward", knn=8))
        assert np.array_equal(np.unique(cut), np.arange(k))
    with pytest.raises(ClusteringInputError, match=r"reaches 5\.\.400 clusters, not 4"):
        path.labels(4)


def test_the_silhouette_finds_the_number_of_well_separated_speakers() -> None:
    x, groups = unit_blobs(600, 32, 12, spread=0.25, seed=4)
    path = agglomeration_path(x, 2, linkage="ward")
    choice = choose_cluster_count(x, path.labels, [*count_grid(2, 60, 25), 12])
    assert choice.k == len(np.unique(groups)) == 12
    assert choice.scores["k"].is_monotonic_increasing
    assert choice.scores["silhouette"].max() == pytest.approx(
        choice.scores.set_index("k").loc[12, "silhouette"]
    )


def test_count_grid_is_geometric_and_keeps_both_ends() -> None:
    grid = count_grid(10, 1000, 5)
    assert grid == [10, 32, 100, 316, 1000]
    assert count_grid(3, 3, 4) == [3]
    with pytest.raises(ClusteringInputError, match="2 <= min <= max"):
        count_grid(50, 20, 4)
