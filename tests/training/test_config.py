"""``TrainConfig`` refuses values the optimiser, its parameter groups or the schedule would
reject (or silently misuse) later in a training worker, naming ``training.<key>``."""

from __future__ import annotations

import pytest
import torch

from sv_kedro.training.config import TrainConfig
from sv_kedro.training.schedules import ScheduleConfig


def config(**values) -> TrainConfig:
    return TrainConfig.from_dict({"max_steps": 10, **values})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # Infinite values passed "> 0"; the first step then made every weight NaN.
        ({"lr": "inf"}, r"training\.lr must be a finite number > 0, got inf"),
        ({"head_lr": float("inf")}, r"training\.head_lr must be a finite number > 0, got inf"),
        ({"weight_decay": "inf"}, r"training\.weight_decay must be a finite number >= 0"),
        # These were accepted here and failed in the worker without the key, or not at all.
        ({"layer_decay": 0}, r"training\.layer_decay must lie in \(0, 1\], got 0"),
        ({"layer_decay": 1.5}, r"training\.layer_decay must lie in \(0, 1\], got 1\.5"),
        ({"betas": [1.5, 0.9]}, r"training\.betas\[0\] must lie in \[0, 1\), got 1\.5"),
        ({"betas": [0.9]}, r"training\.betas must be a list of two numbers, got \[0\.9\]"),
        ({"betas": "0.9,0.99"}, r"training\.betas must be a list of two numbers"),
        ({"betas": ["a", 0.9]}, r"training\.betas\[0\] must be a number, got 'a'"),
        ({"eps": 0}, r"training\.eps must be a finite number > 0, got 0"),
        ({"optimizer": "sgd", "momentum": 2}, r"training\.momentum must lie in \[0, 1\), got 2"),
        ({"optimizer": "sgd", "momentum": 0, "nesterov": True}, r"training\.nesterov needs"),
        ({"layer_pattern": "("}, r"training\.layer_pattern must be a regular expression"),
        ({"layer_pattern": r"layers\.\d+"}, r"training\.layer_pattern must capture the layer"),
        ({"encoder_prefix": 5}, r"training\.encoder_prefix must be a string, got 5"),
        ({"seed": -1}, r"training\.seed must be an integer >= 0, got -1"),
        # null reached the worker: "'NoneType' object has no attribute 'kind'".
        ({"schedule": None}, r"training\.schedule must be a mapping .* got None"),
        ({"schedule": {"kind": "cosine"}}, r"training\.schedule\.kind must be one of"),
        ({"schedule": {"warmup_ration": 0.1}}, r"training\.schedule: unknown key"),
    ],
)
def test_bad_values_are_refused_naming_the_key(values, message):
    with pytest.raises(ValueError, match=message):
        config(**values)


def test_good_values_still_build_their_optimiser_and_schedule():
    cfg = config(
        optimizer="sgd",
        momentum=0.0,
        layer_decay=1.0,
        betas=["0.8", 0.95],
        eps="1e-6",
        seed=0,
        schedule="tri_stage",
    )
    assert cfg.betas == (0.8, 0.95) and cfg.eps == 1e-6
    assert cfg.schedule == ScheduleConfig(kind="tri_stage")
    optimizer = cfg.build_optimizer(torch.nn.Linear(2, 2))
    assert isinstance(optimizer, torch.optim.SGD)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
