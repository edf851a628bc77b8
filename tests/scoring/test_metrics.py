"""EER and minDCF against a straightforward ROC-threshold computation (sklearn)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from sv_kedro.scoring.metrics import (
    _sorted_with_labels,
    compute_eer,
    compute_min_dcf,
    error_rates,
    verification_metrics,
)


def reference_eer_min_dcf(scores, labels, p_target):
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1.0 - tpr
    diff = fnr - fpr  # falls from 1 to -1 as the threshold falls
    i = int(np.flatnonzero(diff <= 0)[0])
    if diff[i] == 0 or i == 0:
        eer = fnr[i] if diff[i] == 0 else (fnr[i] + fpr[i]) / 2
    else:
        t = diff[i - 1] / (diff[i - 1] - diff[i])
        eer = fnr[i - 1] + t * (fnr[i] - fnr[i - 1])
    cost = p_target * fnr + (1 - p_target) * fpr
    min_dcf = cost.min() / min(p_target, 1 - p_target)
    return eer, min_dcf


def _cases():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 5000)
    random_scores = rng.normal(size=5000) + 1.5 * labels
    tied_scores = np.round(random_scores * 2) / 2  # ~15 distinct values
    separated = np.where(labels == 1, rng.uniform(2, 3, 5000), rng.uniform(-1, 1, 5000))
    few_levels = rng.integers(0, 3, 5000).astype(float) + labels  # massive ties
    # float32 values widened to float64 (cosine scores): the label-in-the-low-bit sort;
    # signed zeros and float32 subnormals included.
    float32_scores = (random_scores / 4).astype(np.float32)
    float32_scores[:40] = np.float32(0.0)
    float32_scores[40:80] = np.float32(-0.0)
    float32_scores[80:90] = np.float32(1e-42)
    float32_scores[90:100] = np.float32(-1e-42)
    return {
        "random": (random_scores, labels),
        "tied": (tied_scores, labels),
        "separated": (separated, labels),
        "few_levels": (few_levels, labels),
        "float32": (float32_scores.astype(np.float64), labels),
    }


@pytest.mark.parametrize("name", list(_cases()))
@pytest.mark.parametrize("p_target", [0.01, 0.05])
def test_eer_and_min_dcf_match_roc_reference(name, p_target):
    scores, labels = _cases()[name]
    ref_eer, ref_dcf = reference_eer_min_dcf(scores, labels, p_target)
    assert compute_eer(scores, labels) == pytest.approx(ref_eer, abs=1e-6)
    assert compute_min_dcf(scores, labels, p_target) == pytest.approx(ref_dcf, abs=1e-6)


def test_perfect_separation_gives_zero_errors():
    scores, labels = _cases()["separated"]
    assert compute_eer(scores, labels) == 0.0
    assert compute_min_dcf(scores, labels, 0.01) == 0.0


def test_all_tied_scores_give_chance_eer():
    labels = np.array([0, 1] * 50)
    assert compute_eer(np.zeros(100), labels) == pytest.approx(0.5)


def test_error_rates_are_monotonic_and_cover_both_ends():
    scores, labels = _cases()["tied"]
    rates = error_rates(scores, labels)
    assert rates.fnr[0] == 0 and rates.fpr[0] == 1
    assert rates.fnr[-1] == 1 and rates.fpr[-1] == 0
    assert np.all(np.diff(rates.fnr) >= 0) and np.all(np.diff(rates.fpr) <= 0)


def test_verification_metrics_reports_both_p_targets():
    scores, labels = _cases()["random"]
    metrics = verification_metrics(scores, labels)
    assert set(metrics) >= {"eer", "min_dcf_0.01", "min_dcf_0.05", "n_trials", "n_targets"}
    assert metrics["min_dcf_0.05"] <= metrics["min_dcf_0.01"] + 1e-12
    assert metrics["n_trials"] == 5000


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, np.nan], [0, 1], "NaN"),
        ([0.1, 0.2], [1, 1], "non-target"),
        ([0.1, 0.2, 0.3], [0, 1], "differ in length"),
    ],
)
def test_bad_input_is_named(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        compute_eer(np.array(scores), np.array(labels))


def test_low_bit_sort_keeps_every_tie_group_and_its_target_count():
    """The fast sort (label carried in the lowest mantissa bit) against a stable argsort:
    same sorted values, same number of targets within every group of equal scores."""
    scores, labels = _cases()["float32"]
    original = scores.copy()
    assert not (scores.view(np.uint64) & np.uint64(1)).any()  # the fast path applies
    sorted_scores, sorted_labels = _sorted_with_labels(scores, labels.astype(bool))
    order = np.argsort(scores, kind="stable")
    np.testing.assert_array_equal(sorted_scores, scores[order])
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    np.testing.assert_array_equal(
        np.add.reduceat(sorted_labels.astype(int), starts),
        np.add.reduceat(labels[order].astype(int), starts),
    )
    np.testing.assert_array_equal(scores, original)  # the caller's scores are untouched
