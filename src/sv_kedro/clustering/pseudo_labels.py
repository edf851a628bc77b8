"""Pseudo-labels for unlabeled utterances: k-means to ``k1`` clusters, AHC of the centroids to
``k2``; each utterance takes its centroid's final label (Miara, Lepage & Dehak 2024: 50,000
then 7,500 on VoxCeleb2).

``cluster_pseudo_labels`` runs both stages on a matrix; ``pseudo_label_table`` does it for an
``EmbeddingTable`` aligned with a manifest and returns the table the training pipeline reads.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sv_kedro.clustering.agglomerative import agglomeration_path
from sv_kedro.clustering.cluster_count import choose_cluster_count, count_grid
from sv_kedro.clustering.kmeans import (
    ClusteringInputError,
    KMeansResult,
    check_cluster_count,
    kmeans,
    prepare_vectors,
)
from sv_kedro.clustering.whitening import whiten_vectors
from sv_kedro.scoring.embedding_table import EmbeddingTable

log = logging.getLogger(__name__)

PSEUDO_LABEL_COLUMNS = ["utt_id", "pseudo_label", "kmeans_label", "speaker_index"]


@dataclass(frozen=True)
class PseudoLabelResult:
    """``labels`` ``[n]`` final cluster (``0..k2-1``), ``kmeans_labels`` ``[n]`` (``0..k1-1``),
    ``centroids`` ``[k1, d]`` k-means centroids, ``k2_centroids`` ``[k2, d]`` means of the
    (L2-normalised when spherical) points of each final cluster (zero rows for a final cluster
    that received no points), ``timings`` seconds per stage, ``kmeans_method`` as resolved."""

    labels: np.ndarray
    kmeans_labels: np.ndarray
    centroids: np.ndarray
    k2_centroids: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    kmeans_inertia: float = 0.0
    kmeans_method: str = ""
    k2_scores: pd.DataFrame | None = None  # [k, silhouette] per count tried, with k2 "auto"


@dataclass(frozen=True)
class ClusterCountSearch:
    """Where ``k2: auto`` looks: about ``points`` counts from ``min_k2`` to ``max_k2`` (None:
    ``k1``, capped at half the utterances), each scored by the cosine silhouette of the
    utterances, over a seeded ``sample`` of them (``cluster_count.choose_cluster_count``)."""

    min_k2: int = 2
    max_k2: int | None = None
    points: int = 24
    sample: int | None = 20_000

    def candidates(self, k1: int, n: int) -> list[int]:
        high = min(k1, max(n // 2, 2)) if self.max_k2 is None else min(self.max_k2, k1)
        return count_grid(min(self.min_k2, high), high, self.points)


def cluster_pseudo_labels(
    vectors: np.ndarray,
    k1: int,
    k2: int | str,
    *,
    n_iter: int = 20,
    seed: int = 0,
    spherical: bool = True,
    assignment: str = "auto",
    max_points_per_centroid: int = 256,
    linkage: str = "ward",
    weight_by_size: bool = False,
    knn: int = 16,
    threads: int | None = None,
    whiten: bool = False,
    k2_search: ClusterCountSearch | None = None,
) -> PseudoLabelResult:
    """k-means of ``vectors`` ``[n, d]`` to ``k1`` clusters, then AHC of the centroids to ``k2``.

    ``k2="auto"`` reads no count: one AHC runs to the smallest count of ``k2_search`` and is
    cut at each of its counts; the count whose utterance clustering has the highest cosine
    silhouette wins (``k2_scores`` holds every count's score).

    ``weight_by_size`` gives each centroid its cluster size as AHC weight (the original recipe
    weighs centroids equally); clusters that k-means left empty are then merged with weight
    ~0 (a tiny positive value) so every centroid still gets a label.

    ``k1 == n`` skips k-means: every vector is its own first-level cluster and AHC runs on the
    vectors themselves. The k-means stage only exists to make AHC affordable on a million
    utterances; on a few thousand, its early merges of nearby utterances cost purity
    (speechocean762, 1,000 utterances: NMI 0.76 against 0.73 with k1 = 300).

    ``whiten`` centres and PCA-whitens the (L2-normalised, when spherical) vectors before
    both stages (``whitening.whiten_vectors``); ``k2_centroids`` are then in that space.
    """
    started = time.perf_counter()
    x = clustering_vectors(vectors, spherical=spherical, whiten=whiten)
    timings = {"whiten_s": time.perf_counter() - started} if whiten else {}
    check_cluster_count(k1, x.shape[0], "k1")
    auto = k2 == "auto"
    if not auto:
        if isinstance(k2, str):
            raise ClusteringInputError(f"k2 must be a count or 'auto', got {k2!r}")
        check_cluster_count(k2, k1, "k2")
    started = time.perf_counter()
    if k1 == x.shape[0]:
        km = KMeansResult(
            centroids=np.array(x, dtype=np.float32, copy=True),
            assignments=np.arange(k1, dtype=np.int64),
            inertia=0.0,
            method="none (k1 = n)",
        )
    else:
        km = kmeans(
            x,
            k1,
            n_iter=n_iter,
            seed=seed,
            spherical=spherical,  # x is unit-norm already, so kmeans uses it without a copy
            max_points_per_centroid=max_points_per_centroid,
            assignment=assignment,
            threads=threads,
        )
    centroids = km.centroids
    if spherical:
        centroids = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    kmeans_done = time.perf_counter()
    weights = None
    if weight_by_size:
        weights = np.maximum(np.bincount(km.assignments, minlength=k1), 1e-6).astype(np.float64)
    search = k2_search or ClusterCountSearch()
    candidates = search.candidates(k1, x.shape[0]) if auto else [int(k2)]
    path = agglomeration_path(
        centroids, min(candidates), linkage, weights=weights, knn=knn, seed=seed, threads=threads
    )
    ahc_done = time.perf_counter()
    scores = None
    if auto:
        choice = choose_cluster_count(
            x,
            lambda k: path.labels(k)[km.assignments],
            candidates,
            sample=search.sample,
            seed=seed,
        )
        k2, scores = choice.k, choice.scores
        timings["k2_search_s"] = time.perf_counter() - ahc_done
    labels = path.labels(int(k2))[km.assignments]
    return PseudoLabelResult(
        labels=labels,
        kmeans_labels=km.assignments,
        centroids=centroids.astype(np.float32, copy=False),
        k2_centroids=cluster_means(x, labels, int(k2)),
        timings={**timings, "kmeans_s": kmeans_done - started, "ahc_s": ahc_done - kmeans_done},
        kmeans_inertia=km.inertia,
        kmeans_method=km.method,
        k2_scores=scores,
    )


def clustering_vectors(vectors: np.ndarray, spherical: bool, whiten: bool) -> np.ndarray:
    """The ``[n, r]`` float32 vectors both clustering stages see: validated, L2-normalised
    when ``spherical``, and with ``whiten`` centred and PCA-whitened (then normalised again)."""
    x = prepare_vectors(vectors, spherical=spherical)
    if not whiten:
        return x
    white = whiten_vectors(x)
    if white.shape[1] >= x.shape[0] - 1:
        # n centred vectors span at most n - 1 directions; with all of them at unit variance
        # every pair is equally far apart (sqrt(2n)), so any clustering of them would be
        # arbitrary. Small sets (a smoke test, a tiny corpus) cluster unwhitened instead.
        log.warning(
            "clustering %d vectors without whitening: they span only %d directions, and "
            "whitening all of them would put every pair equally far apart "
            "(clustering.whiten needs more vectors than embedding dimensions)",
            x.shape[0],
            white.shape[1],
        )
        return x
    return prepare_vectors(white, spherical=spherical)


def cluster_means(x: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Mean ``[n_clusters, d]`` of the rows of ``x`` ``[n, d]`` in each cluster (zero if empty)."""
    n = x.shape[0]
    membership = sp.csr_matrix(
        (np.ones(n, dtype=np.float32), (labels, np.arange(n))), shape=(n_clusters, n)
    )
    sums = np.asarray(membership @ x, dtype=np.float32)
    counts = np.bincount(labels, minlength=n_clusters)
    return sums / np.maximum(counts, 1)[:, None]


def manifest_vectors(embeddings: EmbeddingTable, manifest: pd.DataFrame) -> np.ndarray:
    """Embeddings ``[n, d]`` float32 in manifest row order.

    Raises ``EmbeddingError`` naming utterances without an embedding or with NaN/inf vectors,
    and ``ClusteringInputError`` for a manifest without ``utt_id`` or with duplicate ids.
    """
    if "utt_id" not in manifest.columns:
        raise ClusteringInputError(
            f"manifest has no 'utt_id' column (columns: {list(manifest.columns)})"
        )
    utt_ids = manifest["utt_id"].astype(str).tolist()
    duplicated = manifest["utt_id"][manifest["utt_id"].duplicated()].unique().tolist()
    if duplicated:
        raise ClusteringInputError(f"manifest repeats utt_id(s), e.g. {duplicated[:5]}")
    aligned = embeddings.subset(utt_ids)  # raises naming utt_ids without embeddings
    aligned.check_usable()  # raises naming the utt_ids whose vectors hold NaN/inf or zeros
    return np.asarray(aligned.vectors, dtype=np.float32)


def pseudo_label_table(
    embeddings: EmbeddingTable,
    manifest: pd.DataFrame,
    k1: int,
    k2: int | str,
    **cluster_options: object,
) -> tuple[pd.DataFrame, PseudoLabelResult]:
    """Pseudo-label every manifest utterance.

    Returns ``DataFrame[utt_id, pseudo_label, kmeans_label, speaker_index]`` in manifest row
    order (``speaker_index`` renumbers the pseudo-labels actually used to ``0..K-1`` for a
    classification head) and the full ``PseudoLabelResult``. ``cluster_options`` go to
    ``cluster_pseudo_labels``. The manifest's ``speaker`` column is never read here.
    """
    vectors = manifest_vectors(embeddings, manifest)
    result = cluster_pseudo_labels(vectors, k1, k2, **cluster_options)  # type: ignore[arg-type]
    return pseudo_label_frame(manifest["utt_id"].astype(str), result), result


def pseudo_label_frame(utt_ids: pd.Series | list[str], result: PseudoLabelResult) -> pd.DataFrame:
    """The pseudo-label table for ``utt_ids`` (aligned with ``result.labels``)."""
    labels = np.asarray(result.labels, dtype=np.int64)
    if len(utt_ids) != labels.shape[0]:
        raise ClusteringInputError(f"{len(utt_ids)} utt_ids for {labels.shape[0]} labels")
    _, speaker_index = np.unique(labels, return_inverse=True)
    return pd.DataFrame(
        {
            "utt_id": pd.Series(list(utt_ids), dtype=str),
            "pseudo_label": labels,
            "kmeans_label": np.asarray(result.kmeans_labels, dtype=np.int64),
            "speaker_index": speaker_index.astype(np.int64),
        }
    )


def apply_pseudo_speakers(manifest: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``manifest`` whose ``speaker`` is the pseudo speaker (``pseudo00042``, from
    ``speaker_index``); the original column is kept as ``true_speaker`` for reports only.

    Raises naming manifest utterances that the table does not label.
    """
    by_utt = table.set_index("utt_id")["speaker_index"]
    missing = manifest.loc[~manifest["utt_id"].isin(by_utt.index), "utt_id"].tolist()
    if missing:
        raise ClusteringInputError(
            f"{len(missing)} manifest utterance(s) have no pseudo-label, e.g. {missing[:5]}"
        )
    labelled = manifest.copy()
    if "speaker" in labelled.columns:
        labelled["true_speaker"] = labelled["speaker"]
    index = by_utt.loc[labelled["utt_id"]].to_numpy()
    labelled["speaker"] = [f"pseudo{i:05d}" for i in index]
    return labelled


__all__ = [
    "PSEUDO_LABEL_COLUMNS",
    "ClusterCountSearch",
    "PseudoLabelResult",
    "apply_pseudo_speakers",
    "cluster_means",
    "cluster_pseudo_labels",
    "manifest_vectors",
    "pseudo_label_frame",
    "pseudo_label_table",
]
