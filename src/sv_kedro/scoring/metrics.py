"""Verification metrics: EER, minDCF and the DET curve.

All three come from one sort of the scores and two cumulative sums, so they cost
O(n log n) for n trials. Tied scores are grouped: a threshold sits between distinct
score values only, which makes every figure exact when many scores are equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class ErrorRates:
    """Miss and false-alarm rates at every distinct threshold, low to high.

    ``thresholds[i]`` accepts a trial when ``score >= thresholds[i]``; the last entry is
    ``+inf`` (reject everything). ``fnr`` rises and ``fpr`` falls along the arrays.
    """

    thresholds: np.ndarray
    fnr: np.ndarray
    fpr: np.ndarray


def _validated(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in length")
    if not np.all(np.isfinite(scores)):
        bad = np.flatnonzero(~np.isfinite(scores))[:5].tolist()
        raise ValueError(f"scores contain NaN or inf at trial indices {bad}")
    labels = _binary_labels(labels)
    if labels.all() or not labels.any():
        raise ValueError("need at least one target and one non-target trial")
    return scores, labels


def _binary_labels(labels: np.ndarray) -> np.ndarray:
    """``labels`` as booleans; anything but 0/1 (or True/False) raises naming trial indices.

    A bare ``astype(bool)`` would count a label 2, -1, 0.5 or a missing (NaN) label as a
    target trial and report metrics for a list that was never what the labels said.
    """
    if labels.dtype == bool:
        return labels
    if labels.dtype.kind in "biuf":
        numeric = labels.astype(np.float64)
    else:
        # Strings and objects ("true", pd.NA) become NaN here, so only they are named.
        numeric = pd.to_numeric(pd.Series(labels, dtype=object), errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan
        )
    valid = (numeric == 0) | (numeric == 1)
    if not valid.all():
        bad = np.flatnonzero(~valid)[:5]
        raise ValueError(
            f"labels must be 0 (non-target) or 1 (target); got {labels[bad].tolist()} "
            f"at trial indices {bad.tolist()}"
        )
    return numeric == 1


def _check_costs(p_target: float, c_miss: float, c_fa: float) -> None:
    # p_target 0 or 1 makes the normalising cost 0 (minDCF NaN); outside (0, 1), or with
    # a cost <= 0, the figure is a number that means nothing: refuse rather than report it.
    for name, value in (("p_target", p_target), ("c_miss", c_miss), ("c_fa", c_fa)):
        if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value):
            raise ValueError(f"minDCF: {name} must be a finite number, got {value!r}")
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"minDCF: p_target must lie strictly between 0 and 1, got {p_target!r}")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"minDCF: c_miss and c_fa must be > 0, got {c_miss!r} and {c_fa!r}")


def error_rates(scores: np.ndarray, labels: np.ndarray) -> ErrorRates:
    """Miss (FNR) and false-alarm (FPR) rates at each distinct score threshold."""
    sorted_scores, sorted_labels = _sorted_with_labels(*_validated(scores, labels))
    n_target = int(sorted_labels.sum())
    n_nontarget = sorted_labels.size - n_target
    # Index where each group of equal scores starts.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    targets_below = np.r_[0, np.cumsum(sorted_labels)]  # targets with index < i
    nontargets_below = np.arange(sorted_labels.size + 1) - targets_below
    cut = np.r_[starts, sorted_labels.size]  # reject everything below index cut
    fnr = targets_below[cut] / n_target
    fpr = (n_nontarget - nontargets_below[cut]) / n_nontarget
    thresholds = np.r_[sorted_scores[starts], np.inf]
    return ErrorRates(thresholds=thresholds, fnr=fnr, fpr=fpr)


def _sorted_with_labels(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``scores`` sorted ascending and ``labels`` in the same order, up to order within ties.

    Ties are grouped by value afterwards, so the order inside a tie does not matter. When
    every score's lowest mantissa bit is 0 (always so for float32 scores such as cosine
    ones, widened to float64), the label rides in that bit and a plain value sort replaces
    ``argsort`` plus two gathers (about 3x faster at 550k trials). Setting the bit moves a
    score by one float64 ulp, less than the gap to any other such score, so the order of
    distinct scores is unchanged; the bit is cleared again after the sort.
    """
    bits = scores.view(np.uint64)
    if (bits & np.uint64(1)).any():
        order = np.argsort(scores)
        return scores[order], labels[order]
    keyed = (bits | labels.astype(np.uint64)).view(np.float64)
    keyed.sort()
    keyed_bits = keyed.view(np.uint64)
    sorted_labels = (keyed_bits & np.uint64(1)).astype(bool)
    keyed_bits &= ~np.uint64(1)
    return keyed, sorted_labels


def compute_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate in [0, 1], linearly interpolated where FNR crosses FPR."""
    rates = error_rates(scores, labels)
    return _eer_from_rates(rates.fnr, rates.fpr)


def _eer_from_rates(fnr: np.ndarray, fpr: np.ndarray) -> float:
    diff = fnr - fpr  # rises from <= 0 to >= 0
    idx = int(np.searchsorted(diff, 0.0, side="left"))
    if idx == 0:
        return float((fnr[0] + fpr[0]) / 2)
    if idx >= diff.size:
        return float((fnr[-1] + fpr[-1]) / 2)
    if diff[idx] == 0.0:
        return float(fnr[idx])
    # Crossing between idx-1 (diff < 0) and idx (diff > 0): intersect the two segments.
    d0, d1 = diff[idx - 1], diff[idx]
    t = d0 / (d0 - d1)
    return float(fnr[idx - 1] + t * (fnr[idx] - fnr[idx - 1]))


def compute_min_dcf(
    scores: np.ndarray,
    labels: np.ndarray,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> float:
    """Minimum normalised detection cost over all thresholds (NIST SRE definition)."""
    _check_costs(p_target, c_miss, c_fa)
    rates = error_rates(scores, labels)
    return _min_dcf_from_rates(rates.fnr, rates.fpr, p_target, c_miss, c_fa)


def _min_dcf_from_rates(
    fnr: np.ndarray, fpr: np.ndarray, p_target: float, c_miss: float, c_fa: float
) -> float:
    cost = c_miss * p_target * fnr + c_fa * (1.0 - p_target) * fpr
    default = min(c_miss * p_target, c_fa * (1.0 - p_target))
    return float(cost.min() / default)


def verification_metrics(
    scores: np.ndarray, labels: np.ndarray, p_targets: tuple[float, ...] = (0.01, 0.05)
) -> dict[str, float]:
    """EER and minDCF at each ``p_target`` from a single sort: ``{"eer", "min_dcf_0.01", ...}``."""
    for p_target in p_targets:
        _check_costs(p_target, 1.0, 1.0)
    rates = error_rates(scores, labels)
    result = {"eer": _eer_from_rates(rates.fnr, rates.fpr)}
    for p_target in p_targets:
        result[f"min_dcf_{p_target:g}"] = _min_dcf_from_rates(rates.fnr, rates.fpr, p_target, 1, 1)
    result["n_trials"] = int(np.asarray(labels).size)
    result["n_targets"] = int(_binary_labels(np.asarray(labels).ravel()).sum())
    return result
