"""k-means: exact vs two-level quality, determinism, thread control and input errors."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from sv_kedro.clustering.kmeans import (
    ClusteringInputError,
    faiss_threads,
    kmeans,
    resolve_auto_assignment,
)
from sv_kedro.clustering.two_level import apportion


def gaussian_clusters(
    n: int, dim: int, n_clusters: int, noise: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Points around unit-norm centres: vectors ``[n, dim]`` float32, true labels ``[n]``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = rng.integers(0, n_clusters, n)
    vectors = centres[truth] + noise * rng.normal(size=(n, dim))
    return vectors.astype(np.float32), truth


def test_two_level_matches_exact_kmeans_quality() -> None:
    vectors, truth = gaussian_clusters(20_000, 64, 200, noise=0.09)
    exact = kmeans(vectors, 500, assignment="exact", seed=0)
    approx = kmeans(vectors, 500, assignment="two_level", seed=0)
    assert exact.method == "exact" and approx.method == "two_level"
    nmi_exact = normalized_mutual_info_score(truth, exact.assignments)
    nmi_approx = normalized_mutual_info_score(truth, approx.assignments)
    assert abs(nmi_exact - nmi_approx) < 0.01, (nmi_exact, nmi_approx)
    assert approx.inertia < 1.02 * exact.inertia
    # The restricted search finds the true nearest centroid for nearly every point.
    nearest = faiss.knn(approx_unit(vectors), approx.centroids, 1)[1][:, 0]
    assert (nearest == approx.assignments).mean() > 0.99
    assert approx.centroids.shape == (500, 64)
    assert np.allclose(np.linalg.norm(approx.centroids, axis=1), 1.0, atol=1e-4)


def approx_unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_result_is_consistent_and_inertia_is_the_assignment_cost() -> None:
    vectors, _ = gaussian_clusters(3000, 16, 10, noise=0.2)
    result = kmeans(vectors, 40, assignment="two_level", seed=1, coarse_k=6)
    unit = approx_unit(vectors)
    cost = ((unit - result.centroids[result.assignments]) ** 2).sum()
    assert result.inertia == pytest.approx(float(cost), rel=1e-3)
    assert set(np.unique(result.assignments)) <= set(range(40))


def test_two_level_is_deterministic_with_a_seed() -> None:
    vectors, _ = gaussian_clusters(6000, 32, 30, noise=0.15)
    first = kmeans(vectors, 120, assignment="two_level", seed=3, threads=2)
    second = kmeans(vectors, 120, assignment="two_level", seed=3, threads=2)
    other_seed = kmeans(vectors, 120, assignment="two_level", seed=4, threads=2)
    np.testing.assert_array_equal(first.assignments, second.assignments)
    np.testing.assert_array_equal(first.centroids, second.centroids)
    assert not np.array_equal(first.centroids, other_seed.centroids)


def test_hnsw_assignment_follows_exact_kmeans() -> None:
    vectors, _ = gaussian_clusters(2000, 16, 8, noise=0.05)
    result = kmeans(vectors, 20, assignment="hnsw", threads=1)
    exact = kmeans(vectors, 20, assignment="exact", threads=1)
    assert result.method == "hnsw"
    # Same seed, same initial centroids: HNSW search on 20 centroids finds the same nearest.
    assert normalized_mutual_info_score(exact.assignments, result.assignments) > 0.99
    assert result.inertia == pytest.approx(exact.inertia, rel=0.01)


def test_float64_input_gives_the_float32_result() -> None:
    vectors, _ = gaussian_clusters(1000, 8, 5, noise=0.1)
    as32 = kmeans(vectors, 5, assignment="exact")
    as64 = kmeans(vectors.astype(np.float64), 5, assignment="exact")
    np.testing.assert_array_equal(as32.assignments, as64.assignments)
    assert as64.centroids.dtype == np.float32


def test_euclidean_kmeans_keeps_the_scale() -> None:
    vectors, _ = gaussian_clusters(1000, 8, 4, noise=0.05)
    result = kmeans(10 * vectors, 4, spherical=False, assignment="exact")
    assert np.linalg.norm(result.centroids, axis=1).mean() > 5


def test_auto_picks_exact_for_small_and_two_level_for_voxceleb_scale() -> None:
    assert resolve_auto_assignment(20_000, 500, 64) == "exact"
    assert resolve_auto_assignment(1_092_009, 50_000, 256) == "two_level"
    vectors, _ = gaussian_clusters(500, 8, 4, noise=0.1)
    assert kmeans(vectors, 4).method == "exact"


def test_threads_argument_is_applied_and_restored() -> None:
    before = faiss.omp_get_max_threads()
    with faiss_threads(1):
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == before
    with pytest.raises(ClusteringInputError, match="threads"):
        kmeans(np.ones((4, 2), dtype=np.float32), 2, threads=0)


def test_more_clusters_than_points_is_a_clear_error() -> None:
    with pytest.raises(ClusteringInputError, match=r"k=10 clusters requested but only 5 vectors"):
        kmeans(np.random.default_rng(0).normal(size=(5, 3)), 10)


def test_nan_rows_are_named() -> None:
    vectors = np.random.default_rng(0).normal(size=(50, 4))
    vectors[7, 1] = np.nan
    vectors[31, 0] = np.inf
    with pytest.raises(ClusteringInputError, match=r"2 row\(s\) contain NaN or inf.*\[7, 31\]"):
        kmeans(vectors, 3)


def test_zero_rows_cannot_be_spherical_and_bad_options_are_named() -> None:
    vectors = np.random.default_rng(0).normal(size=(20, 4))
    vectors[4] = 0.0
    with pytest.raises(ClusteringInputError, match=r"zero norm.*\[4\]"):
        kmeans(vectors, 3)
    with pytest.raises(ClusteringInputError, match="assignment must be one of"):
        kmeans(vectors, 3, assignment="fast", spherical=False)
    with pytest.raises(ClusteringInputError, match=r"\[n, d\]"):
        kmeans(np.ones(5), 2)


def test_apportion_is_proportional_and_bounded() -> None:
    sizes = np.array([100, 1, 0, 50, 3, 846])
    shares = apportion(100, sizes)
    assert shares.sum() == 100
    assert shares[2] == 0 and (shares[sizes > 0] >= 1).all() and (shares <= sizes).all()
    assert shares[5] > shares[0] > shares[3]
    with pytest.raises(ClusteringInputError, match="cannot split"):
        apportion(3, sizes)


def test_rows_too_large_or_small_for_float32_squares_are_normalised_not_zeroed() -> None:
    from sv_kedro.clustering.kmeans import prepare_vectors

    x, _ = gaussian_clusters(200, 16, 4, 0.1)
    unit = prepare_vectors(x, spherical=True)
    for scale in (1e30, 1e-30):  # squares overflow to inf / underflow to 0 in float32
        scaled = (x.astype(np.float64) * scale).astype(np.float32)
        np.testing.assert_allclose(prepare_vectors(scaled, spherical=True), unit, atol=1e-5)
    with pytest.raises(ClusteringInputError, match=r"zero norm .* \[3\]"):
        prepare_vectors(np.vstack([x[:3], np.zeros((1, 16), np.float32)]), spherical=True)


def test_negative_seed_and_empty_training_sample_are_refused_by_name() -> None:
    x, _ = gaussian_clusters(200, 8, 4, 0.1)
    # faiss draws a random seed for a negative one: two runs would differ.
    with pytest.raises(ClusteringInputError, match="seed must be >= 0, got -1"):
        kmeans(x, 8, seed=-1)
    with pytest.raises(ClusteringInputError, match="max_points_per_centroid must be >= 1"):
        kmeans(x, 8, max_points_per_centroid=0)
