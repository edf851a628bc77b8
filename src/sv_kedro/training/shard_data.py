"""Training items streamed from WebDataset tar shards, and where a resumed epoch restarts.

The alternative to a manifest of files (``corpus.shards`` writes the shards): each loader
worker reads whole shards front to back, so a VoxCeleb-size epoch is a few hundred
sequential reads instead of a million random ones.

Resuming mid-epoch loads nothing it will not use. A worker's yield order is a function of
``(seed, epoch, rank, worker)`` and the shard sizes in ``index.json``, never of the audio, so
the positions of the items already trained on are computed first; shards holding only
such items are not opened, and such items in the other shards are not decoded.
:func:`resume_skips` turns the loop's ``start_batch`` into items to skip per worker, from
the order in which ``DataLoader`` takes batches from its workers (round robin, a worker
dropping out when it runs dry).
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sv_kedro.audio.augmentation import Augmenter, speed_perturb, speed_perturbed_label
from sv_kedro.audio.crops import CropSpec, crop_window, wrap_pad
from sv_kedro.audio.io import to_mono
from sv_kedro.audio.rir import resample_poly
from sv_kedro.corpus.shard_records import ShardRecord, iter_shard_records
from sv_kedro.corpus.shards import ShardError
from sv_kedro.training.data import _CONTIGUOUS_STREAM, _prepare_wave

T = TypeVar("T")
ShardReader = Callable[[str], Iterator[ShardRecord]]


def shuffle_buffered(items: Iterable[T], size: int, rng: np.random.Generator) -> Iterator[T]:
    """``items`` through a shuffle buffer of ``size`` (0: unchanged order).

    The buffer fills, then each new item takes the place of a random one, which is
    yielded; at the end the rest leaves in random order. Only the count of items decides
    which draws are made, so the same ``rng`` state gives the same permutation of
    positions whatever the items are (what :class:`ShardDataset` relies on to resume).
    """
    if size <= 0:
        yield from items
        return
    buffer: list[T] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = int(rng.integers(0, len(buffer)))
        yield buffer[slot]
        buffer[slot] = item
    for slot in rng.permutation(len(buffer)):
        yield buffer[slot]


class ShardDataset(IterableDataset):
    """Training items streamed from WebDataset tar shards (the alternative to a manifest).

    Each epoch the shard list is shuffled with ``(seed, epoch)`` (identically on every
    rank), then shard ``k`` goes to rank ``k mod num_replicas`` and, there, to loader worker
    ``(k div num_replicas) mod num_workers``, so no utterance is read twice per epoch.
    Items are as for ``SpeakerDataset``: ``index`` from ``utt_to_index`` (-1 when not
    given), labels from ``speaker_to_index`` (-1 for unknown speakers), random draws seeded
    by ``(seed, epoch, crc32(utt_id))``. The speaker is ``utt_to_speaker[utt_id]`` when that
    mapping is given (the training manifest's labels, e.g. pseudo-labels), else the one
    stored in the shard. Ranks can receive different numbers of utterances
    (one shard's worth at most); give each rank at least one shard per worker.
    ``shuffle_buffer`` > 0 shuffles items within a worker's stream (the buffer holds
    encoded samples, not waveforms).

    ``shard_counts`` (samples per shard path, from ``index.json``) lets :meth:`worker_items`
    size an epoch and :meth:`set_skip` resume one; each shard's count is then checked
    while reading it.
    """

    def __init__(
        self,
        shard_paths: Sequence[str | os.PathLike[str]],
        crop: CropSpec | None,
        augmenter: Augmenter | None = None,
        sample_rate: int = 16000,
        speaker_to_index: Mapping[str, int] | None = None,
        return_clean: bool = False,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle_shards: bool = True,
        shuffle_buffer: int = 0,
        shard_counts: Mapping[str, int] | None = None,
        utt_to_index: Mapping[str, int] | None = None,
        reader: ShardReader | None = None,
        utt_to_speaker: Mapping[str, str] | None = None,
    ) -> None:
        if not shard_paths:
            raise ValueError("ShardDataset needs at least one shard")
        if num_replicas is None or rank is None:
            dist = torch.distributed
            ready = dist.is_available() and dist.is_initialized()
            num_replicas = dist.get_world_size() if ready else 1
            rank = dist.get_rank() if ready else 0
        if len(shard_paths) < num_replicas:
            raise ValueError(
                f"{len(shard_paths)} shards cannot feed {num_replicas} ranks: write more shards"
            )
        self.shard_paths = [os.fspath(p) for p in shard_paths]
        self.crop, self.augmenter, self.sample_rate = crop, augmenter, int(sample_rate)
        self.speaker_to_index = dict(speaker_to_index or {})
        self.utt_to_index = dict(utt_to_index or {})
        self.utt_to_speaker = dict(utt_to_speaker) if utt_to_speaker is not None else None
        self.return_clean, self.seed, self.epoch = return_clean, int(seed), 0
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.shuffle_shards, self.shuffle_buffer = shuffle_shards, int(shuffle_buffer)
        self.shard_counts = (
            {os.fspath(k): int(v) for k, v in shard_counts.items()} if shard_counts else None
        )
        if self.shard_counts is not None:
            unknown = [p for p in self.shard_paths if p not in self.shard_counts]
            if unknown:
                raise ValueError(f"shard_counts lacks {unknown[:3]}")
        self.reader = reader or iter_shard_records
        self.skip: dict[int, int] = {}
        self.first_stream = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_skip(self, items_per_stream: Mapping[int, int], first_stream: int = 0) -> None:
        """Resume an epoch: leave out the first ``items_per_stream[s]`` items of stream ``s``
        (stream ``s`` = the shards and draws of loader worker ``s`` in a fresh epoch), and
        give stream ``first_stream`` to loader worker 0, ``first_stream + 1`` to worker 1 …
        """
        if any(n > 0 for n in items_per_stream.values()) and self.shard_counts is None:
            raise ValueError("resuming a shard stream needs shard_counts (from index.json)")
        self.skip = {int(w): int(n) for w, n in items_per_stream.items() if n > 0}
        self.first_stream = int(first_stream)

    def shards_for(self, rank: int, worker_id: int = 0, num_workers: int = 1) -> list[str]:
        """Shards read this epoch by loader worker ``worker_id`` of ``num_workers`` on ``rank``."""
        order = list(self.shard_paths)
        if self.shuffle_shards:
            permutation = np.random.default_rng([self.seed, self.epoch]).permutation(len(order))
            order = [order[k] for k in permutation]
        # Ranks alternate first (shard k -> rank k mod R), so ranks differ by one shard at
        # most: the loop trains every rank for the smallest rank's number of batches.
        return order[worker_id * self.num_replicas + rank :: self.num_replicas * num_workers]

    def worker_items(self, worker_id: int = 0, num_workers: int = 1) -> int:
        """Items worker ``worker_id`` of this rank yields this epoch (needs ``shard_counts``)."""
        if self.shard_counts is None:
            raise ValueError("worker_items needs shard_counts (from index.json)")
        shards = self.shards_for(self.rank, worker_id, num_workers)
        return sum(self.shard_counts[s] for s in shards)

    def _clean_wave(
        self, record: ShardRecord, factor: float, rng: np.random.Generator, key: int
    ) -> tuple[str, np.ndarray]:
        """``(speaker, the un-augmented crop)``: as ``SpeakerDataset`` cuts it from a file.

        With a crop and a shard at ``sample_rate``, only the crop's frames are decoded;
        the values are those of cropping the whole decoded utterance.
        """
        contiguous_rng = np.random.default_rng([self.seed, key, _CONTIGUOUS_STREAM])
        rate = int(record.metadata()["sample_rate"])
        if self.crop is None or rate != self.sample_rate:
            _, speaker, wave, rate = record.decode()
            wave = resample_poly(
                to_mono(np.asarray(wave, dtype=np.float32)), rate, self.sample_rate
            )
            return speaker, _prepare_wave(
                wave, self.crop, self.sample_rate, factor, rng, contiguous_rng, self.epoch
            )
        target = self.crop.frames(self.sample_rate)
        need = math.ceil(target * factor)
        crop_rng = contiguous_rng if self.crop.mode == "random_contiguous" else rng
        mode, epoch = self.crop.mode, self.epoch
        _, speaker, wave, _ = record.decode(
            lambda frames: crop_window(frames, need, mode, crop_rng, epoch)
        )
        cropped = wrap_pad(to_mono(np.asarray(wave, dtype=np.float32)), need)
        return speaker, wrap_pad(speed_perturb(cropped, factor), target)

    def _item(self, record: ShardRecord) -> dict[str, Any]:
        utt_id = str(record.metadata()["utt_id"])
        if self.utt_to_speaker is not None and utt_id not in self.utt_to_speaker:
            raise ShardError(f"{record.shard}: {utt_id!r} is not in the training manifest")
        key = zlib.crc32(utt_id.encode())
        rng = np.random.default_rng([self.seed, self.epoch, key])
        factor = self.augmenter.draw_speed(rng) if self.augmenter else 1.0
        speaker, clean = self._clean_wave(record, factor, rng, key)
        if self.utt_to_speaker is not None:
            speaker = self.utt_to_speaker[utt_id]
        augmented = self.augmenter(clean, rng, speaker) if self.augmenter else clean
        label = int(self.speaker_to_index.get(speaker, -1))
        index = int(self.utt_to_index.get(utt_id, -1))
        item: dict[str, Any] = {"wave": augmented, "index": index, "utt_id": utt_id}
        factors = self.augmenter.config.speed_factors if self.augmenter else ()
        if factors:
            num_speakers = max(self.speaker_to_index.values(), default=-1) + 1
            label = speed_perturbed_label(label, factor, factors, num_speakers)
            item["speed"] = factor
        item["label"] = label
        if self.return_clean:
            item["clean"] = clean
        return item

    def _records(self, shards: list[str], skipped: set[int]) -> Iterator[ShardRecord | None]:
        """Records of ``shards`` in order; ``None`` for each sample of a shard whose
        positions are all in ``skipped`` (that shard is not opened)."""
        position = 0
        for shard in shards:
            expected = self.shard_counts[shard] if self.shard_counts is not None else None
            if expected is not None and all(
                p in skipped for p in range(position, position + expected)
            ):
                yield from [None] * expected
                position += expected
                continue
            read = 0
            for record in self.reader(shard):
                read += 1
                yield record
            if expected is not None and read != expected:
                raise ShardError(
                    f"{shard}: holds {read} samples but index.json says {expected}; "
                    "write the shards again"
                )
            position += read

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        stream = (worker_id + self.first_stream) % num_workers
        shards = self.shards_for(self.rank, stream, num_workers)
        seed = [self.seed, self.epoch, self.rank, stream]
        skip = self.skip.get(stream, 0)
        skipped: set[int] = set()
        if skip:
            positions = range(self.worker_items(stream, num_workers))
            order = shuffle_buffered(positions, self.shuffle_buffer, np.random.default_rng(seed))
            skipped = set(islice(order, skip))
        records = shuffle_buffered(
            self._records(shards, skipped), self.shuffle_buffer, np.random.default_rng(seed)
        )
        for record in islice(records, skip, None):
            if record is None:  # cannot happen: None stands in only for skipped positions
                raise RuntimeError(f"stream {stream}: a skipped sample reached the loader")
            yield self._item(record)


def worker_batches(dataset: ShardDataset, num_workers: int, batch_size: int) -> list[int]:
    """Full batches each loader worker of ``dataset``'s rank yields this epoch (the last,
    partial batch of a worker is dropped, as ``DataLoader(drop_last=True)`` does)."""
    workers = max(1, num_workers)
    return [dataset.worker_items(w, workers) // batch_size for w in range(workers)]


def resume_skips(batches_per_worker: Sequence[int], start_batch: int) -> tuple[dict[int, int], int]:
    """Where a loader stands after its first ``start_batch`` batches.

    ``DataLoader`` over an iterable dataset takes batches from its workers in turn
    (0, 1, ..., W-1, 0, ...), leaving out a worker once it has no more. Returns the batches
    taken from each worker and the worker whose batch comes next; a resumed loader, which
    starts its turns at worker 0, gives that worker's stream to its worker 0 (see
    :meth:`ShardDataset.set_skip`), so the turns continue in the same cycle.
    """
    total = sum(batches_per_worker)
    if not 0 <= start_batch <= total:
        raise ValueError(f"start_batch {start_batch} outside an epoch of {total} batches")
    workers = len(batches_per_worker)
    taken = dict.fromkeys(range(workers), 0)
    remaining, last = start_batch, -1
    for round_ in range(max(batches_per_worker, default=0)):
        for worker, count in enumerate(batches_per_worker):
            if remaining == 0:
                return taken, (last + 1) % max(1, workers)
            if round_ < count:
                taken[worker] += 1
                remaining -= 1
                last = worker
    return taken, (last + 1) % max(1, workers)


class SizedLoader:
    """An iterable of batches with a known ``len()`` (what a streaming loader cannot say)."""

    def __init__(self, batches: Iterable[Any], length: int) -> None:
        self.batches, self.length = batches, int(length)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.batches)

    def __len__(self) -> int:
        return self.length


def shard_epoch_loader(
    dataset: ShardDataset,
    batch_size: int,
    num_workers: int,
    start_batch: int,
    collate_fn: Callable[[list[Any]], Any],
) -> SizedLoader:
    """One rank's epoch of full batches from ``start_batch`` on, with its exact ``len()``."""
    per_worker = worker_batches(dataset, num_workers, batch_size)
    skipped, next_worker = resume_skips(per_worker, start_batch)
    dataset.set_skip({w: n * batch_size for w, n in skipped.items()}, next_worker)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        drop_last=True,
        collate_fn=collate_fn,
        num_workers=num_workers,
        persistent_workers=False,
    )
    return SizedLoader(loader, sum(per_worker) - start_batch)
