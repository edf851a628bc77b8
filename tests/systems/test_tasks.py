"""SpeakerClassificationTask: what it back-propagates and what it logs."""

from __future__ import annotations

import math

import torch

from sv_kedro.models.factory import build_model
from sv_kedro.systems.tasks import SpeakerClassificationTask
from sv_kedro.training.task import TrainState

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
