"""Learning-rate schedules as multiplicative factors of each parameter group's base LR.

Every schedule is a pure function ``factor(step) -> float`` of the optimiser step (not the
micro-batch), wrapped in ``torch.optim.lr_scheduler.LambdaLR`` and stepped once per
optimiser step. The factor multiplies the group's own base LR, so layer-wise LR decay and a
separate head LR keep their ratios through the whole schedule.

Shapes (``T`` = total optimiser steps):

- ``constant``: 1 everywhere.
- ``one_cycle``: cosine rise from ``initial_lr_scale`` to 1 over the first
  ``warmup_ratio * T`` steps (the peak), then cosine fall to ``final_lr_scale`` at ``T``
  (Smith's 1cycle policy, as ``torch.optim.lr_scheduler.OneCycleLR``).
- ``tri_stage``: linear warm-up from ``initial_lr_scale`` to 1 over ``warmup_ratio * T``,
  hold at 1 for ``constant_ratio * T``, exponential decay to ``final_lr_scale`` over
  ``decay_ratio * T``, then stay at ``final_lr_scale`` (the wav2vec 2.0 fine-tuning schedule).
- ``exp_decay``: ``final_lr_scale ** (step / T)``: 1 at step 0, ``final_lr_scale`` at ``T``.
- ``step_per_epoch``: ``gamma ** epoch`` with ``epoch = step // steps_per_epoch``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from sv_kedro.utils.params import coerce_scalars

SCHEDULE_KINDS = ("constant", "one_cycle", "tri_stage", "exp_decay", "step_per_epoch")


@dataclass
class ScheduleConfig:
    """Which schedule and its shape parameters (ratios are fractions of the total steps)."""

    kind: str = "constant"
    warmup_ratio: float = 0.1
    constant_ratio: float = 0.4
    decay_ratio: float = 0.5
    initial_lr_scale: float = 0.01
    final_lr_scale: float = 0.01
    gamma: float = 0.9

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(
                f"schedule.kind must be one of {list(SCHEDULE_KINDS)}, got {self.kind!r}"
            )
        for name in ("warmup_ratio", "constant_ratio", "decay_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"schedule.{name} must lie in [0, 1], got {value}")
        if self.kind == "tri_stage":
            total = self.warmup_ratio + self.constant_ratio + self.decay_ratio
            if total > 1.0 + 1e-9:
                raise ValueError(
                    "schedule: warmup_ratio + constant_ratio + decay_ratio must be <= 1 for "
                    f"tri_stage, got {total:g}"
                )
        # Fractions of the peak LR: above 1 a "warm-up" would start above the peak and a
        # "decay" would grow the LR (``exp_decay`` to 5x, ``gamma: 2`` doubling it every
        # epoch), and an infinite one makes the weights NaN; none of these is a schedule here.
        for name in ("initial_lr_scale", "final_lr_scale", "gamma"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"schedule.{name} must lie in (0, 1], got {value}")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> ScheduleConfig:
        """Build from a parameters mapping; an unknown key raises naming it."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"schedule: unknown key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**coerce_scalars(cls, values, "schedule"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ScheduleFactor:
    """Picklable ``step -> factor`` callable; its ``__dict__`` is plain numbers and a string.

    ``LambdaLR.state_dict`` stores the ``__dict__`` of callable objects, so keeping it to
    plain data keeps scheduler state loadable with ``weights_only=True``.
    """

    def __init__(
        self, config: ScheduleConfig, total_steps: int | None, steps_per_epoch: int | None
    ):
        # 0 (not None) means the length is known but an epoch holds fewer micro-batches
        # than one optimiser step takes: saying "set max_steps" would send the user astray.
        if config.kind in ("one_cycle", "tri_stage", "exp_decay") and total_steps == 0:
            raise ValueError(
                f"schedule {config.kind!r}: the run has 0 optimiser steps (an epoch holds "
                "fewer batches than training.grad_accumulation?)"
            )
        if config.kind in ("one_cycle", "tri_stage", "exp_decay") and not total_steps:
            raise ValueError(
                f"schedule {config.kind!r} needs the total number of optimiser steps; set "
                "max_steps, or epochs with a train loader that has a length"
            )
        if config.kind == "step_per_epoch" and steps_per_epoch == 0:
            raise ValueError(
                "schedule 'step_per_epoch': an epoch has 0 optimiser steps (it holds fewer "
                "batches than training.grad_accumulation?)"
            )
        if config.kind == "step_per_epoch" and not steps_per_epoch:
            raise ValueError(
                "schedule 'step_per_epoch' needs the number of steps per epoch; the train "
                "loader must have a length"
            )
        self.kind = config.kind
        self.total_steps = int(total_steps or 0)
        self.steps_per_epoch = int(steps_per_epoch or 0)
        self.warmup_ratio = float(config.warmup_ratio)
        self.constant_ratio = float(config.constant_ratio)
        self.decay_ratio = float(config.decay_ratio)
        self.initial_lr_scale = float(config.initial_lr_scale)
        self.final_lr_scale = float(config.final_lr_scale)
        self.gamma = float(config.gamma)

    def __call__(self, step: int) -> float:
        if self.kind == "constant":
            return 1.0
        if self.kind == "step_per_epoch":
            return self.gamma ** (step // self.steps_per_epoch)
        total = self.total_steps
        step = min(step, total)
        if self.kind == "exp_decay":
            return self.final_lr_scale ** (step / total)
        if self.kind == "one_cycle":
            return self._one_cycle(step, total)
        return self._tri_stage(step, total)

    def _one_cycle(self, step: int, total: int) -> float:
        peak = max(1, round(self.warmup_ratio * total))
        if step <= peak:
            return _cosine(self.initial_lr_scale, 1.0, step / peak)
        return _cosine(1.0, self.final_lr_scale, (step - peak) / max(1, total - peak))

    def _tri_stage(self, step: int, total: int) -> float:
        warmup = round(self.warmup_ratio * total)
        hold = round(self.constant_ratio * total)
        decay = round(self.decay_ratio * total)
        if step < warmup:
            return self.initial_lr_scale + (1.0 - self.initial_lr_scale) * step / warmup
        if step < warmup + hold:
            return 1.0
        if step < warmup + hold + decay:
            return self.final_lr_scale ** ((step - warmup - hold) / decay)
        return self.final_lr_scale if decay > 0 else 1.0


def _cosine(start: float, end: float, progress: float) -> float:
    """Half-cosine interpolation: ``start`` at progress 0, ``end`` at 1."""
    return end + (start - end) * (1.0 + math.cos(math.pi * progress)) / 2.0


def build_scheduler(
    optimizer: Optimizer,
    config: ScheduleConfig,
    total_steps: int | None,
    steps_per_epoch: int | None = None,
) -> LambdaLR:
    """A ``LambdaLR`` applying ``config``'s factor to every parameter group's base LR."""
    return LambdaLR(optimizer, ScheduleFactor(config, total_steps, steps_per_epoch))


def schedule_curve(
    config: ScheduleConfig, total_steps: int, steps_per_epoch: int | None = None
) -> list[float]:
    """The factor at steps ``0 .. total_steps`` (``total_steps + 1`` values), for plots/tests."""
    factor = ScheduleFactor(config, total_steps, steps_per_epoch)
    return [factor(step) for step in range(total_steps + 1)]
