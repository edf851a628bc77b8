"""LR range test on a real tiny run, the suggestion rule, and the plot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sv_kedro.training.lr_finder import (
    check_range_test_options,
    lr_range_test,
    plot_lr_finder,
    suggest_index,
)
from sv_kedro.training.task import ClassificationTask


def make_loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=generator) * 3
    labels = torch.randint(0, 4, (256,), generator=generator)
    features = centres[labels] + torch.randn(256, 8, generator=generator)
    return DataLoader(TensorDataset(features, labels), batch_size=32, shuffle=False)


def test_range_test_suggests_an_lr_inside_the_range_and_restores_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = lr_range_test(
        model, ClassificationTask(), make_loader(), min_lr=1e-5, max_lr=10.0, num_steps=60
    )
    assert 1e-5 <= result.suggested_lr <= 10.0
    assert result.lrs[0] == pytest.approx(1e-5)
    assert np.all(np.diff(np.log(result.lrs)) == pytest.approx(np.log(1e6) / 59))
    # The loss did fall on the way to the suggestion.
    assert result.smoothed[result.suggestion_index] < result.smoothed[0]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), f"{name} was not restored"
    assert not model.training

    figure = plot_lr_finder(result)
    assert isinstance(figure, Figure)
    axes = figure.axes[0]
    assert axes.get_xscale() == "log"
    curves = {line.get_label(): line for line in axes.get_lines()}
    assert list(curves["smoothed loss"].get_xdata()) == result.lrs
    assert list(curves["smoothed loss"].get_ydata()) == result.smoothed
    frame = result.to_frame()
    assert list(frame.columns) == ["lr", "loss", "smoothed_loss"]


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = list(np.logspace(-6, 0, 61))
    log_lr = np.log10(lrs)
    # Falls fastest at 1e-3, bottoms out near 1e-1.5, then explodes.
    loss = 2.0 - np.tanh(2 * (log_lr + 3)) + np.where(log_lr > -1.5, 10 * (log_lr + 1.5) ** 2, 0)
    index = suggest_index(lrs, list(loss))
    assert lrs[index] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="at least 3 are needed"):
        suggest_index([1e-3, 1e-2], [1.0, 0.5])


def test_bad_ranges_are_refused():
    model = nn.Linear(8, 4)
    with pytest.raises(ValueError, match="min_lr < max_lr"):
        lr_range_test(model, ClassificationTask(), make_loader(), min_lr=1.0, max_lr=0.1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        # Stopped the sweep at the first loss that was not a new best, then blamed max_lr.
        ({"divergence_factor": 0.0}, r"divergence_factor must be > 1"),
        ({"divergence_factor": 1.0}, r"divergence_factor must be > 1"),
        # Counted from the end: an LR past the minimum, or an IndexError.
        ({"skip_start": -2}, r"skip_start must be >= 0, got -2"),
        ({"min_lr": 0.0}, r"need 0 < min_lr < max_lr"),
        ({"max_lr": float("inf")}, r"need 0 < min_lr < max_lr \(finite\)"),
        ({"num_steps": 2}, r"num_steps must be >= 3"),
        ({"smoothing": 1.0}, r"smoothing must lie in \[0, 1\)"),
    ],
)
def test_options_that_would_misguide_the_sweep_are_refused_before_a_step(options, message):
    model = nn.Linear(8, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs = {"min_lr": 1e-4, "max_lr": 1.0, "num_steps": 10, **options}
    with pytest.raises(ValueError, match=message):
        lr_range_test(model, ClassificationTask(), make_loader(), **kwargs)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_negative_skip_start_is_refused_by_the_suggestion_rule():
    lrs = list(np.logspace(-6, 0, 10))
    smoothed = [5, 4.9, 4.5, 3.5, 2.5, 2.0, 1.9, 2.5, 4, 9]
    assert lrs[suggest_index(lrs, smoothed, 0)] == lrs[3]  # the steepest fall, before 1.9
    with pytest.raises(ValueError, match="skip_start must be >= 0, got -5"):
        suggest_index(lrs, smoothed, -5)  # was index -5: an LR on the rising side


def test_option_checks_name_the_parameter_key_when_given_a_prefix():
    with pytest.raises(ValueError, match=r"lr_finder\.min_lr and lr_finder\.max_lr need"):
        check_range_test_options(1.0, 0.1, 10, 0.9, 4.0, 3)
    with pytest.raises(ValueError, match=r"lr_finder\.skip_start must be >= 0"):
        check_range_test_options(1e-6, 1.0, 10, 0.9, 4.0, -1)
