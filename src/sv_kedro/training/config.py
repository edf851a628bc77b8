"""``TrainConfig``: every knob of the training loop, built from Kedro parameters.

Plain data only (numbers, strings, a nested ``ScheduleConfig``), so a config travels to
spawned DDP workers by pickling and round-trips through ``to_dict`` / JSON.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from sv_kedro.training.optim import (
    DEFAULT_LAYER_PATTERN,
    OPTIMIZERS,
    build_optimizer,
    build_param_groups,
)
from sv_kedro.training.schedules import SCHEDULE_KINDS, ScheduleConfig
from sv_kedro.utils.params import as_float, coerce_scalars

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Training-loop settings.

    Attributes:
        epochs: passes over the train loader; ``None`` runs until ``max_steps``.
        max_steps: cap on optimiser steps (the smaller of both limits wins).
        optimizer: ``adam`` | ``adamw`` | ``sgd``.
        lr: encoder LR (the top layer's when ``layer_decay < 1``).
        head_lr: LR of non-encoder parameters; ``None`` means ``lr``.
        layer_decay: layer-wise LR decay factor (1 = none); see ``optim.build_param_groups``.
        encoder_prefix, layer_pattern: how encoder parameters and their layer index are found.
        schedule: LR schedule (``ScheduleConfig`` or its dict).
        grad_clip: max global gradient norm; ``None`` disables clipping.
        grad_accumulation: micro-batches per optimiser step (leftover micro-batches at the
            end of an epoch are dropped so that every step sees the same number).
        precision: ``fp32`` | ``bf16`` (autocast) | ``fp16`` (autocast + GradScaler; CUDA
            only, falls back to fp32 on CPU with a warning).
        validate_every_steps: run the validation callable every N optimiser steps;
            ``None`` validates at the end of every epoch (when a callable is given).
        checkpoint_every_steps: also write ``last.pt`` every N steps (always at epoch end).
        early_stopping_patience: stop after this many validations without improvement of
            ``monitor`` (lower is better); ``None`` disables.
        monitor: validation metric that selects ``best.pt`` (lower is better).
        seed: seeds Python, NumPy and torch (``seed + rank`` per process).
        log_every: optimiser steps between metric rows / progress-bar updates.
        progress_bar: ``None`` shows a tqdm bar on rank 0 when stderr is a TTY.
        find_unused_parameters: passed to DDP (needed with layerdrop).
    """

    epochs: int | None = 1
    max_steps: int | None = None
    optimizer: str = "adamw"
    lr: float = 1e-4
    head_lr: float | None = None
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9
    nesterov: bool = False
    layer_decay: float = 1.0
    encoder_prefix: str = "encoder."
    layer_pattern: str = DEFAULT_LAYER_PATTERN
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    grad_clip: float | None = None
    grad_accumulation: int = 1
    precision: str = "fp32"
    validate_every_steps: int | None = None
    checkpoint_every_steps: int | None = None
    early_stopping_patience: int | None = None
    monitor: str = "eer"
    seed: int = 0
    log_every: int = 10
    progress_bar: bool | None = None
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.schedule, str | Mapping):
            # A kind name (``training.schedule=tri_stage``) or a mapping; its errors name
            # ``schedule.<key>``, which sits under ``training``.
            values = {"kind": self.schedule} if isinstance(self.schedule, str) else self.schedule
            try:
                self.schedule = ScheduleConfig.from_dict(dict(values))
            except ValueError as exc:
                raise ValueError(f"training.{exc}") from exc
        elif not isinstance(self.schedule, ScheduleConfig):
            # ``schedule: null`` would otherwise pass here and fail in the training worker
            # with "'NoneType' object has no attribute 'kind'".
            raise ValueError(
                "training.schedule must be a mapping such as {kind: constant} or a kind name "
                f"(one of {list(SCHEDULE_KINDS)}), got {self.schedule!r}"
            )
        self.betas = _checked_betas(self.betas)
        if self.epochs is None and self.max_steps is None:
            raise ValueError("training: set epochs, max_steps or both")
        for name in (
            "epochs",
            "max_steps",
            "validate_every_steps",
            "checkpoint_every_steps",
            "early_stopping_patience",
        ):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"training.{name} must be a positive int or null, got {value!r}")
        for name in ("grad_accumulation", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"training.{name} must be a positive int, got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"training.optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"training.precision must be one of {list(PRECISIONS)}, got {self.precision!r}"
            )
        # An infinite LR or decay passes "> 0" but makes every weight NaN at the first step.
        for name in ("lr", "head_lr"):
            value = getattr(self, name)
            if value is not None and not 0 < value < math.inf:
                raise ValueError(f"training.{name} must be a finite number > 0, got {value}")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(
                f"training.weight_decay must be a finite number >= 0, got {self.weight_decay}"
            )
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"training.grad_clip must be > 0 or null, got {self.grad_clip}")
        # The optimiser and its parameter groups are built in the training worker, after the
        # model: check their settings here, naming the key, instead of failing there.
        if not 0 < self.eps < math.inf:
            raise ValueError(f"training.eps must be a finite number > 0, got {self.eps}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"training.momentum must lie in [0, 1), got {self.momentum}")
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0:
            raise ValueError("training.nesterov needs training.momentum > 0 (sgd)")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"training.layer_decay must lie in (0, 1], got {self.layer_decay}")
        if not isinstance(self.encoder_prefix, str):
            raise ValueError(
                f"training.encoder_prefix must be a string, got {self.encoder_prefix!r}"
            )
        _check_layer_pattern(self.layer_pattern)
        if not isinstance(self.seed, int) or self.seed < 0:
            # The samplers seed NumPy generators with (seed, epoch), which refuse negatives.
            raise ValueError(f"training.seed must be an integer >= 0, got {self.seed!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> TrainConfig:
        """Build from Kedro parameters; an unknown key raises naming it (typo guard)."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"training: unknown key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**coerce_scalars(cls, values, "training"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (``from_dict(to_dict())`` gives an equal config)."""
        values = asdict(self)
        values["betas"] = list(self.betas)
        return values

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """The configured optimiser over ``build_param_groups(model, ...)``."""
        groups = build_param_groups(
            model,
            self.lr,
            self.head_lr,
            self.layer_decay,
            self.weight_decay,
            self.encoder_prefix,
            self.layer_pattern,
        )
        return build_optimizer(
            groups, self.optimizer, self.betas, self.eps, self.momentum, self.nesterov
        )


def _checked_betas(betas: Any) -> tuple[float, float]:
    """``training.betas`` as two numbers in [0, 1) (Adam's moment decays), naming the key."""
    if isinstance(betas, str | bytes) or not isinstance(betas, Sequence) or len(betas) != 2:
        raise ValueError(f"training.betas must be a list of two numbers, got {betas!r}")
    values = tuple(as_float(beta, f"training.betas[{i}]") for i, beta in enumerate(betas))
    for index, value in enumerate(values):
        if not 0 <= value < 1:
            raise ValueError(f"training.betas[{index}] must lie in [0, 1), got {value}")
    return values[0], values[1]


def _check_layer_pattern(pattern: Any) -> None:
    """``training.layer_pattern`` must compile and capture the layer index (group 1)."""
    try:
        groups = re.compile(pattern).groups
    except (re.error, TypeError) as exc:
        raise ValueError(
            f"training.layer_pattern must be a regular expression, got {pattern!r}: {exc}"
        ) from None
    if groups < 1:
        raise ValueError(
            f"training.layer_pattern must capture the layer index in a group, got {pattern!r} "
            f"(e.g. {DEFAULT_LAYER_PATTERN!r})"
        )
