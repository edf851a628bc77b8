"""Parquet / CSV / JSON / text datasets that save atomically on local disk."""

from __future__ import annotations

import pandas as pd
import pytest
from kedro.io import DatasetError

from sv_kedro.datasets import (
    AtomicCSVDataset,
    AtomicJSONDataset,
    AtomicParquetDataset,
    AtomicTextDataset,
)

FRAME = pd.DataFrame({"utt_id": ["a/1.wav", "b/2.wav"], "duration": [1.5, 2.0]})


@pytest.mark.parametrize(
    ("dataset", "name", "data"),
    [
        (AtomicParquetDataset, "manifest.parquet", FRAME),
        (AtomicCSVDataset, "report.csv", FRAME),
        (AtomicJSONDataset, "metrics.json", {"eer": 0.05, "n_trials": 10}),
        (AtomicTextDataset, "summary.md", "| system | EER |\n"),
    ],
)
def test_round_trip_leaves_only_the_target(tmp_path, dataset, name, data):
    target = tmp_path / "out" / name
    kwargs = {"save_args": {"index": False}} if dataset is AtomicCSVDataset else {}
    store = dataset(filepath=str(target), **kwargs)
    store.save(data)
    loaded = store.load()
    if isinstance(data, pd.DataFrame):
        pd.testing.assert_frame_equal(loaded, data)
    else:
        assert loaded == data
    assert [p.name for p in target.parent.iterdir()] == [name]
    assert store.exists()


def test_a_failed_save_keeps_the_previous_file_whole(tmp_path):
    target = tmp_path / "manifest.parquet"
    store = AtomicParquetDataset(filepath=str(target))
    store.save(FRAME)
    before = target.read_bytes()
    unwritable = pd.DataFrame({"utt_id": [object()]})  # pyarrow cannot store a bare object
    with pytest.raises(DatasetError):
        store.save(unwritable)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.parquet"]
    pd.testing.assert_frame_equal(store.load(), FRAME)
