"""The training loop: plain PyTorch, DDP-aware, exactly resumable.

``train`` runs in every process of a job (or alone). Per optimiser step it runs
``grad_accumulation`` micro-batches through ``task.compute_loss`` (DDP gradient sync only on
the last one), clips, steps optimiser and scheduler. Per-sample losses are kept on the
device and gathered from every rank at the end of an epoch for ``task.on_epoch_end`` (the
loss-gate refit). Rank 0 writes ``last.pt`` (every epoch end, every
``checkpoint_every_steps`` and at the end) and ``best.pt`` (when the monitored validation
metric improves), both atomically.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sv_kedro.training.config import TrainConfig
from sv_kedro.training.distributed import (
    DistContext,
    all_reduce_min_int,
    all_reduce_sum,
    broadcast_object,
    current_context,
    gather_per_sample_losses,
)
from sv_kedro.training.progress import (
    MetricWindow,
    ProgressBar,
    log_row,
    metrics_frame,
    train_row,
)
from sv_kedro.training.resume import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    LoopPosition,
    resume_trainer,
    save_trainer_checkpoint,
    seed_everything,
)
from sv_kedro.training.schedules import build_scheduler
from sv_kedro.training.task import (
    LoaderFactory,
    LoaderRequest,
    StepOutput,
    TrainingTask,
    TrainState,
    move_to_device,
)

logger = logging.getLogger(__name__)


ValidateFn = Callable[[nn.Module, TrainState], Mapping[str, float]]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainResult:
    """What ``train`` hands back (identical metrics on every rank but for local extras)."""

    model: nn.Module
    metrics: pd.DataFrame
    best_checkpoint_path: Path | None
    last_checkpoint_path: Path
    stopped_early: bool = False


def train(
    model: nn.Module,
    task: TrainingTask,
    train_loader_factory: LoaderFactory,
    config: TrainConfig,
    checkpoint_dir: str | Path,
    resume: bool = True,
    validate_fn: ValidateFn | None = None,
    ctx: DistContext | None = None,
    architecture: str | None = None,
    model_config: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` with ``task`` on batches from ``train_loader_factory``.

    Args:
        model: the model (moved to the process's device; wrapped in DDP when distributed).
        task: computes the loss of a batch (see ``task.TrainingTask``).
        train_loader_factory: ``LoaderRequest -> iterable of batches`` (see ``LoaderRequest``).
        config: loop settings.
        checkpoint_dir: folder of ``last.pt`` / ``best.pt`` (shared by all nodes).
        resume: continue from ``checkpoint_dir/last.pt`` when it exists.
        validate_fn: ``(model, state) -> {"eer": ..., ...}``, run on rank 0 in eval mode
            under ``torch.no_grad``; the result is broadcast to every rank.
        ctx: process context; ``None`` uses the initialised process group or one process.
        architecture, model_config: recorded in checkpoints (default: the model's
            ``architecture`` / ``model_config`` attributes, else its class name / ``{}``).
    """
    ctx = ctx or current_context()
    trainer = _Trainer(model, task, train_loader_factory, config, Path(checkpoint_dir), ctx)
    trainer.validate_fn = validate_fn
    trainer.architecture = architecture or getattr(model, "architecture", type(model).__name__)
    trainer.model_config = dict(model_config or getattr(model, "model_config", None) or {})
    return trainer.run(resume)


class _Trainer:
    def __init__(self, model, task, loader_factory, config, checkpoint_dir, ctx):
        self.config: TrainConfig = config
        self.ctx: DistContext = ctx
        self.task = task
        self.loader_factory = loader_factory
        self.validate_fn: ValidateFn | None = None
        self.architecture, self.model_config = type(model).__name__, {}
        self.checkpoint_dir = checkpoint_dir
        self.last_path = checkpoint_dir / LAST_CHECKPOINT
        self.best_path: Path | None = None
        seed_everything(config.seed + ctx.rank)
        self.model = model.to(ctx.device)
        self.optimizer = config.build_optimizer(self.model)
        self.steps_per_epoch = self._steps_per_epoch()
        self.total_steps = self._total_steps()
        self.scheduler = build_scheduler(
            self.optimizer, config.schedule, self.total_steps, self.steps_per_epoch
        )
        precision = config.precision
        if precision == "fp16" and ctx.device.type != "cuda":
            warnings.warn("precision fp16 needs CUDA; training in fp32 on CPU", stacklevel=3)
            precision = "fp32"
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.position = LoopPosition()
        self.saved_at: tuple[int, int, int] | None = None
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    # ----------------------------------------------------------------------------- setup
    def _steps_per_epoch(self) -> int | None:
        probe = self.loader_factory(self._request(0, 0))
        if not isinstance(probe, Sized):
            if self.ctx.is_distributed:
                raise TypeError("with several processes the train loader must have a len()")
            return None
        return all_reduce_min_int(len(probe), self.ctx) // self.config.grad_accumulation

    def _total_steps(self) -> int | None:
        by_epochs = None
        if self.config.epochs is not None and self.steps_per_epoch is not None:
            by_epochs = self.config.epochs * self.steps_per_epoch
        limits = [n for n in (by_epochs, self.config.max_steps) if n is not None]
        return min(limits) if limits else None

    def _request(self, epoch: int, start_batch: int) -> LoaderRequest:
        return LoaderRequest(
            epoch, start_batch, self.ctx.rank, self.ctx.world_size, self.config.seed
        )

    # ------------------------------------------------------------------------------ run
    def run(self, resume: bool) -> TrainResult:
        if resume and self.last_path.is_file():
            resume_trainer(self)
        train_model: nn.Module = self.model
        if self.ctx.is_distributed:
            train_model = DistributedDataParallel(
                self.model,
                device_ids=[self.ctx.device.index] if self.ctx.device.type == "cuda" else None,
                find_unused_parameters=self.config.find_unused_parameters,
            )
        self.train_model = train_model
        bar = ProgressBar(
            self.total_steps, self.position.step, self.config.progress_bar, self.ctx.is_main
        )
        self.window = MetricWindow(self.ctx.device)
        self.window_first_step = self.position.step
        try:
            while not self.finished():
                self._run_epoch(bar)
        except KeyboardInterrupt:
            self._report_interruption()
            raise
        finally:
            bar.close()
        self._log_window()
        if self.saved_at != self.where():
            save_trainer_checkpoint(self, self.last_path)
        rows, stopped = metrics_frame(self.position.rows), self.position.stopped_early
        return TrainResult(self.model, rows, self.best_path, self.last_path, stopped)

    def _report_interruption(self) -> None:
        """Say where a re-run picks up: Kedro itself prints only "Aborted!"."""
        if not self.ctx.is_main:
            return
        if self.saved_at is None:
            logger.warning(
                "training interrupted at step %d before its first checkpoint: a re-run "
                "starts from step 0",
                self.position.step,
            )
            return
        epoch, step, _ = self.saved_at
        logger.warning(
            "training interrupted at step %d; %s holds epoch %d, step %d: run the same "
            "command again to resume from there (run.resume: true)",
            self.position.step,
            self.last_path,
            epoch,
            step,
        )

    def finished(self) -> bool:
        """True once the configured epochs / max_steps are done or training stopped early."""
        pos, cfg = self.position, self.config
        return (
            pos.stopped_early
            or (cfg.max_steps is not None and pos.step >= cfg.max_steps)
            or (cfg.epochs is not None and pos.epoch >= cfg.epochs)
        )

    def where(self) -> tuple[int, int, int]:
        return (self.position.epoch, self.position.step, self.position.batch_in_epoch)

    def _state(self) -> TrainState:
        pos, ctx = self.position, self.ctx
        return TrainState(
            pos.epoch,
            pos.step,
            pos.batch_in_epoch,
            ctx.rank,
            ctx.world_size,
            ctx.device,
            self.model,
            self.total_steps,
        )

    def _run_epoch(self, bar: ProgressBar) -> None:
        pos, accumulation = self.position, self.config.grad_accumulation
        loader = self.loader_factory(self._request(pos.epoch, pos.batch_in_epoch))
        epoch_batches = None
        if isinstance(loader, Sized):
            epoch_batches = pos.batch_in_epoch + all_reduce_min_int(len(loader), self.ctx)
            epoch_batches -= epoch_batches % accumulation
            if epoch_batches == 0:
                raise ValueError(
                    f"epoch {pos.epoch}: the train loader yields fewer micro-batches than "
                    f"grad_accumulation={accumulation}"
                )
        # Creating a DataLoader iterator draws a seed from torch's global generator; fork it
        # so that the training RNG stream does not depend on where an epoch was resumed.
        with torch.random.fork_rng(devices=[]):
            batches = iter(loader)
        self.model.train()
        while epoch_batches is None or pos.batch_in_epoch < epoch_batches:
            if self.config.max_steps is not None and pos.step >= self.config.max_steps:
                return
            if not self._optimizer_step(batches, epoch_batches):
                break
            bar.advance()
            if pos.step % self.config.log_every == 0:
                self._log_window(bar)
            every = self.config.validate_every_steps
            if every is not None and pos.step % every == 0:
                self._validate()
            every = self.config.checkpoint_every_steps
            if every is not None and pos.step % every == 0:
                save_trainer_checkpoint(self, self.last_path)
            if pos.stopped_early:
                return
        self._end_epoch()

    def _optimizer_step(self, batches: Iterator[Any], epoch_batches: int | None) -> bool:
        """One optimiser step over ``grad_accumulation`` micro-batches; False at epoch end."""
        accumulation, pos = self.config.grad_accumulation, self.position
        for micro in range(accumulation):
            try:
                batch = next(batches)
            except StopIteration:
                if epoch_batches is not None:
                    raise RuntimeError(
                        f"epoch {pos.epoch}: the train loader stopped after "
                        f"{pos.batch_in_epoch + micro} micro-batches but its len() promised "
                        f"{epoch_batches}"
                    ) from None
                if micro:
                    self.optimizer.zero_grad(set_to_none=True)
                return False
            batch = move_to_device(batch, self.ctx.device)
            sync = micro == accumulation - 1 or not self.ctx.is_distributed
            no_sync = contextlib.nullcontext() if sync else self.train_model.no_sync()
            with no_sync:
                with self._autocast():
                    output = self.task.compute_loss(self.train_model, batch, self._state())
                loss = output.loss / accumulation
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            self._record(output, batch)
        grad_norm = None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.config.grad_clip is not None:
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        pos.step += 1
        pos.batch_in_epoch += accumulation
        if grad_norm is not None:
            self.window.extras.setdefault("grad_norm", []).append(grad_norm)
        return True

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.ctx.device.type, dtype=self.autocast_dtype)

    def _record(self, output: StepOutput, batch: Any) -> None:
        per_sample = output.per_sample_loss.detach().float().reshape(-1)
        indices = output.sample_indices
        if indices is None and isinstance(batch, Mapping):
            indices = batch.get("indices")
        if indices is None:
            indices = torch.full_like(per_sample, -1, dtype=torch.int64)
        self.pending.append(
            (
                torch.as_tensor(indices, device=per_sample.device).reshape(-1).to(torch.int64),
                per_sample,
            )
        )
        logged = output.loss if output.logged_loss is None else output.logged_loss
        self.window.add(logged, output.n_correct, output.n_samples, output.extra)

    # ------------------------------------------------------------------ epoch boundaries
    def _end_epoch(self) -> None:
        # Close the metric window here so that rows do not depend on where a run resumed.
        self._log_window()
        gathered = gather_per_sample_losses(self.pending, self.ctx)
        self.pending = []
        hook = getattr(self.task, "on_epoch_end", None)
        if hook is not None:
            values = hook(self._state(), gathered) or {}
            if values:
                self._append_row({"kind": "epoch", **{k: float(v) for k, v in values.items()}})
        self.position.epoch += 1
        self.position.batch_in_epoch = 0
        if self.config.validate_every_steps is None:
            self._validate()
        save_trainer_checkpoint(self, self.last_path)

    # ------------------------------------------------------------- logging and validation
    def _append_row(self, values: dict[str, Any]) -> None:
        row = {"step": self.position.step, "epoch": self.position.epoch, **values}
        self.position.rows.append(row)
        if self.ctx.is_main:
            log_row(row)

    def _log_window(self, bar: ProgressBar | None = None) -> None:
        steps = self.position.step - self.window_first_step
        totals = all_reduce_sum(self.window.totals, self.ctx).tolist()
        elapsed = time.perf_counter() - self.window.started
        if steps == 0 or totals[2] == 0:
            return
        loss = totals[0] / totals[2]
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss} over steps {self.window_first_step + 1}.."
                f"{self.position.step} (epoch {self.position.epoch}); lower the LR, enable "
                "grad_clip or check the inputs"
            )
        row = train_row(totals, elapsed, self.optimizer.param_groups)
        row.update(self.window.extra_means())
        self._append_row(row)
        if bar is not None:
            bar.show(row)
        self.window.reset()
        self.window_first_step = self.position.step

    def _validate(self) -> None:
        if self.validate_fn is None:
            return
        metrics = None
        if self.ctx.is_main:
            self.model.eval()
            with torch.no_grad():
                metrics = {
                    k: float(v) for k, v in self.validate_fn(self.model, self._state()).items()
                }
            self.model.train()
        metrics = broadcast_object(metrics, self.ctx)
        monitor = self.config.monitor
        if monitor not in metrics:
            raise KeyError(
                f"validation returned {sorted(metrics)}; training.monitor={monitor!r} "
                "is not among them"
            )
        self._append_row({"kind": "val", **{f"val_{k}": v for k, v in metrics.items()}})
        pos, value = self.position, metrics[monitor]
        if pos.best_value is None or value < pos.best_value:
            pos.best_value = value
            pos.evals_without_improvement = 0
            self.best_path = self.checkpoint_dir / BEST_CHECKPOINT
            save_trainer_checkpoint(
                self, self.best_path, {f"val_{k}": v for k, v in metrics.items()}
            )
            return
        pos.evals_without_improvement += 1
        patience = self.config.early_stopping_patience
        if patience is not None and pos.evals_without_improvement >= patience:
            message = "early stopping at step %d: %s did not improve on %.5f for %d validations"
            logger.info(message, pos.step, monitor, pos.best_value, patience)
            pos.stopped_early = True
