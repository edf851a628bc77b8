"""Embedding extraction: the full utterance plus N evenly spaced crops, in length buckets.

For every manifest utterance the model embeds (see ``audio.crops.evaluation_inputs``):

- ``full``: the whole utterance (capped at ``max_seconds``), batched with utterances of
  similar length and a padding mask, never one by one;
- ``crops``: ``n_crops`` crops of ``crop_seconds``; the utterance's crop vector is the mean
  of its L2-normalised crop embeddings, so the dot product of two crop vectors is the
  mean cosine over all crop pairs (the paper's crop score). Identical crops (equal offsets,
  or an utterance no longer than a crop) are embedded once and counted as often as they occur.

Extraction resumes: finished batches are written to ``cache_dir`` as they complete, and a
re-run with the same model and inputs loads them instead of recomputing. With
``world_size > 1`` each rank embeds a disjoint share of the batches; every rank's parts
land in the same cache, and the merged result is read back from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sv_kedro.corpus.shard_access import ShardAudioReader
from sv_kedro.corpus.shards import check_shards_hold, read_shard_index
from sv_kedro.scoring.embedding_table import EmbeddingTable
from sv_kedro.systems.fingerprint import state_digest
from sv_kedro.training.data import EvaluationDataset, bucket_by_length, collate_evaluation
from sv_kedro.training.distributed import resolve_device
from sv_kedro.utils.atomic import atomic_write_path

log = logging.getLogger(__name__)


# Padded audio per forward when ``max_batch_seconds`` is None. A CPU forward is bound by
# its GEMMs and convolutions from a few seconds of audio on, so larger batches only add
# memory traffic: 16 s was the fastest budget on 2 cores (benchmarks/bench_extraction.py,
# 4-120 s tried; 120 s ran at 0.72-0.84x the one-by-one loop). A GPU needs large batches.
CPU_BATCH_SECONDS = 16.0
GPU_BATCH_SECONDS = 120.0


@dataclass(frozen=True)
class ExtractionConfig:
    """How utterances are cut and batched; all of it is part of the cache fingerprint.

    ``max_batch_seconds``: padded audio per forward (full utterances and crops alike);
    None picks by device, ``CPU_BATCH_SECONDS`` on a CPU and ``GPU_BATCH_SECONDS`` on a GPU.

    ``shard_dir``: read the audio from the WebDataset shards written from this manifest
    (``data_engineering.shards``) instead of its files. The shards' fingerprints, not
    their folder, enter the cache fingerprint. A manifest holding as many utterances as
    the shards is checked against their fingerprints; a part of the shards' manifest (an
    AS-norm cohort) only by ``utt_id``, so check the whole with
    :func:`~sv_kedro.corpus.shards.check_shards_hold` first, as the evaluation's cohort does.

    ``max_seconds`` caps the full utterance and the crops are cut from what is left, so
    with crops it must be at least ``crop_seconds`` (None: no cap).
    """

    n_crops: int = 5
    crop_seconds: float = 4.0
    max_seconds: float | None = 20.0
    max_batch_seconds: float | None = None
    max_batch_size: int = 64
    num_workers: int = 0
    sample_rate: int = 16000
    device: str = "auto"
    shard_dir: str | None = None

    def __post_init__(self) -> None:
        _check_integer("n_crops", self.n_crops, 0)
        _check_integer("max_batch_size", self.max_batch_size, 1)
        _check_integer("num_workers", self.num_workers, 0)
        _check_integer("sample_rate", self.sample_rate, 1)
        _check_seconds("crop_seconds", self.crop_seconds, allow_none=False)
        _check_seconds("max_seconds", self.max_seconds, allow_none=True)
        _check_seconds("max_batch_seconds", self.max_batch_seconds, allow_none=True)
        if self.n_crops and self.max_seconds is not None and self.max_seconds < self.crop_seconds:
            raise ValueError(
                f"ExtractionConfig.max_seconds ({self.max_seconds}) is shorter than "
                f"crop_seconds ({self.crop_seconds}): every crop would be the capped "
                "utterance repeated; raise max_seconds or shorten the crops"
            )
        if not isinstance(self.device, str):
            raise ValueError(
                f"ExtractionConfig.device must be a string (auto, cpu, cuda, cuda:N), "
                f"got {self.device!r}"
            )
        # Where it runs is checked when it runs (a launcher need not have the workers' GPUs).
        _device(self.device, check_available=False)
        if self.shard_dir is not None and not isinstance(self.shard_dir, (str, os.PathLike)):
            raise ValueError(
                f"ExtractionConfig.shard_dir must be a folder path or None, got {self.shard_dir!r}"
            )

    def resolved(self) -> ExtractionConfig:
        """This config with ``max_batch_seconds`` fixed for ``device``, so that a cache
        fingerprint (and the batches it names) never depends on where it is computed."""
        if self.max_batch_seconds is not None:
            return self
        on_gpu = _device(self.device, check_available=False).type != "cpu"
        return replace(self, max_batch_seconds=GPU_BATCH_SECONDS if on_gpu else CPU_BATCH_SECONDS)


@dataclass
class ExtractedEmbeddings:
    """``full``: one vector per utterance; ``crops``: mean normalised crop vector, or None."""

    full: EmbeddingTable
    crops: EmbeddingTable | None


def _check_integer(field: str, value: object, minimum: int) -> None:
    # bool is an int to Python, but "n_crops: true" is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"ExtractionConfig.{field} must be an integer >= {minimum}, got {value!r}")


def _check_seconds(field: str, value: object, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, Real) or not value > 0:
        what = "a number of seconds > 0" + (" or null" if allow_none else "")
        raise ValueError(f"ExtractionConfig.{field} must be {what}, got {value!r}")


def _device(name: str, check_available: bool = True) -> torch.device:
    return resolve_device(name, "extraction.device", check_available)


# Where and with how many loader processes a batch is embedded does not change what is
# embedded, so workers on different GPUs (and a re-run on another device) share one cache.
_NOT_FINGERPRINTED = ("device", "num_workers", "shard_dir")


def model_fingerprint(model: nn.Module, manifest: pd.DataFrame, config: ExtractionConfig) -> str:
    """A digest of every byte of the weights, the utterance list, the extraction settings
    (all but ``device``, ``num_workers`` and ``shard_dir``) and, when the audio comes from
    shards, their fingerprints in ``shard_dir``'s index (16-bit FLAC at the shards' rate is
    not the files' audio to the last bit).

    All bytes, not a sample of them: a resumed extraction must never reuse embeddings of a
    model that differs anywhere (SHA-1 costs ~0.7 s per GB of weights here).
    """
    config = config.resolved()
    digest = hashlib.sha1()
    state_digest(model.state_dict(), digest)
    digest.update("\n".join(manifest["utt_id"].astype(str)).encode())
    settings = {k: v for k, v in asdict(config).items() if k not in _NOT_FINGERPRINTED}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    if config.shard_dir is not None:
        shards = read_shard_index(config.shard_dir)["shards"]
        digest.update("\n".join(["shards", *(entry["fingerprint"] for entry in shards)]).encode())
    return digest.hexdigest()[:16]


def _embed_batch(
    model: nn.Module, batch: dict, device: torch.device, config: ExtractionConfig
) -> tuple[np.ndarray, np.ndarray | None]:
    waves = batch["waves"].to(device)
    lengths = batch["lengths"].to(device)
    full = model.embed(waves, lengths).float().cpu().numpy()
    if config.n_crops == 0:
        return full, None
    per_forward = min(config.max_batch_size, int(config.max_batch_seconds // config.crop_seconds))
    crops = embed_crops(model, batch["crops"], batch["offsets"], device, max(1, per_forward))
    return full, crops.cpu().numpy()


def embed_crops(
    model: nn.Module,
    crops: torch.Tensor,
    offsets: torch.Tensor,
    device: torch.device,
    max_per_forward: int | None = None,
) -> torch.Tensor:
    """Mean L2-normalised crop embedding per utterance, ``[B, E]`` float32.

    ``crops [B, n_crops, L]`` and ``offsets [B, n_crops]`` as ``collate_evaluation`` gives
    them; each distinct crop is embedded once (see :func:`unique_crop_rows`), at most
    ``max_per_forward`` crops per forward, so that a batch of many short utterances does
    not become one forward of ``B x n_crops`` crops.
    """
    first, inverse = unique_crop_rows(offsets)
    distinct = crops.reshape(-1, crops.shape[-1])[first]
    step = max_per_forward or distinct.shape[0]
    embedded = torch.cat(
        [
            model.embed(distinct[start : start + step].to(device)).float()
            for start in range(0, distinct.shape[0], step)
        ]
    )
    embedded = torch.nn.functional.normalize(embedded, dim=-1)
    return embedded[inverse.to(device)].reshape(crops.shape[0], crops.shape[1], -1).mean(dim=1)


def unique_crop_rows(offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which crops of a batch to embed: one per distinct ``(utterance, offset)``.

    Crops of one utterance with equal offsets hold the same samples, and every crop of an
    utterance no longer than the crop is the same wrap-padded copy, so their embeddings
    are computed once and reused (5x less crop work on keyword-length clips).

    ``offsets [B, n_crops]`` -> ``first [U]``, flat indices into ``[B * n_crops]`` of the
    crops to embed, and ``inverse [B * n_crops]``, the row of ``first`` each crop reuses.
    """
    rows = torch.arange(offsets.shape[0], dtype=torch.int64)[:, None]
    keys = (rows * (int(offsets.max()) + 1) + offsets.long()).reshape(-1)
    unique, inverse = torch.unique(keys, return_inverse=True)
    positions = torch.arange(keys.numel(), dtype=torch.int64)
    first = torch.full((unique.numel(),), keys.numel(), dtype=torch.int64)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    return first, inverse


def _load_parts(cache: Path) -> Iterator[dict[str, np.ndarray]]:
    for part in sorted(cache.glob("part-*.npz")):
        with np.load(part) as data:
            yield {key: data[key] for key in data.files}


def _plan(
    model: nn.Module,
    manifest: pd.DataFrame,
    config: ExtractionConfig,
    cache_dir: str | os.PathLike[str] | None,
    rank: int,
    world_size: int,
) -> tuple[EvaluationDataset, Path | None, list[tuple[int, list[int]]]]:
    """The dataset, the cache folder and this rank's unfinished ``(number, batch)`` list."""
    if manifest.empty:
        raise ValueError("extract_embeddings: the manifest is empty")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    shards = None
    if config.shard_dir is not None:
        shards = ShardAudioReader(config.shard_dir)
        if len(manifest) == len(shards):
            check_shards_hold(manifest, config.shard_dir)
        shards.check_holds(manifest["utt_id"].astype(str).tolist(), "utterances to embed")
        log.info("Extraction reads its audio from the shards in %s", config.shard_dir)
    dataset = EvaluationDataset(
        manifest,
        config.n_crops,
        config.crop_seconds,
        config.max_seconds,
        config.sample_rate,
        shards,
    )
    batches = bucket_by_length(dataset.durations, config.max_batch_seconds, config.max_batch_size)
    cache = None
    done: set[int] = set()
    if cache_dir is not None:
        cache = Path(cache_dir) / model_fingerprint(model, manifest, config)
        cache.mkdir(parents=True, exist_ok=True)
        done = {int(i) for part in _load_parts(cache) for i in part["indices"]}
    mine = [
        (number, batch)
        for number, batch in enumerate(batches)
        if number % world_size == rank and not done.issuperset(batch)
    ]
    if done:
        log.info(
            "Resuming extraction: %d of %d utterances already embedded", len(done), len(dataset)
        )
    return dataset, cache, mine


def _embed_batches(
    model: nn.Module,
    dataset: EvaluationDataset,
    mine: list[tuple[int, list[int]]],
    config: ExtractionConfig,
    cache: Path | None,
    progress: bool,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Embed ``mine``, writing each batch to ``cache`` as it completes; yields
    ``(indices, full, crops)`` per batch."""
    device = _device(config.device)
    model = model.to(device)
    loader = DataLoader(
        dataset,
        batch_sampler=[batch for _, batch in mine],
        collate_fn=collate_evaluation,
        num_workers=config.num_workers,
    )
    bar = tqdm(
        total=sum(len(b) for _, b in mine), desc="embedding", disable=not progress, unit="utt"
    )
    for (number, _), batch in zip(mine, loader, strict=True):
        full, crops = _embed_batch(model, batch, device, config)
        indices = batch["indices"].numpy()
        if cache is not None:
            arrays = {"indices": indices, "full": full}
            if crops is not None:
                arrays["crops"] = crops
            with atomic_write_path(cache / f"part-{number:07d}.npz") as tmp:
                with open(tmp, "wb") as handle:
                    np.savez(handle, **arrays)
        bar.update(len(indices))
        yield indices, full, crops
    bar.close()


def embed_rank_share(
    model: nn.Module,
    manifest: pd.DataFrame,
    config: ExtractionConfig,
    cache_dir: str | os.PathLike[str],
    rank: int,
    world_size: int,
    progress: bool = True,
) -> int:
    """Embed rank ``rank``'s share of the batches (every ``world_size``-th) into ``cache_dir``.

    What a worker of a multi-process extraction runs; it merges nothing, so no rank waits
    for another. Batches already in the cache are skipped. Returns the utterances embedded.
    """
    if cache_dir is None:
        raise ValueError("embed_rank_share writes to a cache folder: give cache_dir")
    config = config.resolved()
    dataset, cache, mine = _plan(model, manifest, config, cache_dir, rank, world_size)
    batches = _embed_batches(model, dataset, mine, config, cache, progress)
    return sum(len(indices) for indices, _, _ in batches)


def extract_embeddings(
    model: nn.Module,
    manifest: pd.DataFrame,
    config: ExtractionConfig | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> ExtractedEmbeddings:
    """Embed every utterance of ``manifest`` (columns ``utt_id``, ``path``, ``duration``).

    Returns tables keyed by ``utt_id`` in manifest order. ``model`` must provide
    ``embed(waves [B, T], lengths [B] | None) -> [B, E]``. With ``world_size > 1`` this rank
    embeds its share and the rest must already be in ``cache_dir`` (see
    :func:`embed_rank_share` and ``scoring.extraction_launch``).
    """
    config = (config or ExtractionConfig()).resolved()
    dataset, cache, mine = _plan(model, manifest, config, cache_dir, rank, world_size)
    n_utts = len(dataset)
    full_rows: dict[int, np.ndarray] = {}
    crop_rows: dict[int, np.ndarray] = {}
    for indices, full, crops in _embed_batches(model, dataset, mine, config, cache, progress):
        for row, index in enumerate(indices):
            full_rows[int(index)] = full[row]
            if crops is not None:
                crop_rows[int(index)] = crops[row]
    if cache is not None:
        for part in _load_parts(cache):
            for row, index in enumerate(part["indices"]):
                full_rows.setdefault(int(index), part["full"][row])
                if "crops" in part:
                    crop_rows.setdefault(int(index), part["crops"][row])
    missing = [dataset.utt_ids[i] for i in range(n_utts) if i not in full_rows]
    if missing:
        raise RuntimeError(
            f"{len(missing)} utterance(s) were not embedded (other ranks still running?), "
            f"e.g. {missing[:5]}"
        )
    keys = dataset.utt_ids
    full_table = EmbeddingTable(keys, np.stack([full_rows[i] for i in range(n_utts)]))
    crop_table = (
        EmbeddingTable(keys, np.stack([crop_rows[i] for i in range(n_utts)]))
        if config.n_crops
        else None
    )
    return ExtractedEmbeddings(full=full_table, crops=crop_table)
