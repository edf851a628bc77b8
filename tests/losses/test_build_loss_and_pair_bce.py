"""``build_loss`` and the pair BCE loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sv_kedro.losses import (
    AAMSoftmaxLoss,
    CrossEntropyLoss,
    CTCSpeakerLoss,
    PairBCELoss,
    build_loss,
    top1_accuracy,
)

SHARED_BLOCK = {"margin": 0.2, "scale": 30, "easy_margin": False, "label_smoothing": 0}


def test_build_loss_builds_each_variant_from_one_parameter_block():
    aam = build_loss({"name": "aam", **SHARED_BLOCK, "margin": 0.3})
    assert isinstance(aam, AAMSoftmaxLoss) and aam.margin == 0.3 and aam.scale == 30
    assert isinstance(build_loss({"name": "ce", **SHARED_BLOCK}), CrossEntropyLoss)
    assert isinstance(build_loss({"name": "bce", **SHARED_BLOCK}), PairBCELoss)
    ctc = build_loss({"name": "CTC", "length_normalization": "frames"})
    assert isinstance(ctc, CTCSpeakerLoss) and ctc.length_normalization == "frames"


def test_build_loss_reports_bad_configs():
    with pytest.raises(KeyError, match="'name'"):
        build_loss({"margin": 0.2})
    with pytest.raises(KeyError, match="marign"):
        build_loss({"name": "aam", "marign": 0.2})
    with pytest.raises(ValueError, match="unknown loss name 'arcface'"):
        build_loss({"name": "arcface"})
    with pytest.raises(TypeError, match="'scale' must be a number"):
        build_loss({"name": "aam", "scale": "30"})


def test_pair_bce_per_sample_and_accuracy_logits():
    pair_logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    same = torch.tensor([True, False, False, True])
    out = PairBCELoss()(pair_logits, same)
    expected = F.binary_cross_entropy_with_logits(pair_logits, same.float(), reduction="none")
    torch.testing.assert_close(out.per_sample, expected)
    torch.testing.assert_close(out.loss, expected.mean())
    assert top1_accuracy(out.logits, same.long()) == pytest.approx(0.5)
    weighted = PairBCELoss(pos_weight=3.0)(pair_logits, same)
    assert weighted.per_sample[0].item() == pytest.approx(3 * expected[0].item())
    assert weighted.per_sample[1].item() == pytest.approx(expected[1].item())
    with pytest.raises(ValueError, match="'same' must have shape"):
        PairBCELoss()(pair_logits, same[:2])


def test_pos_weight_must_be_a_finite_number():
    # A string failed with a bare "'>' not supported"; true was taken for 1; inf gave an
    # infinite loss on every same-speaker pair.
    with pytest.raises(TypeError, match="'pos_weight' must be a number, got '2'"):
        build_loss({"name": "bce", "pos_weight": "2"})
    with pytest.raises(TypeError, match="'pos_weight' must be a number, got True"):
        build_loss({"name": "bce", "pos_weight": True})
    with pytest.raises(ValueError, match="pos_weight must be a finite number > 0, got inf"):
        build_loss({"name": "bce", "pos_weight": float("inf")})
    assert build_loss({"name": "bce", "pos_weight": 2}).pos_weight == 2.0
    assert build_loss({"name": "bce", "pos_weight": None}).pos_weight is None


def test_integer_pair_labels_other_than_0_and_1_are_refused():
    logits = torch.tensor([0.5, -0.5, 1.0])
    # -1 gave a negative loss and 2 a target outside [0, 1], without any error.
    for bad in ([0, 1, 2], [0, 1, -1]):
        with pytest.raises(ValueError, match="'same' must be 0/1"):
            PairBCELoss()(logits, torch.tensor(bad))
    good = PairBCELoss()(logits, torch.tensor([0, 1, 1]))
    expected = F.binary_cross_entropy_with_logits(logits, torch.tensor([0.0, 1.0, 1.0]))
    torch.testing.assert_close(good.loss, expected)
