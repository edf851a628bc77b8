"""The Python API: a saved checkpoint loads back, embeds files and waveforms, scores pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sv_kedro.api import embed_file, embed_waveform, load_speaker_model, score_files
from sv_kedro.audio.crops import evaluation_inputs
from sv_kedro.audio.io import AudioDecodeError, read_audio, write_audio
from sv_kedro.models.factory import build_model
from sv_kedro.training.checkpoint import build_checkpoint, save_checkpoint


@pytest.fixture
def saved_model(tmp_path, tiny_ecapa_config):
    torch.manual_seed(0)
    model = build_model(tiny_ecapa_config).eval()
    path = tmp_path / "checkpoint.pt"
    payload = build_checkpoint(
        "ecapa_tdnn", tiny_ecapa_config, model.state_dict(), epoch=1, step=10
    )
    save_checkpoint(path, payload)
    return model, path


def _tone(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)


def test_loaded_checkpoint_embeds_like_the_saved_model(saved_model):
    model, path = saved_model
    loaded = load_speaker_model(path)
    wave = torch.from_numpy(_tone(1.3, 0))[None]
    np.testing.assert_allclose(loaded.embed(wave).numpy(), model.embed(wave).numpy(), atol=1e-6)


@pytest.mark.parametrize("seconds", [0.7, 2.6])  # shorter and longer than a crop
def test_embed_waveform_fuses_full_and_mean_crop_vectors(saved_model, seconds):
    model, _ = saved_model
    wave = _tone(seconds, 1)
    fused = embed_waveform(model, wave, n_crops=3, crop_seconds=1.0)
    inputs = evaluation_inputs(wave, n_crops=3, crop_seconds=1.0)
    normalize = torch.nn.functional.normalize
    full = normalize(model.embed(torch.from_numpy(inputs.full)[None]), dim=-1)[0]
    crops = normalize(model.embed(torch.from_numpy(inputs.crops)), dim=-1).mean(0)
    assert fused.dtype == np.float32
    np.testing.assert_allclose(fused, ((full + crops) / 2).numpy(), atol=1e-5)


def test_embed_file_resamples_and_score_files_is_the_cosine(saved_model, tmp_path):
    model, _ = saved_model
    wave = _tone(1.5, 2)
    at_16k, at_8k = tmp_path / "a.wav", tmp_path / "b.flac"
    write_audio(at_16k, wave, 16000)
    write_audio(at_8k, wave[::2].copy(), 8000)
    a = embed_file(model, at_16k, n_crops=2, crop_seconds=1.0)
    stored = read_audio(at_16k)[0]  # 16-bit PCM: the file holds a rounded copy of ``wave``
    np.testing.assert_allclose(a, embed_waveform(model, stored, n_crops=2, crop_seconds=1.0))
    b = embed_file(model, at_8k, n_crops=2, crop_seconds=1.0)
    assert b.shape == a.shape
    expected = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    score = score_files(model, at_16k, at_8k, n_crops=2, crop_seconds=1.0)
    assert score == pytest.approx(expected, abs=1e-6)
    assert score_files(model, at_16k, at_16k, n_crops=2, crop_seconds=1.0) == pytest.approx(1.0)


def test_missing_file_is_named(saved_model, tmp_path):
    model, _ = saved_model
    with pytest.raises(AudioDecodeError, match=r"nowhere\.wav: no such file"):
        embed_file(model, tmp_path / "nowhere.wav")
