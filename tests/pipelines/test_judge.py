"""judge nodes: parameters and trial lists are checked before anything is embedded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sv_kedro.pipelines.judge.nodes import (
    JudgeError,
    judged_embeddings,
    judged_trials,
    scan_judged_audio,
    score_judged_trials,
)
from sv_kedro.pipelines.judge.pipeline import create_pipeline

MANIFEST = pd.DataFrame(
    {
        "utt_id": ["a/1.wav", "a/2.wav", "b/1.wav", "b/2.wav"],
        "speaker": ["a", "a", "b", "b"],
    }
)
NO_EXCLUSIONS = pd.DataFrame(columns=["utt_id", "path", "reason", "action", "detail"])


def _list(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "trials.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize(
    ("judge", "message"),
    [
        ({"trial_lst": "x.txt"}, r"judge: unknown key\(s\) \['trial_lst'\]"),
        (
            {"generated_trials": {"target_per_utt": 1}},
            r"judge.generated_trials: unknown key\(s\) \['target_per_utt'\]",
        ),
    ],
)
def test_misspelt_keys_are_refused_by_every_node(judge, message):
    with pytest.raises(JudgeError, match=message):
        scan_judged_audio({"audio_root": "/nowhere", **judge})
    with pytest.raises(JudgeError, match=message):
        judged_trials(MANIFEST, NO_EXCLUSIONS, judge)


def test_integer_parameters_name_the_key():
    with pytest.raises(JudgeError, match=r"judge.workers must be an integer, got 'two'"):
        scan_judged_audio({"audio_root": "/nowhere", "workers": "two"})
    with pytest.raises(JudgeError, match=r"judge.workers must be >= 0, got -1"):
        scan_judged_audio({"audio_root": "/nowhere", "workers": -1})
    bad = {"generated_trials": {"seed": "abc"}}
    with pytest.raises(JudgeError, match=r"judge.generated_trials.seed must be an integer"):
        judged_trials(MANIFEST, NO_EXCLUSIONS, bad)


def test_a_given_list_needs_labels_and_both_kinds_of_trial(tmp_path):
    unlabelled = _list(tmp_path, "a/1.wav a/2.wav", "a/1.wav b/1.wav")
    with pytest.raises(JudgeError, match=r"trials.txt.*needs labelled trials"):
        judged_trials(MANIFEST, NO_EXCLUSIONS, {"trial_list": unlabelled})
    targets_only = _list(tmp_path, "1 a/1.wav a/2.wav", "1 b/1.wav b/2.wav")
    with pytest.raises(JudgeError, match=r"all 2 trials are target trials"):
        judged_trials(MANIFEST, NO_EXCLUSIONS, {"trial_list": targets_only})
    good = _list(tmp_path, "1 a/1.wav a/2.wav", "0 a/1.wav b/1.wav")
    trials = judged_trials(MANIFEST, NO_EXCLUSIONS, {"trial_list": good})
    assert trials["label"].tolist() == [1, 0]


def test_a_trial_on_an_excluded_utterance_names_the_reason(tmp_path):
    report = pd.DataFrame(
        [["b/3.wav", "/c/b/3.wav", "silent", "excluded", "RMS -inf dBFS < -60 dBFS"]],
        columns=NO_EXCLUSIONS.columns,
    )
    listed = _list(tmp_path, "1 b/3.wav b/1.wav", "0 b/3.wav a/1.wav")
    with pytest.raises(JudgeError, match=r"excluded by audio validation.*b/3.wav \(silent: RMS"):
        judged_trials(MANIFEST, report, {"trial_list": listed})
    # An utterance that is simply absent keeps the manifest's message.
    absent = _list(tmp_path, "1 b/9.wav b/1.wav", "0 b/1.wav a/1.wav")
    with pytest.raises(ValueError, match=r"not in the manifest.*b/9.wav"):
        judged_trials(MANIFEST, report, {"trial_list": absent})


def test_an_embeddings_file_must_hold_every_trial_utterance(tmp_path):
    path = tmp_path / "emb.pt"
    vectors = {f"/abs/{u}": torch.ones(4) for u in MANIFEST["utt_id"]}  # not utt_ids
    torch.save(vectors, path)
    trials = pd.DataFrame(
        {"label": [1, 0], "enrol": ["a/1.wav"] * 2, "test": ["a/2.wav", "b/1.wav"]}
    )
    with pytest.raises(JudgeError, match=r"3 of the 3 utterances.*look like \['/abs/a/1.wav'"):
        judged_embeddings(MANIFEST, trials, {"embeddings": str(path)})
    torch.save({u: torch.full((4,), float(i + 1)) for i, u in enumerate(MANIFEST["utt_id"])}, path)
    full, crops = judged_embeddings(MANIFEST, trials, {"embeddings": str(path)})
    assert crops is None and np.allclose(full["b/1.wav"], 3.0)


def test_the_trials_are_checked_before_anything_is_embedded():
    order = [node.name for node in create_pipeline().nodes]
    assert order.index("load_or_generate_judged_trials") < order.index("embed_judged_audio")


def test_a_nan_crop_embedding_is_named_before_scoring():
    from sv_kedro.scoring.embedding_table import EmbeddingError, EmbeddingTable
    from sv_kedro.scoring.trial_list import trials_frame

    keys = list(MANIFEST["utt_id"])
    rng = np.random.default_rng(0)
    full = EmbeddingTable(keys, rng.standard_normal((4, 8)).astype(np.float32))
    crop_vectors = rng.standard_normal((4, 8)).astype(np.float32)
    trials = trials_frame([1, 0, 1], [keys[0], keys[0], keys[2]], [keys[1], keys[2], keys[3]])
    judge = {"embeddings": "e.pt", "audio_root": "x"}
    frame, metrics = score_judged_trials(trials, (full, EmbeddingTable(keys, crop_vectors)), judge)
    assert np.isfinite(frame["fusion"]).all() and metrics["fusion"]["n_trials"] == 3
    crop_vectors[3, 5] = np.nan
    with pytest.raises(EmbeddingError, match=r"crop embeddings: 1 embedding\(s\) .*\['b/2\.wav'\]"):
        score_judged_trials(trials, (full, EmbeddingTable(keys, crop_vectors)), judge)
