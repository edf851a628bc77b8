"""Loading untrusted ``.pt``/``.npy`` files must never run code.

Each malicious file holds an object whose ``__reduce__`` makes unpickling call
``open(marker, "w")``. The datasets must refuse the file and the marker must not appear;
a control load with plain pickle semantics then proves the file really was armed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kedro.io import DatasetError

from sv_kedro.datasets import CheckpointDataset, EmbeddingsDataset
from sv_kedro.training.checkpoint import build_checkpoint


class _CreatesMarker:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _armed_embeddings(marker: str) -> dict:
    return {"id00012/21Uxsk56VDQ/00001.wav": torch.zeros(4), "spk/evil.wav": _CreatesMarker(marker)}


def _armed_checkpoint(marker: str) -> dict:
    payload = build_checkpoint("toy", {}, torch.nn.Linear(2, 2).state_dict(), epoch=0, step=0)
    payload["model_state"]["weight"] = _CreatesMarker(marker)
    return payload


@pytest.mark.parametrize("zipfile_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize(
    ("make_payload", "dataset_type"),
    [(_armed_embeddings, EmbeddingsDataset), (_armed_checkpoint, CheckpointDataset)],
    ids=["embeddings", "checkpoint"],
)
def test_malicious_pt_is_refused_without_running_code(
    tmp_path, make_payload, dataset_type, zipfile_format
):
    marker = tmp_path / "pwned"
    path = tmp_path / "untrusted.pt"
    torch.save(make_payload(str(marker)), path, _use_new_zipfile_serialization=zipfile_format)
    dataset = dataset_type(filepath=str(path))

    with pytest.raises(DatasetError, match=r"untrusted\.pt: refused to load") as err:
        dataset.load()
    assert "weights_only" in str(err.value)
    assert "open" in str(err.value)  # names the global it refused
    with pytest.raises(DatasetError, match="refused to load"):
        dataset.preview()
    assert not marker.exists()

    torch.load(path, weights_only=False)  # control: an unsafe load does run the payload
    assert marker.exists()


def test_malicious_npy_vectors_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "emb"
    EmbeddingsDataset(filepath=str(folder)).save({"a.wav": np.zeros(2, dtype=np.float32)})
    armed = np.empty((1, 2), dtype=object)
    armed[0, 0] = _CreatesMarker(str(marker))
    np.save(folder / "vectors.npy", armed, allow_pickle=True)

    with pytest.raises(DatasetError, match=r"vectors\.npy: refused or unreadable"):
        EmbeddingsDataset(filepath=str(folder)).load()
    assert not marker.exists()

    np.load(folder / "vectors.npy", allow_pickle=True)  # control
    assert marker.exists()
