"""Checked clustering settings (``ssl_pseudo_labeling.clustering``), naming the key at fault.

The pipeline's clustering node runs after DINO has trained, so a value it would refuse
(``k1=abc``, ``linkage: single``, ``k2_search.min`` above ``max``) should be refused when
the session starts: :func:`checked_clustering` checks what the parameters alone decide
(the pipeline calls it then). What depends on the number of utterances (``k2`` above it) is
checked by :func:`resolve_counts` when the node runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sv_kedro.clustering.agglomerative import LINKAGES
from sv_kedro.clustering.kmeans import ASSIGNMENTS, ClusteringInputError
from sv_kedro.clustering.pseudo_labels import ClusterCountSearch, cluster_pseudo_labels
from sv_kedro.utils.params import as_int, check_keys, coerce_scalars

log = logging.getLogger(__name__)

CLUSTER_OPTIONS = (
    "n_iter",
    "seed",
    "spherical",
    "assignment",
    "max_points_per_centroid",
    "linkage",
    "weight_by_size",
    "knn",
    "threads",
    "whiten",
)
CLUSTERING_KEYS = ("k1", "k2", "k2_search", *CLUSTER_OPTIONS)
SEARCH_KEYS = {"min": "min_k2", "max": "max_k2", "points": "points", "sample": "sample"}
WHERE = "ssl_pseudo_labeling.clustering"


@dataclass(frozen=True)
class ClusteringSettings:
    """``k1`` (None: every utterance), ``k2`` (a count or ``"auto"``), the ``k2: auto``
    search and the keyword options of ``cluster_pseudo_labels``, all checked."""

    k1: int | None
    k2: int | str
    search: ClusterCountSearch
    options: dict[str, Any]


def checked_clustering(clustering: object, where: str = WHERE) -> ClusteringSettings:
    """``clustering`` checked and converted; ``ValueError`` (a ``ClusteringInputError``)
    naming ``<where>.<key>`` for a missing, misspelt or out-of-range value."""
    if not isinstance(clustering, Mapping):
        raise ClusteringInputError(f"{where} must be a mapping, got {clustering!r}")
    check_keys(clustering, CLUSTERING_KEYS, where, ClusteringInputError)
    for key in ("k1", "k2"):
        if key not in clustering:
            raise ClusteringInputError(f"{where}.{key} is missing (a cluster count; see README)")
    k1 = clustering["k1"]
    if k1 is not None:
        k1 = _at_least(as_int(k1, f"{where}.k1", ClusteringInputError), 1, f"{where}.k1")
    k2 = clustering["k2"]
    if k2 != "auto":
        try:
            k2 = as_int(k2, f"{where}.k2", ClusteringInputError)
        except ClusteringInputError:
            raise ClusteringInputError(
                f"{where}.k2 must be an integer or 'auto', got {k2!r}"
            ) from None
        _at_least(k2, 1, f"{where}.k2")
        if k1 is not None and k2 > k1:
            raise ClusteringInputError(
                f"{where}.k2={k2} is more than {where}.k1={k1}: AHC can only merge the k1 "
                "k-means clusters, not split them"
            )
    search = checked_search(clustering.get("k2_search"), f"{where}.k2_search")
    if clustering.get("k2_search") and k2 != "auto":
        log.warning("%s.k2_search is ignored: k2 is %s, not 'auto'", where, k2)
    options = {k: v for k, v in clustering.items() if k in CLUSTER_OPTIONS}
    options = coerce_scalars(cluster_pseudo_labels, options, where, ClusteringInputError)
    for key in ("n_iter", "knn", "max_points_per_centroid", "threads"):
        if options.get(key) is not None:
            _at_least(options[key], 1, f"{where}.{key}")
    if options.get("seed") is not None:
        _at_least(options["seed"], 0, f"{where}.seed")  # faiss draws a random seed for < 0
    for key, allowed in (("linkage", LINKAGES), ("assignment", ASSIGNMENTS)):
        if key in options and options[key] not in allowed:
            raise ClusteringInputError(
                f"{where}.{key} must be one of {allowed}, got {options[key]!r}"
            )
    return ClusteringSettings(k1, k2, search, options)


def resolve_counts(
    settings: ClusteringSettings, n_utterances: int, where: str = WHERE
) -> tuple[int, int | str]:
    """``(k1, k2)`` for ``n_utterances``: ``k1`` null or above the count becomes the count
    (AHC on the utterances themselves, logged when it was a number); a ``k2`` not below the
    count, or a ``k2: auto`` search that cannot reach its ``min``, is refused."""
    k1 = n_utterances
    if settings.k1 is not None:
        if settings.k1 > n_utterances:
            log.warning(
                "%s.k1=%d is more than the %d utterances: clustering them without k-means, "
                "as k1: null does",
                where,
                settings.k1,
                n_utterances,
            )
        k1 = min(settings.k1, n_utterances)
    k2 = settings.k2
    if k2 == "auto":
        highest = settings.search.candidates(k1, n_utterances)[-1]
        if settings.search.min_k2 > highest:
            raise ClusteringInputError(
                f"{where}.k2_search.min={settings.search.min_k2} is above the largest count the "
                f"search can reach here, {highest} (k1={k1}, at most half of the "
                f"{n_utterances} utterances unless k2_search.max says otherwise)"
            )
    elif int(k2) >= n_utterances:
        # As many pseudo-speakers as utterances (what clamping gave): every utterance its
        # own class, so a round has nothing to learn.
        raise ClusteringInputError(
            f"{where}.k2={k2} pseudo-speakers requested but there are only {n_utterances} "
            "utterances to cluster: each would be its own pseudo-speaker"
        )
    return k1, k2


def check_speakers_fill_a_batch(
    n_speakers: int, data: Mapping[str, Any], batch_key: str, speakers_from: str
) -> None:
    """Refuse ``n_speakers`` pseudo-speakers fewer than ``data.batch_size`` when the loader
    packs batches of distinct speakers (not with ``pairs`` or ``shard_dir``); a batch size
    that is not a number is left to the loader's own check."""
    if not isinstance(data, Mapping) or data.get("pairs") or data.get("shard_dir"):
        return
    try:
        batch_size = as_int(data.get("batch_size"), batch_key)
    except ValueError:
        return
    if n_speakers < batch_size:
        raise ClusteringInputError(
            f"{speakers_from}: {n_speakers} pseudo-speakers, fewer than {batch_key}={batch_size}:"
            " each batch holds that many distinct speakers, so none could be filled; lower the"
            " batch size or raise the cluster count"
        )


def checked_search(values: object, where: str) -> ClusterCountSearch:
    """The ``k2: auto`` search from ``values`` (None: the defaults), naming ``<where>.<key>``."""
    if values is None:
        return ClusterCountSearch()
    if not isinstance(values, Mapping):
        raise ClusteringInputError(
            f"{where} must be a mapping of {list(SEARCH_KEYS)}, got {values!r}"
        )
    check_keys(values, SEARCH_KEYS, where, ClusteringInputError)
    fields: dict[str, int | None] = {}
    for key, value in values.items():
        if value is None and key in ("max", "sample"):
            fields[SEARCH_KEYS[key]] = None
            continue
        lowest = 2 if key == "min" else 1
        number = as_int(value, f"{where}.{key}", ClusteringInputError)
        fields[SEARCH_KEYS[key]] = _at_least(number, lowest, f"{where}.{key}")
    search = ClusterCountSearch(**fields)  # type: ignore[arg-type]
    if search.max_k2 is not None and search.max_k2 < search.min_k2:
        raise ClusteringInputError(
            f"{where}.max={search.max_k2} is below {where}.min={search.min_k2}"
        )
    return search


def _at_least(value: int, lowest: int, key: str) -> int:
    if value < lowest:
        raise ClusteringInputError(f"{key} must be >= {lowest}, got {value}")
    return value
