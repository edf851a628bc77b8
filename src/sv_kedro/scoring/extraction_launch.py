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
from dataclasses import replace
from typing import Any

import pandas as pd

from sv_kedro.api import model_from_checkpoint
from sv_kedro.scoring.extraction import (
    ExtractedEmbeddings,
    ExtractionConfig,
    embed_rank_share,
    extract_embeddings,
)
from sv_kedro.training.distributed import init_distributed, shutdown_distributed
from sv_kedro.training.launcher import DistributedConfig, launch


def split_extraction_options(
    options: Mapping[str, Any],
) -> tuple[ExtractionConfig, str | None, DistributedConfig | None]:
    """``extraction`` parameters -> (config, cache_dir, distributed config or None)."""
    settings = dict(options)
    cache_dir = settings.pop("cache_dir", None)
    distributed = settings.pop("distributed", None)
    # Resolved here, where the device is named, so workers on GPUs and this process
    # (which reads their batches back) agree on the batches and their cache.
    config = ExtractionConfig(**settings).resolved()
    return config, cache_dir, DistributedConfig.from_dict(distributed) if distributed else None


def _needs_workers(distributed: DistributedConfig | None) -> bool:
    """Whether extraction leaves this process: several workers here, other hosts or Slurm."""
    if distributed is None:
        return False
    if distributed.launcher == "slurm" or distributed.nnodes > 1:
        return True
    return distributed.resolved_nproc() > 1


def extract_from_checkpoint(
    checkpoint: Mapping[str, Any], manifest: pd.DataFrame, options: Mapping[str, Any]
) -> ExtractedEmbeddings:
    """Embed ``manifest``'s utterances with the model of ``checkpoint`` (see module doc)."""
    config, cache_dir, distributed = split_extraction_options(options)
    if _needs_workers(distributed):
        if cache_dir is None:
            raise ValueError(
                "extraction.distributed needs extraction.cache_dir: the workers write their "
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
