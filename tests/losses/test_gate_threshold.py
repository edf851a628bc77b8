"""DLG: the GMM threshold lands on the true weighted-density intersection, or is kept."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from sv_kedro.losses import fit_gate_threshold, weighted_gaussian_intersections

WEIGHTS = (0.7, 0.3)
MEANS = (0.0, 3.0)
STDS = (0.5, 0.8)


def _true_intersection() -> float:
    """Root of w₁·N(x; μ₁, σ₁) − w₂·N(x; μ₂, σ₂) between the means, by bisection (scipy)."""

    def difference(x: float) -> float:
        return WEIGHTS[0] * norm.pdf(x, MEANS[0], STDS[0]) - WEIGHTS[1] * norm.pdf(
            x, MEANS[1], STDS[1]
        )

    return float(brentq(difference, MEANS[0], MEANS[1], xtol=1e-12))


def _mixture_sample(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    second = rng.random(n) < WEIGHTS[1]
    return np.where(second, rng.normal(MEANS[1], STDS[1], n), rng.normal(MEANS[0], STDS[0], n))


def test_fitted_threshold_is_the_true_intersection():
    expected = _true_intersection()
    fit = fit_gate_threshold(_mixture_sample(20_000, seed=0), previous=5.0, seed=0)
    assert fit.changed, fit.reason
    assert fit.threshold == pytest.approx(expected, abs=0.05)
    assert fit.means == pytest.approx(MEANS, abs=0.05)
    assert fit.weights == pytest.approx(WEIGHTS, abs=0.02)
    assert fit.variances == pytest.approx([s * s for s in STDS], abs=0.05)
    assert fit.reason.startswith("fitted")


def test_analytic_intersections_match_numerical_roots():
    roots = weighted_gaussian_intersections(MEANS, (STDS[0] ** 2, STDS[1] ** 2), WEIGHTS)
    assert len(roots) == 2  # unequal variances: one root between the means, one in a tail
    for root in roots:
        assert WEIGHTS[0] * norm.pdf(root, MEANS[0], STDS[0]) == pytest.approx(
            WEIGHTS[1] * norm.pdf(root, MEANS[1], STDS[1]), rel=1e-9
        )
    assert [r for r in roots if MEANS[0] < r < MEANS[1]] == pytest.approx([_true_intersection()])
    # equal variances: a single (linear) root, at the midpoint for equal weights
    assert weighted_gaussian_intersections((0.0, 2.0), (1.0, 1.0), (0.5, 0.5)) == pytest.approx(
        [1.0]
    )


def test_unimodal_sample_keeps_the_old_threshold_and_says_so(caplog):
    sample = np.random.default_rng(1).normal(1.0, 1.0, 20_000)
    with caplog.at_level(logging.INFO, logger="sv_kedro.losses.gate_threshold"):
        fit = fit_gate_threshold(sample, previous=1.7, seed=0)
    assert not fit.changed
    assert fit.threshold == 1.7
    assert "unimodal" in fit.reason
    # Expected in most epochs: said at INFO, not as a warning every epoch of every round.
    kept = [r for r in caplog.records if "keeping threshold 1.7000" in r.getMessage()]
    assert [record.levelno for record in kept] == [logging.INFO]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sv_kedro.losses.gate_threshold"):
        fit_gate_threshold(np.array([0.0, 3.0]), previous=0.3)
    assert [record.levelno for record in caplog.records] == [logging.WARNING]


def test_degenerate_inputs_keep_the_old_threshold():
    assert not fit_gate_threshold(np.zeros(500), previous=0.3).changed
    few = fit_gate_threshold(np.array([0.0, 3.0, -math.inf]), previous=0.3)
    assert not few.changed and "min_samples" in few.reason and "1 non-finite" in few.reason
    # a tiny second component is not a mode of its own
    rng = np.random.default_rng(2)
    lopsided = np.r_[rng.normal(0, 0.5, 20_000), rng.normal(6, 0.5, 50)]
    fit = fit_gate_threshold(lopsided, previous=0.3, seed=0, min_weight=0.02)
    assert not fit.changed and "weight" in fit.reason


def test_fit_is_reproducible_for_a_seed_and_serialisable():
    sample = _mixture_sample(5_000, seed=3)
    first = fit_gate_threshold(sample, previous=0.0, seed=7)
    second = fit_gate_threshold(sample, previous=0.0, seed=7)
    assert first == second
    record = first.to_dict()
    assert record["threshold"] == first.threshold
    assert isinstance(record["means"], list) and len(record["means"]) == 2


def test_zero_separation_takes_the_intersection_of_a_skewed_unimodal_fit():
    # A right-skewed single mode, like the per-sample log-losses of a short pseudo-label
    # round: the two fitted Gaussians cross between their means, but too close together for
    # the default bimodality checks.
    rng = np.random.default_rng(4)
    sample = np.r_[rng.normal(0.0, 0.6, 15_000), rng.normal(1.2, 1.0, 5_000)]
    strict = fit_gate_threshold(sample, previous=3.0, seed=0)
    assert not strict.changed and "unimodal" in strict.reason
    paper = fit_gate_threshold(sample, previous=3.0, seed=0, min_separation=0.0)
    assert paper.changed, paper.reason
    assert paper.means[0] < paper.threshold < paper.means[1]
    assert paper.separation == pytest.approx(strict.separation)
    roots = weighted_gaussian_intersections(paper.means, paper.variances, paper.weights)
    assert any(root == pytest.approx(paper.threshold) for root in roots)
