"""PCA whitening before clustering."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from sv_kedro.clustering.kmeans import ClusteringInputError
from sv_kedro.clustering.pseudo_labels import cluster_pseudo_labels
from sv_kedro.clustering.whitening import whiten_vectors


def test_whitened_vectors_have_zero_mean_and_identity_covariance() -> None:
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(8, 8)) * np.geomspace(10.0, 0.1, 8)
    vectors = (rng.normal(size=(5000, 8)) @ mixing + 3.0).astype(np.float32)
    white = whiten_vectors(vectors)
    assert white.dtype == np.float32 and white.shape == (5000, 8)
    np.testing.assert_allclose(white.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(white.T, bias=True), np.eye(8), atol=1e-3)


def test_rank_deficient_directions_are_dropped_not_amplified() -> None:
    rng = np.random.default_rng(1)
    # 10 points in 32 dimensions span at most 9 centred directions.
    vectors = rng.normal(size=(10, 32)).astype(np.float32)
    white = whiten_vectors(vectors)
    assert white.shape == (10, 9)
    assert np.isfinite(white).all() and np.abs(white).max() < 10


def test_bad_input_is_refused() -> None:
    with pytest.raises(ClusteringInputError, match="n >= 2"):
        whiten_vectors(np.ones((1, 4), dtype=np.float32))
    with pytest.raises(ClusteringInputError, match="the same"):
        whiten_vectors(np.ones((5, 4), dtype=np.float32))


def test_whitening_lets_speakers_win_over_a_dominant_nuisance_direction() -> None:
    """Two recording channels shift every vector far along one axis; speakers differ along
    the others by less. Unwhitened AHC splits by channel first; whitened, by speaker."""
    rng = np.random.default_rng(2)
    n_speakers, dim, n = 12, 24, 1200
    centres = rng.normal(size=(n_speakers, dim))
    centres[:, 0] = 0.0
    speaker = rng.integers(0, n_speakers, n)
    channel = rng.integers(0, 2, n)
    vectors = centres[speaker] + 0.45 * rng.normal(size=(n, dim))
    vectors[:, 0] += 12.0 * channel + 1.5 * rng.normal(size=n)
    vectors = vectors.astype(np.float32)
    plain = cluster_pseudo_labels(vectors, len(vectors), n_speakers, spherical=False).labels
    white = cluster_pseudo_labels(
        vectors, len(vectors), n_speakers, spherical=False, whiten=True
    ).labels
    plain_nmi = normalized_mutual_info_score(speaker, plain)
    white_nmi = normalized_mutual_info_score(speaker, white)
    assert white_nmi > 0.9 and white_nmi > plain_nmi + 0.1, (plain_nmi, white_nmi)


def test_whitening_is_skipped_with_a_warning_where_it_would_put_all_vectors_equally_far_apart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 24 vectors of 4 tight speakers in 64 dimensions: whitening keeps their 23 centred
    # directions at unit variance, which puts every pair at the same distance.
    rng = np.random.default_rng(0)
    speaker = np.repeat(np.arange(4), 6)
    vectors = (rng.normal(size=(4, 64))[speaker] + 0.05 * rng.normal(size=(24, 64))).astype(
        np.float32
    )
    white = whiten_vectors(vectors)
    distances = np.linalg.norm(white[:, None] - white[None], axis=2)[np.triu_indices(24, 1)]
    assert np.ptp(distances) < 1e-3 * distances.mean()  # why clustering them is arbitrary
    with caplog.at_level(logging.WARNING, logger="sv_kedro.clustering.pseudo_labels"):
        skipped = cluster_pseudo_labels(vectors, 24, 4, whiten=True, seed=0).labels
    assert "clustering 24 vectors without whitening: they span only 23 directions" in caplog.text
    labels = cluster_pseudo_labels(vectors, 24, 4, whiten=False, seed=0).labels
    assert normalized_mutual_info_score(speaker, labels) == pytest.approx(1.0)
    np.testing.assert_array_equal(skipped, labels)
    # With more vectors than dimensions, whitening leaves distances that differ.
    more = rng.normal(size=(120, 16)).astype(np.float32)
    assert np.unique(cluster_pseudo_labels(more, 120, 4, whiten=True, seed=0).labels).size == 4
