"""Speaker-disjoint test split, train/validation modes and validation pairs."""

from __future__ import annotations

import pandas as pd
import pytest

from sv_kedro.corpus.splits import (
    SplitError,
    make_validation_pairs,
    split_speakers,
    split_train_validation,
)


def make_manifest(n_speakers: int = 10, per_speaker: int = 10) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"utt_id": f"s{s:02d}/u{u:02d}.wav", "speaker": f"s{s:02d}", "duration": 1.0 + u}
            for s in range(n_speakers)
            for u in range(per_speaker)
        ]
    )


def test_split_speakers_count_fraction_list_and_none():
    manifest = make_manifest()
    train, test = split_speakers(manifest, 3, seed=0)
    assert test["speaker"].nunique() == 3
    assert set(train["speaker"]).isdisjoint(test["speaker"])
    assert len(train) + len(test) == len(manifest)
    again_train, _ = split_speakers(manifest, 3, seed=0)
    pd.testing.assert_frame_equal(train, again_train)
    _, test_fraction = split_speakers(manifest, 0.2, seed=1)
    assert test_fraction["speaker"].nunique() == 2
    _, test_named = split_speakers(manifest, ["s04", "s07"], seed=0)
    assert sorted(test_named["speaker"].unique()) == ["s04", "s07"]
    train_all, test_none = split_speakers(manifest, None, seed=0)
    assert test_none.empty and len(train_all) == len(manifest)
    with pytest.raises(SplitError, match=r"not in the manifest.*nobody"):
        split_speakers(manifest, ["nobody"], seed=0)
    with pytest.raises(SplitError, match="only 10"):
        split_speakers(manifest, 10, seed=0)


def test_equal_mode_keeps_every_speaker_in_both_with_ratio():
    manifest = make_manifest(n_speakers=6, per_speaker=10)
    train, validation = split_train_validation(manifest, "equal", 0.2, seed=0)
    assert set(train["speaker"]) == set(validation["speaker"]) == set(manifest["speaker"])
    assert (validation.groupby("speaker").size() == 2).all()
    assert set(train["utt_id"]).isdisjoint(validation["utt_id"])
    assert len(train) + len(validation) == len(manifest)
    assert sorted(train["speaker_index"].unique()) == list(range(6))
    index = dict(zip(train["speaker"], train["speaker_index"], strict=True))
    assert index["s00"] == 0 and index["s05"] == 5
    assert (validation["speaker"].map(index) == validation["speaker_index"]).all()


def test_equal_mode_keeps_at_least_one_train_utterance():
    manifest = make_manifest(n_speakers=3, per_speaker=2)
    train, validation = split_train_validation(manifest, "equal", 0.9, seed=0)
    assert (train.groupby("speaker").size() == 1).all()
    assert (validation.groupby("speaker").size() == 1).all()


def test_different_mode_has_disjoint_speakers():
    manifest = make_manifest(n_speakers=10, per_speaker=4)
    train, validation = split_train_validation(manifest, "different", 0.3, seed=2)
    assert validation["speaker"].nunique() == 3
    assert set(train["speaker"]).isdisjoint(validation["speaker"])
    assert sorted(train["speaker_index"].unique()) == list(range(7))
    assert (validation["speaker_index"] == -1).all()
    with pytest.raises(SplitError, match="mode"):
        split_train_validation(manifest, "overlap", 0.3, seed=0)
    with pytest.raises(SplitError, match="validation_ratio"):
        split_train_validation(manifest, "equal", 1.5, seed=0)


def test_validation_pairs_are_balanced_distinct_and_correct():
    manifest = make_manifest(n_speakers=5, per_speaker=6)
    pairs = make_validation_pairs(manifest, 40, seed=0)
    speaker = dict(zip(manifest["utt_id"], manifest["speaker"], strict=True))
    assert (pairs["label"] == 1).sum() == 20 and (pairs["label"] == 0).sum() == 20
    same = [speaker[e] == speaker[t] for e, t in zip(pairs["enrol"], pairs["test"], strict=True)]
    assert list(pairs["label"].astype(int)) == [int(s) for s in same]
    keys = {frozenset(p) for p in zip(pairs["enrol"], pairs["test"], strict=True)}
    assert len(keys) == 40 and all(len(k) == 2 for k in keys)
    pd.testing.assert_frame_equal(pairs, make_validation_pairs(manifest, 40, seed=0))


def test_validation_pairs_shrink_but_stay_balanced():
    manifest = make_manifest(n_speakers=2, per_speaker=2)  # 2 target pairs possible
    pairs = make_validation_pairs(manifest, 100, seed=0)
    assert (pairs["label"] == 1).sum() == (pairs["label"] == 0).sum() == 2
    with pytest.raises(SplitError, match="at least 2 speakers"):
        make_validation_pairs(make_manifest(n_speakers=1), 10, seed=0)
