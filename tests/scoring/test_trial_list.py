"""The VoxCeleb trial-list format: the real lists parse completely; bad lines are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from sv_kedro.scoring.trial_list import (
    TrialListError,
    parse_trial_lines,
    read_trial_list,
    trials_frame,
    write_trial_list,
)


@pytest.mark.parametrize(("name", "count"), [("veri_test2.txt", 37_611), ("veri_test.txt", 37_720)])
def test_voxceleb1_o_lists_parse_completely(shared_data: Path, name: str, count: int):
    trials = read_trial_list(shared_data / "voxceleb_meta" / name)
    assert len(trials) == count
    assert set(trials["label"].unique()) == {0, 1}
    assert trials["enrol"].iloc[0].startswith("id1") and trials["test"].iloc[0].endswith(".wav")


def test_round_trip_with_and_without_labels(tmp_path: Path):
    trials = parse_trial_lines(["1 a/x.wav b/y.wav", "0 a/x.wav c/z.wav"])
    # One category set for both columns, so scoring resolves each utterance once.
    assert list(trials["enrol"].cat.categories) == ["a/x.wav", "b/y.wav", "c/z.wav"]
    assert trials["enrol"].cat.categories is trials["test"].cat.categories
    write_trial_list(trials, tmp_path / "t.txt")
    assert read_trial_list(tmp_path / "t.txt").equals(trials)
    unlabelled = parse_trial_lines(["a/x.wav b/y.wav"])
    assert unlabelled["label"].isna().all()


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["1 a b", "2 a c"], r"<trials>:2: label must be 0 or 1"),
        (["1 a b", "1 a b c d"], r"<trials>:2: expected"),
        (["1 a b", "a c"], r"<trials>:2: mixes labelled and unlabelled"),
        ([], r"no trials"),
    ],
)
def test_malformed_lines_are_named_with_their_number(lines, message):
    with pytest.raises(TrialListError, match=message):
        parse_trial_lines(lines)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ["1 a b", "0 a c", "0 a b"],
            r"^<trials>:3: pair \(a, b\) labelled 0 here and 1 at <trials>:1$",
        ),
        (["1 a b", "0 b a"], r"^<trials>:2: pair \(b, a\) labelled 0 here and 1 at <trials>:1$"),
        (["1 a b", "1 c c"], r"^<trials>:2: enrolment and test are the same utterance"),
    ],
)
def test_contradictory_and_self_trials_name_their_lines(lines, message):
    with pytest.raises(TrialListError, match=message):
        parse_trial_lines(lines)


def test_a_pair_listed_again_with_its_label_is_kept_with_a_warning(caplog):
    trials = parse_trial_lines(["1 a b", "0 a c", "1 b a"])
    assert trials["enrol"].astype(str).tolist() == ["a", "a", "b"]  # as in VoxCeleb1-O
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    with caplog.at_level("WARNING"):
        trials = parse_trial_lines(["1 a b", "", "0 a c", "1 a b"], source="list.txt")
    assert len(trials) == 3
    assert "list.txt: 1 trial(s) listed again in the same order" in caplog.text
    assert "line 4 repeats line 1" in caplog.text


def test_ids_with_whitespace_are_refused_before_writing(tmp_path: Path):
    # Written, such a list could not be read back ("got 7 field(s)").
    trials = trials_frame(
        [1, 0, 1],
        ["speaker with space/utt 0.flac", "a/x.wav", "b/y\tz.wav"],
        ["speaker with space/utt 1.flac", "b/y.wav", "a/x.wav"],
    )
    path = tmp_path / "trials.txt"
    with pytest.raises(TrialListError) as caught:
        write_trial_list(trials, path)
    message = str(caught.value)
    assert message.startswith(f"{path}: 3 utterance id(s) are empty or hold whitespace")
    assert "'speaker with space/utt 0.flac'" in message and "'b/y\\tz.wav'" in message
    assert "a/x.wav'" not in message
    assert not path.exists() and list(tmp_path.iterdir()) == []
    # A subset keeps its parent's categories: only the ids it holds are checked.
    write_trial_list(trials.iloc[[1]], path)
    assert read_trial_list(path)["enrol"].tolist() == ["a/x.wav"]
