"""Checkpoint payload: atomic save, weights-only load, validation, RNG capture/restore."""

from __future__ import annotations

import io
import random
import re
import zipfile

import numpy as np
import pytest
import torch
from zip_damage import flip_member_bytes

from sv_kedro.training import checkpoint as ckpt
from sv_kedro.training.checkpoint import (
    CheckpointError,
    build_checkpoint,
    checkpoint_summary,
    load_checkpoint,
    save_checkpoint,
    torch_load_weights_only,
)
from sv_kedro.training.rng_state import capture_rng_state, restore_rng_state


def _trained_model() -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=10)
    for _ in range(2):
        model(torch.randn(8, 4)).pow(2).mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer, scheduler


def _payload(**overrides: object) -> dict:
    model, optimizer, scheduler = _trained_model()
    payload = build_checkpoint(
        "toy_linear_bn",
        {"in_dim": 4, "out_dim": 3},
        model.state_dict(),
        epoch=3,
        step=120,
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        rng=capture_rng_state(),
        sampler={"epoch": torch.tensor(3), "order": torch.arange(5)},
        loss_gate={"threshold": 2.5},
        metrics={"eer": 0.031, "min_dcf": 0.2},
    )
    payload.update(overrides)
    return payload


def test_round_trip_restores_model_optimizer_and_scheduler(tmp_path):
    model, optimizer, scheduler = _trained_model()
    payload = build_checkpoint(
        "toy_linear_bn",
        {"in_dim": 4},
        model.state_dict(),
        epoch=1,
        step=2,
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        metrics={"eer": 0.5},
    )
    weight_before = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)  # training goes on after the snapshot was taken
    assert torch.equal(payload["model_state"]["0.weight"], weight_before)
    with torch.no_grad():
        model[0].weight.copy_(weight_before)
    path = tmp_path / "sub" / "model.pt"
    save_checkpoint(path, payload)
    loaded = load_checkpoint(path)

    fresh = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    fresh.load_state_dict(loaded["model_state"])
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    fresh_opt.load_state_dict(loaded["training_state"]["optimizer"])
    assert fresh_opt.state_dict()["param_groups"][0]["lr"] == pytest.approx(
        optimizer.state_dict()["param_groups"][0]["lr"]
    )
    fresh_sched = torch.optim.lr_scheduler.OneCycleLR(fresh_opt, max_lr=0.1, total_steps=10)
    fresh_sched.load_state_dict(loaded["training_state"]["scheduler"])
    assert fresh_sched.last_epoch == scheduler.last_epoch
    assert loaded["metrics"] == {"eer": 0.5}
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp files left


def test_failed_save_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_checkpoint(path, _payload())
    before = path.read_bytes()

    def exploding_save(obj, handle):
        handle.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _payload())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_missing_keys_are_named_on_save_and_load(tmp_path):
    payload = _payload()
    del payload["metrics"], payload["architecture"]
    with pytest.raises(CheckpointError, match=r"lacks key\(s\) \['architecture', 'metrics'\]"):
        save_checkpoint(tmp_path / "a.pt", payload)

    broken = _payload()
    del broken["training_state"]["step"]
    path = tmp_path / "raw.pt"
    torch.save(broken, path)  # bypasses validation, as a foreign tool might
    with pytest.raises(CheckpointError, match=r"raw\.pt: training_state lacks key\(s\) \['step'\]"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"format_version": 2}, "newer than this code reads"),
        ({"model_state": {"w": [1.0]}}, r"model_state\['w'\] is a list"),
        ({"metrics": {"eer": "low"}}, r"metrics\['eer'\] must be a float"),
        ({"model_config": {"act": torch.nn.ReLU}}, "not JSON-serialisable"),
    ],
)
def test_invalid_payloads_are_rejected(tmp_path, override, message):
    with pytest.raises(CheckpointError, match=message):
        save_checkpoint(tmp_path / "x.pt", _payload(**override))
    assert not (tmp_path / "x.pt").exists()


def test_value_weights_only_cannot_load_is_named(tmp_path):
    payload = _payload()
    payload["training_state"]["sampler"] = {"order": np.arange(4)}
    with pytest.raises(CheckpointError, match=r"training_state\.sampler\.order is a numpy"):
        save_checkpoint(tmp_path / "x.pt", payload)


def test_architecture_disagreeing_with_model_config_is_refused(tmp_path):
    payload = _payload(model_config={"architecture": "xvector", "n_classes": 3})
    payload["architecture"] = "ecapa_tdnn"
    path = tmp_path / "mixed.pt"
    torch.save(payload, path)  # bypasses validation, as a hand edit would
    pattern = (
        r"mixed\.pt: architecture 'ecapa_tdnn' disagrees with model_config\.architecture "
        r"'xvector'.*Set both to"
    )
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"disagrees with model_config\.architecture"):
        save_checkpoint(tmp_path / "again.pt", payload)
    assert not (tmp_path / "again.pt").exists()
    # Agreeing fields, and a generic model's config without the key, still load.
    payload["architecture"] = "xvector"
    torch.save(payload, path)
    assert load_checkpoint(path)["architecture"] == "xvector"
    generic = tmp_path / "generic.pt"
    save_checkpoint(generic, _payload())
    assert load_checkpoint(generic)["model_config"] == {"in_dim": 4, "out_dim": 3}


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match=r"garbage\.pt: not a readable torch file"):
        load_checkpoint(garbage)


def _saved_bytes(obj: object, zip_format: bool = True) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=zip_format)
    return buffer.getvalue()


class _RunsCode:
    def __reduce__(self):
        return (print, ("unpickling ran code",))


_RANDOM_BYTES = bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8))


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        # torch's unpickler fails on random bytes with an UnpicklingError ("Unsupported
        # operand"), which must not be taken for a refused global.
        (_RANDOM_BYTES, r"neither a zip archive nor a pickle stream \(it starts with"),
        (b"this is not a checkpoint", r"neither a zip archive nor a pickle stream"),
        (b"", "it is empty"),
        (_saved_bytes(_payload())[:2000], r"corrupt or truncated \(PytorchStreamReader"),
        (_saved_bytes(_payload(), zip_format=False)[:2000], r"corrupt or truncated"),
    ],
    ids=["random", "text", "empty", "truncated-zip", "truncated-legacy"],
)
def test_unreadable_file_is_not_described_as_unsafe(tmp_path, contents, message):
    path = tmp_path / "broken.pt"
    path.write_bytes(contents)
    for source, name in ((path, r"broken\.pt"), (io.BytesIO(contents), "<stream>")):
        pattern = rf"{name}: not a readable torch file: {message}"
        with pytest.raises(CheckpointError, match=pattern) as err:
            load_checkpoint(source)
        assert "could run code" not in str(err.value)


def test_a_folder_is_named_as_one(tmp_path):
    (tmp_path / "weights.pt").mkdir()
    with pytest.raises(CheckpointError, match=r"weights\.pt: is a folder, not a torch file$"):
        load_checkpoint(tmp_path / "weights.pt")
    # The embeddings reader goes through the weights-only loader directly.
    with pytest.raises(CheckpointError, match=r"weights\.pt: is a folder, not a torch file$"):
        torch_load_weights_only(tmp_path / "weights.pt", str(tmp_path / "weights.pt"))


def test_a_plain_pickle_is_named_as_one_with_the_fix(tmp_path):
    import pickle

    path = tmp_path / "embeddings.pt"
    with open(path, "wb") as handle:  # what a numpy user writes by habit
        pickle.dump({"spk1/a.wav": np.zeros(4, np.float32)}, handle)
    with pytest.raises(
        CheckpointError,
        match=r"embeddings\.pt: a plain pickle \(pickle\.dump\), not a torch\.save file.*"
        r"re-save it with torch\.save",
    ):
        load_checkpoint(path)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_unsafe_global_is_refused_as_such(tmp_path, zip_format):
    path = tmp_path / "unsafe.pt"
    path.write_bytes(_saved_bytes(_payload(sampler=_RunsCode()), zip_format))
    with pytest.raises(CheckpointError, match=r"unsafe\.pt: refused to load.*run code") as err:
        load_checkpoint(path)
    assert "Unsupported global: GLOBAL print" in str(err.value)


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.gauss(0, 1)  # leaves a cached second gaussian in Python's generator
    np.random.standard_normal()  # and in NumPy's legacy generator
    state = capture_rng_state()
    expected = (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3),
        np.random.randn(),
        torch.rand(3),
    )
    path = tmp_path / "rng.pt"
    save_checkpoint(path, _payload(training_state={"epoch": 0, "step": 0, "rng": state}))
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)

    restore_rng_state(load_checkpoint(path)["training_state"]["rng"])
    again = (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3),
        np.random.randn(),
        torch.rand(3),
    )
    assert again[0] == expected[0]
    assert again[1] == expected[1]
    np.testing.assert_array_equal(again[2], expected[2])
    assert again[3] == expected[3]
    assert torch.equal(again[4], expected[4])


def test_restore_rejects_incomplete_rng_state():
    state = capture_rng_state()
    del state["numpy_keys"]
    with pytest.raises(CheckpointError, match="numpy_keys"):
        restore_rng_state(state)


def test_summary_counts_parameters_and_reports_progress():
    payload = _payload()
    summary = checkpoint_summary(payload)
    # Linear 4*3+3, BatchNorm weight+bias+running mean/var (3 each); the int64
    # num_batches_tracked buffer is not counted.
    assert summary["parameter_count"] == 15 + 12
    assert summary["state_tensors"] == 7
    assert summary["architecture"] == "toy_linear_bn"
    assert (summary["epoch"], summary["step"]) == (3, 120)
    assert summary["metrics"] == {"eer": pytest.approx(0.031), "min_dcf": pytest.approx(0.2)}
    assert summary["config"] == {"in_dim": 4, "out_dim": 3}
    assert summary["has_optimizer_state"] and summary["has_rng_state"]


def _big_payload() -> dict:
    model = torch.nn.Linear(64, 64)
    return build_checkpoint("toy_linear", {"in_dim": 64}, model.state_dict(), epoch=0, step=0)


def test_torch_written_zips_carry_valid_crcs(tmp_path):
    # The CRC check must not false-alarm on what torch.save writes, to a file or a buffer.
    path = tmp_path / "intact.pt"
    save_checkpoint(path, _payload())
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        assert all(info.CRC for info in archive.infolist() if info.file_size > 4)
    with zipfile.ZipFile(io.BytesIO(ckpt.checkpoint_to_bytes(_payload()))) as archive:
        assert archive.testzip() is None


def test_damaged_tensor_data_is_refused_naming_file_and_member(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _big_payload())
    member = flip_member_bytes(path)
    assert member.startswith("archive/data/")
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() == member  # the repro: torch.load alone accepts this
    torch.load(path, weights_only=True)
    pattern = rf"last\.pt: corrupt: {re.escape(member)} fails its CRC check"
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(path)
    stream = io.BytesIO(path.read_bytes())
    stream.name = "remote/last.pt"
    with pytest.raises(CheckpointError, match=rf"remote/last\.pt: corrupt: {re.escape(member)}"):
        load_checkpoint(stream)


def test_damaged_pickle_is_named_as_a_crc_failure(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, _payload())
    member = flip_member_bytes(path, "archive/data.pkl", count=16)
    with pytest.raises(CheckpointError, match=r"model\.pt: corrupt: archive/data\.pkl fails its"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=rf"corrupt: {re.escape(member)}"):
        load_checkpoint(path, mmap=True)  # the metadata is read, so it is checked


def test_a_stream_is_read_from_where_it_was_after_the_check(tmp_path):
    data = ckpt.checkpoint_to_bytes(_payload())
    stream = io.BytesIO(b"header" + data)
    stream.seek(6)
    assert load_checkpoint(stream)["training_state"]["step"] == 120


def test_mmap_load_leaves_mapped_tensor_data_unchecked(tmp_path):
    # Documented: a mapped load reads no tensor data (a cheap summary), so none is checked.
    path = tmp_path / "model.pt"
    save_checkpoint(path, _big_payload())
    flip_member_bytes(path)
    assert checkpoint_summary(load_checkpoint(path, mmap=True))["parameter_count"] == 64 * 65
    with pytest.raises(CheckpointError, match="fails its CRC check"):
        load_checkpoint(path)


def test_file_written_without_crcs_loads(tmp_path):
    from torch.utils.serialization import config

    # Set and reset directly: monkeypatch's undo deletes the option from torch's config.
    config.save.compute_crc32 = False
    path = tmp_path / "no_crc.pt"
    try:
        save_checkpoint(path, _payload())
    finally:
        config.save.compute_crc32 = True
    with zipfile.ZipFile(path) as archive:
        assert not any(info.CRC for info in archive.infolist())
    assert load_checkpoint(path)["training_state"]["epoch"] == 3


def test_a_hugging_face_folder_is_named_with_where_it_belongs(tmp_path):
    folder = tmp_path / "wavlm-base-plus"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(
        CheckpointError,
        match=r"wavlm-base-plus: is a folder, not a torch file; it looks like a Hugging Face "
        r".*model\.encoder\.pretrained of a training config",
    ):
        load_checkpoint(folder)
    run = tmp_path / "ecapa_tdnn"
    run.mkdir()
    (run / "best.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"ecapa_tdnn: is a folder.*e\.g\. \['best\.pt'\]"):
        load_checkpoint(run)


def test_a_bare_state_dict_is_named_as_one(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(
        CheckpointError,
        match=r"weights\.pt: checkpoint lacks key\(s\) \[.*\]; it looks like a bare state_dict "
        r".*not a project checkpoint, which also stores the model config",
    ):
        load_checkpoint(path)
