"""Metric windows and the progress bar.

Step statistics are summed as tensors on the training device and read (one host sync)
only every ``log_every`` steps, so logging does not stall a GPU every step.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


class MetricWindow:
    """Loss, correct predictions, samples and extras since the last read.

    ``add`` only appends detached tensors to lists (a few microseconds); ``totals`` reduces
    them once per window.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.sizes: list[int] = []
        self.correct: list[Any] = []
        self.extras: dict[str, list[Any]] = {}
        self.started = time.perf_counter()

    def add(
        self, loss: torch.Tensor, n_correct: Any, n_samples: int, extra: dict[str, Any]
    ) -> None:
        self.losses.append(loss.detach())
        self.sizes.append(n_samples)
        self.correct.append(
            n_correct.detach() if isinstance(n_correct, torch.Tensor) else n_correct
        )
        for name, value in extra.items():
            if isinstance(value, torch.Tensor) and value.numel() != 1:
                continue
            if isinstance(value, (torch.Tensor, int, float)):
                self.extras.setdefault(name, []).append(value)

    @property
    def totals(self) -> torch.Tensor:
        """``[loss * samples, correct, samples]`` summed over the window (float64)."""
        if not self.losses:
            return torch.zeros(3, dtype=torch.float64, device=self.device)
        sizes = torch.tensor(self.sizes, dtype=torch.float64, device=self.device)
        losses = torch.stack([t.to(self.device, torch.float64) for t in self.losses])
        correct = torch.stack(
            [torch.as_tensor(c, device=self.device).to(torch.float64) for c in self.correct]
        )
        return torch.stack([(losses * sizes).sum(), correct.sum(), sizes.sum()])

    def extra_means(self) -> dict[str, float]:
        means = {}
        for name, values in self.extras.items():
            numbers = [
                float(v.detach().float().item()) if isinstance(v, torch.Tensor) else float(v)
                for v in values
            ]
            means[name] = sum(numbers) / len(numbers)
        return means


def train_row(
    totals: list[float], elapsed_s: float, param_groups: list[dict[str, Any]]
) -> dict[str, Any]:
    """A ``kind="train"`` metric row from summed ``[loss * n, correct, n]`` over a window.

    ``lr`` is the last group's LR (the head's; the only one without an encoder) and
    ``lr_encoder`` the highest encoder-group LR when the groups are named ``encoder.*``.
    """
    loss_sum, correct, samples = totals
    row: dict[str, Any] = {
        "kind": "train",
        "loss": loss_sum / samples,
        "acc": correct / samples,
        "lr": float(param_groups[-1]["lr"]),
        "samples_per_s": samples / max(elapsed_s, 1e-9),
    }
    encoder_lrs = [
        float(g["lr"]) for g in param_groups if str(g.get("name", "")).startswith("encoder")
    ]
    if encoder_lrs:
        row["lr_encoder"] = max(encoder_lrs)
    return row


class ProgressBar:
    """tqdm bar on the main process (hidden elsewhere, and when stderr is not a TTY)."""

    def __init__(self, total: int | None, initial: int, enabled: bool | None, is_main: bool):
        if enabled is None:
            enabled = sys.stderr.isatty()
        self.bar = None
        if enabled and is_main:
            self.bar = tqdm(
                total=total,
                initial=initial,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                leave=True,
            )

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def show(self, row: dict[str, Any]) -> None:
        if self.bar is None:
            return
        self.bar.set_postfix(
            {
                "loss": f"{row.get('loss', float('nan')):.4f}",
                "acc": f"{row.get('acc', float('nan')):.3f}",
                "lr": f"{row.get('lr', float('nan')):.2e}",
                "samples/s": f"{row.get('samples_per_s', float('nan')):.1f}",
            },
            refresh=False,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def log_row(row: dict[str, Any]) -> None:
    """One line per metric row in the log (what remains when there is no TTY)."""
    parts = [f"{key}={_format(value)}" for key, value in row.items()]
    logger.info("train %s", " ".join(parts))


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def metrics_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Metric rows as a DataFrame (``step``, ``epoch`` first; missing values are NaN)."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame({"step": pd.Series(dtype="int64"), "epoch": pd.Series(dtype="int64")})
    leading = [c for c in ("step", "epoch", "kind") if c in frame.columns]
    return frame[leading + [c for c in frame.columns if c not in leading]]
