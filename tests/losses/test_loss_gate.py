"""LGL: the gated mean, statistics, epoch refits, resumable state; the schedule."""

from __future__ import annotations

import io
import logging
import math

import numpy as np
import pytest
import torch

from sv_kedro.losses import GateSchedule, LossGate


def test_gated_mean_excludes_samples_above_the_threshold():
    losses = torch.tensor([0.5, 4.0, 1.0, 20.0, 2.0], requires_grad=True)
    gate = LossGate(threshold=math.log(2.5))
    mean, keep = gate(losses)
    assert keep.tolist() == [True, False, True, False, True]
    assert mean.item() == pytest.approx((0.5 + 1.0 + 2.0) / 3)
    mean.backward()
    assert losses.grad.tolist() == pytest.approx([1 / 3, 0.0, 1 / 3, 0.0, 1 / 3])
    assert gate.kept_fraction == pytest.approx(3 / 5)


def test_nothing_kept_gives_zero_not_nan_and_is_counted(caplog):
    losses = torch.tensor([5.0, 6.0, 7.0], requires_grad=True)
    gate = LossGate(threshold=0.0)
    with caplog.at_level(logging.WARNING, logger="sv_kedro.losses.loss_gate"):
        mean, keep = gate(losses)
    assert not keep.any()
    assert mean.item() == 0.0
    mean.backward()
    assert bool(torch.isfinite(losses.grad).all())
    assert gate.n_empty_batches == 1
    assert "no sample" in caplog.text


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nan_or_inf_loss_is_refused_before_it_reaches_the_weights(bad: float) -> None:
    # Gated out, a NaN loss used to vanish from the mean while its NaN gradient still
    # reached the weights: every later loss was NaN, gated out, and the batch loss read 0.
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    inputs = torch.randn(5, 4)
    inputs[2, 1] = bad
    losses = torch.nn.functional.cross_entropy(
        layer(inputs), torch.tensor([0, 1, 2, 0, 1]), reduction="none"
    )
    before = layer.weight.detach().clone()
    gate = LossGate(threshold=3.0)
    with pytest.raises(ValueError, match=r"1 of 5 per-sample losses are NaN or inf .*\[2\]"):
        gate(losses)
    assert layer.weight.grad is None and torch.equal(layer.weight, before)
    for enabled in (True, False):  # a disabled gate records log-losses all the same
        with pytest.raises(ValueError, match="NaN or inf"):
            LossGate(threshold=3.0, enabled=enabled).gate(torch.tensor([1.0, bad]))
    assert LossGate(threshold=3.0).gate(torch.tensor([0.0, 1.0])).tolist() == [True, True]


def test_disabled_gate_keeps_all_but_still_records_log_losses():
    gate = LossGate(threshold=-10.0, enabled=False)
    keep = gate.gate(torch.tensor([1.0, 100.0]))
    assert keep.all()
    np.testing.assert_allclose(gate.epoch_log_losses(), np.log([1.0, 100.0]))


def test_end_epoch_refits_from_recorded_losses_and_state_round_trips():
    rng = np.random.default_rng(0)
    gate = LossGate(threshold=5.0)
    for _ in range(10):  # one "epoch": a bimodal log-loss distribution in batches
        noisy = rng.random(1000) < 0.3
        log_losses = np.where(noisy, rng.normal(3, 0.8, 1000), rng.normal(0, 0.5, 1000))
        gate.gate(torch.from_numpy(np.exp(log_losses)))
    assert gate.end_epoch(0, refit=False) is None  # an epoch without DLG
    assert gate.threshold == 5.0 and gate.epoch_log_losses().size == 0

    for _ in range(10):
        noisy = rng.random(1000) < 0.3
        log_losses = np.where(noisy, rng.normal(3, 0.8, 1000), rng.normal(0, 0.5, 1000))
        gate.gate(torch.from_numpy(np.exp(log_losses)))
    fit = gate.end_epoch(1, refit=True, seed=0)
    assert fit is not None and fit.changed
    assert gate.threshold == pytest.approx(1.32, abs=0.05)
    assert gate.threshold_history() == [(0, 5.0), (1, 5.0)]
    assert gate.history[1]["next_threshold"] == gate.threshold

    buffer = io.BytesIO()
    torch.save(gate.state_dict(), buffer)
    buffer.seek(0)
    restored = LossGate(threshold=0.0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.threshold == gate.threshold
    assert restored.history == gate.history


def test_load_state_dict_names_bad_keys():
    state = LossGate(threshold=1.0).state_dict()
    state["thresold"] = state.pop("threshold")
    with pytest.raises(KeyError, match="threshold"):
        LossGate(threshold=0.0).load_state_dict(state)


def test_schedule_switches_on_at_the_given_epochs():
    schedule = GateSchedule()  # paper: LGL from 0, DLG from 5, LC from 9
    assert [schedule.lgl_active(e) for e in (0, 4)] == [True, True]
    assert [schedule.dlg_active(e) for e in (4, 5)] == [False, True]
    assert [schedule.lc_active(e) for e in (8, 9)] == [False, True]
    off = GateSchedule(lgl_start_epoch=None, dlg_start_epoch=None, lc_start_epoch=None)
    assert not any([off.lgl_active(100), off.dlg_active(100), off.lc_active(100)])
    with pytest.raises(ValueError, match="dlg_start_epoch"):
        GateSchedule(dlg_start_epoch=0)
