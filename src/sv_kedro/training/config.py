"""``TrainConfig``: every knob of the training loop, built from Kedro parameters.

Plain data only (numbers, strings, a nested ``ScheduleConfig``), so a config travels to
spawned DDP workers by pickling and round-trips through ``to_dict`` / JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from sv_kedro.training.optim import (
    DEFAULT_LAYER_PATTERN,
    OPTIMIZERS,
    build_optimizer,
    build_param_groups,
)
from sv_kedro.training.schedules import ScheduleConfig
from sv_kedro.utils.params import coerce_scalars

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
        if isinstance(self.schedule, Mapping):
            self.schedule = ScheduleConfig.from_dict(dict(self.schedule))
        self.betas = (float(self.betas[0]), float(self.betas[1]))
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
        if not self.lr > 0 or (self.head_lr is not None and not self.head_lr > 0):
            raise ValueError(
                f"training.lr and training.head_lr must be > 0, got {self.lr}, {self.head_lr}"
            )
        if not self.weight_decay >= 0:
            raise ValueError(f"training.weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"training.grad_clip must be > 0 or null, got {self.grad_clip}")

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
