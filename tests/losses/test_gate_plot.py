"""The loss-gate figure, drawn from the state a real gated task leaves in a checkpoint."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from sv_kedro.losses.gate_plot import gate_figure
from sv_kedro.systems.tasks import build_task
from sv_kedro.training.task import GatheredLosses, TrainState

GATE = {"enabled": True, "initial_threshold": 3.0, "dlg_start_epoch": 1, "lc_start_epoch": None}


def _checkpoint(task) -> dict:
    return {"training_state": {"loss_gate": {"task": task.state_dict()}}}


def test_gate_figure_shows_thresholds_and_the_last_gmm_fit():
    task = build_task({"loss": {"name": "ce"}, "gate": GATE, "seed": 0})
    rng = np.random.default_rng(0)
    for epoch in range(3):
        # Clean samples with small losses, noisy ones with large: two clear modes.
        losses = np.r_[np.exp(rng.normal(-2.0, 0.3, 400)), np.exp(rng.normal(1.5, 0.3, 100))]
        task.gate(torch.from_numpy(losses))
        gathered = GatheredLosses(torch.arange(500), torch.from_numpy(losses).float())
        task.on_epoch_end(TrainState(epoch=epoch), gathered)
    figure = gate_figure(_checkpoint(task), "iter_1")
    assert isinstance(figure, Figure)
    left, right, twin = figure.axes
    assert left.get_title() == "iter_1 loss gate"
    assert [len(line.get_xdata()) for line in left.get_lines()] == [3, 3]
    assert len(twin.patches) == 3  # kept fraction per epoch
    labels = [line.get_label() for line in right.get_lines()]
    assert sum(label.startswith("GMM mu=") for label in labels) == 2
    threshold = next(line for line in right.get_lines() if line.get_label() == "threshold")
    assert -2.0 < threshold.get_xdata()[0] < 1.5  # between the two modes
    assert right.get_title().startswith("epoch 2 ")


def test_gate_figure_says_when_the_gate_is_off():
    task = build_task({"loss": {"name": "ce"}, "seed": 0})
    figure = gate_figure(_checkpoint(task))
    left, right = figure.axes
    assert [text.get_text() for text in left.texts] == ["loss gate disabled"]
    assert not right.axison
