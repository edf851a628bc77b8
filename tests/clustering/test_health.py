"""Pseudo-label health: NMI, purity, sizes, histogram and the per-round table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from sklearn.metrics import normalized_mutual_info_score

from sv_kedro.clustering.health import cluster_health, cluster_size_histogram_figure
from sv_kedro.clustering.kmeans import ClusteringInputError


def test_hand_computed_purity_and_sizes() -> None:
    # Clusters: 0 -> {a, a, b}, 1 -> {b, b}, 2 -> {c} (a singleton).
    pseudo = [0, 0, 0, 1, 1, 2]
    truth = ["a", "a", "b", "b", "b", "c"]
    report = cluster_health(pseudo, truth)
    assert report["n_clusters"] == 3 and report["n_singletons"] == 1
    assert report["purity"] == pytest.approx(5 / 6)  # 2 + 2 + 1 majority items
    assert report["inverse_purity"] == pytest.approx(5 / 6)  # a:2, b:2 (cluster 1), c:1
    assert report["nmi"] == pytest.approx(normalized_mutual_info_score(truth, pseudo))
    assert report["size_max"] == 3 and report["size_min"] == 1 and report["size_median"] == 2
    assert report["n_true_speakers"] == 3


def test_without_truth_only_sizes_are_reported() -> None:
    report = cluster_health(np.array([5, 5, 9, 9, 9, 11]))
    assert "nmi" not in report and "purity" not in report
    assert report["n_items"] == 6 and report["largest_cluster_fraction"] == pytest.approx(0.5)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ClusteringInputError, match="3 pseudo-labels but 2 true labels"):
        cluster_health([0, 1, 1], ["a", "b"])
    with pytest.raises(ClusteringInputError, match=r"true_labels has 1 missing.*\[1\]"):
        cluster_health([0, 1, 1], pd.Series(["a", None, "b"]))
    with pytest.raises(ClusteringInputError, match="pseudo_labels is empty"):
        cluster_health([])


def test_histogram_figure() -> None:
    labels = np.repeat(np.arange(50), np.random.default_rng(0).integers(1, 40, 50))
    figure = cluster_size_histogram_figure(labels)
    assert isinstance(figure, Figure)
    (axes,) = figure.axes
    assert sum(patch.get_height() for patch in axes.patches) == 50  # one count per cluster
    assert "50 clusters" in axes.get_title()
