"""Run fingerprints decide whether a training run resumes or starts a fresh folder."""

from __future__ import annotations

import pandas as pd
import torch

from sv_kedro.systems.fingerprint import run_fingerprint


def _manifest(labels: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "utt_id": [f"u{i}" for i in range(len(labels))],
            "path": [f"/audio/u{i}.wav" for i in range(len(labels))],
            "speaker_index": labels,
            "duration": [1.0] * len(labels),
        }
    )


def test_same_run_same_folder_anything_learned_from_changes_it() -> None:
    settings = {"loss": {"name": "aam", "margin": 0.2}, "training": {"epochs": 3}}
    state = {"layer.weight": torch.ones(3, 2), "layer.bias": torch.zeros(3)}
    base = run_fingerprint(_manifest([0, 0, 1]), settings, state)
    assert base == run_fingerprint(_manifest([0, 0, 1]), dict(settings), dict(state))
    assert len(base) == 12
    # New pseudo-labels, a changed setting, other start weights: a different folder.
    assert run_fingerprint(_manifest([0, 1, 1]), settings, state) != base
    changed = {**settings, "loss": {"name": "aam", "margin": 0.5}}
    assert run_fingerprint(_manifest([0, 0, 1]), changed, state) != base
    nudged = {**state, "layer.bias": torch.tensor([0.0, 0.0, 1e-6])}
    assert run_fingerprint(_manifest([0, 0, 1]), settings, nudged) != base
    assert run_fingerprint(_manifest([0, 0, 1]), settings) != base
    # Columns that do not change what is learned (durations) do not matter.
    longer = _manifest([0, 0, 1]).assign(duration=2.0)
    assert run_fingerprint(longer, settings, state) == base


def test_weights_with_the_same_bytes_but_another_dtype_are_another_start() -> None:
    settings = {"training": {"epochs": 1}}
    half = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float16)
    same_bytes = half.view(torch.bfloat16)
    assert half.view(torch.uint8).equal(same_bytes.view(torch.uint8))
    assert run_fingerprint(_manifest([0, 1, 1]), settings, {"w": half}) != run_fingerprint(
        _manifest([0, 1, 1]), settings, {"w": same_bytes}
    )


def test_reporting_settings_do_not_start_a_fresh_folder() -> None:
    settings = {"training": {"epochs": 3, "lr": 1e-3, "log_every": 10}, "data": {"batch_size": 4}}
    base = run_fingerprint(_manifest([0, 1]), settings)
    quieter = {
        "training": {"epochs": 3, "lr": 1e-3, "log_every": 50, "progress_bar": False},
        "data": {"batch_size": 4},
    }
    assert run_fingerprint(_manifest([0, 1]), quieter) == base
    faster = {"training": {"epochs": 3, "lr": 2e-3, "log_every": 10}, "data": {"batch_size": 4}}
    assert run_fingerprint(_manifest([0, 1]), faster) != base
