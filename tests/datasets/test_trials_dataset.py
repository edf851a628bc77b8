"""TrialsDataset: the VoxCeleb trial-list text format."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from kedro.io import DatasetError

from sv_kedro.datasets import TrialsDataset

LINES = [
    "1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav",
    "0 id10270/x6uYqmx31kE/00001.wav id10300/ize_eiCFEg0/00003.wav",
    "1 id10309/0cYFdtyWVds/00005.wav id10309/Zx-zA-D_DvI/00001.wav",
]


def test_labelled_round_trip(tmp_path):
    source = tmp_path / "veri_test2.txt"
    source.write_text("\n".join(LINES) + "\n")
    trials = TrialsDataset(filepath=str(source)).load()
    assert list(trials.columns) == ["label", "enrol", "test"]
    assert str(trials["label"].dtype) == "Int8"
    assert trials["label"].tolist() == [1, 0, 1]

    copy = tmp_path / "out" / "copy.txt"
    TrialsDataset(filepath=str(copy)).save(trials)
    assert copy.read_text().splitlines() == LINES
    pd.testing.assert_frame_equal(TrialsDataset(filepath=str(copy)).load(), trials)


def test_unlabelled_round_trip(tmp_path):
    path = tmp_path / "eval.txt"
    trials = pd.DataFrame({"enrol": ["a/1.wav", "b/2.wav"], "test": ["c/3.wav", "d/4.wav"]})
    TrialsDataset(filepath=str(path)).save(trials)
    assert path.read_text().splitlines() == ["a/1.wav c/3.wav", "b/2.wav d/4.wav"]
    loaded = TrialsDataset(filepath=str(path)).load()
    assert loaded["label"].isna().all() and loaded["test"].tolist() == ["c/3.wav", "d/4.wav"]


def test_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.txt"
    path.write_text(LINES[0] + "\n" + LINES[1] + "\n2 a.wav b.wav\n")
    with pytest.raises(DatasetError, match=r"broken\.txt:3: label must be 0 or 1, got '2'"):
        TrialsDataset(filepath=str(path)).load()


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DatasetError, match=r"absent\.txt: trial list not found"):
        TrialsDataset(filepath=str(tmp_path / "absent.txt")).load()
    with pytest.raises(DatasetError, match=r"absent\.txt: trial list not found"):
        TrialsDataset(filepath="memory://trials-test/absent.txt").load()


def test_preview_reads_only_the_head(tmp_path):
    path = tmp_path / "long.txt"
    # Line 5 is malformed: a preview of 3 rows never parses it.
    path.write_text("\n".join([*LINES, LINES[0], "bad line with five fields"]) + "\n")
    dataset = TrialsDataset(filepath=str(path))
    preview = dataset.preview(nrows=3)
    assert preview["columns"] == ["label", "enrol", "test"]
    assert preview["data"] == [[int(line[0]), *line.split()[1:]] for line in LINES]
    json.dumps(preview)
    assert type(dataset).preview.__annotations__["return"] == "TablePreview"


def test_in_memory_filesystem():
    dataset = TrialsDataset(filepath="memory://trials-test/list.txt")
    frame = pd.DataFrame({"label": [1, 0], "enrol": ["a", "b"], "test": ["c", "d"]})
    dataset.save(frame)
    assert dataset.exists()
    assert dataset.load()["label"].tolist() == [1, 0]
