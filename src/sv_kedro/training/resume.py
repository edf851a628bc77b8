"""What the loop puts in a checkpoint beyond the model, and how it is put back.

The format-1 payload (``training.checkpoint``) is extended with two entries of
``training_state`` the contract leaves open: ``grad_scaler`` (fp16 GradScaler state) and
``loop`` (best monitored value, validations without improvement, the metric rows so far and
the config used). ``sampler`` holds the position: ``{"epoch", "batch_in_epoch", "seed",
"world_size", "grad_accumulation"}``; ``loss_gate`` holds the task's state and the per-sample
losses already gathered in the unfinished epoch; ``rng`` is rank 0's generator state with the
other ranks' states under ``other_ranks``.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sv_kedro.training.checkpoint import (
    CheckpointError,
    build_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from sv_kedro.training.distributed import (
    DistContext,
    all_gather_objects,
    gather_per_sample_losses,
)
from sv_kedro.training.rng_state import capture_rng_state, restore_rng_state
from sv_kedro.training.schedules import ScheduleFactor

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"


@dataclass
class LoopPosition:
    """Counters and bookkeeping that must survive a restart."""

    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    best_value: float | None = None
    evals_without_improvement: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def gather_rng_states(ctx: DistContext) -> dict[str, Any]:
    """Rank 0's RNG state (top level, as ``capture_rng_state``) plus the other ranks'."""
    states = all_gather_objects(capture_rng_state(), ctx)
    combined: dict[str, Any] = dict(states[0])
    if ctx.is_distributed:
        combined["other_ranks"] = list(states[1:])
    return combined


def restore_rank_rng(rng: dict[str, Any] | None, ctx: DistContext, fallback_seed: int) -> None:
    """Put back this rank's generators; re-seed when the world size changed."""
    if rng is None:
        seed_everything(fallback_seed)
        return
    if ctx.rank == 0:
        restore_rng_state(rng)
        return
    others = rng.get("other_ranks") or []
    if len(others) == ctx.world_size - 1:
        restore_rng_state(others[ctx.rank - 1])
    else:
        logger.warning(
            "checkpoint has RNG states for %d process(es), this job has %d; rank %d is "
            "re-seeded, so random augmentation/dropout will not replay exactly",
            len(others) + 1,
            ctx.world_size,
            ctx.rank,
        )
        seed_everything(fallback_seed)


def loop_state(position: LoopPosition, config_dict: dict[str, Any]) -> dict[str, Any]:
    """The ``training_state["loop"]`` entry (plain data only)."""
    return {
        "best_value": position.best_value,
        "evals_without_improvement": position.evals_without_improvement,
        "rows": [dict(row) for row in position.rows],
        "stopped_early": position.stopped_early,
        "config": config_dict,
    }


def sampler_state(position: LoopPosition, seed: int, world_size: int, accumulation: int) -> dict:
    return {
        "epoch": position.epoch,
        "batch_in_epoch": position.batch_in_epoch,
        "seed": seed,
        "world_size": world_size,
        "grad_accumulation": accumulation,
    }


def restore_position(
    training_state: dict[str, Any], world_size: int, accumulation: int, source: str
) -> LoopPosition:
    """Counters from a checkpoint; refuses a mid-epoch position another layout cannot replay."""
    sampler = training_state.get("sampler") or {}
    loop = training_state.get("loop") or {}
    position = LoopPosition(
        epoch=int(training_state["epoch"]),
        step=int(training_state["step"]),
        batch_in_epoch=int(sampler.get("batch_in_epoch", 0)),
        best_value=loop.get("best_value"),
        evals_without_improvement=int(loop.get("evals_without_improvement", 0)),
        rows=[dict(row) for row in loop.get("rows", [])],
        stopped_early=bool(loop.get("stopped_early", False)),
    )
    if position.batch_in_epoch:
        saved = (sampler.get("world_size"), sampler.get("grad_accumulation"))
        if saved != (world_size, accumulation):
            raise ValueError(
                f"{source}: written mid-epoch (epoch {position.epoch}, micro-batch "
                f"{position.batch_in_epoch}) by {saved[0]} process(es) with grad_accumulation="
                f"{saved[1]}; this run has {world_size} and {accumulation}, so the position "
                "cannot be replayed. Resume with the same layout or from an epoch-end checkpoint."
            )
    return position


def resume_trainer(trainer: Any) -> None:
    """Load ``trainer.last_path`` into the loop's model, optimiser, scheduler, task, RNG.

    ``trainer`` is the loop's private ``_Trainer`` (kept here to keep ``loop.py`` short).
    """
    try:
        payload = load_checkpoint(trainer.last_path)
    except CheckpointError as exc:
        raise CheckpointError(
            f"{exc}. It is the checkpoint this run would resume from: delete it to train "
            "from the start (the steps it holds are lost either way), or set "
            "run.resume: false to ignore it"
        ) from exc
    training = payload["training_state"]
    ctx: DistContext = trainer.ctx
    trainer.position = restore_position(
        training, ctx.world_size, trainer.config.grad_accumulation, str(trainer.last_path)
    )
    trainer.model.load_state_dict(payload["model_state"])
    if training.get("optimizer") is not None:
        trainer.optimizer.load_state_dict(training["optimizer"])
    if training.get("scheduler") is not None:
        trainer.scheduler.load_state_dict(training["scheduler"])
        # The schedule's shape follows this run's config (e.g. more epochs), not the file's.
        fresh = ScheduleFactor(
            trainer.config.schedule, trainer.total_steps, trainer.steps_per_epoch
        )
        trainer.scheduler.lr_lambdas = [fresh] * len(trainer.optimizer.param_groups)
    if trainer.scaler is not None and training.get("grad_scaler"):
        trainer.scaler.load_state_dict(training["grad_scaler"])
    gate = training.get("loss_gate") or {}
    if gate.get("task") is not None and hasattr(trainer.task, "load_state_dict"):
        trainer.task.load_state_dict(gate["task"])
    # Rank 0 saved the losses every rank had gathered so far in the epoch; it alone
    # carries them on, so the epoch-end gather sees each of them once.
    if ctx.is_main and gate.get("pending_indices") is not None:
        trainer.pending = [
            (gate["pending_indices"].to(ctx.device), gate["pending_losses"].to(ctx.device))
        ]
    restore_rank_rng(training.get("rng"), ctx, trainer.config.seed + ctx.rank)
    trainer.saved_at = trainer.where()
    best = trainer.checkpoint_dir / BEST_CHECKPOINT
    if best.is_file():
        trainer.best_path = best
    position = trainer.position
    # A re-run of a completed training loads last.pt only to hand back its model and
    # metrics; "resumed" would suggest that more steps follow.
    if trainer.finished():
        logger.info(
            "training already finished at epoch %d, step %d%s (%s); nothing to resume",
            position.epoch,
            position.step,
            " (stopped early)" if position.stopped_early else "",
            trainer.last_path,
        )
        return
    logger.info(
        "resumed from %s at epoch %d, step %d, micro-batch %d",
        trainer.last_path,
        position.epoch,
        position.step,
        position.batch_in_epoch,
    )


def save_trainer_checkpoint(
    trainer: Any, path: Path, metrics: dict[str, float] | None = None
) -> None:
    """Write ``path`` from rank 0; every rank must call it (RNG and loss gathers)."""
    ctx: DistContext = trainer.ctx
    position: LoopPosition = trainer.position
    config = trainer.config
    rng = gather_rng_states(ctx)
    pending = gather_per_sample_losses(trainer.pending, ctx) if position.batch_in_epoch else None
    if path == trainer.last_path:
        trainer.saved_at = trainer.where()
    if not ctx.is_main:
        return
    task = trainer.task
    gate: dict[str, Any] = {"task": task.state_dict() if hasattr(task, "state_dict") else None}
    if pending is not None:
        gate.update(pending_indices=pending.indices, pending_losses=pending.losses)
    scalars = dict(metrics or {})
    if position.best_value is not None:
        scalars[f"best_val_{config.monitor}"] = float(position.best_value)
    train_rows = [row for row in position.rows if row.get("kind") == "train"]
    if train_rows:
        scalars["train_loss"] = float(train_rows[-1]["loss"])
    payload = build_checkpoint(
        trainer.architecture,
        trainer.model_config,
        trainer.model.state_dict(),
        epoch=position.epoch,
        step=position.step,
        optimizer=trainer.optimizer.state_dict(),
        scheduler=trainer.scheduler.state_dict(),
        rng=rng,
        sampler=sampler_state(position, config.seed, ctx.world_size, config.grad_accumulation),
        loss_gate=gate,
        metrics=scalars,
    )
    scaler = trainer.scaler
    payload["training_state"]["grad_scaler"] = scaler.state_dict() if scaler else None
    payload["training_state"]["loop"] = loop_state(position, config.to_dict())
    save_checkpoint(path, payload)
