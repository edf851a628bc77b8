"""Extraction across worker processes: two gloo CPU workers share the batches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sv_kedro.audio.io import write_audio
from sv_kedro.models.factory import build_model
from sv_kedro.scoring import extraction
from sv_kedro.scoring.extraction_launch import extract_from_checkpoint, split_extraction_options
from sv_kedro.training.launcher import TrainingFailed

OPTIONS = {"n_crops": 2, "crop_seconds": 0.5, "max_batch_size": 2, "device": "cpu"}
TWO_WORKERS = {"nproc_per_node": 2, "device": "cpu", "timeout_s": 60}


@pytest.fixture
def manifest(tmp_path) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for i, seconds in enumerate([0.6, 1.7, 0.9, 2.3, 1.1, 0.4, 1.3, 0.8]):
        path = tmp_path / "audio" / f"utt{i}.wav"
        path.parent.mkdir(exist_ok=True)
        write_audio(path, 0.1 * rng.standard_normal(int(seconds * 16000)).astype(np.float32), 16000)
        rows.append({"utt_id": f"utt{i}.wav", "path": str(path), "duration": seconds})
    return pd.DataFrame(rows)


@pytest.fixture
def checkpoint(tiny_ecapa_config) -> dict:
    torch.manual_seed(0)
    model = build_model(tiny_ecapa_config)
    return {"model_config": tiny_ecapa_config, "model_state": model.state_dict()}


@pytest.mark.slow
def test_two_workers_embed_every_batch_and_this_process_none(
    manifest, checkpoint, tmp_path, monkeypatch
):
    alone = extract_from_checkpoint(checkpoint, manifest, OPTIONS)
    cache = tmp_path / "cache"

    def no_embedding_here(*args, **kwargs):
        raise AssertionError("the launching process embedded a batch itself")

    # Spawned workers import the module afresh; only this process loses _embed_batch.
    monkeypatch.setattr(extraction, "_embed_batch", no_embedding_here)
    shared = extract_from_checkpoint(
        checkpoint, manifest, {**OPTIONS, "cache_dir": str(cache), "distributed": TWO_WORKERS}
    )
    assert shared.full.keys_ == manifest["utt_id"].tolist()
    np.testing.assert_allclose(shared.full.vectors, alone.full.vectors, atol=1e-5)
    np.testing.assert_allclose(shared.crops.vectors, alone.crops.vectors, atol=1e-5)
    (folder,) = cache.iterdir()
    assert len(list(folder.glob("part-*.npz"))) == 4  # 8 utterances, batches of 2


@pytest.mark.slow
def test_a_worker_failure_names_the_file(manifest, checkpoint, tmp_path):
    broken = manifest.copy()
    broken.loc[5, "path"] = str(tmp_path / "gone.wav")
    options = {**OPTIONS, "cache_dir": str(tmp_path / "cache"), "distributed": TWO_WORKERS}
    with pytest.raises(TrainingFailed, match=r"gone\.wav: no such file"):
        extract_from_checkpoint(checkpoint, broken, options)


def test_several_workers_need_a_cache_and_known_keys(manifest, checkpoint):
    with pytest.raises(ValueError, match=r"extraction\.distributed needs extraction\.cache_dir"):
        extract_from_checkpoint(checkpoint, manifest, {**OPTIONS, "distributed": TWO_WORKERS})
    with pytest.raises(ValueError, match=r"distributed: unknown key\(s\) \['gpus'\]"):
        split_extraction_options({**OPTIONS, "distributed": {"gpus": 2}})
    config, cache_dir, distributed = split_extraction_options({**OPTIONS, "distributed": None})
    assert (config.n_crops, cache_dir, distributed) == (2, None, None)


def test_options_errors_name_the_parameter_path_and_the_allowed_keys():
    with pytest.raises(
        ValueError,
        match=r"parameter judge\.extraction: unknown key\(s\) \['n_crop'\]; allowed: \[.*'n_crops'",
    ):
        split_extraction_options({"n_crop": 1}, "judge.extraction")
    with pytest.raises(
        ValueError,
        match=r"parameter judge\.extraction: ExtractionConfig\.n_crops must be an integer >= 0, "
        r"got 'abc'",
    ):
        split_extraction_options({"n_crops": "abc"}, "judge.extraction")
    with pytest.raises(ValueError, match=r"parameter judge\.extraction must be a mapping"):
        split_extraction_options("n_crops=2", "judge.extraction")  # type: ignore[arg-type]


def test_a_sample_rate_other_than_the_models_is_refused(manifest, checkpoint):
    with pytest.raises(
        ValueError,
        match=r"judge\.extraction\.sample_rate is 8000 Hz, but the checkpoint's model takes "
        r"16000 Hz",
    ):
        extract_from_checkpoint(
            checkpoint, manifest, {**OPTIONS, "sample_rate": 8000}, "judge.extraction"
        )
