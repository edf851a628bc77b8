"""A training run as plain data, and the worker function every process runs.

A Kedro node builds a ``TrainingJob`` (builder paths + JSON-able configs + manifest paths)
and calls ``launch_training(job, DistributedConfig)``. Each worker imports the builders by
their ``"module:function"`` path, builds its own model, task and loaders, joins the process
group and runs ``loop.train``. Rank 0's checkpoint paths and metric rows come back; the node
loads the checkpoint and returns it (and the metrics) to the catalog.

Builder signatures:

- ``model_builder(model_config: dict) -> nn.Module``
- ``task_builder(task_config: dict) -> TrainingTask``
- ``loader_builder(loader_config: dict) -> LoaderFactory`` (``LoaderRequest -> batches``)
- ``validate_builder(validate_config: dict) -> (model, TrainState) -> {"eer": ...}``
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from sv_kedro.training.config import TrainConfig
from sv_kedro.training.distributed import init_distributed, shutdown_distributed
from sv_kedro.training.launcher import DistributedConfig, launch
from sv_kedro.training.loop import train
from sv_kedro.training.progress import metrics_frame
from sv_kedro.training.resume import seed_everything
from sv_kedro.utils.params import as_bool


@dataclass
class TrainingJob:
    """Everything a worker needs, as picklable plain data."""

    model_builder: str | Callable[[dict[str, Any]], Any]
    task_builder: str | Callable[[dict[str, Any]], Any]
    loader_builder: str | Callable[[dict[str, Any]], Any]
    checkpoint_dir: str
    train_config: dict[str, Any] = field(default_factory=dict)
    model_config: dict[str, Any] = field(default_factory=dict)
    task_config: dict[str, Any] = field(default_factory=dict)
    loader_config: dict[str, Any] = field(default_factory=dict)
    validate_builder: str | Callable[[dict[str, Any]], Any] | None = None
    validate_config: dict[str, Any] = field(default_factory=dict)
    architecture: str | None = None
    resume: bool = True
    device: str = "auto"
    timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        # "resume: nope" would be true, and a fresh run would resume.
        as_bool(self.resume, "run.resume")


@dataclass
class LaunchResult:
    """What a training node gets back from its workers (rank 0's view)."""

    last_checkpoint_path: Path
    best_checkpoint_path: Path | None
    metrics: pd.DataFrame
    stopped_early: bool


def resolve_callable(target: str | Callable[..., Any], what: str) -> Callable[..., Any]:
    """``"package.module:function"`` (or a callable, returned as is) -> the callable."""
    if callable(target):
        return target
    module_name, _, attribute = str(target).partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{what}: expected 'package.module:function', got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(f"{what}: cannot import module {module_name!r} ({error})") from error
    try:
        function = getattr(module, attribute)
    except AttributeError:
        raise AttributeError(f"{what}: module {module_name!r} has no {attribute!r}") from None
    if not callable(function):
        raise TypeError(f"{what}: {target!r} is not callable")
    return function


def run_training_worker(job: TrainingJob) -> dict[str, Any]:
    """The entry point of every training process (module-level, so spawn can import it)."""
    ctx = init_distributed(job.device, job.timeout_s)
    try:
        # A fresh model's weights come from the global RNG: seed it first, so the same job
        # gives the same model whatever ran earlier in this process (same on every rank).
        seed_everything(int(job.train_config.get("seed", 0)))
        model = resolve_callable(job.model_builder, "model_builder")(dict(job.model_config))
        task = resolve_callable(job.task_builder, "task_builder")(dict(job.task_config))
        loader_factory = resolve_callable(job.loader_builder, "loader_builder")(
            dict(job.loader_config)
        )
        validate_fn = None
        if job.validate_builder is not None:
            build = resolve_callable(job.validate_builder, "validate_builder")
            validate_fn = build(dict(job.validate_config))
        result = train(
            model,
            task,
            loader_factory,
            TrainConfig.from_dict(job.train_config),
            job.checkpoint_dir,
            resume=job.resume,
            validate_fn=validate_fn,
            ctx=ctx,
            architecture=job.architecture,
            # A builder may attach the config that rebuilds the model offline (e.g. with
            # the encoder's transformers config inline instead of a hub id).
            model_config=getattr(model, "checkpoint_config", None) or job.model_config,
        )
        return {
            "last_checkpoint": str(result.last_checkpoint_path),
            "best_checkpoint": (
                None if result.best_checkpoint_path is None else str(result.best_checkpoint_path)
            ),
            "metrics": result.metrics.to_dict(orient="records"),
            "stopped_early": result.stopped_early,
        }
    finally:
        if ctx.is_distributed:
            shutdown_distributed()


def launch_training(job: TrainingJob, config: DistributedConfig) -> LaunchResult:
    """Run ``job`` on the workers ``config`` describes; rank 0's outcome.

    Raises ``launcher.TrainingFailed`` (worker rank, error and traceback) when a worker fails.
    """
    job = replace(job, device=config.device, timeout_s=config.timeout_s)
    outcome = launch(run_training_worker, (job,), config)
    best = outcome["best_checkpoint"]
    return LaunchResult(
        last_checkpoint_path=Path(outcome["last_checkpoint"]),
        best_checkpoint_path=None if best is None else Path(best),
        metrics=metrics_frame(outcome["metrics"]),
        stopped_early=bool(outcome["stopped_early"]),
    )
