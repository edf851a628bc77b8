"""CheckpointDataset: versioned saves through a catalog, JSON preview, errors."""

from __future__ import annotations

import json
import time

import pytest
import torch
from kedro.io import DataCatalog, DatasetError

from sv_kedro.datasets import CheckpointDataset
from sv_kedro.training.checkpoint import build_checkpoint
from sv_kedro.training.rng_state import capture_rng_state


def _checkpoint(epoch: int) -> dict:
    torch.manual_seed(epoch)
    model = torch.nn.Linear(5, 2)
    return build_checkpoint(
        "toy_linear",
        {"in_dim": 5, "out_dim": 2},
        model.state_dict(),
        epoch=epoch,
        step=10 * epoch,
        rng=capture_rng_state(),
        metrics={"eer": 0.1 / (epoch + 1)},
    )


def test_versioned_checkpoint_through_the_catalog(tmp_path):
    config = {
        "model_checkpoint": {
            "type": "sv_kedro.datasets.CheckpointDataset",
            "filepath": str(tmp_path / "models" / "toy.pt"),
            "versioned": True,
        }
    }
    # A catalog fixes its save version when created, as a kedro run does: one per run.
    DataCatalog.from_config(config).save("model_checkpoint", _checkpoint(1))
    time.sleep(0.01)  # version stamps have millisecond resolution
    catalog = DataCatalog.from_config(config)
    catalog.save("model_checkpoint", _checkpoint(2))
    with pytest.raises(DatasetError, match="must not exist if versioning is enabled"):
        catalog.save("model_checkpoint", _checkpoint(3))

    versions = sorted(p.name for p in (tmp_path / "models" / "toy.pt").iterdir())
    assert len(versions) == 2
    latest = catalog.load("model_checkpoint")
    assert latest["training_state"]["epoch"] == 2
    assert torch.equal(latest["model_state"]["weight"], _checkpoint(2)["model_state"]["weight"])
    oldest = catalog.load("model_checkpoint", version=versions[0])
    assert oldest["training_state"]["epoch"] == 1


def test_preview_is_json_summary(tmp_path):
    dataset = CheckpointDataset(filepath=str(tmp_path / "toy.pt"))
    dataset.save(_checkpoint(3))
    summary = json.loads(dataset.preview())
    assert summary["architecture"] == "toy_linear"
    assert summary["parameter_count"] == 5 * 2 + 2
    assert (summary["epoch"], summary["step"]) == (3, 30)
    assert summary["metrics"]["eer"] == pytest.approx(0.025)
    assert summary["config"] == {"in_dim": 5, "out_dim": 2}
    assert type(dataset).preview.__annotations__["return"] == "JSONPreview"


def test_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match=r"absent\.pt: checkpoint file not found"):
        CheckpointDataset(filepath=str(tmp_path / "absent.pt")).load()
    incomplete = _checkpoint(1)
    del incomplete["model_state"]
    with pytest.raises(DatasetError, match=r"bad\.pt: checkpoint lacks key\(s\) \['model_state'\]"):
        CheckpointDataset(filepath=str(tmp_path / "bad.pt")).save(incomplete)
    assert not (tmp_path / "bad.pt").exists()
    with pytest.raises(DatasetError, match=r"unknown load_args \['strict'\]"):
        CheckpointDataset(filepath=str(tmp_path / "x.pt"), load_args={"strict": True})


def test_in_memory_filesystem_and_mmap_load(tmp_path):
    remote = CheckpointDataset(filepath="memory://checkpoint-test/toy.pt")
    remote.save(_checkpoint(4))
    assert remote.exists() and remote.load()["training_state"]["step"] == 40
    assert json.loads(remote.preview())["epoch"] == 4

    local = CheckpointDataset(filepath=str(tmp_path / "toy.pt"), load_args={"mmap": True})
    local.save(_checkpoint(5))
    assert local.load()["model_state"]["bias"].shape == (2,)
