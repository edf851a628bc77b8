"""Cross-entropy and AAM softmax: the margin arithmetic, its fallback, reductions, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sv_kedro.losses import (
    AAMSoftmaxLoss,
    CrossEntropyLoss,
    MarginSchedule,
    build_loss,
    top1_accuracy,
)


def _random_cosines(batch: int, n_classes: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, n_classes, generator=generator, dtype=torch.float64) * 1.8 - 0.9


def test_aam_with_zero_margin_is_scaled_cosine_cross_entropy():
    cosines = _random_cosines(16, 7)
    labels = torch.arange(16) % 7
    out = AAMSoftmaxLoss(margin=0.0, scale=30.0)(cosines, labels)
    expected = F.cross_entropy(30.0 * cosines, labels, reduction="none")
    torch.testing.assert_close(out.per_sample, expected)
    torch.testing.assert_close(out.loss, expected.mean())


def test_margin_lowers_target_logit_by_s_times_cos_gap():
    margin, scale = 0.3, 20.0
    cosines = _random_cosines(32, 5, seed=1)
    labels = torch.randint(0, 5, (32,), generator=torch.Generator().manual_seed(2))
    target_cos = cosines.gather(1, labels[:, None]).squeeze(1)
    assert bool((torch.acos(target_cos) < math.pi - margin).all())  # all on the main branch
    logits = AAMSoftmaxLoss(margin=margin, scale=scale).margin_logits(cosines, labels)
    theta = torch.acos(target_cos)
    drop = scale * target_cos - logits.gather(1, labels[:, None]).squeeze(1)
    torch.testing.assert_close(drop, scale * (target_cos - torch.cos(theta + margin)))
    others = ~F.one_hot(labels, 5).bool()
    torch.testing.assert_close(logits[others], scale * cosines[others])


def test_fallback_past_pi_minus_margin():
    margin, scale = 0.5, 10.0
    loss = AAMSoftmaxLoss(margin=margin, scale=scale)
    boundary = math.cos(math.pi - margin)  # ≈ -0.8776
    cosines = torch.tensor([[-0.95, 0.1], [boundary + 0.01, 0.1]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    logits = loss.margin_logits(cosines, labels)
    # θ > π − m: additive margin sin(m)·m instead of cos(θ + m)
    assert logits[0, 0].item() == pytest.approx(scale * (-0.95 - math.sin(margin) * margin))
    # just inside the boundary: still cos(θ + m)
    inside = math.cos(math.acos(boundary + 0.01) + margin)
    assert logits[1, 0].item() == pytest.approx(scale * inside)
    # the target logit keeps falling as θ grows, across the boundary
    grid = torch.linspace(1.0, -1.0, 2001, dtype=torch.float64)[:, None]
    grid_labels = torch.zeros(grid.shape[0], dtype=torch.long)
    grid_logits = loss.margin_logits(torch.cat([grid, torch.zeros_like(grid)], 1), grid_labels)
    target_curve = grid_logits[:, 0]
    assert bool((target_curve[1:] <= target_curve[:-1] + 1e-12).all())


def test_easy_margin_leaves_negative_cosines_alone():
    cosines = torch.tensor([[-0.4, 0.2], [0.6, 0.1]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    logits = AAMSoftmaxLoss(margin=0.2, scale=30.0, easy_margin=True).margin_logits(cosines, labels)
    assert logits[0, 0].item() == pytest.approx(30 * -0.4)
    assert logits[1, 0].item() == pytest.approx(30 * math.cos(math.acos(0.6) + 0.2))


@pytest.mark.parametrize("loss_fn", [AAMSoftmaxLoss(0.2, 30.0), CrossEntropyLoss(0.1)])
def test_per_sample_losses_sum_to_mean_times_batch(loss_fn):
    cosines = _random_cosines(24, 6, seed=3).float()
    labels = torch.arange(24) % 6
    out = loss_fn(cosines, labels)
    assert out.per_sample.shape == (24,)
    assert out.per_sample.sum().item() == pytest.approx(out.loss.item() * 24, rel=1e-5)


def test_gradients_are_finite_at_cos_plus_and_minus_one():
    cosines = torch.tensor(
        [[1.0, -1.0, 0.3], [-1.0, 1.0, 0.0], [1.0, 1.0, -1.0]], requires_grad=True
    )
    labels = torch.tensor([0, 0, 2])
    for easy_margin in (False, True):
        cosines.grad = None
        out = AAMSoftmaxLoss(margin=0.2, scale=30.0, easy_margin=easy_margin)(cosines, labels)
        out.loss.backward()
        assert torch.isfinite(out.loss)
        assert cosines.grad is not None and bool(torch.isfinite(cosines.grad).all())
        assert bool((cosines.grad != 0).any())


def test_mask_averages_only_kept_samples_and_none_kept_gives_zero():
    cosines = _random_cosines(6, 4, seed=4).requires_grad_()
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    keep = torch.tensor([True, False, True, False, False, True])
    loss_fn = AAMSoftmaxLoss(0.2, 30.0)
    out = loss_fn(cosines, labels, mask=keep)
    torch.testing.assert_close(out.loss, out.per_sample[keep].mean())
    empty = loss_fn(cosines, labels, mask=torch.zeros(6, dtype=torch.bool))
    empty.loss.backward()
    assert empty.loss.item() == 0.0
    assert bool((cosines.grad == 0).all())


def test_label_smoothing_matches_torch():
    logits = torch.randn(10, 5, generator=torch.Generator().manual_seed(5))
    labels = torch.arange(10) % 5
    out = CrossEntropyLoss(label_smoothing=0.1)(logits, labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, labels, label_smoothing=0.1))
    assert top1_accuracy(out.logits, labels) == pytest.approx(
        float((logits.argmax(1) == labels).float().mean())
    )


def test_set_margin_and_warmup_schedule():
    loss_fn = AAMSoftmaxLoss(margin=0.2, scale=30.0)
    cosines = torch.tensor([[0.5, 0.1]], dtype=torch.float64)
    labels = torch.tensor([0])
    before = loss_fn(cosines, labels).loss.item()
    loss_fn.set_margin(0.5)
    after = loss_fn(cosines, labels)
    assert after.extra["margin"] == 0.5
    assert after.loss.item() > before  # a larger margin is a harder target
    schedule = MarginSchedule(end=0.4, warmup_steps=10, start=0.0)
    assert [schedule.margin_at(step) for step in (0, 5, 10, 50)] == pytest.approx(
        [0.0, 0.2, 0.4, 0.4]
    )
    assert schedule.apply(loss_fn, 5) == pytest.approx(0.2)
    assert loss_fn.margin == pytest.approx(0.2)


def test_bad_inputs_are_reported():
    loss_fn = AAMSoftmaxLoss()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        loss_fn(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="shape \\[batch\\]"):
        loss_fn(torch.zeros(2, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="margin must be in"):
        AAMSoftmaxLoss(margin=2.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        CrossEntropyLoss(label_smoothing=1.0)


def test_an_infinite_scale_is_refused():
    # It passed "> 0" and made every logit ±inf, so the first loss was NaN.
    with pytest.raises(ValueError, match="scale must be a finite number > 0, got inf"):
        AAMSoftmaxLoss(scale=float("inf"))
    with pytest.raises(ValueError, match="scale must be a finite number > 0, got inf"):
        build_loss({"name": "aam", "scale": float("inf")})
