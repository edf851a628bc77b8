"""Embedding extraction from a checkpoint, in this process or across worker processes.

``extract_from_checkpoint(checkpoint, manifest, options)`` is what the pipelines call with
their ``extraction`` parameters: the ``ExtractionConfig`` keys plus

- ``cache_dir``: where finished batches are written (a re-run resumes from them);
- ``distributed``: ``training.launcher.DistributedConfig`` keys, or null for this process.
  With several workers (``nproc_per_node: 4``, or null: one per visible GPU; ``nnodes`` for
  several hosts) each embeds every N-th batch on its own device into the shared
  ``cache_dir`` (on a shared file system across hosts), then this process reads the merged
  result back from the cache.

Workers rebuild the model from the checkpoint payload and never touch the Kedro catalog.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

import pandas as pd

from sv_kedro.api import model_from_checkpoint
from sv_kedro.models.factory import ARCHITECTURE_SECTIONS, SECTION_DEFAULTS
from sv_kedro.scoring.extraction import (
    ExtractedEmbeddings,
    ExtractionConfig,
    embed_rank_share,
    extract_embeddings,
)
from sv_kedro.training.distributed import init_distributed, shutdown_distributed
from sv_kedro.training.launcher import DistributedConfig, launch

LAUNCH_KEYS = ("cache_dir", "distributed")


def split_extraction_options(
    options: Mapping[str, Any], name: str = "extraction"
) -> tuple[ExtractionConfig, str | None, DistributedConfig | None]:
    """``extraction`` parameters -> (config, cache_dir, distributed config or None).

    ``name`` is the parameter path of ``options`` (``judge.extraction``), for the errors.
    """
    if not isinstance(options, Mapping):
        raise ValueError(
            f"parameter {name} must be a mapping of extraction settings, "
            f"got {type(options).__name__} {options!r}"
        )
    allowed = sorted([field.name for field in fields(ExtractionConfig)] + list(LAUNCH_KEYS))
    unknown = sorted(set(options) - set(allowed), key=str)
    if unknown:
        raise ValueError(f"parameter {name}: unknown key(s) {unknown}; allowed: {allowed}")
    settings = dict(options)
    cache_dir = settings.pop("cache_dir", None)
    distributed = settings.pop("distributed", None)
    try:
        # Resolved here, where the device is named, so workers on GPUs and this process
        # (which reads their batches back) agree on the batches and their cache.
        config = ExtractionConfig(**settings).resolved()
    except ValueError as exc:
        raise ValueError(f"parameter {name}: {exc}") from exc
    return config, cache_dir, DistributedConfig.from_dict(distributed) if distributed else None


def model_sample_rate(checkpoint: Mapping[str, Any]) -> int | None:
    """The audio rate the checkpoint's model takes, where its config says (the fbank
    front-end of xvector / ecapa_tdnn); None where it does not (SSL encoders)."""
    model_config = checkpoint.get("model_config")
    if not isinstance(model_config, Mapping):
        return None
    if "fbank" not in ARCHITECTURE_SECTIONS.get(str(model_config.get("architecture")), ()):
        return None
    given = model_config.get("fbank") or {}
    if not isinstance(given, Mapping):
        return None  # building the model names the malformed section
    return int({**SECTION_DEFAULTS["fbank"], **given}["sample_rate"])


def _needs_workers(distributed: DistributedConfig | None) -> bool:
    """Whether extraction leaves this process: several workers here, other hosts or Slurm."""
    if distributed is None:
        return False
    if distributed.launcher == "slurm" or distributed.nnodes > 1:
        return True
    return distributed.resolved_nproc() > 1


def extract_from_checkpoint(
    checkpoint: Mapping[str, Any],
    manifest: pd.DataFrame,
    options: Mapping[str, Any],
    name: str = "extraction",
) -> ExtractedEmbeddings:
    """Embed ``manifest``'s utterances with the model of ``checkpoint`` (see module doc);
    ``name`` is the parameter path of ``options``, for the errors."""
    config, cache_dir, distributed = split_extraction_options(options, name)
    model_rate = model_sample_rate(checkpoint)
    if model_rate is not None and config.sample_rate != model_rate:
        # The audio is resampled to extraction.sample_rate, so any other rate than the
        # model's gives it speech at the wrong speed and pitch, and raises nothing later.
        raise ValueError(
            f"parameter {name}.sample_rate is {config.sample_rate} Hz, but the checkpoint's "
            f"model takes {model_rate} Hz audio (model_config.fbank.sample_rate); "
            f"set {name}.sample_rate to {model_rate}"
        )
    if _needs_workers(distributed):
        if cache_dir is None:
            raise ValueError(
                f"{name}.distributed needs {name}.cache_dir: the workers write their "
                "batches there and the result is read back from it"
            )
        assert distributed is not None
        launch(
            extraction_worker,
            (dict(checkpoint), manifest, config, str(cache_dir), distributed.device),
            distributed,
        )
    return extract_embeddings(model_from_checkpoint(checkpoint), manifest, config, cache_dir)


def extraction_worker(
    checkpoint: Mapping[str, Any],
    manifest: pd.DataFrame,
    config: ExtractionConfig,
    cache_dir: str,
    device: str,
) -> int:
    """One worker: its share of the batches on its own device; returns utterances embedded."""
    ctx = init_distributed(device)
    try:
        model = model_from_checkpoint(checkpoint)
        on_device = replace(config, device=str(ctx.device))
        return embed_rank_share(
            model, manifest, on_device, cache_dir, ctx.rank, ctx.world_size, progress=ctx.is_main
        )
    finally:
        shutdown_distributed()
