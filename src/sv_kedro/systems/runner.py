"""Run one SV system's training from Kedro parameters and return its checkpoint.

``train_speaker_system`` is what a training node calls: it writes the manifests the workers
read into the run's work folder, fills in the number of classes, starts the workers
through the DDP launcher (in-process for one CPU worker) and loads rank 0's best (or last)
checkpoint. Re-running after an interruption resumes from the work folder's ``last.pt``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from sv_kedro.corpus.trials import TrialGenerationError, check_trials_against_manifest
from sv_kedro.models.factory import build_model, checkpoint_model_config
from sv_kedro.scoring.trial_list import write_trial_list
from sv_kedro.training.checkpoint import load_checkpoint
from sv_kedro.training.jobs import TrainingJob, launch_training
from sv_kedro.training.launcher import DistributedConfig
from sv_kedro.utils.atomic import atomic_write_path

MODEL_BUILDER = "sv_kedro.systems.runner:build_system_model"
TASK_BUILDER = "sv_kedro.systems.tasks:build_task"
LOADER_BUILDER = "sv_kedro.systems.loaders:build_loader"
VALIDATE_BUILDER = "sv_kedro.systems.validation:build_validation"

log = logging.getLogger(__name__)


def _write_parquet(frame: pd.DataFrame, path: Path) -> str:
    with atomic_write_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return str(path)


def train_speaker_system(
    train_manifest: pd.DataFrame,
    validation_manifest: pd.DataFrame | None,
    validation_pairs: pd.DataFrame | None,
    model: Mapping[str, Any],
    loss: Mapping[str, Any],
    training: Mapping[str, Any],
    data: Mapping[str, Any],
    run: Mapping[str, Any],
    distributed: Mapping[str, Any] | None = None,
    initial_weights: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Train and return ``(checkpoint payload, metrics table)``.

    ``run``: ``{"work_dir": ..., "resume": true, "gate": {...}, "l2sp_weight": 0.0}``.
    ``initial_weights``: a checkpoint payload whose matching weights initialise the model
    (e.g. the previous self-supervised round); unmatched keys keep their fresh values.
    """
    validating = (
        validation_manifest is not None and validation_pairs is not None and len(validation_pairs)
    )
    if validating:  # before anything is written
        _check_validation_inputs(validation_pairs, validation_manifest)
    work = Path(run["work_dir"])
    inputs = work / "inputs"
    n_classes = int(train_manifest["speaker_index"].max()) + 1
    model_config = copy.deepcopy(dict(model))
    model_config["n_classes"] = n_classes
    if initial_weights is not None:
        model_config = _with_initial_weights(model_config, initial_weights, work)
    loader_config = {
        **dict(data),
        "manifest_path": _write_parquet(train_manifest, inputs / "train.parquet"),
    }
    loader_config["seed"] = int(training.get("seed", 0))
    gate = dict(run.get("gate") or {})
    if gate.get("enabled") and gate.get("lc_start_epoch") is not None:
        loader_config["return_clean"] = True
    validate_builder = None
    validate_config: dict[str, Any] = {}
    if validating:
        pairs_path = inputs / "validation_pairs.txt"
        write_trial_list(validation_pairs, pairs_path)
        validate_builder = VALIDATE_BUILDER
        validate_config = {
            "manifest_path": _write_parquet(validation_manifest, inputs / "validation.parquet"),
            "pairs_path": str(pairs_path),
            "max_seconds": run.get("validation_max_seconds", 10.0),
        }
    job = TrainingJob(
        model_builder=MODEL_BUILDER,
        task_builder=TASK_BUILDER,
        loader_builder=LOADER_BUILDER,
        checkpoint_dir=str(work / "checkpoints"),
        train_config=dict(training),
        model_config=model_config,
        task_config={
            "loss": dict(loss),
            "gate": gate,
            "l2sp_weight": run.get("l2sp_weight", 0.0),  # checked by the task, naming it
            "seed": int(training.get("seed", 0)),
        },
        loader_config=loader_config,
        validate_builder=validate_builder,
        validate_config=validate_config,
        architecture=model_config.get("architecture"),
        resume=run.get("resume", True),
    )
    result = launch_training(job, DistributedConfig.from_dict(dict(distributed or {})))
    chosen = result.best_checkpoint_path or result.last_checkpoint_path
    return load_checkpoint(chosen), result.metrics


def _check_validation_inputs(pairs: pd.DataFrame, manifest: pd.DataFrame) -> None:
    """Refuse validation pairs of utterances the validation manifest lacks, before training.

    The two are written by different data_engineering nodes; a run that failed between
    them leaves a new manifest next to the previous corpus's pairs, and training would stop
    at its first validation with embeddings missing for the pairs.
    """
    try:
        check_trials_against_manifest(pairs, manifest, "validation_pairs")
    except TrialGenerationError as exc:
        raise TrialGenerationError(
            f"{exc}. validation_pairs and validation_manifest come from different "
            "data_engineering runs (did the last one fail?): run "
            "`kedro run --pipeline data_engineering` again before training"
        ) from exc


def _with_initial_weights(
    model_config: dict[str, Any], initial: Mapping[str, Any], work: Path
) -> dict[str, Any]:
    """Point the model config at a weights file written from ``initial``'s state."""
    path = work / "inputs" / "initial_weights.pt"
    with atomic_write_path(path) as tmp:
        torch.save(dict(initial["model_state"]), tmp)
    return {**model_config, "initial_weights": str(path)}


def build_system_model(config: Mapping[str, Any]) -> nn.Module:
    """Model builder of training workers: ``build_model`` plus optional initial weights.

    ``config["initial_weights"]`` (a state-dict file) initialises every parameter whose name
    and shape match, e.g. the encoder of the previous round while the classifier, sized for
    new pseudo-labels, starts fresh. The built model carries ``checkpoint_config``, the
    config that rebuilds it offline, for its checkpoints.
    """
    config = dict(config)
    initial = config.pop("initial_weights", None)
    model = build_model(config)
    if initial:
        state = torch.load(initial, map_location="cpu", weights_only=True)
        own = model.state_dict()
        matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not matched:
            raise ValueError(f"{initial}: no weight matches the {config.get('architecture')} model")
        model.load_state_dict(matched, strict=False)
        skipped = sorted(set(state) - set(matched))
        if skipped:
            log.info("initial weights: %d tensors loaded, skipped %s", len(matched), skipped[:5])
    model.checkpoint_config = checkpoint_model_config(model)
    return model
