"""The loss gate of a training run, drawn from its checkpoint (a kedro-viz preview).

Left: the threshold used per epoch, the next one the DLG fit proposed, and the fraction of
samples kept. Right: the last fitted epoch's histogram of per-sample log-losses with the
two-component GMM and the threshold between its components.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure


def gate_records(
    checkpoint: Mapping[str, Any],
) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """The loss gate a checkpoint's training task kept: its ``history`` (one entry per
    finished epoch) and each epoch's log-loss histogram ``{epoch: {"edges", "counts"}}``;
    both empty when the run had no gate."""
    task = ((checkpoint.get("training_state") or {}).get("loss_gate") or {}).get("task") or {}
    history = (task.get("gate") or {}).get("history") or []
    histograms = {int(h["epoch"]): h for h in task.get("loss_histograms") or []}
    return list(history), histograms


def gate_figure(checkpoint: Mapping[str, Any], title: str = "") -> Figure:
    """Loss-gate threshold per epoch (left) and the last DLG fit: the 2-component GMM over
    the histogram of that epoch's per-sample log-losses, with the threshold (right)."""
    history, histograms = gate_records(checkpoint)
    figure = Figure(figsize=(10.0, 4.0), layout="constrained")
    left, right = figure.subplots(1, 2)
    if not history:
        left.text(0.5, 0.5, "loss gate disabled", ha="center", va="center")
        right.axis("off")
        return figure
    epochs = [int(entry["epoch"]) for entry in history]
    left.plot(epochs, [entry["threshold"] for entry in history], "o-", label="threshold used")
    left.plot(epochs, [entry["next_threshold"] for entry in history], "x--", label="next (fit)")
    kept = [entry["kept_fraction"] for entry in history]
    twin = left.twinx()
    twin.bar(epochs, kept, alpha=0.2, color="tab:green")
    twin.set_ylabel("kept fraction")
    twin.set_ylim(0, 1.05)
    left.set_xlabel("epoch")
    left.set_ylabel("log-loss threshold")
    left.set_title(f"{title} loss gate".strip())
    left.legend(loc="best")
    fitted = [entry for entry in history if entry.get("fit") and entry["fit"].get("means")]
    shown = fitted[-1] if fitted else history[-1]
    histogram = histograms.get(int(shown["epoch"]))
    if histogram and histogram["counts"]:
        edges = np.asarray(histogram["edges"])
        counts = np.asarray(histogram["counts"])
        widths = np.diff(edges)
        density = counts / max(counts.sum() * widths.mean(), 1e-12)
        right.bar(edges[:-1], density, width=widths, align="edge", alpha=0.5, label="log-losses")
        fit = shown.get("fit") or {}
        grid = np.linspace(edges[0], edges[-1], 300)
        for mean, variance, weight in zip(
            fit.get("means", []), fit.get("variances", []), fit.get("weights", []), strict=False
        ):
            pdf = weight * np.exp(-((grid - mean) ** 2) / (2 * variance))
            right.plot(grid, pdf / math.sqrt(2 * math.pi * variance), label=f"GMM mu={mean:.2f}")
        right.axvline(shown["next_threshold"], color="black", linestyle="--", label="threshold")
        right.legend(loc="best")
    right.set_title(f"epoch {shown['epoch']} log-loss histogram and GMM fit")
    right.set_xlabel("log per-sample loss")
    return figure
