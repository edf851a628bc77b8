"""supervised_training nodes: train one SV system, find its learning rate, check its setup.

Each system's parameters (``conf/<env>/parameters_supervised_training.yml``) have the
blocks ``model`` (``build_model``), ``loss`` (``build_loss``), ``training``
(``TrainConfig``), ``data`` (the loader, see ``systems.loaders``), ``run`` (work folder,
resume, threads), ``distributed`` (``DistributedConfig``) and ``lr_finder``. The nodes only
adapt them; training itself is ``systems.runner.train_speaker_system``.

Two conveniences make ``--params`` overrides read like the paper's ablation names:

- an encoder key given directly under ``model`` (``model.layerdrop=0``,
  ``model.completely_freeze_feature_extractor=false``) moves into ``model.encoder``;
- ``training.schedule`` may be a schedule name (``training.schedule=tri_stage``).

Each run trains in ``run.work_dir/<fingerprint>``, the fingerprint hashing the model, loss,
training and data settings and the training manifest: re-running with the same settings
resumes (or finds finished) the same run, while changed settings start a fresh one instead
of silently resuming a run trained with other values.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from matplotlib.figure import Figure

from sv_kedro.pipelines.supervised_training.settings import (
    check_loss_fits_model,
    check_system,
    lr_finder_options,
    resolve_model_config,
    resolve_training_config,
)
from sv_kedro.systems.fingerprint import run_fingerprint
from sv_kedro.systems.loaders import build_loader
from sv_kedro.systems.runner import build_system_model, train_speaker_system
from sv_kedro.systems.tasks import build_task
from sv_kedro.training.config import TrainConfig
from sv_kedro.training.lr_finder import lr_range_test, plot_lr_finder
from sv_kedro.training.optim import build_optimizer
from sv_kedro.training.task import LoaderRequest, TrainState, move_to_device
from sv_kedro.utils.atomic import atomic_write_path

log = logging.getLogger(__name__)


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` intra-op threads (``None``: unchanged); restored afterwards.

    Tiny models on a busy CPU train several times faster on one thread than on two that
    wait for each other.
    """
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(int(count))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _write_manifest(manifest: pd.DataFrame, path: Path) -> str:
    with atomic_write_path(path) as tmp:
        manifest.to_parquet(tmp, index=False)
    return str(path)


# ------------------------------------------------------------------------------ nodes
def train_speaker_model(
    train_manifest: pd.DataFrame,
    validation_manifest: pd.DataFrame,
    validation_pairs: pd.DataFrame,
    model: dict[str, Any],
    loss: dict[str, Any],
    training: dict[str, Any],
    data: dict[str, Any],
    run: dict[str, Any],
    distributed: dict[str, Any],
    lr_suggestion: dict[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Train one system through the DDP launcher; return ``(checkpoint, training metrics)``.

    ``lr_suggestion`` is the LR range test's output: with ``use_suggestion`` its LR replaces
    ``training.lr`` (the paper's ``auto_lr_find``).
    """
    model_config, training_config = check_system(model, loss, training, data, run)
    if lr_suggestion.get("enabled") and lr_suggestion.get("use_suggestion"):
        log.info(
            "training.lr %g replaced by the LR range test's suggestion %g",
            training_config.get("lr", float("nan")),
            lr_suggestion["suggested_lr"],
        )
        training_config["lr"] = float(lr_suggestion["suggested_lr"])
    settings = {"model": model_config, "loss": loss, "training": training_config, "data": data}
    fingerprint = run_fingerprint(train_manifest, settings)
    run_config = {k: v for k, v in run.items() if k != "torch_threads"}
    run_config["work_dir"] = str(Path(run["work_dir"]) / fingerprint)
    log.info("training in %s", run_config["work_dir"])
    with torch_threads(run.get("torch_threads")):
        checkpoint, metrics = train_speaker_system(
            train_manifest,
            validation_manifest,
            validation_pairs,
            model_config,
            loss,
            training_config,
            data,
            run_config,
            distributed,
        )
    metrics = metrics.assign(run=fingerprint)
    return checkpoint, metrics


def _disabled_figure(reason: str) -> Figure:
    figure = Figure(figsize=(6, 2), layout="constrained")
    axes = figure.add_subplot()
    axes.axis("off")
    axes.text(0.5, 0.5, reason, ha="center", va="center", wrap=True)
    return figure


def find_learning_rate(
    train_manifest: pd.DataFrame,
    model: dict[str, Any],
    loss: dict[str, Any],
    training: dict[str, Any],
    data: dict[str, Any],
    run: dict[str, Any],
    lr_finder: dict[str, Any],
) -> tuple[Figure, dict[str, Any]]:
    """LR range test (exponential LR sweep) on the system's own model, loss and batches.

    Returns the loss-vs-LR plot and ``{"enabled", "use_suggestion", "suggested_lr", ...}``.
    With ``lr_finder.enabled: false`` nothing is trained: the plot says so and the
    suggestion is ``{"enabled": false}``.
    """
    options = lr_finder_options(lr_finder)
    if not options["enabled"]:
        message = "LR range test disabled (set <system>.lr_finder.enabled=true to run it)"
        return _disabled_figure(message), {"enabled": False, "use_suggestion": False}
    model_config, _ = check_system(model, loss, training, data, run)
    model_config["n_classes"] = int(train_manifest["speaker_index"].max()) + 1
    training_config = TrainConfig.from_dict(resolve_training_config(training))
    inputs = Path(run["work_dir"]) / "lr_finder"
    loader_config = {
        **dict(data),
        "manifest_path": _write_manifest(train_manifest, inputs / "train.parquet"),
        "seed": training_config.seed,
    }
    with torch_threads(run.get("torch_threads")):
        torch.manual_seed(training_config.seed)
        network = build_system_model(model_config)
        task = build_task({"loss": dict(loss), "seed": training_config.seed})
        factory = build_loader(loader_config)
        loader = factory(LoaderRequest(0, 0, 0, 1, training_config.seed))
        device = "cuda" if torch.cuda.is_available() else "cpu"

        def optimizer_factory(parameters: Any, lr: float) -> torch.optim.Optimizer:
            groups = [{"params": list(parameters), "lr": lr, "weight_decay": 0.0}]
            return build_optimizer(
                groups,
                training_config.optimizer,
                training_config.betas,
                training_config.eps,
                training_config.momentum,
                training_config.nesterov,
            )

        result = lr_range_test(
            network,
            task,
            loader,
            min_lr=float(options["min_lr"]),
            max_lr=float(options["max_lr"]),
            num_steps=int(options["num_steps"]),
            optimizer_factory=optimizer_factory,
            smoothing=float(options["smoothing"]),
            divergence_factor=float(options["divergence_factor"]),
            skip_start=int(options["skip_start"]),
            device=device,
        )
    log.info("LR range test: suggested lr %.3g (%d steps)", result.suggested_lr, len(result.lrs))
    suggestion = {
        "enabled": True,
        "use_suggestion": bool(options["use_suggestion"]),
        "suggested_lr": float(result.suggested_lr),
        "diverged": bool(result.diverged),
        "steps": len(result.lrs),
        "min_lr": float(options["min_lr"]),
        "max_lr": float(options["max_lr"]),
        "curve": {"lr": result.lrs, "loss": result.losses, "smoothed_loss": result.smoothed},
    }
    return plot_lr_finder(result), suggestion


def check_training_setup(
    train_manifest: pd.DataFrame,
    model: Mapping[str, Any],
    loss: Mapping[str, Any],
    training: Mapping[str, Any],
    data: Mapping[str, Any],
    work_dir: str | Path,
    probe_items: int | None = None,
) -> dict[str, Any]:
    """Dry run of one system: build its model, optimiser and data loader, load one full
    batch and compute the loss and gradients of its first ``probe_items`` items (all when
    ``None``; no optimiser step, nothing saved besides the manifest copy in ``work_dir``).

    Catches configuration errors (unknown keys, missing files, shape mismatches) in seconds
    instead of at the start of a long cluster job. Returns a small report.
    """
    model_config = resolve_model_config(model)
    check_loss_fits_model(model_config, loss, data)
    model_config["n_classes"] = int(train_manifest["speaker_index"].max()) + 1
    config = TrainConfig.from_dict(resolve_training_config(training))
    network = build_system_model(model_config)
    optimizer = config.build_optimizer(network)
    task = build_task({"loss": dict(loss), "seed": config.seed})
    loader_config = {
        **dict(data),
        "manifest_path": _write_manifest(train_manifest, Path(work_dir) / "train.parquet"),
        "seed": config.seed,
    }
    factory = build_loader(loader_config)
    loader = factory(LoaderRequest(0, 0, 0, 1, config.seed))
    cpu = torch.device("cpu")
    batch = move_to_device(next(iter(loader)), cpu)
    batch_items = _batch_items(batch)
    if probe_items is not None:
        batch = _first_items(batch, probe_items)
    output = task.compute_loss(network, batch, TrainState(device=cpu, model=network))
    output.loss.backward()
    if not torch.isfinite(output.loss):
        raise ValueError(f"{model_config['architecture']}: the first batch's loss is not finite")
    return {
        "architecture": model_config["architecture"],
        "parameters": sum(p.numel() for p in network.parameters()),
        "trainable_parameters": sum(p.numel() for p in network.parameters() if p.requires_grad),
        "optimizer": type(optimizer).__name__,
        "param_groups": len(optimizer.param_groups),
        "batches_per_epoch": len(loader),
        "batch_size": batch_items,
        "probed_items": int(output.n_samples),
        "first_loss": float(output.loss.detach()),
    }


def _batch_items(batch: Any) -> int:
    """Items in a (possibly nested) batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        return _batch_items(next(iter(batch.values())))
    raise TypeError(f"cannot size a batch of type {type(batch).__name__}")


def _first_items(batch: Any, count: int) -> Any:
    """The first ``count`` items of every tensor in a (nested) batch."""
    if isinstance(batch, torch.Tensor):
        return batch[:count] if batch.dim() else batch
    if isinstance(batch, Mapping):
        return {key: _first_items(value, count) for key, value in batch.items()}
    if isinstance(batch, list):
        return batch[:count]
    return batch
