"""LC replaces exactly the labels of confident, gated-out samples."""

from __future__ import annotations

import pytest
import torch

from sv_kedro.losses import correct_labels


def test_flips_exactly_the_confident_gated_out_labels():
    # cosines of the clean view against 3 classes
    clean = torch.tensor(
        [
            [0.9, 0.1, 0.0],  # gated out, confident on class 0, label 2  -> becomes 0
            [0.40, 0.38, 0.37],  # gated out, unconfident             -> keeps 1
            [0.0, 0.9, 0.1],  # kept by the gate, confident on 1, label 2 -> keeps 2
            [0.1, 0.0, 0.8],  # gated out, confident on its own label 2 -> corrected, same
        ]
    )
    labels = torch.tensor([2, 1, 2, 2])
    gated_out = torch.tensor([True, True, False, True])
    new_labels, corrected = correct_labels(clean, labels, gated_out)
    assert new_labels.tolist() == [0, 1, 2, 2]
    assert corrected.tolist() == [True, False, False, True]
    changed = corrected & (new_labels != labels)
    assert changed.tolist() == [True, False, False, False]
    assert new_labels.dtype == labels.dtype


def test_temperature_and_confidence_decide_the_flip():
    clean = torch.tensor([[0.50, 0.45, 0.40]])  # softmax(./0.1): max prob ≈ 0.506
    labels = torch.tensor([1])
    gated_out = torch.tensor([True])
    assert correct_labels(clean, labels, gated_out)[0].tolist() == [0]
    assert correct_labels(clean, labels, gated_out, confidence=0.6)[0].tolist() == [1]
    # without sharpening the max probability is ≈ 0.35
    assert correct_labels(clean, labels, gated_out, temperature=1.0)[0].tolist() == [1]


def test_bad_label_correction_inputs():
    with pytest.raises(TypeError, match="bool"):
        correct_labels(torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="shape"):
        correct_labels(torch.zeros(2, 3), torch.tensor([0]), torch.tensor([True, False]))


def test_an_infinite_temperature_is_refused_not_a_silent_no_op() -> None:
    # softmax(scores / inf) is uniform: LC would never correct anything, saying nothing.
    logits = torch.tensor([[5.0, 0.0, 0.0]])
    labels, gated_out = torch.tensor([1]), torch.tensor([True])
    with pytest.raises(ValueError, match="temperature must be finite and > 0, got inf"):
        correct_labels(logits, labels, gated_out, temperature=float("inf"))
    new_labels, corrected = correct_labels(logits, labels, gated_out, temperature=1e6)
    assert new_labels.tolist() == [1] and not corrected.any()
