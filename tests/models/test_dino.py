"""DINO: student/teacher model, loss, EMA, centring, encoder export, and a resumable run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from sv_kedro.api import model_from_checkpoint
from sv_kedro.corpus.shards import write_webdataset_shards
from sv_kedro.models.dino import (
    DinoHead,
    DinoModel,
    DinoOutput,
    cosine_schedule,
    dino_loss,
    encoder_checkpoint_payload,
    normalize_dino_config,
)
from sv_kedro.systems.dino import DinoTask, MultiCropDataset, train_dino
from sv_kedro.training.task import TrainState

ENCODER = {
    "architecture": "ecapa_tdnn",
    "fbank": {"n_mels": 24},
    "ecapa": {
        "channels": 16,
        "mfa_channels": 48,
        "embedding_dim": 16,
        "attention_dim": 8,
        "se_bottleneck": 8,
    },
}
CONFIG = {
    "encoder": ENCODER,
    "head": {"hidden_dim": 32, "bottleneck_dim": 8, "n_prototypes": 20, "n_layers": 2},
}


def test_forward_shapes_and_only_student_trains() -> None:
    torch.manual_seed(0)
    model = DinoModel(CONFIG)
    output = model(torch.randn(3, 2, 8000), torch.randn(3, 4, 4000))
    assert output.student.shape == (6, 3, 20)
    assert output.teacher.shape == (2, 3, 20)
    assert not output.teacher.requires_grad
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"student", "student_head"}
    assert model.embedding_dim == 16


def test_config_rejects_unknown_keys_naming_them() -> None:
    with pytest.raises(ValueError, match="n_protos"):
        normalize_dino_config({"encoder": ENCODER, "head": {"n_protos": 3}})
    with pytest.raises(ValueError, match="encoder"):
        normalize_dino_config({"head": {}})


def test_loss_matches_cross_entropy_by_hand_and_skips_same_view() -> None:
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(3, 2, 5, generator=generator)  # 2 global + 1 local view
    teacher = torch.randn(2, 2, 5, generator=generator)
    center = torch.randn(5, generator=generator) * 0.1
    loss = dino_loss(DinoOutput(student, teacher), center, 0.1, 0.04)
    t = torch.softmax((teacher - center) / 0.04, dim=-1)
    s = torch.log_softmax(student / 0.1, dim=-1)
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]
    expected = sum(-(t[g] * s[v]).sum(-1) for g, v in pairs) / len(pairs)
    torch.testing.assert_close(loss, expected)
    # A student that predicts the teacher's sharpened target exactly has the lowest loss.
    perfect = torch.cat([teacher[[1, 0]], teacher[:1]]) * (0.1 / 0.04)
    perfect_loss = dino_loss(DinoOutput(perfect, teacher), torch.zeros(5), 0.1, 0.04)
    assert (perfect_loss < loss).all()


def test_ema_update_and_centre() -> None:
    torch.manual_seed(0)
    model = DinoModel(CONFIG)
    with torch.no_grad():
        for parameter in model.student.parameters():
            parameter.add_(1.0)
    before = next(model.teacher.parameters()).clone()
    student = next(model.student.parameters()).clone()
    model.update_teacher(0.9)
    torch.testing.assert_close(next(model.teacher.parameters()), 0.9 * before + 0.1 * student)
    model.update_center(torch.ones(20), 0.75)
    torch.testing.assert_close(model.center, torch.full((20,), 0.25))


def test_cosine_schedule_ends() -> None:
    assert cosine_schedule(0.99, 1.0, 0, 100) == pytest.approx(0.99)
    assert cosine_schedule(0.99, 1.0, 50, 100) == pytest.approx(0.995)
    assert cosine_schedule(0.99, 1.0, 500, 100) == pytest.approx(1.0)


def test_task_updates_teacher_once_per_optimiser_step() -> None:
    torch.manual_seed(0)
    model = DinoModel(CONFIG)
    task = DinoTask({"ema_momentum": 0.5, "ema_momentum_end": 0.5})
    batch = {"global": torch.randn(2, 2, 4000), "local": torch.randn(2, 2, 2000)}
    out = task.compute_loss(model, batch, TrainState(step=0, model=model, total_steps=10))
    assert out.per_sample_loss.shape == (2,) and math.isfinite(float(out.loss.detach()))
    assert task.teacher_step == 0
    task.compute_loss(model, batch, TrainState(step=2, model=model, total_steps=10))
    assert task.teacher_step == 2
    with pytest.raises(ValueError, match="planned steps"):
        task.compute_loss(model, batch, TrainState(step=3, model=model))
    with pytest.raises(ValueError, match=r"dino.task.student_temperature must be > 0, got -1"):
        DinoTask({"student_temperature": -1})
    with pytest.raises(ValueError, match=r"dino.task.ema_momentum must be a number, got 'x'"):
        DinoTask({"ema_momentum": "x"})
    restored = DinoTask({})
    restored.load_state_dict(task.state_dict())
    assert restored.teacher_step == 2


def _write_corpus(root: Path, n: int = 8) -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n):
        path = root / f"utt{i}.wav"
        t = np.arange(16000) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (120 + 15 * i) * t) + 0.01 * rng.standard_normal(16000)
        sf.write(path, wave.astype(np.float32), 16000)
        rows.append(
            {
                "utt_id": f"utt{i}.wav",
                "path": str(path),
                "duration": 1.0,
                "num_frames": 16000,
                "sample_rate": 16000,
            }
        )
    return pd.DataFrame(rows)


def test_multicrop_items_are_deterministic_per_epoch(tmp_path: Path) -> None:
    manifest = _write_corpus(tmp_path, 2)
    dataset = MultiCropDataset(manifest, 0.5, 0.25, 2, 3, seed=3)
    first = dataset[1]
    assert first["global"].shape == (2, 8000) and first["local"].shape == (3, 4000)
    np.testing.assert_array_equal(dataset[1]["global"], first["global"])
    dataset.set_epoch(1)
    assert not np.array_equal(dataset[1]["global"], first["global"])
    with pytest.raises(ValueError, match="2 crops"):
        MultiCropDataset(manifest, 0.5, 0.25, 1, 0)


def test_train_dino_resumes_and_exports_an_encoder(tmp_path: Path) -> None:
    manifest = _write_corpus(tmp_path)
    args = dict(
        model=CONFIG,
        dino={"ema_momentum": 0.9},
        training={"epochs": 1, "lr": 1e-3, "log_every": 1, "progress_bar": False},
        data={"batch_size": 4, "global_seconds": 0.5, "local_seconds": 0.25, "local_crops": 2},
    )
    run = {"work_dir": str(tmp_path / "work"), "resume": True}
    payload, metrics = train_dino(manifest.assign(speaker="secret"), run=run, **args)
    assert payload["architecture"] == "dino"
    assert payload["training_state"]["step"] == 2
    assert metrics["loss"].dropna().map(math.isfinite).all()
    # No speaker column reaches the workers' input.
    written = pd.read_parquet(tmp_path / "work/inputs/unlabeled.parquet")
    assert "speaker" not in written.columns
    # Two epochs continue from the first one's checkpoint.
    args["training"] = {**args["training"], "epochs": 2}
    resumed, _ = train_dino(manifest, run=run, **args)
    assert resumed["training_state"]["step"] == 4
    assert resumed["training_state"]["loss_gate"]["task"]["teacher_step"] >= 3
    encoder = encoder_checkpoint_payload(resumed)
    model = model_from_checkpoint(encoder)
    teacher = {
        k[len("teacher.") :]: v
        for k, v in resumed["model_state"].items()
        if k.startswith("teacher.")
    }
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, teacher[name])
    assert model.embed(torch.randn(2, 8000)).shape == (2, 16)
    with pytest.raises(ValueError, match="not a DINO checkpoint"):
        encoder_checkpoint_payload(encoder)


def test_ema_ramp_spans_the_steps_a_shard_run_takes(tmp_path: Path) -> None:
    # 12 utterances in 4 shards of 3 on 2 loader workers: each worker holds 6 and drops
    # its partial batch of 4, so an epoch is 2 steps, not the manifest's 12 // 4 = 3.
    manifest = _write_corpus(tmp_path, n=12)
    shards = tmp_path / "shards"
    write_webdataset_shards(manifest.assign(speaker="x"), shards, utterances_per_shard=3, seed=0)
    start, end = 0.9, 1.0
    payload, metrics = train_dino(
        manifest,
        model=CONFIG,
        dino={"ema_momentum": start, "ema_momentum_end": end},
        training={"epochs": 2, "lr": 1e-3, "log_every": 1, "progress_bar": False},
        data={
            "batch_size": 4,
            "global_seconds": 0.5,
            "local_seconds": 0.25,
            "local_crops": 2,
            "num_workers": 2,
            "shard_dir": str(shards),
        },
        run={"work_dir": str(tmp_path / "work"), "resume": False},
    )
    total = payload["training_state"]["step"]
    assert total == 4
    logged = metrics.dropna(subset=["ema_momentum"])
    assert len(logged) == total
    for step, momentum in zip(logged["step"], logged["ema_momentum"], strict=True):
        # the logged step is the one the row closes; the momentum is that of the step before
        assert momentum == pytest.approx(cosine_schedule(start, end, int(step) - 1, total))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("global_seconds", 0, r"dino\.data\.global_seconds must be > 0, got 0.0"),
        ("local_seconds", -1.5, r"dino\.data\.local_seconds must be > 0"),
        ("batch_size", 0, r"dino\.data\.batch_size must be >= 1, got 0"),
        ("local_crops", -1, r"dino\.data\.local_crops must be >= 0, got -1"),
    ],
)
def test_dino_data_values_out_of_range_name_the_key(
    tmp_path: Path, key: str, value: float, message: str
) -> None:
    from sv_kedro.systems.dino import DinoLoaderFactory

    manifest = _write_corpus(tmp_path, 2)
    manifest.to_parquet(tmp_path / "train.parquet")
    config = {"manifest_path": str(tmp_path / "train.parquet"), key: value}
    with pytest.raises(ValueError, match=message):
        DinoLoaderFactory(config)
    DinoLoaderFactory({"manifest_path": str(tmp_path / "train.parquet"), "local_crops": 0})


@pytest.mark.parametrize(
    ("head", "message"),
    [
        # 0 trained without an error: no encoder output reached the loss (hidden_dim), or
        # the loss was 0 with no gradient at all (n_prototypes).
        ({"hidden_dim": 0}, r"dino\.model\.head\.hidden_dim must be >= 1, got 0"),
        ({"n_prototypes": 0}, r"dino\.model\.head\.n_prototypes must be >= 1, got 0"),
        ({"bottleneck_dim": -4}, r"dino\.model\.head\.bottleneck_dim must be >= 1, got -4"),
        ({"hidden_dim": 2.5}, r"dino\.model\.head\.hidden_dim must be an integer, got 2\.5"),
        ({"n_layers": "three"}, r"dino\.model\.head\.n_layers must be an integer"),
        ({"n_prototypes": True}, r"dino\.model\.head\.n_prototypes must be an integer"),
    ],
)
def test_head_sizes_that_are_not_whole_numbers_above_zero_name_the_key(
    head: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        normalize_dino_config({"encoder": ENCODER, "head": head})
    # The head itself refuses them too, for callers that build it directly.
    with pytest.raises(ValueError, match=r"DINO head: \w+ must be an integer >= 1"):
        DinoHead(16, **{**CONFIG["head"], **head})  # type: ignore[arg-type]
    # Numbers given as text (``--params``) are converted, not refused.
    assert (
        normalize_dino_config({"encoder": ENCODER, "head": {"hidden_dim": "64"}})["head"][
            "hidden_dim"
        ]
        == 64
    )


def test_model_sections_other_than_the_dino_wrapper_are_named() -> None:
    where = "ssl_pseudo_labeling.dino.model"
    with pytest.raises(ValueError, match=r"dino\.model\.architecture must be 'dino'"):
        normalize_dino_config({"architecture": "ecapa_tdnn", "encoder": ENCODER}, where)
    with pytest.raises(ValueError, match=r"ssl_pseudo_labeling\.dino\.model\.head must be a"):
        normalize_dino_config({"encoder": ENCODER, "head": [256]}, where)
    with pytest.raises(ValueError, match=r"ssl_pseudo_labeling\.dino\.model\.encoder\.ecapa"):
        normalize_dino_config({"encoder": {**ENCODER, "ecapa": {"channels": 0}}}, where)
    assert normalize_dino_config({"architecture": "dino", "encoder": ENCODER})["head"] == {
        "hidden_dim": 512,
        "bottleneck_dim": 128,
        "n_prototypes": 4096,
        "n_layers": 3,
    }


@pytest.mark.parametrize(
    ("task", "message"),
    [
        # inf passed "> 0": uniform teacher targets, nothing to learn.
        ({"teacher_temperature": math.inf}, r"teacher_temperature must be a finite number"),
        ({"student_temperature": "inf"}, r"student_temperature must be a finite number, got inf"),
        ({"teacher_temperature_start": "-inf"}, r"teacher_temperature_start must be > 0"),
        # A falling ramp made the teacher follow the student ever closer.
        (
            {"ema_momentum": 0.999, "ema_momentum_end": 0.5},
            r"dino\.task\.ema_momentum_end=0\.5 is below dino\.task\.ema_momentum=0\.999",
        ),
        # A negative warm-up was taken for none, a fraction for a step count.
        ({"warmup_teacher_steps": -5}, r"warmup_teacher_steps must be >= 0, got -5"),
        ({"warmup_teacher_steps": 2.5}, r"warmup_teacher_steps must be an integer, got 2\.5"),
    ],
)
def test_task_values_that_trained_silently_wrong_are_refused(
    task: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        DinoTask(task)


def test_a_teacher_warmup_longer_than_the_run_is_refused_naming_the_key() -> None:
    torch.manual_seed(0)
    model = DinoModel(CONFIG)
    batch = {"global": torch.randn(2, 2, 4000), "local": torch.randn(2, 2, 2000)}
    config = {"warmup_teacher_steps": 10, "teacher_temperature_start": 0.02}
    task = DinoTask(config, "ssl_pseudo_labeling.dino.task")
    # 10 planned steps: the temperature would still be warming up when the run ends.
    with pytest.raises(
        ValueError,
        match=r"ssl_pseudo_labeling\.dino\.task\.warmup_teacher_steps=10 does not end before "
        r"the run's 10 optimiser steps \(ssl_pseudo_labeling\.dino\.training\.epochs",
    ):
        task.compute_loss(model, batch, TrainState(step=0, model=model, total_steps=10))
    out = task.compute_loss(model, batch, TrainState(step=5, model=model, total_steps=11))
    assert out.extra["teacher_temperature"] == pytest.approx(0.02 + 0.02 * 5 / 10)
    assert DinoTask(config).teacher_temperature(10) == pytest.approx(0.04)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # One view: the loop of the loss found no pair, and the error named no key.
        (
            {"global_crops": 1, "local_crops": 0},
            r"dino\.data: DINO needs at least two views, got global_crops=1 and local_crops=0",
        ),
        # "Local" crops longer than the global ones (a swapped pair) trained without a word.
        (
            {"global_seconds": 1.5, "local_seconds": 3.0},
            r"dino\.data\.local_seconds=3\.0 is longer than dino\.data\.global_seconds=1\.5",
        ),
        # Crops longer than the window they are cut from were that window repeated.
        (
            {"global_seconds": 20.0},
            r"crops of 20\.0 s are longer than the dino\.data\.max_read_seconds=12\.0 s",
        ),
        ({"max_read_seconds": math.inf}, r"dino\.data\.max_read_seconds must be a finite"),
    ],
)
def test_dino_crop_settings_that_cannot_work_are_refused_without_data(
    data: dict[str, object], message: str
) -> None:
    from sv_kedro.systems.dino import checked_data_config

    with pytest.raises(ValueError, match=message):
        checked_data_config(data)
    # Equal lengths and no local crops with two global ones are fine.
    checked_data_config({"global_seconds": 2.0, "local_seconds": 2.0})
    checked_data_config({"local_crops": 0, "local_seconds": 30.0})
