"""DINO self-supervised training through the project's training loop (resume and DDP included).

- ``MultiCropDataset`` (``training.multicrop_data``): per utterance, ``n_global`` long and
  ``n_local`` short random crops, each augmented on its own (reverb from a simulated RIR
  bank, babble from other utterances of the corpus, noise files when given). No label is
  read.
- ``DinoLoaderFactory``: seeded, rank-sharded shuffled batches (``ShardedShuffleBatchSampler``)
  that skip at the index level on resume; with ``data.shard_dir``, the same items streamed
  from data_engineering's WebDataset shards (``MultiCropShardDataset``).
- ``DinoTask``: a ``TrainingTask`` whose ``compute_loss`` first moves the EMA teacher towards
  the student the previous optimiser step produced, then runs student and teacher and
  returns the per-utterance DINO loss; it updates the teacher centre (averaged over
  processes) after every micro-batch.
- ``train_dino(...)``: what the Kedro node calls; returns the DINO checkpoint and metrics.

Config of the task (``dino`` parameters)::

    student_temperature: 0.1
    teacher_temperature: 0.04          # after the warm-up
    teacher_temperature_start: 0.04    # linear warm-up over warmup_teacher_steps
    warmup_teacher_steps: 0
    center_momentum: 0.9
    ema_momentum: 0.996                # cosine ramp to ema_momentum_end over the run's steps
    ema_momentum_end: 1.0
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from sv_kedro.corpus.shards import check_shards_hold, shard_counts
from sv_kedro.models.dino import cosine_schedule, dino_loss, normalize_dino_config
from sv_kedro.systems.dino_settings import (
    LOADER_DEFAULTS,
    TASK_DEFAULTS,
    checked_data_config,
    checked_task_config,
)
from sv_kedro.systems.loaders import build_augmenter
from sv_kedro.training.batches import ShardedShuffleBatchSampler, SkipBatches
from sv_kedro.training.checkpoint import load_checkpoint
from sv_kedro.training.jobs import TrainingJob, launch_training
from sv_kedro.training.launcher import DistributedConfig
from sv_kedro.training.multicrop_data import (
    MultiCropDataset,
    MultiCropShardDataset,
    collate_multicrop,
)
from sv_kedro.training.shard_data import shard_epoch_loader
from sv_kedro.training.task import LoaderRequest, StepOutput, TrainState, unwrap_model
from sv_kedro.utils.atomic import atomic_write_path

logger = logging.getLogger(__name__)


class DinoLoaderFactory:
    """Each epoch's multi-crop ``DataLoader``; picklable for DDP workers."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = checked_data_config(config, extra_keys=("manifest_path", "seed"))
        manifest = pd.read_parquet(self.config["manifest_path"])
        seed = int(self.config.get("seed", 0))
        rate = int(self.config["sample_rate"])
        self.shard_index: dict[str, Any] | None = None
        if self.config["shard_dir"]:
            folder = self.config["shard_dir"]
            self.shard_index = check_shards_hold(manifest, folder)
            if int(self.shard_index["sample_rate"]) != rate:
                raise ValueError(
                    f"{folder}: shards are {self.shard_index['sample_rate']} Hz, "
                    f"dino data.sample_rate is {rate}"
                )
        # Babble is drawn from *other* utterances: each utterance is its own "speaker" here,
        # since no speaker label may be used.
        unlabeled = manifest.assign(speaker=manifest["utt_id"].astype(str))
        augmenter = build_augmenter(
            self.config["augmentation"], unlabeled, rate, seed, self.config["shard_dir"] or None
        )
        self.dataset = MultiCropDataset(
            manifest,
            float(self.config["global_seconds"]),
            float(self.config["local_seconds"]),
            int(self.config["global_crops"]),
            int(self.config["local_crops"]),
            augmenter,
            rate,
            float(self.config["max_read_seconds"]),
            seed,
        )
        if self.shard_index is not None:
            self.utt_to_index = {utt: row for row, utt in enumerate(self.dataset.utt_ids)}
            logger.info(
                "DINO items stream from %d WebDataset shard(s) in %s",
                self.shard_index["num_shards"],
                self.config["shard_dir"],
            )

    def __call__(self, request: LoaderRequest) -> Any:
        if self.shard_index is not None:
            return self._shard_loader(request)
        sampler = ShardedShuffleBatchSampler(
            len(self.dataset),
            int(self.config["batch_size"]),
            seed=request.seed,
            rank=request.rank,
            world_size=request.world_size,
        )
        sampler.set_epoch(request.epoch)
        self.dataset.set_epoch(request.epoch)
        return DataLoader(
            self.dataset,
            batch_sampler=SkipBatches(sampler, request.start_batch),
            collate_fn=collate_multicrop,
            num_workers=int(self.config["num_workers"]),
            persistent_workers=False,
        )

    def _shard_loader(self, request: LoaderRequest) -> Any:
        assert self.shard_index is not None
        counts = shard_counts(self.config["shard_dir"], self.shard_index)
        dataset = MultiCropShardDataset(
            list(counts),
            self.dataset.views,
            self.utt_to_index,
            seed=request.seed,
            num_replicas=request.world_size,
            rank=request.rank,
            shuffle_buffer=int(self.config["shuffle_buffer"]),
            shard_counts=counts,
        )
        dataset.set_epoch(request.epoch)
        batch_size, workers = int(self.config["batch_size"]), int(self.config["num_workers"])
        return shard_epoch_loader(
            dataset, batch_size, workers, request.start_batch, collate_multicrop
        )


class DinoTask:
    """The DINO loss as a ``TrainingTask``; see the module docstring for its config.

    The EMA-momentum ramp spans the loop's planned optimiser steps
    (``TrainState.total_steps``), the same count the learning-rate schedule spans, so both
    end together whatever the loader (files or shards, any number of workers) drops.
    """

    def __init__(self, config: Mapping[str, Any], where: str = "dino.task") -> None:
        self.where = where
        self.config = checked_task_config(config, where)
        self.teacher_step = 0  # optimiser steps already folded into the teacher
        self._checked_steps: int | None = None  # the run length check_run_length passed

    def check_run_length(self, total_steps: int | None) -> None:
        """Refuse a teacher-temperature warm-up that does not end within the run's planned
        optimiser steps: teacher_temperature would never be used, and nothing says so."""
        warmup = int(self.config["warmup_teacher_steps"])
        if total_steps and warmup >= total_steps:
            training = f"{self.where.rpartition('.')[0] or 'dino'}.training"
            raise ValueError(
                f"{self.where}.warmup_teacher_steps={warmup} does not end before the run's "
                f"{total_steps} optimiser steps ({training}.epochs / max_steps), so "
                f"{self.where}.teacher_temperature would never be reached; lower it"
            )

    def teacher_temperature(self, step: int) -> float:
        warmup = int(self.config["warmup_teacher_steps"])
        start, end = self.config["teacher_temperature_start"], self.config["teacher_temperature"]
        if warmup <= 0 or step >= warmup:
            return end
        return start + (end - start) * step / warmup

    def ema_momentum(self, step: int, total_steps: int | None) -> float:
        if not total_steps:
            raise ValueError(
                "DINO's EMA-momentum ramp needs the run's planned steps: the loader has no "
                "length and training.max_steps is unset"
            )
        return cosine_schedule(
            self.config["ema_momentum"], self.config["ema_momentum_end"], step, total_steps
        )

    def compute_loss(self, model: Any, batch: Mapping[str, Any], state: TrainState) -> StepOutput:
        inner = unwrap_model(state.model if state.model is not None else model)
        if state.total_steps != self._checked_steps:  # once per run, not every step
            self.check_run_length(state.total_steps)
            self._checked_steps = state.total_steps
        # The teacher follows the student of the previous optimiser step (one EMA update per
        # step, whatever the gradient accumulation); the count survives a resume.
        while self.teacher_step < state.step:
            inner.update_teacher(self.ema_momentum(self.teacher_step, state.total_steps))
            self.teacher_step += 1
        output = model(batch["global"], batch["local"])
        temperature = self.teacher_temperature(state.step)
        per_sample = dino_loss(
            output, inner.center, self.config["student_temperature"], temperature
        )
        batch_center = output.teacher.float().mean(dim=(0, 1))
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            batch_center /= dist.get_world_size()
        inner.update_center(batch_center, self.config["center_momentum"])
        with torch.no_grad():
            probabilities = torch.softmax(
                (output.teacher.float() - inner.center) / temperature, dim=-1
            ).mean(dim=(0, 1))
            # Entropy of the mean teacher distribution: near 0 means collapse to one prototype.
            usage = float(-(probabilities * probabilities.clamp_min(1e-12).log()).sum())
        extra = {
            "teacher_temperature": temperature,
            "ema_momentum": self.ema_momentum(state.step, state.total_steps),
            "prototype_entropy": usage,
        }
        return StepOutput(per_sample.mean(), per_sample.detach(), 0, len(per_sample), extra)

    def state_dict(self) -> dict[str, Any]:
        return {"teacher_step": self.teacher_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.teacher_step = int(state.get("teacher_step", 0))


def build_dino_task(config: Mapping[str, Any]) -> DinoTask:
    """``{"dino": {...}, "where": "<parameter path>"}`` -> ``DinoTask``
    (``TrainingJob.task_builder``)."""
    return DinoTask(config.get("dino") or {}, config.get("where", "dino.task"))


def build_dino_loader(config: Mapping[str, Any]) -> DinoLoaderFactory:
    """``TrainingJob.loader_builder`` for DINO."""
    return DinoLoaderFactory(config)


def train_dino(
    manifest: pd.DataFrame,
    model: Mapping[str, Any],
    dino: Mapping[str, Any],
    training: Mapping[str, Any],
    data: Mapping[str, Any],
    run: Mapping[str, Any],
    distributed: Mapping[str, Any] | None = None,
    where: str = "dino",
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Train DINO on ``manifest``'s audio (``utt_id``, ``path``, ``num_frames``,
    ``sample_rate`` only: no speaker column is read) and return ``(checkpoint, metrics)``.

    ``model``: the ``DinoModel`` config (``encoder`` + ``head``); ``dino``: the task config;
    ``training``: ``TrainConfig`` keys; ``data``: loader keys (crops, batch, augmentation);
    ``run``: ``{"work_dir", "resume"}``. Re-running resumes from ``work_dir``'s ``last.pt``.
    ``where``: the parameter path of these settings, for the errors
    (``ssl_pseudo_labeling.dino``).
    """
    work = Path(run["work_dir"])
    columns = [
        c for c in ("utt_id", "path", "duration", "num_frames", "sample_rate") if c in manifest
    ]
    unlabeled = manifest[columns].reset_index(drop=True)
    manifest_path = work / "inputs" / "unlabeled.parquet"
    with atomic_write_path(manifest_path) as tmp:
        unlabeled.to_parquet(tmp, index=False)
    launch_config = DistributedConfig.from_dict(dict(distributed or {}))
    world = _world_size(launch_config)
    batch_size = int(data.get("batch_size", LOADER_DEFAULTS["batch_size"]))
    if len(unlabeled) < batch_size * world:
        raise ValueError(
            f"DINO: {len(unlabeled)} utterances cannot fill one batch of {batch_size} "
            f"x {world} process(es); lower dino data.batch_size"
        )
    job = TrainingJob(
        model_builder="sv_kedro.models.dino:build_dino_model",
        task_builder="sv_kedro.systems.dino:build_dino_task",
        loader_builder="sv_kedro.systems.dino:build_dino_loader",
        checkpoint_dir=str(work / "checkpoints"),
        train_config=dict(training),
        model_config=normalize_dino_config(model, f"{where}.model"),
        task_config={"dino": dict(dino), "where": f"{where}.task"},
        loader_config={
            **copy.deepcopy(dict(data)),
            "manifest_path": str(manifest_path),
            "seed": int(training.get("seed", 0)),
        },
        architecture="dino",
        resume=run.get("resume", True),
    )
    result = launch_training(job, launch_config)
    return load_checkpoint(result.last_checkpoint_path), result.metrics


def _world_size(config: DistributedConfig) -> int:
    per_node = config.nproc_per_node
    if per_node is None:
        per_node = max(1, torch.cuda.device_count()) if config.device != "cpu" else 1
    return max(1, int(per_node)) * max(1, int(config.nnodes))


__all__ = [
    "LOADER_DEFAULTS",
    "TASK_DEFAULTS",
    "DinoLoaderFactory",
    "DinoTask",
    "MultiCropDataset",
    "build_dino_loader",
    "build_dino_task",
    "checked_data_config",
    "checked_task_config",
    "collate_multicrop",
    "train_dino",
]
