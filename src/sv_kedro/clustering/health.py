"""How healthy are the pseudo-labels: NMI and purity against true speakers (where known),
cluster count, singletons and size statistics; a size histogram; one table row per round.

True speaker labels only ever feed this report — never training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from sv_kedro.clustering.kmeans import ClusteringInputError


def cluster_health(
    pseudo_labels: Sequence[object] | np.ndarray | pd.Series,
    true_labels: Sequence[object] | np.ndarray | pd.Series | None = None,
) -> dict[str, float]:
    """Statistics of a clustering ``[n]`` (any hashable labels).

    Always: ``n_items``, ``n_clusters``, ``n_singletons``, ``size_min/max/mean/median``,
    ``size_p10/p90``, ``largest_cluster_fraction``. With ``true_labels`` ``[n]``: ``nmi``
    (arithmetic normalisation, as scikit-learn), ``purity`` (share of items in their cluster's
    majority speaker), ``inverse_purity`` (share of items in their speaker's majority cluster)
    and ``n_true_speakers``.
    """
    labels = _codes(pseudo_labels, "pseudo_labels")
    sizes = np.bincount(labels)
    sizes = sizes[sizes > 0]
    report: dict[str, float] = {
        "n_items": float(labels.size),
        "n_clusters": float(sizes.size),
        "n_singletons": float(int((sizes == 1).sum())),
        "size_min": float(sizes.min()),
        "size_max": float(sizes.max()),
        "size_mean": float(sizes.mean()),
        "size_median": float(np.median(sizes)),
        "size_p10": float(np.percentile(sizes, 10)),
        "size_p90": float(np.percentile(sizes, 90)),
        "largest_cluster_fraction": float(sizes.max() / labels.size),
    }
    if true_labels is not None:
        truth = _codes(true_labels, "true_labels")
        if truth.size != labels.size:
            raise ClusteringInputError(f"{labels.size} pseudo-labels but {truth.size} true labels")
        table = contingency_matrix(truth, labels, sparse=True).tocsc()  # [speakers, clusters]
        report["nmi"] = float(normalized_mutual_info_score(truth, labels))
        report["purity"] = float(table.max(axis=0).sum() / labels.size)
        report["inverse_purity"] = float(table.tocsr().max(axis=1).sum() / labels.size)
        report["n_true_speakers"] = float(np.unique(truth).size)
    return report


def _codes(values: Sequence[object] | np.ndarray | pd.Series, name: str) -> np.ndarray:
    series = pd.Series(
        np.asarray(values).reshape(-1) if not isinstance(values, pd.Series) else values
    )
    if series.empty:
        raise ClusteringInputError(f"{name} is empty")
    missing = np.flatnonzero(series.isna().to_numpy())
    if missing.size:
        raise ClusteringInputError(
            f"{name} has {missing.size} missing value(s), e.g. at positions {missing[:10].tolist()}"
        )
    codes, _ = pd.factorize(series, sort=False)
    return codes.astype(np.int64)


def cluster_size_histogram_figure(
    labels: Sequence[object] | np.ndarray | pd.Series, title: str = "Pseudo-label cluster sizes"
) -> Figure:
    """Histogram of cluster sizes (log-spaced bins, log counts) as a standalone ``Figure``."""
    sizes = np.bincount(_codes(labels, "labels"))
    sizes = sizes[sizes > 0]
    figure = Figure(figsize=(6.0, 4.0), layout="constrained")
    axes = figure.add_subplot()
    top = max(int(sizes.max()), 2)
    bins = np.unique(np.round(np.geomspace(1, top + 1, num=min(40, top + 1))).astype(int))
    axes.hist(sizes, bins=bins, color="tab:blue", edgecolor="white")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("utterances per cluster")
    axes.set_ylabel("clusters")
    singletons = int((sizes == 1).sum())
    axes.set_title(
        f"{title}\n{sizes.size} clusters, median {np.median(sizes):g}, {singletons} singletons"
    )
    return figure
