"""EmbeddingsDataset: compact npy folders and the published ``.pt`` dict format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from kedro.io import DatasetError, Version
from zip_damage import flip_member_bytes

from sv_kedro.datasets import EmbeddingsDataset, table_from_vectors
from sv_kedro.scoring.embedding_table import EmbeddingError, EmbeddingTable
from sv_kedro.training.checkpoint import build_checkpoint, save_checkpoint

KEYS = ["id00012/21Uxsk56VDQ/00001.wav", "id00012/21Uxsk56VDQ/00002.wav", "id10001/x/00001.wav"]


def _table(dim: int = 8, seed: int = 0) -> EmbeddingTable:
    vectors = np.random.default_rng(seed).standard_normal((len(KEYS), dim)).astype(np.float32)
    return EmbeddingTable(list(KEYS), vectors)


def test_npy_round_trip_layout_and_mmap(tmp_path):
    table = _table()
    target = tmp_path / "emb" / "test_embeddings"
    EmbeddingsDataset(filepath=str(target)).save(table)
    assert sorted(p.name for p in target.iterdir()) == ["keys.txt", "meta.json", "vectors.npy"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["test_embeddings"]  # no temp dir
    assert target.joinpath("keys.txt").read_text().splitlines() == KEYS
    assert json.loads(target.joinpath("meta.json").read_text())["dim"] == 8

    loaded = EmbeddingsDataset(filepath=str(target)).load()
    assert loaded.keys_ == KEYS
    np.testing.assert_array_equal(loaded.vectors, table.vectors)

    mapped = EmbeddingsDataset(filepath=str(target), load_args={"mmap_mode": "r"}).load()
    assert isinstance(mapped.vectors, np.memmap)
    np.testing.assert_array_equal(mapped[KEYS[2]], table.vectors[2])


def test_npy_overwrite_replaces_and_refuses_foreign_folders(tmp_path):
    target = tmp_path / "emb"
    dataset = EmbeddingsDataset(filepath=str(target))
    dataset.save(_table(seed=1))
    dataset.save(_table(seed=2))
    np.testing.assert_array_equal(dataset.load().vectors, _table(seed=2).vectors)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb"]

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"jpg")
    with pytest.raises(DatasetError, match="not an embeddings folder; refusing to replace"):
        EmbeddingsDataset(filepath=str(foreign)).save(_table())
    assert (foreign / "holiday.jpg").read_bytes() == b"jpg"


def test_pt_round_trip_is_a_plain_dict_of_tensors(tmp_path):
    path = tmp_path / "ssl_embeddings.pt"
    dataset = EmbeddingsDataset(filepath=str(path))  # format inferred from the suffix
    dataset.save({k: torch.from_numpy(v) for k, v in _table().items()})
    raw = torch.load(path, weights_only=True)
    assert list(raw) == KEYS
    assert all(v.shape == (8,) and v.untyped_storage().nbytes() == 32 for v in raw.values())
    loaded = dataset.load()
    np.testing.assert_array_equal(loaded.vectors, _table().vectors)


def test_pt_published_by_another_tool_with_row_vectors(tmp_path):
    path = tmp_path / "published.pth"
    torch.save({k: torch.randn(1, 16, dtype=torch.float64) for k in KEYS}, path)
    table = EmbeddingsDataset(filepath=str(path)).load()
    assert table.vectors.shape == (3, 16) and table.vectors.dtype == np.float32


@pytest.mark.parametrize("name", ["published.pkl", "published.bin", "published"])
def test_a_torch_file_under_another_name_is_read_as_one(tmp_path, name):
    # Only the compact format is a folder; an existing file is a torch file whatever its
    # suffix (it used to be taken for a compact folder and reported as not found).
    path = tmp_path / name
    torch.save({k: torch.randn(16) for k in KEYS}, path)
    assert EmbeddingsDataset(filepath=str(path)).load().keys_ == KEYS
    assert EmbeddingsDataset(filepath=str(path)).exists()


@pytest.mark.parametrize(
    ("bad_value", "message"),
    [
        (torch.arange(8), "has dtype torch.int64, not float"),
        (torch.zeros(2, 4), r"has shape \(2, 4\), not a vector"),
        ("not a tensor", "is a str, not a tensor or array"),
    ],
)
def test_pt_validation_names_the_bad_key(tmp_path, bad_value, message):
    path = tmp_path / "bad.pt"
    contents = {k: torch.zeros(8) for k in KEYS}
    contents["spk9/broken.wav"] = bad_value
    torch.save(contents, path)
    with pytest.raises(DatasetError, match=rf"bad\.pt: embedding 'spk9/broken\.wav' {message}"):
        EmbeddingsDataset(filepath=str(path)).load()


def test_pt_with_mixed_lengths_names_the_odd_ones_out(tmp_path):
    path = tmp_path / "mixed.pt"
    # The odd key comes first: the message must not blame the keys after it.
    contents = {"spk0/odd.wav": torch.zeros(32), **{k: torch.zeros(64) for k in KEYS}}
    torch.save(contents, path)
    with pytest.raises(DatasetError, match=r"mixed\.pt: 1 embedding\(s\) differ") as err:
        EmbeddingsDataset(filepath=str(path)).load()
    assert "other 3, which have 64 values: 'spk0/odd.wav' has 32" in str(err.value)
    assert not any(key in str(err.value) for key in KEYS)
    with pytest.raises(DatasetError, match=r"no majority: \{32: \['a'\], 64: \['b'\]\}"):
        table_from_vectors({"a": torch.zeros(32), "b": torch.zeros(64)}, "tie.pt")


def test_checkpoint_given_as_embeddings_is_recognised(tmp_path):
    path = tmp_path / "checkpoint.pt"
    model = torch.nn.Linear(2, 2)
    save_checkpoint(path, build_checkpoint("toy", {}, model.state_dict(), epoch=0, step=0))
    with pytest.raises(
        DatasetError,
        match=r"checkpoint\.pt is a model checkpoint .*not an embeddings file: pass it as the "
        "checkpoint, not the embeddings",
    ):
        EmbeddingsDataset(filepath=str(path)).load()


def test_pt_that_is_not_a_dict_is_rejected(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(DatasetError, match=r"list\.pt: expected a dict of utt_id -> tensor"):
        EmbeddingsDataset(filepath=str(path)).load()


def test_non_finite_vectors_load_and_check_usable_names_them(tmp_path):
    table = _table()
    table.vectors[1, 3] = np.nan
    table.vectors[2, 0] = np.inf
    for name in ("nan_emb", "nan_emb.pt"):
        loaded = EmbeddingsDataset(filepath=str(tmp_path / name))
        loaded.save(table)
        reread = loaded.load()
        assert np.isnan(reread[KEYS[1]][3])
        with pytest.raises(EmbeddingError, match=r"2 embedding\(s\) contain NaN or inf") as err:
            reread.check_usable()
        assert KEYS[1] in str(err.value) and KEYS[2] in str(err.value)


def test_missing_and_incomplete_folders_name_the_path(tmp_path):
    with pytest.raises(DatasetError, match=r"absent_emb: not found \(no meta\.json\)"):
        EmbeddingsDataset(filepath=str(tmp_path / "absent_emb")).load()
    with pytest.raises(DatasetError, match=r"absent\.pt: embeddings file not found"):
        EmbeddingsDataset(filepath=str(tmp_path / "absent.pt")).load()
    half = tmp_path / "half"
    EmbeddingsDataset(filepath=str(half)).save(_table())
    (half / "meta.json").unlink()
    dataset = EmbeddingsDataset(filepath=str(half))
    assert not dataset.exists()
    with pytest.raises(DatasetError, match="incomplete embeddings folder"):
        dataset.load()


def test_versioned_npy_folders(tmp_path):
    first = EmbeddingsDataset(filepath=str(tmp_path / "emb"), version=Version(None, "2024-01-01"))
    first.save(_table(seed=1))
    second = EmbeddingsDataset(filepath=str(tmp_path / "emb"), version=Version(None, "2024-02-01"))
    second.save(_table(seed=2))
    latest = EmbeddingsDataset(filepath=str(tmp_path / "emb"), version=Version(None, None))
    np.testing.assert_array_equal(latest.load().vectors, _table(seed=2).vectors)
    pinned = EmbeddingsDataset(filepath=str(tmp_path / "emb"), version=Version("2024-01-01", None))
    np.testing.assert_array_equal(pinned.load().vectors, _table(seed=1).vectors)
    assert (tmp_path / "emb" / "2024-01-01" / "emb" / "vectors.npy").is_file()
    with pytest.raises(DatasetError, match="must not exist if versioning is enabled"):
        first.save(_table())


@pytest.mark.parametrize("name", ["preview_emb", "preview_emb.pt"])
def test_preview_table(tmp_path, name):
    dataset = EmbeddingsDataset(filepath=str(tmp_path / name))
    dataset.save(_table())
    preview = dataset.preview(nrows=2, nvalues=3)
    assert preview["columns"] == ["key", "dim", "norm", "v0", "v1", "v2"]
    assert [row[0] for row in preview["data"]] == KEYS[:2]
    first = _table().vectors[0]
    assert preview["data"][0][1] == 8
    assert preview["data"][0][2] == pytest.approx(float(np.linalg.norm(first)), abs=1e-5)
    assert preview["data"][0][3:] == pytest.approx(first[:3].tolist(), abs=1e-6)
    json.dumps(preview)  # kedro-viz sends it as JSON


@pytest.mark.parametrize("name", ["emb_folder", "emb.pt"])
def test_in_memory_filesystem(name):
    dataset = EmbeddingsDataset(filepath=f"memory://embeddings-test/{name}")
    dataset.save(_table(seed=5))
    assert dataset.exists()
    np.testing.assert_array_equal(dataset.load().vectors, _table(seed=5).vectors)
    assert len(dataset.preview(nrows=1)["data"]) == 1


def test_bad_arguments_and_keys(tmp_path):
    with pytest.raises(DatasetError, match="unknown embeddings format 'hdf5'"):
        EmbeddingsDataset(filepath=str(tmp_path / "x"), format="hdf5")
    with pytest.raises(DatasetError, match="mmap_mode needs the npy format"):
        EmbeddingsDataset(filepath=str(tmp_path / "x.pt"), load_args={"mmap_mode": "r"})
    with pytest.raises(DatasetError, match="contains a line break"):
        EmbeddingsDataset(filepath=str(tmp_path / "x")).save({"a\nb": np.zeros(3)})
    with pytest.raises(DatasetError, match=r"key 7 is a int"):
        table_from_vectors({7: np.zeros(3)})


def test_a_damaged_vector_in_a_pt_file_is_refused_naming_the_member(tmp_path):
    path = tmp_path / "external.pt"
    table = _table(dim=256)
    torch.save({k: torch.from_numpy(v.copy()) for k, v in table.items()}, path)
    member = flip_member_bytes(path, count=4, mask=0x40)  # a finite, wrong float
    with pytest.raises(DatasetError, match=rf"external\.pt: corrupt: {member} fails"):
        EmbeddingsDataset(filepath=str(path)).load()
