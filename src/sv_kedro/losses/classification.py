"""Speaker classification losses: softmax cross-entropy and additive angular margin softmax.

``CrossEntropyLoss`` takes logits from a linear head. ``AAMSoftmaxLoss`` (ArcFace, Deng et
al. 2019) takes the cosine similarities ``cos θ [batch, n_classes]`` between the normalised
embedding and the normalised class weights (a cosine-classifier head) and computes
cross-entropy on ``s · cos θ`` where the target class uses ``s · cos(θ + m)`` instead.

Fallback past ``π − m``. For ``θ + m > π`` the function ``cos(θ + m)`` stops decreasing in
``θ``: a sample further from its class would then get a *higher* target logit. With
``th = cos(π − m)`` the condition ``θ > π − m`` is ``cos θ < th``. There the target logit
becomes ``cos θ − mm`` with ``mm = sin(π − m) · m = sin(m) · m``: the first-order expansion
``cos(θ + m) ≈ cos θ − m · sin θ`` evaluated at the boundary ``θ = π − m`` (where
``sin θ = sin m``) gives the size of the angular penalty there, which is then applied as a
constant additive (CosFace-style) margin so the target logit keeps falling as ``θ`` grows.
At the boundary the fallback lies below ``cos(θ + m) = −1`` by ``cos m + m·sin m − 1 ≈ m²/2``
(0.0199 at ``m = 0.2``): the target logit stays monotone, with a small downward step.
With ``easy_margin`` the margin is applied only while ``cos θ > 0`` and the plain cosine is
used elsewhere.

Numerics: ``sin θ = sqrt(max(1 − cos² θ, ε))``; the clamp keeps the square root and its
gradient finite at ``cos θ = ±1`` (the clamp's own gradient is zero there, so
``d/d cos`` of the target logit is just ``cos m``).

The margin can be changed during training (``set_margin``): the Miara et al. recipe trains
with m = 0.2 and fine-tunes with m = 0.5 on longer crops; ``MarginSchedule`` ramps the
margin linearly over the first steps, which avoids the collapse that a large margin can
cause on a randomly initialised head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sv_kedro.losses.base import LossOutput, check_class_inputs, masked_mean

_SINE_FLOOR = 1e-7  # ε of sqrt(max(1 − cos², ε)); far below any angle that matters


def _at_least_float32(scores: Tensor) -> Tensor:
    """float32 for half precision (autocast) inputs; float64 stays float64."""
    return scores.to(torch.promote_types(scores.dtype, torch.float32))


def _check_label_smoothing(label_smoothing: float, where: str) -> float:
    value = float(label_smoothing)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{where}: label_smoothing must be in [0, 1), got {label_smoothing}")
    return value


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy on logits ``[batch, n_classes]`` with optional label smoothing.

    ``forward(logits, labels [batch] int, mask [batch] bool/float | None)``: ``mask`` selects
    (or weights) the samples that enter the mean; ``per_sample`` always has every sample.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = _check_label_smoothing(label_smoothing, "CrossEntropyLoss")

    def forward(self, logits: Tensor, labels: Tensor, mask: Tensor | None = None) -> LossOutput:
        check_class_inputs(logits, labels, "CrossEntropyLoss")
        logits = _at_least_float32(logits)
        per_sample = F.cross_entropy(
            logits, labels, reduction="none", label_smoothing=self.label_smoothing
        )
        loss, n_kept = masked_mean(per_sample, mask)
        return LossOutput(loss, per_sample, logits.detach(), {"n_kept": n_kept})

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"


class AAMSoftmaxLoss(nn.Module):
    """Additive angular margin softmax (ArcFace) on cosine similarities.

    Args:
        margin: angular margin ``m`` in radians, ``0 <= m < π/2``.
        scale: logit scale ``s > 0``.
        easy_margin: apply the margin only where ``cos θ > 0`` (no ``π − m`` fallback).
        label_smoothing: as in ``torch.nn.functional.cross_entropy``.

    ``forward(cosines [batch, n_classes], labels [batch] int, mask [batch] | None)`` returns
    ``LossOutput`` whose ``logits`` are the margin-penalised, scaled logits the loss used
    (their argmax is a conservative training accuracy); ``extra["margin"]`` is the margin.
    """

    def __init__(
        self,
        margin: float = 0.2,
        scale: float = 30.0,
        easy_margin: bool = False,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        # An infinite scale passes "> 0" but turns every logit into ±inf and the loss NaN.
        if not 0 < scale < math.inf:
            raise ValueError(f"AAMSoftmaxLoss: scale must be a finite number > 0, got {scale}")
        self.scale = float(scale)
        self.easy_margin = bool(easy_margin)
        self.label_smoothing = _check_label_smoothing(label_smoothing, "AAMSoftmaxLoss")
        self.set_margin(margin)

    def set_margin(self, margin: float) -> None:
        """Change the angular margin (e.g. 0.2 -> 0.5 for large-margin fine-tuning)."""
        margin = float(margin)
        if not 0.0 <= margin < math.pi / 2:
            raise ValueError(f"AAMSoftmaxLoss: margin must be in [0, π/2), got {margin}")
        self.margin = margin
        self._cos_m = math.cos(margin)
        self._sin_m = math.sin(margin)
        self._threshold = math.cos(math.pi - margin)  # th: cos θ below this means θ > π − m
        self._fallback_margin = math.sin(math.pi - margin) * margin  # mm = sin(m) · m

    def margin_logits(self, cosines: Tensor, labels: Tensor) -> Tensor:
        """``[batch, C]`` logits ``s · cos θ`` with the target column replaced by ``s · ψ(θ)``.

        ``ψ(θ) = cos(θ + m)`` for ``θ <= π − m`` and ``cos θ − sin(m)·m`` beyond (see the
        module docstring); with ``easy_margin``, ``ψ(θ) = cos θ`` where ``cos θ <= 0``.
        """
        cosines = _at_least_float32(cosines).clamp(-1.0, 1.0)
        target_cos = cosines.gather(1, labels[:, None]).squeeze(1)
        sine = torch.sqrt((1.0 - target_cos * target_cos).clamp_min(_SINE_FLOOR))
        shifted = target_cos * self._cos_m - sine * self._sin_m  # cos(θ + m)
        if self.easy_margin:
            target_logit = torch.where(target_cos > 0, shifted, target_cos)
        else:
            target_logit = torch.where(
                target_cos > self._threshold, shifted, target_cos - self._fallback_margin
            )
        one_hot = F.one_hot(labels, cosines.shape[1]).to(torch.bool)
        logits = torch.where(one_hot, target_logit[:, None], cosines)
        return logits * self.scale

    def forward(self, cosines: Tensor, labels: Tensor, mask: Tensor | None = None) -> LossOutput:
        check_class_inputs(cosines, labels, "AAMSoftmaxLoss")
        logits = self.margin_logits(cosines, labels)
        per_sample = F.cross_entropy(
            logits, labels, reduction="none", label_smoothing=self.label_smoothing
        )
        loss, n_kept = masked_mean(per_sample, mask)
        return LossOutput(
            loss, per_sample, logits.detach(), {"margin": self.margin, "n_kept": n_kept}
        )

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, scale={self.scale}, easy_margin={self.easy_margin}, "
            f"label_smoothing={self.label_smoothing}"
        )


class MarginSchedule:
    """Linear margin warm-up: ``start`` at step 0 to ``end`` at ``warmup_steps``, then flat.

    ``margin_at(step)`` gives the margin; ``apply(loss, step)`` sets it on an
    ``AAMSoftmaxLoss``. ``warmup_steps = 0`` means ``end`` from the first step. The schedule
    is a pure function of the step, so resuming a run needs only the step counter.
    """

    def __init__(self, end: float, warmup_steps: int, start: float = 0.0) -> None:
        if warmup_steps < 0:
            raise ValueError(f"MarginSchedule: warmup_steps must be >= 0, got {warmup_steps}")
        for name, value in (("start", start), ("end", end)):
            if not 0.0 <= value < math.pi / 2:
                raise ValueError(f"MarginSchedule: {name} must be in [0, π/2), got {value}")
        self.start = float(start)
        self.end = float(end)
        self.warmup_steps = int(warmup_steps)

    def margin_at(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"MarginSchedule: step must be >= 0, got {step}")
        if self.warmup_steps == 0 or step >= self.warmup_steps:
            return self.end
        return self.start + (self.end - self.start) * step / self.warmup_steps

    def apply(self, loss: AAMSoftmaxLoss, step: int) -> float:
        """Set the margin for ``step`` on ``loss`` and return it."""
        margin = self.margin_at(step)
        loss.set_margin(margin)
        return margin
