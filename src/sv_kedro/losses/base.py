"""What every loss returns, and the input checks and masked mean they share.

Every loss in this package is an ``nn.Module`` called as
``loss_fn(logits_or_cosines, labels, mask=None) -> LossOutput``. The per-sample losses come
back next to the mean so that loss-gated learning (``losses.loss_gate``) can look at each
sample, and so that the training loop can log their distribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class LossOutput:
    """The result of one loss evaluation.

    Attributes:
        loss: scalar ``[]``, the (masked) mean of ``per_sample``; what ``backward`` is called on.
        per_sample: ``[batch]``, the loss of every sample, whatever the mask says (the mask
            decides only which of them enter ``loss``).
        logits: ``[batch, C]`` logits after margin and scale, for accuracy (``argmax`` over
            ``C``); ``None`` where a loss has none.
        extra: detached tensors or plain numbers worth logging (margin, valid frames, ...).
    """

    loss: Tensor
    per_sample: Tensor
    logits: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def masked_mean(per_sample: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Mean of ``per_sample [batch]`` over the samples ``mask [batch]`` keeps.

    ``mask`` is boolean (keep / drop) or a float weight per sample; ``None`` keeps all.
    Returns ``(mean [], total_weight [])``. When nothing is kept the mean is ``0`` but still
    attached to the graph (``per_sample.sum() * 0``), so ``backward`` works and gives zero
    gradients instead of NaN.
    """
    if mask is None:
        return per_sample.mean(), torch.tensor(float(per_sample.numel()))
    if mask.shape != per_sample.shape:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but the per-sample losses have shape "
            f"{tuple(per_sample.shape)}; expected one entry per sample"
        )
    if mask.dtype == torch.bool:
        # where, not multiply: a dropped NaN/inf sample must not leak into the sum (NaN·0 = NaN)
        weighted_sum = torch.where(mask, per_sample, torch.zeros_like(per_sample)).sum()
        total = mask.sum().to(per_sample.dtype)
    else:
        weights = mask.to(per_sample.dtype)
        weighted_sum = (per_sample * weights).sum()
        total = weights.sum()
    # clamp keeps 0/0 out of the graph; with total == 0 the numerator is exactly 0 as well.
    mean = weighted_sum / total.clamp_min(torch.finfo(per_sample.dtype).tiny)
    return mean, total.detach()


def check_class_inputs(logits: Tensor, labels: Tensor, what: str) -> None:
    """Raise a clear error unless ``logits [batch, C]`` and ``labels [batch]`` agree.

    ``what`` names the loss in the message (e.g. ``"AAMSoftmaxLoss"``).
    """
    if logits.dim() != 2:
        raise ValueError(
            f"{what}: expected scores of shape [batch, n_classes], got {tuple(logits.shape)}"
        )
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"{what}: labels must have shape [batch]=[{logits.shape[0]}], got {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"{what}: labels must be integer class indices, got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise ValueError(
            f"{what}: labels must lie in [0, {logits.shape[1]}), "
            f"got min {int(labels.min())} and max {int(labels.max())}"
        )


def top1_accuracy(logits: Tensor, labels: Tensor) -> float:
    """Share of rows of ``logits [batch, C]`` whose argmax equals ``labels [batch]``."""
    if labels.numel() == 0:
        raise ValueError("top1_accuracy: empty batch")
    return float((logits.argmax(dim=1) == labels).float().mean())
