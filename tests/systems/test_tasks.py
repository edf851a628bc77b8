"""SpeakerClassificationTask: what it back-propagates and what it logs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sv_kedro.models.factory import build_model
from sv_kedro.systems.tasks import SpeakerClassificationTask
from sv_kedro.training.task import GatheredLosses, TrainState

ECAPA = {
    "architecture": "ecapa_tdnn",
    "n_classes": 3,
    "ecapa": {"channels": 16, "mfa_channels": 24, "embedding_dim": 8},
}


def _batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "waves": torch.randn(4, 8000, generator=generator),
        "lengths": torch.tensor([8000, 8000, 6000, 7000]),
        "labels": torch.tensor([0, 1, 2, 1]),
        "indices": torch.arange(4),
    }


def test_l2sp_run_logs_the_task_loss_not_the_constant_combination() -> None:
    torch.manual_seed(0)
    model = build_model(ECAPA)
    task = SpeakerClassificationTask({"name": "aam", "margin": 0.2, "scale": 30.0}, l2sp_weight=0.1)
    state = TrainState(model=model)
    batch = _batch()
    task.compute_loss(model, batch, state)  # snapshots the reference weights
    with torch.no_grad():
        for parameter in model.pooling.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))

    output = task.compute_loss(model, batch, state)

    # The normalised L2-SP combination is 1 + λ whatever the task loss is ...
    assert math.isclose(float(output.loss.detach()), 1.1, rel_tol=1e-6)
    # ... so the logged value is the AAM loss itself, which matches its per-sample mean.
    assert output.logged_loss is not None
    assert float(output.logged_loss) > 1.5
    assert math.isclose(
        float(output.logged_loss), float(output.per_sample_loss.mean()), rel_tol=1e-6
    )


def test_without_l2sp_the_logged_loss_is_the_loss() -> None:
    torch.manual_seed(0)
    model = build_model(ECAPA)
    task = SpeakerClassificationTask({"name": "aam", "margin": 0.2, "scale": 30.0})
    output = task.compute_loss(model, _batch(), TrainState(model=model))
    assert output.logged_loss is not None
    assert float(output.logged_loss) == float(output.loss.detach())


def _next_gate_threshold(**gate_keys: float) -> float:
    """The threshold a gated CE task sets after one epoch of skewed log-losses (one heavy
    low-loss mode with a wide right shoulder: the two fitted Gaussians cross, the modes are
    not well separated)."""
    rng = np.random.default_rng(4)
    log_losses = np.r_[rng.normal(0.0, 0.6, 1_500), rng.normal(1.2, 1.0, 500)]
    gate = {"enabled": True, "initial_threshold": 3.0, "dlg_start_epoch": 1, **gate_keys}
    task = SpeakerClassificationTask({"name": "ce"}, gate=gate)
    losses = torch.from_numpy(np.exp(log_losses)).float()
    stats = task.on_epoch_end(TrainState(epoch=0), GatheredLosses(torch.arange(2_000), losses))
    return stats["gate_threshold_next"]


def test_dlg_gate_keys_reach_the_fit_and_unknown_ones_are_named() -> None:
    assert _next_gate_threshold() == 3.0  # the strict default sees one mode and keeps 3.0
    paper = _next_gate_threshold(dlg_min_separation=0.0)
    assert paper < 2.0  # the paper's DLG moves it between the two fitted means
    # The lighter component weighs about 0.25: a 0.5 floor calls that one mode again.
    assert _next_gate_threshold(dlg_min_separation=0.0, dlg_min_weight=0.5) == 3.0
    assert _next_gate_threshold(dlg_min_separation=0.0, dlg_min_weight=0.01) == paper
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['dlg_min_sep'\]"):
        SpeakerClassificationTask({"name": "ce"}, gate={"enabled": True, "dlg_min_sep": 1.0})


@pytest.mark.parametrize(
    ("gate", "message"),
    [
        ({"enabled": "nope"}, r"gate.enabled must be true or false, got 'nope'"),
        ({"lc_confidence": -1}, r"gate.lc_confidence must be within \[0, 1\], got -1"),
        ({"initial_threshold": "abc"}, r"gate.initial_threshold must be a number, got 'abc'"),
        ({"lc_start_epoch": "x"}, r"gate.lc_start_epoch must be an integer, got 'x'"),
        ({"lc_temperature": 0}, r"gate.lc_temperature must be a finite number > 0"),
        ({"lc_temperature": float("inf")}, r"gate.lc_temperature must be a finite number > 0"),
    ],
)
def test_gate_values_are_checked_naming_the_key(gate, message) -> None:
    with pytest.raises(ValueError, match=message):
        SpeakerClassificationTask({"name": "ce"}, gate={"enabled": True, **gate})


def test_l2sp_weight_must_be_a_number_at_least_zero() -> None:
    with pytest.raises(ValueError, match=r"l2sp_weight must be a number, got 'abc'"):
        SpeakerClassificationTask({"name": "ce"}, l2sp_weight="abc")
    with pytest.raises(ValueError, match=r"l2sp_weight must be >= 0, got -0.1"):
        SpeakerClassificationTask({"name": "ce"}, l2sp_weight=-0.1)
