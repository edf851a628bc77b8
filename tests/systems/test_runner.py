"""train_speaker_system's checks of its inputs, made before anything is written or trained."""

from __future__ import annotations

import pandas as pd
import pytest

from sv_kedro.corpus.trials import TrialGenerationError
from sv_kedro.systems.runner import train_speaker_system


def test_validation_pairs_of_another_data_engineering_run_are_refused_before_training(
    tmp_path, tiny_ecapa_config
):
    train = pd.DataFrame(
        {"utt_id": ["a/1.wav", "b/1.wav"], "speaker": ["a", "b"], "speaker_index": [0, 1]}
    )
    validation = pd.DataFrame({"utt_id": ["c/1.wav", "c/2.wav", "d/1.wav"]})
    # Pairs left by an earlier corpus: their utterances are not in this validation manifest.
    stale_pairs = pd.DataFrame(
        {"label": [1, 0], "enrol": ["x/1.wav", "x/1.wav"], "test": ["x/2.wav", "y/1.wav"]}
    )
    with pytest.raises(
        TrialGenerationError,
        match=r"'validation_pairs': 3 of 3 utterance\(s\) are not in the manifest.*"
        r"different data_engineering runs.*kedro run --pipeline data_engineering",
    ):
        train_speaker_system(
            train,
            validation,
            stale_pairs,
            tiny_ecapa_config,
            {"name": "aam"},
            {"epochs": 1},
            {"batch_size": 2},
            {"work_dir": str(tmp_path / "work")},
        )
    assert not (tmp_path / "work").exists()  # refused before anything was written
