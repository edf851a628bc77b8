"""Resumable batch ordering: a seeded, rank-sharded batch sampler and index-level skipping.

``ShardedShuffleBatchSampler`` cuts every global batch of ``batch_size * world_size``
items of an epoch's permutation into per-rank slices, so that ``world_size`` processes with
batch ``b`` see exactly the items one process with batch ``b * world_size`` sees, step by
step (what makes the DDP-equivalence guarantee testable). Speaker-balanced sampling for
the SV systems lives in ``training.samplers``; any batch sampler works with ``SkipBatches``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from sv_kedro.training.task import LoaderRequest


class ShardedShuffleBatchSampler:
    """Per-epoch permutation of ``range(num_items)``, global batches split across ranks.

    Incomplete global batches at the end of an epoch are dropped, so every rank yields
    the same number of batches (``num_items // (batch_size * world_size)``).
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"invalid sampler settings: batch_size={batch_size}, rank={rank}, "
                f"world_size={world_size}"
            )
        if num_items < batch_size * world_size:
            raise ValueError(
                f"{num_items} items cannot fill one global batch of {batch_size} x "
                f"{world_size} processes"
            )
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_items // (self.batch_size * self.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_items, generator=generator).tolist()
        else:
            order = list(range(self.num_items))
        global_batch = self.batch_size * self.world_size
        for start in range(0, len(self) * global_batch, global_batch):
            first = start + self.rank * self.batch_size
            yield order[first : first + self.batch_size]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.seed = int(state["seed"])


class SkipBatches:
    """A batch sampler that leaves out the first ``start`` batches of ``batch_sampler``.

    Skipping happens on index lists, so resuming mid-epoch loads no audio it will not use.
    """

    def __init__(self, batch_sampler: Iterable[list[int]], start: int):
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.batch_sampler = batch_sampler
        self.start = start

    def __iter__(self) -> Iterator[list[int]]:
        for position, batch in enumerate(self.batch_sampler):
            if position >= self.start:
                yield batch

    def __len__(self) -> int:
        if not isinstance(self.batch_sampler, Sized):
            raise TypeError(f"{type(self.batch_sampler).__name__} has no length")
        return max(0, len(self.batch_sampler) - self.start)


class ShuffledLoaderFactory:
    """Loader factory over a map-style dataset with ``ShardedShuffleBatchSampler``.

    Picklable when ``dataset`` and ``collate_fn`` are, so it can be built inside DDP workers.
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        batch_size: int,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        num_workers: int = 0,
        shuffle: bool = True,
        pin_memory: bool = False,
    ):
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.pin_memory = pin_memory

    def __call__(self, request: LoaderRequest) -> DataLoader[Any]:
        sampler = ShardedShuffleBatchSampler(
            len(self.dataset),  # type: ignore[arg-type]
            self.batch_size,
            seed=request.seed,
            rank=request.rank,
            world_size=request.world_size,
            shuffle=self.shuffle,
        )
        sampler.set_epoch(request.epoch)
        return DataLoader(
            self.dataset,
            batch_sampler=SkipBatches(sampler, request.start_batch),
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=False,
        )
