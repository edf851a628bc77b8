"""k-means -> AHC pseudo-labels, and the manifest-aligned pseudo-label table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import normalized_mutual_info_score

from sv_kedro.clustering.agglomerative import agglomerate_centroids
from sv_kedro.clustering.kmeans import ClusteringInputError
from sv_kedro.clustering.pseudo_labels import (
    PSEUDO_LABEL_COLUMNS,
    ClusterCountSearch,
    apply_pseudo_speakers,
    cluster_pseudo_labels,
    pseudo_label_table,
)
from sv_kedro.clustering.settings import checked_search
from sv_kedro.scoring.embedding_table import EmbeddingError, EmbeddingTable


def speakers_with_sessions(
    n_speakers: int, n: int, dim: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Each speaker has 4 sessions offset from its centre: k-means over-clusters sessions and
    AHC has to merge them back into speakers."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_speakers, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sessions = centres[:, None, :] + 0.12 * rng.normal(size=(n_speakers, 4, dim))
    speaker = rng.integers(0, n_speakers, n)
    session = rng.integers(0, 4, n)
    vectors = sessions[speaker, session] + 0.06 * rng.normal(size=(n, dim))
    return vectors.astype(np.float32), speaker


def test_kmeans_then_ahc_recovers_speakers() -> None:
    vectors, speaker = speakers_with_sessions(40, 4000)
    result = cluster_pseudo_labels(vectors, k1=200, k2=40, seed=0)
    assert normalized_mutual_info_score(speaker, result.labels) > 0.95
    assert np.unique(result.labels).size == 40
    assert result.centroids.shape == (200, 32) and result.k2_centroids.shape == (40, 32)
    # Each utterance takes its k-means centroid's final label.
    per_centroid = pd.Series(result.labels).groupby(result.kmeans_labels).nunique()
    assert (per_centroid == 1).all()
    assert set(result.timings) == {"kmeans_s", "ahc_s"}


def test_two_level_kmeans_and_weighted_ahc_also_recover_speakers() -> None:
    vectors, speaker = speakers_with_sessions(40, 4000, seed=1)
    result = cluster_pseudo_labels(
        vectors, 200, 40, assignment="two_level", weight_by_size=True, linkage="average"
    )
    assert result.kmeans_method == "two_level"
    assert normalized_mutual_info_score(speaker, result.labels) > 0.95


def test_k1_equal_to_n_clusters_the_vectors_themselves() -> None:
    vectors, speaker = speakers_with_sessions(20, 400, seed=2)
    result = cluster_pseudo_labels(vectors, k1=len(vectors), k2=20, seed=0)
    assert result.kmeans_method == "none (k1 = n)"
    np.testing.assert_array_equal(result.kmeans_labels, np.arange(len(vectors)))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(result.centroids, unit, atol=1e-6)
    direct = agglomerate_centroids(unit, 20, seed=0)
    np.testing.assert_array_equal(result.labels, direct)
    assert normalized_mutual_info_score(speaker, result.labels) > 0.95


def test_seeded_pseudo_labels_are_reproducible() -> None:
    vectors, _ = speakers_with_sessions(20, 2000, seed=2)
    first = cluster_pseudo_labels(vectors, 80, 20, seed=5, assignment="two_level")
    second = cluster_pseudo_labels(vectors, 80, 20, seed=5, assignment="two_level")
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.kmeans_labels, second.kmeans_labels)


def make_table(n_speakers: int = 10, n: int = 600) -> tuple[EmbeddingTable, pd.DataFrame]:
    vectors, speaker = speakers_with_sessions(n_speakers, n, seed=3)
    keys = [f"spk{s:03d}/vid{i % 7}/{i:05d}.wav" for i, s in enumerate(speaker)]
    manifest = pd.DataFrame({"utt_id": keys, "speaker": [k.split("/")[0] for k in keys]})
    return EmbeddingTable(keys, vectors), manifest


def test_table_is_aligned_with_the_manifest() -> None:
    embeddings, manifest = make_table()
    # A shuffled manifest with fewer utterances than the embedding table.
    manifest = manifest.sample(frac=0.8, random_state=0).reset_index(drop=True)
    table, result = pseudo_label_table(embeddings, manifest, k1=40, k2=10, seed=0)
    assert list(table.columns) == PSEUDO_LABEL_COLUMNS
    assert table["utt_id"].tolist() == manifest["utt_id"].tolist()
    assert table["speaker_index"].max() + 1 == table["speaker_index"].nunique()
    assert normalized_mutual_info_score(manifest["speaker"], table["pseudo_label"]) > 0.95
    np.testing.assert_array_equal(table["kmeans_label"].to_numpy(), result.kmeans_labels)
    relabelled = apply_pseudo_speakers(manifest, table)
    assert relabelled["true_speaker"].tolist() == manifest["speaker"].tolist()
    assert relabelled["speaker"].str.fullmatch(r"pseudo\d{5}").all()
    assert "true_speaker" not in manifest.columns  # the input is not modified


def test_missing_embeddings_and_nan_vectors_are_named() -> None:
    embeddings, manifest = make_table()
    extra = pd.concat(
        [manifest, pd.DataFrame({"utt_id": ["spk999/x/1.wav"], "speaker": ["spk999"]})]
    )
    with pytest.raises(EmbeddingError, match=r"spk999/x/1\.wav"):
        pseudo_label_table(embeddings, extra, 10, 5)
    broken = embeddings.vectors.copy()
    broken[3, 0] = np.nan
    with pytest.raises(EmbeddingError, match=embeddings.keys_[3]):
        pseudo_label_table(EmbeddingTable(embeddings.keys_, broken), manifest, 10, 5)
    with pytest.raises(ClusteringInputError, match="repeats utt_id"):
        pseudo_label_table(embeddings, pd.concat([manifest, manifest.iloc[:2]]), 10, 5)
    with pytest.raises(ClusteringInputError, match="no pseudo-label"):
        table, _ = pseudo_label_table(embeddings, manifest.iloc[:300], 10, 5)
        apply_pseudo_speakers(manifest, table)


def test_cluster_counts_are_checked() -> None:
    vectors, _ = speakers_with_sessions(5, 100)
    with pytest.raises(ClusteringInputError, match="k2=60 clusters requested but only 50"):
        cluster_pseudo_labels(vectors, 50, 60)
    with pytest.raises(ClusteringInputError, match="k1=200 clusters requested but only 100"):
        cluster_pseudo_labels(vectors, 200, 10)
    with pytest.raises(ClusteringInputError, match="k2 must be a count or 'auto'"):
        cluster_pseudo_labels(vectors, 50, "many")


def test_auto_k2_finds_the_speakers_through_kmeans_without_reading_a_count() -> None:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(40, 32))
    speaker = rng.integers(0, 40, 4000)
    vectors = (centres[speaker] + 0.3 * rng.normal(size=(4000, 32))).astype(np.float32)
    search = ClusterCountSearch(min_k2=5, max_k2=150, points=20)
    result = cluster_pseudo_labels(vectors, k1=200, k2="auto", seed=0, k2_search=search)
    found = np.unique(result.labels).size
    assert found == result.k2_centroids.shape[0]
    assert found == 43  # the grid steps 36 -> 43 around the 40 speakers
    assert normalized_mutual_info_score(speaker, result.labels) > 0.95
    scores = result.k2_scores
    assert scores is not None and scores["k"].min() == 5 and scores["k"].max() == 150
    assert scores.set_index("k").loc[found, "silhouette"] == scores["silhouette"].max()
    assert "k2_search_s" in result.timings
    # A fixed count gives the same clustering as cutting the same AHC there.
    fixed = cluster_pseudo_labels(vectors, k1=200, k2=found, seed=0)
    assert np.array_equal(fixed.labels, result.labels) and fixed.k2_scores is None


def test_auto_k2_search_stays_within_k1_and_half_the_utterances() -> None:
    assert ClusterCountSearch(min_k2=2, points=4).candidates(k1=1000, n=100) == [2, 6, 17, 50]
    assert ClusterCountSearch(min_k2=10, max_k2=5000, points=3).candidates(300, 10_000) == [
        10,
        55,
        300,
    ]


def test_k2_search_from_settings_names_bad_values() -> None:
    assert checked_search({"min": "3", "max": None}, "clustering.k2_search") == ClusterCountSearch(
        min_k2=3
    )
    for settings, message in [
        ({"min": 10, "max": 5}, r"k2_search\.max=5 is below clustering\.k2_search\.min=10"),
        ({"min": "abc"}, r"k2_search\.min must be an integer, got 'abc'"),
        ({"sample": 0}, r"k2_search\.sample must be >= 1"),
        ({"points": -2}, r"k2_search\.points must be >= 1"),
    ]:
        with pytest.raises(ClusteringInputError, match=message):
            checked_search(settings, "clustering.k2_search")
