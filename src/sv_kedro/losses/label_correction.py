"""Label correction (LC) for gated-out samples (Miara, Lepage & Dehak 2024).

A sample that the loss gate threw out probably has a wrong pseudo-label. If the model is
confident about it on the clean (un-augmented) view, its prediction replaces the label: the
clean view's scores are sharpened with a low-temperature softmax
``p = softmax(scores / temperature)`` and the label becomes ``argmax p`` when
``max p > confidence``. Samples that were kept by the gate, and unconfident gated-out ones,
keep their labels.

For a cosine-classifier (AAM) head pass the cosine similarities as ``clean_logits``: the
temperature then acts on cosines in ``[-1, 1]`` (0.1 turns a cosine gap of 0.1 into a factor
e between class probabilities). For a linear head pass its logits.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


@torch.no_grad()
def correct_labels(
    clean_logits: Tensor,
    labels: Tensor,
    gated_out_mask: Tensor,
    temperature: float = 0.1,
    confidence: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Corrected labels for confident gated-out samples.

    Args:
        clean_logits: ``[batch, C]`` scores of the clean view (logits or cosines).
        labels: ``[batch]`` current (pseudo-)labels, integer.
        gated_out_mask: ``[batch]`` bool, true where the loss gate dropped the sample.
        temperature: softmax temperature (finite, > 0); lower is sharper.
        confidence: the sharpened max probability must exceed this for a correction.

    Returns:
        ``(new_labels [batch], corrected_mask [batch] bool)``. ``corrected_mask`` marks the
        samples whose label now comes from the prediction (gated out and confident); their
        loss should be counted again. The prediction can equal the old label, so the samples
        whose label actually changed are ``corrected_mask & (new_labels != labels)``.
    """
    if clean_logits.dim() != 2:
        raise ValueError(
            f"correct_labels: clean_logits must be [batch, C], got {tuple(clean_logits.shape)}"
        )
    batch = clean_logits.shape[0]
    if labels.shape != (batch,) or gated_out_mask.shape != (batch,):
        raise ValueError(
            f"correct_labels: labels {tuple(labels.shape)} and gated_out_mask "
            f"{tuple(gated_out_mask.shape)} must both have shape [batch]=[{batch}]"
        )
    if gated_out_mask.dtype != torch.bool:
        raise TypeError(f"correct_labels: gated_out_mask must be bool, got {gated_out_mask.dtype}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"correct_labels: labels must be integer class indices, got {labels.dtype}")
    if not 0 < temperature < math.inf:
        # An infinite temperature flattens every prediction: LC would silently never act.
        raise ValueError(f"correct_labels: temperature must be finite and > 0, got {temperature}")
    if not 0.0 <= confidence < 1.0:
        raise ValueError(f"correct_labels: confidence must be in [0, 1), got {confidence}")
    probabilities = torch.softmax(clean_logits.float() / temperature, dim=1)
    max_probability, predicted = probabilities.max(dim=1)
    corrected = gated_out_mask & (max_probability > confidence)
    new_labels = torch.where(corrected, predicted.to(labels.dtype), labels)
    return new_labels, corrected
