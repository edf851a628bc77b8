"""Binary cross-entropy on utterance pairs (the ``-bce`` variant of Vaessen & van Leeuwen).

The model scores a pair of utterances with one logit (``> 0`` means "same speaker"); the
loss is ``BCE-with-logits(pair_logit, same)`` per pair.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sv_kedro.losses.base import LossOutput, masked_mean


class PairBCELoss(nn.Module):
    """``forward(pair_logits [batch], same [batch] bool/0-1, mask [batch] | None)``.

    Args:
        pos_weight: weight of the same-speaker term (``pos_weight`` of
            ``binary_cross_entropy_with_logits``); ``None`` = 1. Useful when the pair sampler
            draws fewer same-speaker pairs than different-speaker ones.

    ``LossOutput.logits`` is ``[batch, 2]`` = ``(0, pair_logit)`` so that its argmax is
    ``1`` exactly where the pair is predicted "same": accuracy code written for class logits
    works unchanged with ``same`` as the label.
    """

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        if pos_weight is not None and not 0 < pos_weight < math.inf:
            raise ValueError(
                f"PairBCELoss: pos_weight must be a finite number > 0, got {pos_weight}"
            )
        self.pos_weight = None if pos_weight is None else float(pos_weight)

    def forward(self, pair_logits: Tensor, same: Tensor, mask: Tensor | None = None) -> LossOutput:
        if pair_logits.dim() == 2 and pair_logits.shape[1] == 1:
            pair_logits = pair_logits[:, 0]
        if pair_logits.dim() != 1:
            raise ValueError(
                f"PairBCELoss: expected pair_logits of shape [batch], got "
                f"{tuple(pair_logits.shape)}"
            )
        if same.shape != pair_logits.shape:
            raise ValueError(
                f"PairBCELoss: 'same' must have shape {tuple(pair_logits.shape)}, "
                f"got {tuple(same.shape)}"
            )
        targets = same.to(torch.float32)
        # Integer labels too: a 2 or a -1 would give a BCE target outside [0, 1] (a negative
        # loss for -1) without any error.
        if not bool(((targets == 0) | (targets == 1)).all()):
            raise ValueError("PairBCELoss: 'same' must be 0/1 (or bool)")
        pair_logits = pair_logits.float()
        pos_weight = (
            None
            if self.pos_weight is None
            else torch.tensor(self.pos_weight, device=pair_logits.device)
        )
        per_sample = F.binary_cross_entropy_with_logits(
            pair_logits, targets, reduction="none", pos_weight=pos_weight
        )
        loss, n_kept = masked_mean(per_sample, mask)
        class_logits = torch.stack([torch.zeros_like(pair_logits), pair_logits], dim=1)
        return LossOutput(loss, per_sample, class_logits.detach(), {"n_kept": n_kept})

    def extra_repr(self) -> str:
        return f"pos_weight={self.pos_weight}"
