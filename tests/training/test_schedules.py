"""LR schedule shapes and layer-wise LR decay."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from sv_kedro.training.optim import build_optimizer, build_param_groups
from sv_kedro.training.schedules import (
    ScheduleConfig,
    ScheduleFactor,
    build_scheduler,
    schedule_curve,
)

TOTAL = 100


def curve(**values) -> np.ndarray:
    return np.asarray(schedule_curve(ScheduleConfig(**values), TOTAL, steps_per_epoch=10))


def test_constant_is_flat():
    assert np.all(curve(kind="constant") == 1.0)


def test_one_cycle_peaks_at_warmup_ratio_and_ends_low():
    factors = curve(kind="one_cycle", warmup_ratio=0.3, initial_lr_scale=0.04, final_lr_scale=1e-4)
    assert int(np.argmax(factors)) == 30
    assert factors[0] == pytest.approx(0.04)
    assert factors[-1] == pytest.approx(1e-4)
    assert np.all(np.diff(factors[:31]) > 0)  # warm-up rises
    assert np.all(np.diff(factors[30:]) < 0)  # annealing falls


def test_tri_stage_phases():
    factors = curve(
        kind="tri_stage",
        warmup_ratio=0.1,
        constant_ratio=0.4,
        decay_ratio=0.5,
        initial_lr_scale=0.01,
        final_lr_scale=0.05,
    )
    assert factors[0] == pytest.approx(0.01)
    assert np.all(np.diff(factors[:11]) > 0)  # warm-up rises linearly
    np.testing.assert_allclose(np.diff(factors[:10]), (1 - 0.01) / 10)
    assert np.all(factors[10:50] == 1.0)  # hold
    decay = factors[50:101]
    assert np.all(np.diff(decay[:50]) < 0)
    # exponential: constant ratio between consecutive steps
    ratios = decay[1:50] / decay[:49]
    np.testing.assert_allclose(ratios, 0.05 ** (1 / 50))
    assert factors[-1] == pytest.approx(0.05)


def test_exp_decay_endpoints():
    factors = curve(kind="exp_decay", final_lr_scale=0.01)
    assert factors[0] == 1.0
    assert factors[-1] == pytest.approx(0.01)
    assert factors[50] == pytest.approx(0.1)


def test_step_per_epoch_multiplies_by_gamma_each_epoch():
    factors = curve(kind="step_per_epoch", gamma=0.5)
    assert np.all(factors[:10] == 1.0)
    assert np.all(factors[10:20] == 0.5)
    assert factors[95] == pytest.approx(0.5**9)


def test_scheduler_scales_every_group_and_state_is_plain_data():
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(
        [{"params": [model.weight], "lr": 1.0}, {"params": [model.bias], "lr": 0.1}]
    )
    scheduler = build_scheduler(
        optimizer, ScheduleConfig(kind="exp_decay", final_lr_scale=0.01), 10
    )
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.001])
    state = scheduler.state_dict()
    assert state["lr_lambdas"][0]["kind"] == "exp_decay"


def test_schedule_needing_total_steps_says_so():
    with pytest.raises(ValueError, match="needs the total number of optimiser steps"):
        ScheduleFactor(ScheduleConfig(kind="one_cycle"), None, None)
    # A known length of 0 steps (epochs of fewer batches than grad_accumulation) says that,
    # instead of asking for max_steps or a loader with a length, which it has.
    with pytest.raises(ValueError, match=r"0 optimiser steps .*grad_accumulation"):
        schedule_curve(ScheduleConfig(kind="one_cycle"), 0)
    with pytest.raises(ValueError, match=r"0 optimiser steps .*grad_accumulation"):
        ScheduleFactor(ScheduleConfig(kind="step_per_epoch"), 10, 0)
    with pytest.raises(ValueError, match="tri_stage"):
        ScheduleConfig(kind="tri_stage", warmup_ratio=0.5, constant_ratio=0.5, decay_ratio=0.5)


class TinyTransformer(nn.Module):
    def __init__(self, layers: int = 4):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.feature_projection = nn.Linear(3, 8)
        self.encoder.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(layers))
        self.head = nn.Linear(8, 2)


def test_layer_decay_gives_lower_layers_smaller_lrs():
    model = TinyTransformer()
    groups = build_param_groups(model, base_lr=1e-3, head_lr=1e-2, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    layer_lrs = [lr_of[id(layer.weight)] for layer in model.encoder.layers]
    assert layer_lrs == pytest.approx([1e-3 * 0.5**3, 1e-3 * 0.5**2, 1e-3 * 0.5, 1e-3])
    assert all(a < b for a, b in itertools.pairwise(layer_lrs))
    assert lr_of[id(model.encoder.feature_projection.weight)] == pytest.approx(1e-3 * 0.5**4)
    assert lr_of[id(model.head.weight)] == 1e-2
    # biases (1-d) get no weight decay
    groups = build_param_groups(model, 1e-3, layer_decay=0.5, weight_decay=0.1)
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay_of[id(model.head.weight)] == 0.1
    assert decay_of[id(model.head.bias)] == 0.0
    optimizer = build_optimizer(groups, "adamw")
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_frozen_parameters_are_left_out_and_bad_decay_refused():
    model = TinyTransformer()
    model.encoder.feature_projection.requires_grad_(False)
    groups = build_param_groups(model, 1e-3)
    params = {id(p) for g in groups for p in g["params"]}
    assert id(model.encoder.feature_projection.weight) not in params
    with pytest.raises(ValueError, match="layer_decay"):
        build_param_groups(model, 1e-3, layer_decay=0.0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer(groups, "lamb")


def test_values_that_are_no_numbers_name_the_key():
    with pytest.raises(ValueError, match=r"schedule.warmup_ratio must be a number, got 'abc'"):
        ScheduleConfig.from_dict({"kind": "one_cycle", "warmup_ratio": "abc"})
    assert ScheduleConfig.from_dict({"kind": "step_per_epoch", "gamma": "0.5"}).gamma == 0.5


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # A "warm-up" from above the peak, a "decay" that grows the LR, an LR that doubles
        # every epoch, an infinite factor: each was accepted and trained.
        (
            {"kind": "one_cycle", "initial_lr_scale": 5},
            r"schedule\.initial_lr_scale must lie in \(0, 1\], got 5",
        ),
        (
            {"kind": "exp_decay", "final_lr_scale": 5},
            r"schedule\.final_lr_scale must lie in \(0, 1\]",
        ),
        ({"kind": "step_per_epoch", "gamma": 2}, r"schedule\.gamma must lie in \(0, 1\], got 2"),
        (
            {"kind": "one_cycle", "initial_lr_scale": "inf"},
            r"schedule\.initial_lr_scale .* got inf",
        ),
        ({"kind": "tri_stage", "final_lr_scale": 0}, r"schedule\.final_lr_scale must lie in"),
    ],
)
def test_lr_scales_and_gamma_are_fractions_of_the_peak(values, message):
    with pytest.raises(ValueError, match=message):
        ScheduleConfig.from_dict(values)
    assert ScheduleConfig.from_dict({"kind": "exp_decay", "final_lr_scale": 1}).final_lr_scale == 1
