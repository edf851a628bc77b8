"""Trial generation and checks against the manifest."""

from __future__ import annotations

import pandas as pd
import pytest

from sv_kedro.corpus.trials import (
    TrialGenerationError,
    check_trials_against_manifest,
    generate_trials,
    read_voxceleb_trial_lists,
    trial_counts,
)


def make_manifest(n_speakers: int = 6, per_speaker: int = 5, genders: bool = True) -> pd.DataFrame:
    rows = []
    for s in range(n_speakers):
        for u in range(per_speaker):
            row = {"utt_id": f"spk{s:03d}/utt{u:03d}.wav", "speaker": f"spk{s:03d}"}
            if genders:
                row["gender"] = "m" if s % 2 == 0 else "f"
            rows.append(row)
    return pd.DataFrame(rows)


def pair_set(trials: pd.DataFrame) -> list[frozenset[str]]:
    return [frozenset((e, t)) for e, t in zip(trials["enrol"], trials["test"], strict=True)]


def test_deterministic_and_independent_of_row_order():
    manifest = make_manifest()
    first = generate_trials(manifest, 2, 3, seed=7)
    again = generate_trials(manifest.sample(frac=1.0, random_state=3), 2, 3, seed=7)
    other_seed = generate_trials(manifest, 2, 3, seed=8)
    pd.testing.assert_frame_equal(first, again)
    assert not first.equals(other_seed)
    assert first["label"].dtype == "Int8"


def test_no_self_pairs_no_duplicates_and_labels_match_speakers():
    manifest = make_manifest(n_speakers=5, per_speaker=4)
    trials = generate_trials(manifest, targets_per_utt=3, nontargets_per_utt=6, seed=1)
    speaker = dict(zip(manifest["utt_id"], manifest["speaker"], strict=True))
    assert (trials["enrol"] != trials["test"]).all()
    pairs = pair_set(trials)
    assert len(pairs) == len(set(pairs))
    same = [speaker[e] == speaker[t] for e, t in zip(trials["enrol"], trials["test"], strict=True)]
    assert list(trials["label"].astype(int)) == [int(s) for s in same]
    # 4 utterances per speaker allow exactly 6 unordered target pairs per speaker.
    assert trial_counts(trials)["targets"] == 5 * 6
    per_enrol = trials[trials["label"] == 0].groupby("enrol").size()
    assert per_enrol.max() <= 6 and per_enrol.min() >= 1


def test_gender_matched_nontargets_share_gender():
    manifest = make_manifest(n_speakers=6, per_speaker=3)
    trials = generate_trials(manifest, 1, 4, seed=0, gender_matched=True)
    gender = dict(zip(manifest["utt_id"], manifest["gender"], strict=True))
    nontargets = trials[trials["label"] == 0]
    assert len(nontargets) > 0
    assert all(
        gender[e] == gender[t] for e, t in zip(nontargets["enrol"], nontargets["test"], strict=True)
    )
    mixed = generate_trials(manifest, 1, 8, seed=0)
    mixed_nt = mixed[mixed["label"] == 0]
    assert any(
        gender[e] != gender[t] for e, t in zip(mixed_nt["enrol"], mixed_nt["test"], strict=True)
    )


def test_gender_matching_without_gender_is_a_clear_error():
    with pytest.raises(TrialGenerationError, match="gender"):
        generate_trials(make_manifest(genders=False), 1, 1, seed=0, gender_matched=True)
    manifest = make_manifest()
    manifest.loc[3, "gender"] = ""
    with pytest.raises(TrialGenerationError, match=r"spk000/utt003\.wav"):
        generate_trials(manifest, 1, 1, seed=0, gender_matched=True)


def test_too_few_speakers_or_singletons():
    with pytest.raises(TrialGenerationError, match="at least 2 speakers"):
        generate_trials(make_manifest(n_speakers=1), 1, 1, seed=0)
    manifest = pd.concat(
        [
            make_manifest(n_speakers=3, per_speaker=3),
            pd.DataFrame([{"utt_id": "solo/a.wav", "speaker": "solo", "gender": "m"}]),
        ],
        ignore_index=True,
    )
    with pytest.raises(TrialGenerationError, match=r"no target trials: \[.solo.\]"):
        generate_trials(manifest, 1, 1, seed=0)
    trials = generate_trials(manifest, 1, 1, seed=0, allow_singletons=True)
    solo_rows = trials[(trials["enrol"] == "solo/a.wav") | (trials["test"] == "solo/a.wav")]
    assert len(solo_rows) > 0 and (solo_rows["label"] == 0).all()


def test_missing_utterances_are_named():
    manifest = make_manifest(n_speakers=2, per_speaker=2)
    trials = pd.DataFrame(
        {
            "label": pd.array([1, 0], dtype="Int8"),
            "enrol": ["spk000/utt000.wav", "ghost/x.wav"],
            "test": ["spk000/utt001.wav", "spk001/utt000.wav"],
        }
    )
    with pytest.raises(TrialGenerationError, match=r"veri_test2.*ghost/x\.wav"):
        check_trials_against_manifest(trials, manifest, "veri_test2")
    check_trials_against_manifest(trials.iloc[:1], manifest, "ok")


def test_read_voxceleb_trial_lists_reads_present_lists(tmp_path):
    (tmp_path / "veri_test2.txt").write_text("1 a/b/1.wav a/c/2.wav\n0 a/b/1.wav d/e/3.wav\n")
    lists = read_voxceleb_trial_lists([tmp_path / "absent", tmp_path])
    assert list(lists) == ["veri_test2"]
    assert lists["veri_test2"]["label"].tolist() == [1, 0]
