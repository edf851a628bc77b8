"""What a training system plugs into the loop: a ``TrainingTask`` and a loader factory.

The loop knows nothing about speakers or losses. A task turns ``(model, batch)`` into a
``StepOutput``; CE / AAM / pair-BCE / CTC / MHFA with a loss gate are all tasks. The loop
gathers every sample's loss across ranks and hands them to ``task.on_epoch_end`` (the
loss-gate refit), and saves ``task.state_dict()`` in checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


@dataclass
class StepOutput:
    """One micro-batch's result.

    Attributes:
        loss: scalar ``[]`` to back-propagate (already reduced over the batch).
        per_sample_loss: ``[batch]`` loss of each sample (detached by the loop).
        n_correct: correctly classified samples (int or scalar tensor; 0 when not a
            classification task).
        n_samples: samples in the micro-batch.
        extra: scalars worth logging (tensors or numbers); averaged over a log window.
        sample_indices: ``[batch]`` dataset indices of the samples; ``None`` makes the
            loop use ``batch["indices"]`` when the batch is a mapping, else ``-1``.
        logged_loss: scalar logged as the row's ``loss`` when ``loss`` is not worth reading
            (L2-SP's normalised combination is always ``1 + λ``); ``None`` logs ``loss``.
    """

    loss: Tensor
    per_sample_loss: Tensor
    n_correct: int | Tensor
    n_samples: int
    extra: dict[str, Any] = field(default_factory=dict)
    sample_indices: Tensor | None = None
    logged_loss: Tensor | None = None


@dataclass
class TrainState:
    """Where training stands; passed to the task on every step.

    ``model`` is the unwrapped module (not the DDP wrapper), for tasks that need to reach
    a head or the pre-trained weights. ``total_steps`` is the loop's plan of optimiser
    steps for the whole run (what the learning-rate schedule spans; ``None`` when the
    loader has no length and no ``max_steps`` caps the run).
    """

    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    model: nn.Module | None = None
    total_steps: int | None = None


@dataclass
class GatheredLosses:
    """Per-sample losses of one epoch from every rank, sorted by ``indices``.

    ``indices [N]`` (int64, ``-1`` where unknown) and ``losses [N]`` (float32), on CPU.
    A sample seen twice in an epoch appears twice.
    """

    indices: Tensor
    losses: Tensor

    def __len__(self) -> int:
        return int(self.indices.numel())


@runtime_checkable
class TrainingTask(Protocol):
    """The loss side of a training system.

    Only ``compute_loss`` is required. Optional methods the loop calls when present:
    ``on_epoch_end(state, gathered: GatheredLosses) -> dict[str, float] | None`` (the
    returned numbers are logged), ``state_dict() -> dict`` and ``load_state_dict(dict)``
    (saved as the checkpoint's ``loss_gate`` entry; plain data/tensors only), and
    ``parameters_module() -> nn.Module`` for a task that owns trainable parameters (e.g.
    an AAM head kept outside the model; they are optimised as head parameters).
    """

    def compute_loss(self, model: nn.Module, batch: Any, state: TrainState) -> StepOutput:
        """Forward ``batch`` through ``model`` (possibly DDP-wrapped) and return the loss."""
        ...


@dataclass(frozen=True)
class LoaderRequest:
    """What the loop asks a loader factory for.

    The factory must return an iterable of batches for ``epoch`` that starts at micro-batch
    ``start_batch`` (skip at the index level, e.g. with ``batches.SkipBatches``, not by
    loading data), for process ``rank`` of ``world_size``, with an order that depends only
    on ``(seed, epoch, rank, world_size)``. ``len()`` of the result (when defined) is the
    number of remaining micro-batches.
    """

    epoch: int
    start_batch: int
    rank: int
    world_size: int
    seed: int


LoaderFactory = Callable[[LoaderRequest], Iterable[Any]]


class ClassificationTask:
    """Cross-entropy on ``model(inputs)`` logits; the plain task for tests and baselines.

    Batches are ``(inputs, labels)`` or ``(inputs, labels, indices)`` tuples, or mappings
    with ``inputs_key`` / ``labels`` / optional ``indices``. A model may return logits
    ``[batch, classes]`` or an object with a ``logits`` attribute.
    """

    def __init__(self, inputs_key: str = "waves", label_smoothing: float = 0.0):
        self.inputs_key = inputs_key
        self.label_smoothing = label_smoothing

    def compute_loss(self, model: nn.Module, batch: Any, state: TrainState) -> StepOutput:
        indices = None
        if isinstance(batch, Mapping):
            inputs, labels = batch[self.inputs_key], batch["labels"]
            indices = batch.get("indices")
        elif len(batch) == 3:
            inputs, labels, indices = batch
        else:
            inputs, labels = batch
        output = model(inputs)
        logits = getattr(output, "logits", output)
        per_sample = nn.functional.cross_entropy(
            logits.float(), labels, reduction="none", label_smoothing=self.label_smoothing
        )
        n_correct = (logits.detach().argmax(dim=-1) == labels).sum()
        return StepOutput(
            loss=per_sample.mean(),
            per_sample_loss=per_sample,
            n_correct=n_correct,
            n_samples=int(labels.shape[0]),
            sample_indices=indices,
        )


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) dict/list/tuple batch moved to ``device``; others untouched."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [move_to_device(value, device) for value in batch]
        return moved if isinstance(batch, list) else tuple(moved)
    return batch


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model
