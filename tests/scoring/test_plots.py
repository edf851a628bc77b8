"""The figures render and carry the information a reader looks for."""

from __future__ import annotations

import numpy as np

from sv_kedro.scoring.plots import det_curve_figure, score_histogram_figure


def _scores(shift, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 2000)
    return rng.normal(size=2000) + shift * labels, labels


def test_det_figure_has_one_curve_per_system_with_eer_in_legend():
    fig = det_curve_figure({"good": _scores(3.0, 0), "bad": _scores(0.5, 1)})
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(legend) == 2 and legend[0].startswith("good (EER") and "%" in legend[1]
    assert len(ax.lines) == 3  # two systems and the diagonal


def test_histogram_figure_renders_two_classes():
    scores, labels = _scores(2.0, 2)
    fig = score_histogram_figure(scores, labels)
    assert len(fig.axes[0].patches) == 2 * 59
    assert "EER" in fig.axes[0].get_title()
