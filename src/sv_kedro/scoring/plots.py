"""Figures of verification results: DET curves and score histograms.

Figures are built with ``matplotlib.figure.Figure`` directly, not pyplot, so no GUI
backend or global figure state is involved (safe in workers and headless CI).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import norm

from sv_kedro.scoring.metrics import compute_eer, error_rates

_DET_TICKS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4]


def det_curve_figure(
    systems: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str = "DET"
) -> Figure:
    """One DET curve per system on normal-deviate axes; the legend gives each EER.

    ``systems`` maps a name to ``(scores [n], labels [n])``.
    """
    fig = Figure(figsize=(5.5, 5.0), dpi=100)
    ax = fig.subplots()
    clip = (1e-4, 1 - 1e-4)
    for name, (scores, labels) in systems.items():
        try:
            rates = error_rates(scores, labels)
        except ValueError as exc:
            raise ValueError(f"DET curve of {name!r}: {exc}") from exc
        fpr = norm.ppf(np.clip(rates.fpr, *clip))
        fnr = norm.ppf(np.clip(rates.fnr, *clip))
        ax.plot(fpr, fnr, label=f"{name} (EER {compute_eer(scores, labels):.2%})")
    ticks = norm.ppf(_DET_TICKS)
    labels_txt = [f"{t:.1%}".rstrip("0").rstrip(".") for t in _DET_TICKS]
    ax.set_xticks(ticks, labels_txt)
    ax.set_yticks(ticks, labels_txt)
    limits = norm.ppf([0.0005, 0.5])
    ax.set_xlim(*limits)
    ax.set_ylim(*limits)
    ax.plot(limits, limits, color="grey", linewidth=0.5, linestyle=":")
    ax.set_xlabel("false-alarm rate")
    ax.set_ylabel("miss rate")
    ax.set_title(title)
    ax.grid(True, linewidth=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def score_histogram_figure(scores: np.ndarray, labels: np.ndarray, title: str = "") -> Figure:
    """Target and non-target score histograms on shared bins."""
    # Checked (labels 0/1, finite scores, both classes) before anything is drawn.
    eer = compute_eer(scores, labels)
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    fig = Figure(figsize=(5.5, 3.2), dpi=100)
    ax = fig.subplots()
    low, high = scores.min(), scores.max()
    if low == high:
        # One value only: zero-width bins would divide the densities by zero.
        low, high = low - 0.5, high + 0.5
    bins = np.linspace(low, high, 60)
    ax.hist(scores[~labels], bins=bins, alpha=0.6, density=True, label="non-target")
    ax.hist(scores[labels], bins=bins, alpha=0.6, density=True, label="target")
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.set_title(title or f"scores (EER {eer:.2%})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
