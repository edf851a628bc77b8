"""L2-SP: zero at the start, grows with the distance, pulls back, normalised combination."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sv_kedro.losses import L2SPRegularizer


def _encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_penalty_is_zero_at_start_and_grows_as_weights_move():
    encoder = _encoder()
    regulariser = L2SPRegularizer(encoder)
    assert regulariser.penalty().item() == 0.0
    with torch.no_grad():
        encoder[0].weight.add_(0.1)
    small = regulariser.penalty().item()
    assert small == pytest.approx(12 * 0.01)  # 12 weights moved by 0.1
    with torch.no_grad():
        encoder[0].weight.add_(0.1)
    assert regulariser.penalty().item() == pytest.approx(12 * 0.04)
    assert regulariser.penalty().item() > small


def test_gradient_pulls_weights_back_to_the_reference():
    encoder = _encoder()
    regulariser = L2SPRegularizer(encoder)
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.add_(torch.randn_like(parameter))
    before = regulariser.penalty().item()
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.1)
    for _ in range(5):
        optimizer.zero_grad()
        regulariser.penalty().backward()
        optimizer.step()
    assert regulariser.penalty().item() < before * 0.5
    reference = regulariser.get_buffer("ref__0__weight")
    moved = encoder[0].weight.detach() - reference
    optimizer.zero_grad()
    regulariser.penalty().backward()
    torch.testing.assert_close(encoder[0].weight.grad, 2 * moved)


def test_normalised_combination_is_one_plus_weight_and_skips_zero_penalty():
    encoder = _encoder()
    regulariser = L2SPRegularizer(encoder)
    task = encoder(torch.randn(5, 4)).pow(2).mean()
    at_start = regulariser.combine(task, weight=0.3)
    assert at_start.item() == pytest.approx(1.0)  # R == 0: the term is left out, no NaN
    at_start.backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters())

    with torch.no_grad():
        encoder[2].bias.add_(0.5)
    task = encoder(torch.randn(5, 4)).pow(2).mean()
    combined = regulariser.combine(task, weight=0.3)
    assert combined.item() == pytest.approx(1.3)
    assert regulariser.last_penalty == pytest.approx(2 * 0.25)


def test_reference_weights_and_bad_references():
    encoder = _encoder()
    zeros = {name: torch.zeros_like(p) for name, p in encoder.named_parameters()}
    regulariser = L2SPRegularizer(encoder, reference=zeros)
    expected = sum(p.detach().pow(2).sum() for p in encoder.parameters())
    assert regulariser.penalty().item() == pytest.approx(expected.item())
    assert "ref__0__weight" in regulariser.state_dict()
    assert not any(key.startswith("0.") for key in regulariser.state_dict())
    missing = dict(zeros)
    missing.pop("2.bias")
    with pytest.raises(KeyError, match=r"2\.bias"):
        L2SPRegularizer(encoder, reference=missing)
    with pytest.raises(ValueError, match="task loss must be >= 0"):
        regulariser.combine(torch.tensor(-1.0), weight=0.1)


def test_only_trainable_skips_frozen_parameters():
    encoder = _encoder()
    encoder[0].requires_grad_(False)
    assert L2SPRegularizer(encoder).parameter_names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert L2SPRegularizer(encoder, only_trainable=True).parameter_names == ["2.weight", "2.bias"]
