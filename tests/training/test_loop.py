"""The training loop on a tiny classifier: exact resume, accumulation, validation, logging."""

from __future__ import annotations

import copy
import logging
import math

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from zip_damage import flip_member_bytes

from sv_kedro.training.batches import ShuffledLoaderFactory
from sv_kedro.training.checkpoint import CheckpointError, checkpoint_summary, load_checkpoint
from sv_kedro.training.config import TrainConfig
from sv_kedro.training.loop import NonFiniteLossError, train
from sv_kedro.training.task import ClassificationTask, GatheredLosses, StepOutput, TrainState

N_ITEMS, DIM, CLASSES = 48, 6, 4


def make_dataset(seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(N_ITEMS, DIM, generator=generator)
    labels = torch.randint(0, CLASSES, (N_ITEMS,), generator=generator)
    return TensorDataset(features, labels, torch.arange(N_ITEMS))


def make_model(dropout: float = 0.2) -> nn.Module:
    torch.manual_seed(1234)
    return nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, CLASSES))


class GateTask(ClassificationTask):
    """CE plus a loss-gate-like threshold refitted from the gathered per-sample losses."""

    def __init__(self, fail_at_step: int | None = None):
        super().__init__()
        self.threshold = 0.0
        self.seen_per_epoch: list[int] = []
        self.fail_at_step = fail_at_step

    def compute_loss(self, model: nn.Module, batch, state: TrainState) -> StepOutput:
        if self.fail_at_step is not None and state.step == self.fail_at_step:
            raise RuntimeError(f"simulated preemption at step {state.step}")
        output = super().compute_loss(model, batch, state)
        # Gated mean: samples above the threshold are ignored once it is set.
        if self.threshold > 0:
            keep = (output.per_sample_loss < self.threshold).float()
            output.loss = (output.per_sample_loss * keep).sum() / keep.sum().clamp_min(1)
        return output

    def on_epoch_end(self, state: TrainState, gathered: GatheredLosses) -> dict[str, float]:
        self.seen_per_epoch.append(len(gathered))
        self.threshold = float(gathered.losses.quantile(0.9))
        return {"gate_threshold": self.threshold}

    def state_dict(self) -> dict:
        return {"threshold": self.threshold}

    def load_state_dict(self, state: dict) -> None:
        self.threshold = float(state["threshold"])


def config(**overrides) -> TrainConfig:
    values = dict(
        epochs=2,
        optimizer="adam",
        lr=1e-2,
        schedule={"kind": "step_per_epoch", "gamma": 0.5},
        log_every=2,
        seed=7,
        progress_bar=False,
    )
    values.update(overrides)
    return TrainConfig.from_dict(values)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), f"{name} differs"


def test_two_epochs_equal_one_plus_resumed_one(tmp_path):
    factory = ShuffledLoaderFactory(make_dataset(), batch_size=8)
    straight = train(make_model(), GateTask(), factory, config(), tmp_path / "straight")

    first = train(make_model(), GateTask(), factory, config(epochs=1), tmp_path / "split")
    assert first.metrics["epoch"].max() <= 1
    resumed_task = GateTask()
    resumed = train(make_model(), resumed_task, factory, config(), tmp_path / "split")

    assert_same_weights(straight.model, resumed.model)
    assert resumed_task.seen_per_epoch == [N_ITEMS]  # only epoch 1 ran after the resume
    payload = load_checkpoint(resumed.last_checkpoint_path)
    summary = checkpoint_summary(payload)
    assert (summary["epoch"], summary["step"]) == (2, 12)
    assert payload["training_state"]["loss_gate"]["task"]["threshold"] > 0
    # The schedule decays per epoch: epoch 1 ran at half the LR.
    train_rows = resumed.metrics[resumed.metrics["kind"] == "train"]
    assert train_rows["lr"].iloc[-1] == pytest.approx(1e-2 * 0.25)
    straight_rows = straight.metrics[straight.metrics["kind"] == "train"]
    assert list(train_rows["loss"]) == pytest.approx(list(straight_rows["loss"]))


def test_mid_epoch_crash_resumes_exactly(tmp_path):
    factory = ShuffledLoaderFactory(make_dataset(), batch_size=8)
    cfg = config(checkpoint_every_steps=2)
    straight_task = GateTask()
    straight = train(make_model(), straight_task, factory, cfg, tmp_path / "straight")

    with pytest.raises(RuntimeError, match="simulated preemption at step 9"):
        train(make_model(), GateTask(fail_at_step=9), factory, cfg, tmp_path / "crash")
    saved = load_checkpoint(tmp_path / "crash" / "last.pt")["training_state"]
    assert (saved["epoch"], saved["step"], saved["sampler"]["batch_in_epoch"]) == (1, 8, 2)

    resumed_task = GateTask()
    resumed = train(make_model(), resumed_task, factory, cfg, tmp_path / "crash")
    assert_same_weights(straight.model, resumed.model)
    # The epoch-1 gather includes the losses of the two steps before the crash.
    assert resumed_task.seen_per_epoch == [N_ITEMS]
    assert resumed_task.threshold == straight_task.threshold


def test_a_re_run_of_a_finished_training_says_so_instead_of_resumed(tmp_path, caplog):
    factory = ShuffledLoaderFactory(make_dataset(), batch_size=8)
    train(make_model(), GateTask(), factory, config(epochs=1), tmp_path / "run")
    last = tmp_path / "run" / "last.pt"
    # A real mid-run resume keeps its wording.
    with caplog.at_level(logging.INFO, logger="sv_kedro.training.resume"):
        train(make_model(), GateTask(), factory, config(), tmp_path / "run")
    assert f"resumed from {last} at epoch 1, step 6, micro-batch 0" in caplog.text
    caplog.clear()
    task = GateTask()
    with caplog.at_level(logging.INFO, logger="sv_kedro.training.resume"):
        again = train(make_model(), task, factory, config(), tmp_path / "run")
    assert "resumed from" not in caplog.text
    assert f"training already finished at epoch 2, step 12 ({last}); nothing to resume" in (
        caplog.text
    )
    assert task.seen_per_epoch == []  # nothing trained
    assert load_checkpoint(again.last_checkpoint_path)["training_state"]["step"] == 12


class InterruptedTask(GateTask):
    """Ctrl-C at a given step, as the user's KeyboardInterrupt reaches the loop."""

    def __init__(self, interrupt_at_step: int):
        super().__init__()
        self.interrupt_at_step = interrupt_at_step

    def compute_loss(self, model: nn.Module, batch, state: TrainState) -> StepOutput:
        if state.step == self.interrupt_at_step:
            raise KeyboardInterrupt
        return super().compute_loss(model, batch, state)


def test_an_interrupted_run_says_where_a_re_run_resumes(tmp_path, caplog):
    factory = ShuffledLoaderFactory(make_dataset(), batch_size=8)
    cfg = config(checkpoint_every_steps=4)
    with caplog.at_level(logging.WARNING), pytest.raises(KeyboardInterrupt):
        train(make_model(), InterruptedTask(1), factory, cfg, tmp_path / "early")
    assert "interrupted at step 1 before its first checkpoint: a re-run starts from step 0" in (
        caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING), pytest.raises(KeyboardInterrupt):
        train(make_model(), InterruptedTask(10), factory, cfg, tmp_path / "late")
    last = tmp_path / "late" / "last.pt"
    saved = load_checkpoint(last)["training_state"]
    assert (saved["epoch"], saved["step"]) == (1, 8)
    assert f"interrupted at step 10; {last} holds epoch 1, step 8: run the same" in caplog.text


def test_a_damaged_last_checkpoint_stops_the_resume_and_says_what_to_do(tmp_path):
    factory = ShuffledLoaderFactory(make_dataset(), batch_size=8)
    train(make_model(), GateTask(), factory, config(epochs=1), tmp_path / "run")
    last = tmp_path / "run" / "last.pt"
    member = flip_member_bytes(last, count=16)
    with pytest.raises(CheckpointError) as caught:
        train(make_model(), GateTask(), factory, config(), tmp_path / "run")
    message = str(caught.value)
    assert f"{last}: corrupt: {member} fails its CRC check" in message
    assert "delete it to train from the start" in message and "run.resume: false" in message
    # With resume off the same command trains from the start, leaving nothing unexplained.
    fresh = train(make_model(), GateTask(), factory, config(), tmp_path / "run", resume=False)
    assert fresh.metrics["epoch"].max() == 1


def test_accumulation_matches_larger_batch(tmp_path):
    dataset = make_dataset()
    cfg = dict(epochs=1, optimizer="sgd", momentum=0.0, lr=0.1, schedule={"kind": "constant"})
    big = train(
        make_model(0.0),
        ClassificationTask(),
        ShuffledLoaderFactory(dataset, batch_size=8, shuffle=False),
        config(**cfg),
        tmp_path / "big",
    )
    small = train(
        make_model(0.0),
        ClassificationTask(),
        ShuffledLoaderFactory(dataset, batch_size=4, shuffle=False),
        config(**cfg, grad_accumulation=2),
        tmp_path / "small",
    )
    for x, y in zip(big.model.parameters(), small.model.parameters(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def test_validation_best_checkpoint_and_early_stopping(tmp_path):
    eers = iter([0.30, 0.20, 0.25, 0.26, 0.27, 0.28])

    def validate(model: nn.Module, state: TrainState) -> dict[str, float]:
        assert not model.training
        return {"eer": next(eers), "min_dcf": 0.5}

    factory = ShuffledLoaderFactory(make_dataset(), batch_size=8)
    result = train(
        make_model(),
        GateTask(),
        factory,
        config(epochs=5, validate_every_steps=3, early_stopping_patience=2),
        tmp_path,
        validate_fn=validate,
        architecture="tiny_mlp",
        model_config={"hidden": 16},
    )
    assert result.stopped_early
    assert result.best_checkpoint_path == tmp_path / "best.pt"
    best = load_checkpoint(result.best_checkpoint_path)
    assert best["metrics"]["val_eer"] == pytest.approx(0.20)
    assert best["training_state"]["step"] == 6
    assert (best["architecture"], best["model_config"]) == ("tiny_mlp", {"hidden": 16})
    frame = result.metrics
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.loc[frame["kind"] == "val", "val_eer"]) == [0.30, 0.20, 0.25, 0.26]
    train_rows = frame[frame["kind"] == "train"]
    assert {"step", "epoch", "loss", "acc", "lr", "samples_per_s"} <= set(train_rows.columns)
    assert train_rows["samples_per_s"].gt(0).all()
    assert train_rows["acc"].between(0, 1).all()
    assert load_checkpoint(result.last_checkpoint_path)["training_state"]["step"] == 12


def test_non_finite_loss_is_reported(tmp_path):
    class NanTask(ClassificationTask):
        def compute_loss(self, model, batch, state):
            output = super().compute_loss(model, batch, state)
            output.loss = output.loss * math.nan
            return output

    factory = ShuffledLoaderFactory(make_dataset(), batch_size=8)
    with pytest.raises(NonFiniteLossError, match=r"steps 1\.\.2 \(epoch 0\)"):
        train(make_model(), NanTask(), factory, config(), tmp_path)


def test_rows_log_the_logged_loss_when_a_task_gives_one(tmp_path):
    class NormalisedTask(ClassificationTask):
        """Back-propagates ``L / sg(L)`` (value always 1), logs ``L`` itself."""

        def compute_loss(self, model, batch, state):
            output = super().compute_loss(model, batch, state)
            output.logged_loss = output.loss.detach()
            output.loss = output.loss / output.loss.detach()
            return output

    factory = ShuffledLoaderFactory(make_dataset(), batch_size=8)
    result = train(make_model(), NormalisedTask(), factory, config(), tmp_path)
    losses = result.metrics[result.metrics["kind"] == "train"]["loss"]
    assert losses.gt(1.05).all(), list(losses)  # 4-class CE starts near log 4 = 1.39
    assert losses.nunique() == len(losses)


def test_config_round_trip_and_bad_keys():
    cfg = config(precision="bf16", grad_clip=1.0)
    again = TrainConfig.from_dict(copy.deepcopy(cfg.to_dict()))
    assert again == cfg
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lr_max'\]"):
        TrainConfig.from_dict({"lr_max": 1.0})
    with pytest.raises(ValueError, match=r"training.lr must be a number, got 'abc'"):
        TrainConfig.from_dict({"lr": "abc"})
    with pytest.raises(ValueError, match=r"schedule\.kind must be one of"):
        TrainConfig.from_dict({"schedule": {"kind": "cosine"}})
    with pytest.raises(ValueError, match=r"training\.precision"):
        TrainConfig.from_dict({"precision": "fp8"})


def test_bf16_autocast_and_grad_clip_train_on_cpu(tmp_path):
    factory = ShuffledLoaderFactory(make_dataset(), batch_size=8)
    result = train(
        make_model(),
        ClassificationTask(),
        factory,
        config(epochs=1, precision="bf16", grad_clip=0.5),
        tmp_path,
    )
    rows = result.metrics[result.metrics["kind"] == "train"]
    assert rows["grad_norm"].notna().all()
    assert rows["loss"].map(math.isfinite).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_on_cuda_resumes_exactly_with_its_grad_scaler(tmp_path):
    # fp16 keeps a GradScaler (CUDA only); its scale must survive a resume, or the resumed
    # run skips or scales steps the straight run did not. Dropout draws from the CUDA RNG,
    # which the checkpoint also carries.
    factory = ShuffledLoaderFactory(make_dataset(), batch_size=8)
    cfg = config(precision="fp16", checkpoint_every_steps=2)
    straight = train(make_model(), GateTask(), factory, cfg, tmp_path / "straight")
    assert next(straight.model.parameters()).device.type == "cuda"

    with pytest.raises(RuntimeError, match="simulated preemption at step 9"):
        train(make_model(), GateTask(fail_at_step=9), factory, cfg, tmp_path / "crash")
    saved = load_checkpoint(tmp_path / "crash" / "last.pt")["training_state"]
    assert saved["grad_scaler"]["scale"] > 0
    resumed = train(make_model(), GateTask(), factory, cfg, tmp_path / "crash")
    assert_same_weights(straight.model, resumed.model)
    rows = resumed.metrics[resumed.metrics["kind"] == "train"]
    assert rows["loss"].map(math.isfinite).all()
