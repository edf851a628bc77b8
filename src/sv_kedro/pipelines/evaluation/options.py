"""``evaluation.scoring`` and ``evaluation.extraction``, checked before anything is embedded."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from sv_kedro.scoring.extraction_launch import split_extraction_options
from sv_kedro.utils.params import as_int, check_keys, coerce_scalars

BACKENDS = ("cosine", "cosine_crops", "fusion", "asnorm", "plda")
PAIR_BACKEND = "pair"
PAIRED_ARCHITECTURE = "ssl_paired"
SCORING = "evaluation.scoring"


@dataclass(frozen=True)
class CosineOptions:
    """``evaluation.scoring.cosine``: options of the ``cosine`` back-end only."""

    mean_centre: bool = False
    length_norm: bool = True


@dataclass(frozen=True)
class ScoringOptions:
    """``evaluation.scoring``, checked: the fields are every key the nodes read, so a
    misspelt key (``top_nn``) is refused instead of silently scoring with the default."""

    backends: tuple[str, ...] = BACKENDS
    main_backend: str = "fusion"
    cosine: CosineOptions = field(default_factory=CosineOptions)
    top_n: int = 300
    cohort_utts_per_speaker: int = 20
    cohort_shard_dir: str | None = None
    lda_dim: int | None = None
    pair_max_seconds: float = 20.0
    pair_batch_size: int = 32


def scoring_options(scoring: Mapping[str, Any] | None) -> ScoringOptions:
    """``evaluation.scoring`` checked; a bad key or value raises naming its key path."""
    values = dict(scoring or {})
    check_keys(values, [f.name for f in fields(ScoringOptions)], SCORING)
    values = coerce_scalars(ScoringOptions, values, SCORING)
    backends = values.get("backends", BACKENDS)
    # A bare string would be split into letters: refuse it rather than list 'c', 'o', ...
    if (
        isinstance(backends, str)
        or not isinstance(backends, (list, tuple))
        or not all(isinstance(name, str) for name in backends)
    ):
        raise ValueError(f"{SCORING}.backends must be a list of back-ends, got {backends!r}")
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise ValueError(f"{SCORING}.backends: unknown {unknown}; choose from {BACKENDS}")
    values["backends"] = tuple(backends)
    main = values.get("main_backend", ScoringOptions.main_backend)
    # pair is not offered: a paired checkpoint makes it the main back-end by itself, and
    # for any other checkpoint there would be no such scores.
    if main not in BACKENDS:
        raise ValueError(f"{SCORING}.main_backend: unknown {main!r}; choose from {list(BACKENDS)}")
    # The main back-end's scores feed the histogram, so it must be one that is computed.
    if main not in backends:
        raise ValueError(
            f"{SCORING}.main_backend: {main!r} is not among the selected back-ends "
            f"{list(backends)} ({SCORING}.backends)"
        )
    # top_n 1 would divide every AS-norm score by the spread of a single score (0).
    for key, minimum in (("top_n", 2), ("cohort_utts_per_speaker", 1), ("pair_batch_size", 1)):
        # coerce_scalars passes None through, but these have no "none" meaning.
        count = as_int(values.get(key, getattr(ScoringOptions, key)), f"{SCORING}.{key}")
        if count < minimum:
            raise ValueError(f"{SCORING}.{key} must be >= {minimum}, got {count}")
    lda_dim = values.get("lda_dim")
    if lda_dim is not None and lda_dim < 1:
        raise ValueError(f"{SCORING}.lda_dim must be >= 1 or null (no LDA), got {lda_dim}")
    seconds = values.get("pair_max_seconds", ScoringOptions.pair_max_seconds)
    # NaN passes "<= 0" and would reach the audio cropping as a length.
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{SCORING}.pair_max_seconds must be a finite number > 0, got {seconds!r}")
    shard_dir = values.get("cohort_shard_dir")
    if shard_dir is not None and not isinstance(shard_dir, (str, os.PathLike)):
        raise ValueError(
            f"{SCORING}.cohort_shard_dir must be a folder path or null, got {shard_dir!r}"
        )
    cosine = values.get("cosine") or {}
    if not isinstance(cosine, Mapping):
        raise ValueError(f"{SCORING}.cosine must be a mapping, got {cosine!r}")
    check_keys(cosine, [f.name for f in fields(CosineOptions)], f"{SCORING}.cosine")
    values["cosine"] = CosineOptions(**coerce_scalars(CosineOptions, cosine, f"{SCORING}.cosine"))
    return ScoringOptions(**values)


def check_test_extraction(extraction: Mapping[str, Any]) -> None:
    """``evaluation.extraction`` as the test utterances' extraction will use it.

    The cohort node embeds with ``n_crops: 0``, which hides a bad ``n_crops`` or a
    ``max_seconds`` shorter than ``crop_seconds``; checking the test settings in both
    embedding nodes refuses them before either extraction starts.
    """
    split_extraction_options(extraction, "evaluation.extraction")
    if isinstance(extraction, Mapping) and extraction.get("n_crops", 1) == 0:
        raise ValueError("evaluation.extraction.n_crops must be >= 1 (crop and fused scores)")
