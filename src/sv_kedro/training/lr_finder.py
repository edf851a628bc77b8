"""LR range test (Smith 2017; Lightning's ``auto_lr_find`` in the wav2vec2-SV paper).

The LR grows exponentially from ``min_lr`` to ``max_lr`` over ``num_steps`` optimiser steps
while the loss is recorded and smoothed with a bias-corrected exponential moving average.
The sweep stops early once the smoothed loss exceeds ``divergence_factor`` times its best.

Suggestion rule ("steepest descent"): the LR where the smoothed loss falls fastest against
``log10(lr)``, i.e. the minimum of ``np.gradient(smoothed_loss, log10(lr))``, searched
between the first ``skip_start`` points (noisy EMA start) and the point of lowest loss (past
it the loss is already rising). The model's weights (and train/eval mode) are restored
afterwards, so the test leaves no trace.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from sv_kedro.training.task import TrainingTask, TrainState, move_to_device


@dataclass
class LRFinderResult:
    """``lrs``/``losses`` (raw) and ``smoothed`` per step; ``suggested_lr`` per the rule above."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggested_lr: float
    suggestion_index: int
    diverged: bool

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame({"lr": self.lrs, "loss": self.losses, "smoothed_loss": self.smoothed})


def _cycle(loader: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the LR range test loader yields no batches")


def check_range_test_options(
    min_lr: float,
    max_lr: float,
    num_steps: int,
    smoothing: float,
    divergence_factor: float,
    skip_start: int,
    prefix: str = "lr_finder.",
) -> None:
    """Refuse options the range test cannot honour, naming ``<prefix><option>``.

    Checked before any step, as each would otherwise fail after the sweep or, worse, give a
    suggestion that follows no rule: ``divergence_factor <= 1`` stops the sweep on the
    first loss that is not a new best (then "too few losses"), and a negative
    ``skip_start`` counted from the end and returned an LR past the minimum.
    """
    if not 0 < min_lr < max_lr < math.inf:
        raise ValueError(
            f"{prefix}min_lr and {prefix}max_lr need 0 < min_lr < max_lr (finite), got "
            f"{min_lr} and {max_lr}"
        )
    if num_steps < 3:
        raise ValueError(f"{prefix}num_steps must be >= 3, got {num_steps}")
    if not 0 <= smoothing < 1:
        raise ValueError(f"{prefix}smoothing must lie in [0, 1), got {smoothing}")
    if not divergence_factor > 1:
        raise ValueError(
            f"{prefix}divergence_factor must be > 1 (stop once the smoothed loss exceeds that "
            f"many times its best), got {divergence_factor}"
        )
    if skip_start < 0:
        raise ValueError(f"{prefix}skip_start must be >= 0, got {skip_start}")


def lr_range_test(
    model: nn.Module,
    task: TrainingTask,
    loader: Iterable[Any],
    min_lr: float = 1e-7,
    max_lr: float = 1.0,
    num_steps: int = 100,
    optimizer_factory: Callable[[Any, float], torch.optim.Optimizer] | None = None,
    smoothing: float = 0.98,
    divergence_factor: float = 4.0,
    skip_start: int = 5,
    device: torch.device | str | None = None,
) -> LRFinderResult:
    """Sweep the LR exponentially and suggest one (see the module docstring for the rule).

    Args:
        model: trained in place during the sweep, then restored to its initial weights.
        task: computes each batch's loss (as in training).
        loader: batches, cycled if shorter than ``num_steps``.
        min_lr, max_lr: sweep range; ``num_steps`` optimiser steps (>= 3).
        optimizer_factory: ``(parameters, lr) -> optimiser``; default AdamW.
        smoothing: EMA factor of the loss (0 = no smoothing).
        divergence_factor: stop when smoothed loss > factor x best smoothed loss.
        skip_start: leading points left out of the suggestion search.
        device: where to run; default the model's current device.
    """
    check_range_test_options(
        min_lr, max_lr, num_steps, smoothing, divergence_factor, skip_start, prefix=""
    )
    initial_state = copy.deepcopy(model.state_dict())
    was_training = model.training
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    factory = optimizer_factory or (lambda ps, lr: torch.optim.AdamW(ps, lr=lr))
    optimizer = factory(params, min_lr)
    ratio = (max_lr / min_lr) ** (1.0 / (num_steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, best, diverged = 0.0, math.inf, False
    batches = _cycle(loader)
    try:
        for step in range(num_steps):
            lr = min_lr * ratio**step
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = move_to_device(next(batches), device)
            output = task.compute_loss(
                model, batch, TrainState(step=step, device=device, model=model)
            )
            optimizer.zero_grad(set_to_none=True)
            output.loss.backward()
            optimizer.step()
            loss = float(output.loss.detach())
            average = smoothing * average + (1 - smoothing) * loss
            value = average / (1 - smoothing ** (step + 1))
            lrs.append(lr)
            losses.append(loss)
            smoothed.append(value)
            if not math.isfinite(value) or value > divergence_factor * best:
                diverged = True
                break
            best = min(best, value)
    finally:
        model.load_state_dict(initial_state)
        model.train(was_training)
    index = suggest_index(lrs, smoothed, skip_start)
    return LRFinderResult(lrs, losses, smoothed, lrs[index], index, diverged)


def suggest_index(lrs: list[float], smoothed: list[float], skip_start: int = 5) -> int:
    """Index of the steepest descent of ``smoothed`` against ``log10(lr)`` (see module doc)."""
    if skip_start < 0:  # a negative start would slice from the end, past the minimum
        raise ValueError(f"skip_start must be >= 0, got {skip_start}")
    values = np.asarray(smoothed, dtype=np.float64)
    finite = np.isfinite(values)
    if finite.sum() < 3:
        raise ValueError(
            f"the LR range test recorded {int(finite.sum())} finite losses; at least 3 are "
            "needed (lower max_lr or raise num_steps)"
        )
    end = int(np.nanargmin(np.where(finite, values, np.nan))) + 1
    start = min(skip_start, max(0, end - 3))
    if end - start < 3:
        # The loss was lowest at the start: no descent to follow, take the lowest-loss LR.
        return end - 1
    slope = np.gradient(values[start:end], np.log10(np.asarray(lrs[start:end])))
    return start + int(np.argmin(slope))


def plot_lr_finder(result: LRFinderResult) -> Figure:
    """Loss against LR (log axis): raw and smoothed curves and the suggestion."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    axes.plot(result.lrs, result.losses, color="0.75", linewidth=1, label="loss")
    axes.plot(result.lrs, result.smoothed, color="C0", linewidth=2, label="smoothed loss")
    axes.axvline(
        result.suggested_lr,
        color="C3",
        linestyle="--",
        label=f"suggested lr = {result.suggested_lr:.2e}",
    )
    axes.scatter(
        [result.suggested_lr], [result.smoothed[result.suggestion_index]], color="C3", zorder=3
    )
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss")
    axes.set_title("LR range test")
    axes.legend()
    return figure
