"""Process-group setup and the few collectives the loop needs (gloo on CPU, nccl on GPU).

Every helper works unchanged in a single process (``world_size == 1``) without a process
group, so the loop has one code path.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from sv_kedro.training.task import GatheredLosses


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def pick_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """This worker's device for ``distributed.device``: ``auto`` -> ``cuda:<local_rank>``
    when CUDA is available, else CPU; ``cuda`` -> ``cuda:<local_rank>``; ``cpu``."""
    if device not in ("auto", "cpu", "cuda"):
        # cuda:N is refused: every worker would take that one GPU.
        raise ValueError(f"distributed.device must be auto, cpu or cuda, got {device!r}")
    target = resolve_device(device, "distributed.device")
    if target.type == "cuda":
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return target


def resolve_device(name: str, key: str = "device", check_available: bool = True) -> torch.device:
    """The torch device ``name`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) names; errors name
    ``key``. With ``check_available``, a CUDA device must exist on this machine (a launcher
    checks without: its workers may hold GPUs it has not)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{key} {name!r} is not a torch device (auto, cpu, cuda, cuda:N)") from exc
    if check_available and device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{key} {name!r} but CUDA is not available here")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"{key} {name!r} but this machine has {count} CUDA device(s)")
    return device


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Join the process group described by torchrun/elastic env vars, or run alone.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; with ``WORLD_SIZE > 1`` initialises
    the default group (nccl for CUDA, gloo for CPU) with ``timeout_s`` on collectives, so a
    peer that died makes the others fail instead of waiting forever.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = pick_device(device, local_rank)
    if world_size == 1:
        return DistContext(device=target)
    backend = "nccl" if target.type == "cuda" else "gloo"
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=target if target.type == "cuda" else None,
        )
    return DistContext(rank, world_size, local_rank, target, backend)


def current_context(device: str = "auto") -> DistContext:
    """The context of an already-initialised group, or a single-process one."""
    if dist.is_available() and dist.is_initialized():
        backend = dist.get_backend()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        target = pick_device("cuda" if backend == "nccl" else "cpu", local_rank)
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, target, backend)
    return DistContext(device=pick_device(device))


def shutdown_distributed() -> None:
    """Destroy the default group if one exists."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _collective_device(ctx: DistContext) -> torch.device:
    # nccl only moves CUDA tensors; gloo only CPU ones.
    return ctx.device if ctx.backend == "nccl" else torch.device("cpu")


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Element-wise sum over ranks (a copy; the input is untouched)."""
    if not ctx.is_distributed:
        return values.clone()
    buffer = values.detach().to(_collective_device(ctx), copy=True)
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer.to(values.device)


def all_gather_variable(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate 1-d (or ``[n, ...]``) tensors of different lengths from every rank.

    Rank order is kept: ``[rank0 rows, rank1 rows, ...]``. Lengths are exchanged first,
    then every tensor is padded to the longest, gathered and trimmed.
    """
    if not ctx.is_distributed:
        return values.detach().clone()
    device = _collective_device(ctx)
    local = values.detach().to(device)
    length = torch.tensor([local.shape[0]], device=device, dtype=torch.int64)
    lengths = [torch.zeros_like(length) for _ in range(ctx.world_size)]
    dist.all_gather(lengths, length)
    sizes = [int(n.item()) for n in lengths]
    longest = max(sizes)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local
    gathered = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, padded)
    rows = [chunk[:size] for chunk, size in zip(gathered, sizes, strict=True)]
    return torch.cat(rows).to(values.device)


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order."""
    if not ctx.is_distributed:
        return [obj]
    objects: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(objects, obj)
    return objects


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not ctx.is_distributed:
        return obj
    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_min_int(value: int, ctx: DistContext) -> int:
    """The smallest ``value`` over ranks (e.g. batches per epoch, so no rank waits alone)."""
    if not ctx.is_distributed:
        return value
    buffer = torch.tensor([value], dtype=torch.int64, device=_collective_device(ctx))
    dist.all_reduce(buffer, op=dist.ReduceOp.MIN)
    return int(buffer.item())


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


def gather_per_sample_losses(
    pending: list[tuple[torch.Tensor, torch.Tensor]], ctx: DistContext
) -> GatheredLosses:
    """All ranks' ``(indices [b], losses [b])`` pairs as one CPU ``GatheredLosses``.

    Sorted by index (stable), so the result does not depend on which rank saw a sample.
    """
    if pending:
        indices = torch.cat([pair[0] for pair in pending])
        losses = torch.cat([pair[1] for pair in pending])
    else:
        indices = torch.empty(0, dtype=torch.int64, device=ctx.device)
        losses = torch.empty(0, dtype=torch.float32, device=ctx.device)
    indices = all_gather_variable(indices, ctx).cpu()
    losses = all_gather_variable(losses, ctx).cpu()
    order = torch.argsort(indices, stable=True)
    return GatheredLosses(indices[order], losses[order])
