"""Clustering settings: refused naming the key, before DINO where the parameters suffice."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from sv_kedro.clustering.kmeans import ClusteringInputError
from sv_kedro.clustering.pseudo_labels import ClusterCountSearch
from sv_kedro.clustering.settings import (
    checked_clustering,
    resolve_counts,
)

BASE = {"k1": None, "k2": 40, "seed": 0, "linkage": "ward", "whiten": True}
WHERE = "ssl_pseudo_labeling.clustering"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"k1": "abc"}, r"clustering\.k1 must be an integer, got 'abc'"),
        ({"k1": 0}, r"clustering\.k1 must be >= 1, got 0"),
        ({"k1": "-3"}, r"clustering\.k1 must be >= 1, got -3"),
        ({"k2": 0}, r"clustering\.k2 must be >= 1, got 0"),
        ({"k2": "Auto"}, r"clustering\.k2 must be an integer or 'auto', got 'Auto'"),
        ({"k2": 2.5}, r"clustering\.k2 must be an integer or 'auto', got 2\.5"),
        ({"k1": 8, "k2": 12}, r"clustering\.k2=12 is more than .*clustering\.k1=8"),
        ({"k2": "auto", "k2_search": {"min": 10, "max": 5}}, r"k2_search\.max=5 is below"),
        ({"k2": "auto", "k2_search": {"points": 0}}, r"k2_search\.points must be >= 1"),
        ({"k2": "auto", "k2_search": {"min": "abc"}}, r"k2_search\.min must be an integer"),
        ({"k2": "auto", "k2_search": {"min": 1}}, r"k2_search\.min must be >= 2"),
        ({"k2": "auto", "k2_search": {"sample": 0}}, r"k2_search\.sample must be >= 1"),
        ({"k2": "auto", "k2_search": [2, 9]}, r"k2_search must be a mapping"),
        ({"k2": "auto", "k2_search": {"maximum": 9}}, r"k2_search: unknown key\(s\) \['maximum'\]"),
        ({"linkage": "single"}, r"clustering\.linkage must be one of \('ward', 'average'\)"),
        ({"assignment": "fast"}, r"clustering\.assignment must be one of"),
        ({"max_points_per_centroid": 0}, r"clustering\.max_points_per_centroid must be >= 1"),
        ({"seed": -1}, r"clustering\.seed must be >= 0, got -1"),
        ({"whiten": "nope"}, r"clustering\.whiten must be true or false"),
        ({"whitten": True}, r"clustering: unknown key\(s\) \['whitten'\]"),
    ],
)
def test_bad_values_are_refused_naming_the_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ClusteringInputError, match=message) as error:
        checked_clustering({**BASE, **change})
    assert str(error.value).startswith(WHERE)


def test_missing_counts_are_named() -> None:
    with pytest.raises(ClusteringInputError, match=r"clustering\.k1 is missing"):
        checked_clustering({"k2": 4})


def test_valid_settings_convert_params_strings() -> None:
    settings = checked_clustering({**BASE, "k1": "96", "k2": "auto", "k2_search": {"max": "50"}})
    assert settings.k1 == 96 and settings.k2 == "auto"
    assert settings.search == ClusterCountSearch(max_k2=50)
    assert settings.options == {"seed": 0, "linkage": "ward", "whiten": True}


def test_k2_above_the_utterances_is_refused_not_clamped_to_singletons() -> None:
    settings = checked_clustering({**BASE, "k2": 100})
    with pytest.raises(ClusteringInputError, match=r"k2=100 pseudo-speakers .* only 24 utt"):
        resolve_counts(settings, 24)
    with pytest.raises(ClusteringInputError, match=r"each would be its own pseudo-speaker"):
        resolve_counts(settings, 100)
    assert resolve_counts(settings, 101) == (101, 100)


def test_k1_above_the_utterances_clusters_them_directly_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = checked_clustering({**BASE, "k1": 500, "k2": 4})
    with caplog.at_level(logging.WARNING, logger="sv_kedro.clustering.settings"):
        assert resolve_counts(settings, 24) == (24, 4)
    assert "k1=500 is more than the 24 utterances" in caplog.text


def test_auto_search_that_cannot_reach_its_minimum_is_refused() -> None:
    settings = checked_clustering({**BASE, "k2": "auto", "k2_search": {"min": 100}})
    with pytest.raises(ClusteringInputError, match=r"k2_search\.min=100 is above .* 12 "):
        resolve_counts(settings, 24)
    assert resolve_counts(settings, 1000) == (1000, "auto")
