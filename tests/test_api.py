"""The Python API: a saved checkpoint loads back, embeds files and waveforms, scores pairs."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from zip_damage import flip_member_bytes

from sv_kedro.api import (
    _as_waveform,
    embed_file,
    embed_waveform,
    load_speaker_model,
    model_from_checkpoint,
    score_files,
)
from sv_kedro.audio.crops import evaluation_inputs
from sv_kedro.audio.io import AudioDecodeError, read_audio, write_audio
from sv_kedro.corpus.validation import ValidationPolicy
from sv_kedro.models.factory import build_model
from sv_kedro.scoring.embedding_table import EmbeddingError
from sv_kedro.training.checkpoint import CheckpointError, build_checkpoint, save_checkpoint


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


def test_non_finite_samples_are_refused_naming_the_file(saved_model, tmp_path):
    model, _ = saved_model
    wave = _tone(1.5, 3)
    wave[8000:8100] = np.nan
    path = tmp_path / "nan.wav"
    write_audio(path, wave, 16000, subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match=r"nan\.wav: 100 non-finite sample\(s\).*0\.500 s"):
        embed_file(model, path, n_crops=2, crop_seconds=1.0)
    clean = tmp_path / "clean.wav"
    write_audio(clean, _tone(1.5, 4), 16000)
    with pytest.raises(AudioDecodeError, match=r"nan\.wav: .*non-finite"):  # which of the two
        score_files(model, clean, path, n_crops=2, crop_seconds=1.0)
    with pytest.raises(AudioDecodeError, match=r"waveform: 1 non-finite"):
        embed_waveform(model, np.where(np.arange(16000) == 5, np.inf, _tone(1.0, 5)))


@pytest.mark.parametrize(
    ("wave", "message"),
    [
        (np.zeros(32000, np.float32), r"silent \(RMS -inf dBFS < -60 dBFS\)"),
        (np.full(32000, 1e-4, np.float32), r"silent \(RMS -80\.0 dBFS < -60 dBFS\)"),
        (_tone(0.05, 6), r"too short \(0\.050 s < 0\.5 s\)"),
    ],
    ids=["zeros", "quiet", "short"],
)
def test_input_the_pipelines_would_exclude_is_refused(saved_model, tmp_path, wave, message):
    model, _ = saved_model
    path = tmp_path / "bad.wav"
    write_audio(path, wave, 16000, subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match=rf"bad\.wav: {message}"):
        embed_file(model, path)
    with pytest.raises(AudioDecodeError, match=rf"waveform: {message}"):
        embed_waveform(model, wave)


def test_model_errors_on_short_input_name_the_file(tmp_path):
    # With the duration check relaxed, the x-vector's own TDNN-context check decides.
    config = {"architecture": "xvector", "xvector": {"channels": 16, "stats_channels": 24}}
    model = build_model({**config, "n_classes": 4}).eval()
    path = tmp_path / "short.wav"
    write_audio(path, _tone(0.05, 7), 16000)
    with pytest.raises(ValueError, match=r"short\.wav: x-vector: each utterance needs more than"):
        embed_file(model, path, policy=ValidationPolicy(min_duration=0.0))


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 1, 16000), r"got shape \(1, 1, 16000\); squeeze the size-1 dimensions"),
        ((2, 16000), r"got shape \(2, 16000\); it looks like \[channels, time\]"),
        ((), r"got shape \(\)"),
    ],
)
def test_waveform_layout_is_checked_before_anything_is_allocated(saved_model, shape, message):
    model, _ = saved_model
    wave = np.full(shape, 0.1, dtype=np.float32)
    with pytest.raises(ValueError, match=rf"waveform: expected a 1-D waveform \[time\].*{message}"):
        embed_waveform(model, wave)


def test_time_by_channels_waveform_is_averaged_to_mono(saved_model):
    model, _ = saved_model
    left, right = _tone(1.2, 8), _tone(1.2, 9)
    stereo = embed_waveform(model, np.stack([left, right], axis=1), n_crops=1, crop_seconds=1.0)
    mono = embed_waveform(model, (left + right) / 2, n_crops=1, crop_seconds=1.0)
    np.testing.assert_allclose(stereo, mono, atol=1e-6)


def test_nan_weights_are_reported_as_a_non_finite_embedding(tmp_path, tiny_ecapa_config):
    model = build_model(tiny_ecapa_config).eval()
    state = model.state_dict()
    name = next(key for key, value in state.items() if value.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    path = tmp_path / "nan_weights.pt"
    save_checkpoint(path, build_checkpoint("ecapa_tdnn", tiny_ecapa_config, state, epoch=0, step=0))
    pattern = rf"waveform: the model produced NaN or inf .*\(its weights hold .*{re.escape(name)}"
    with pytest.raises(EmbeddingError, match=pattern):
        embed_waveform(load_speaker_model(path), _tone(1.0, 10), n_crops=0)


def test_checkpoint_tensor_of_the_wrong_shape_names_file_and_key(tmp_path, tiny_ecapa_config):
    state = build_model(tiny_ecapa_config).state_dict()
    name = next(key for key, value in state.items() if value.dim() >= 2)
    expected_shape = tuple(state[name].shape)
    state[name] = torch.zeros(3)
    path = tmp_path / "wrong_shape.pt"
    save_checkpoint(path, build_checkpoint("ecapa_tdnn", tiny_ecapa_config, state, epoch=0, step=0))
    with pytest.raises(
        CheckpointError,
        match=rf"wrong_shape\.pt: 1 checkpoint tensor.*{re.escape(name)}: checkpoint \(3,\), "
        rf"model {re.escape(str(expected_shape))}",
    ):
        load_speaker_model(path)


def test_unknown_or_unavailable_device_is_named(saved_model, monkeypatch):
    _, path = saved_model
    with pytest.raises(ValueError, match=r"device 'gpu' is not a torch device \(auto, cpu, cuda"):
        load_speaker_model(path, device="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device 'cuda' but CUDA is not available here"):
        load_speaker_model(path, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_checkpoint_loaded_on_cuda_embeds_and_scores_like_on_cpu(saved_model, tmp_path):
    _, path = saved_model
    on_gpu, on_cpu = load_speaker_model(path, device="cuda"), load_speaker_model(path)
    assert next(on_gpu.parameters()).device.type == "cuda"
    audio_a, audio_b = tmp_path / "a.wav", tmp_path / "b.wav"
    write_audio(audio_a, _tone(2.5, 11), 16000)
    write_audio(audio_b, _tone(1.7, 12), 16000)
    gpu_vector = embed_file(on_gpu, audio_a, n_crops=3, crop_seconds=1.0)
    cpu_vector = embed_file(on_cpu, audio_a, n_crops=3, crop_seconds=1.0)
    assert gpu_vector.dtype == np.float32
    # Fused vectors are means of unit vectors; cuDNN's TF32 convolutions stay within 1e-3.
    np.testing.assert_allclose(gpu_vector, cpu_vector, atol=1e-3)
    gpu_score = score_files(on_gpu, audio_a, audio_b, n_crops=3, crop_seconds=1.0)
    cpu_score = score_files(on_cpu, audio_a, audio_b, n_crops=3, crop_seconds=1.0)
    assert gpu_score == pytest.approx(cpu_score, abs=1e-3)


_XVECTOR = {"architecture": "xvector", "xvector": {"channels": 16, "stats_channels": 24}}


def _save(path, config: dict, state: dict) -> None:
    architecture = config["architecture"]
    save_checkpoint(path, build_checkpoint(architecture, config, state, epoch=0, step=0))


def test_damaged_checkpoint_data_is_refused_naming_file_and_member(saved_model):
    _, path = saved_model
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
    member = flip_member_bytes(path)  # 256 bytes in the middle of the largest tensor
    pattern = rf"checkpoint\.pt: corrupt: {re.escape(member)} fails its CRC check"
    with pytest.raises(CheckpointError, match=pattern):
        load_speaker_model(path)


def test_an_all_zero_embedding_is_refused_naming_the_input(tmp_path):
    config = {**_XVECTOR, "n_classes": 0}
    state = {
        name: torch.zeros_like(value) for name, value in build_model(config).state_dict().items()
    }
    path = tmp_path / "zeroed.pt"
    _save(path, config, state)
    model = load_speaker_model(path)
    pattern = r"waveform: the model produced an all-zero embedding \(norm 0\.0e\+00 < 1e-12\)"
    with pytest.raises(EmbeddingError, match=pattern):
        embed_waveform(model, _tone(1.0, 13), n_crops=0)
    audio_a, audio_b = tmp_path / "a.wav", tmp_path / "b.wav"
    write_audio(audio_a, _tone(1.5, 14), 16000)
    write_audio(audio_b, _tone(1.5, 15), 16000)
    with pytest.raises(EmbeddingError, match=r"a\.wav: the model produced an all-zero embedding"):
        score_files(model, audio_a, audio_b, n_crops=2, crop_seconds=1.0)


def test_a_model_config_that_does_not_build_names_the_file(tmp_path):
    config = {**_XVECTOR, "n_classes": 0}
    state = build_model(config).state_dict()
    path = tmp_path / "bad_config.pt"
    _save(path, {**config, "bogus": 1}, state)
    with pytest.raises(
        CheckpointError,
        match=r"bad_config\.pt: model_config: key\(s\) \['bogus'\] are not used by "
        r"architecture 'xvector'",
    ):
        load_speaker_model(path)


@pytest.mark.parametrize(
    ("dtype", "scale", "offset"),
    [(np.int16, 32768, 0), (np.int32, 2**31, 0), (np.uint8, 128, 128)],
)
def test_integer_pcm_is_scaled_by_its_full_scale(saved_model, dtype, scale, offset):
    model, _ = saved_model
    limits = np.iinfo(dtype)
    pcm = np.clip(np.round(_tone(1.2, 16) * scale) + offset, limits.min, limits.max).astype(dtype)
    expected = ((pcm.astype(np.float64) - offset) / scale).astype(np.float32)
    assert np.abs(expected).max() < 1.0
    # The samples the model is fed: the embeddings alone would not show the scale, as the
    # features normalise the level away.
    np.testing.assert_allclose(_as_waveform(pcm, "waveform"), expected, rtol=0, atol=1e-7)
    np.testing.assert_allclose(
        embed_waveform(model, pcm, n_crops=1, crop_seconds=1.0),
        embed_waveform(model, expected, n_crops=1, crop_seconds=1.0),
        atol=1e-6,
    )


def test_quiet_integer_pcm_is_silent_not_full_scale(saved_model):
    model, _ = saved_model
    # One LSB of int16 is -90 dBFS; cast unscaled it would read as 0 dBFS speech.
    with pytest.raises(AudioDecodeError, match=r"waveform: silent \(RMS -90\.3 dBFS"):
        embed_waveform(model, np.ones(32000, np.int16))


@pytest.mark.parametrize(
    ("wave", "message"),
    [
        (np.ones(16000, bool), r"a bool array is not audio"),
        (np.ones(16000, np.complex64), r"complex samples \(complex64\) are not audio"),
        (np.array(["0.1"] * 16000), r"expected numeric samples .*got dtype <U3"),
        ([[0.1, 0.2], [0.3]], r"not an array of samples"),
        (np.zeros((16000, 0), np.float32), r"shape \(16000, 0\) has 0 channels"),
    ],
    ids=["bool", "complex", "strings", "ragged", "no_channels"],
)
def test_arrays_that_are_not_audio_say_what_is_wrong(saved_model, wave, message):
    model, _ = saved_model
    with pytest.raises(ValueError, match=rf"^waveform: {message}"):
        embed_waveform(model, wave)


@pytest.mark.parametrize("shape", [(0, 2), (0,)])
def test_an_empty_waveform_is_named_as_empty(saved_model, shape):
    model, _ = saved_model
    with pytest.raises(
        AudioDecodeError, match=rf"^waveform: empty: no samples \(shape {re.escape(str(shape))}\)$"
    ):
        embed_waveform(model, np.zeros(shape, np.float32))


def _voiced(rate: int, seconds: float = 2.0, seed: int = 17) -> np.ndarray:
    """Tones below 3.5 kHz, so the 8 kHz and 16 kHz versions hold the same signal."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    freqs, phases = rng.uniform(100, 3500, 40), rng.uniform(0, 2 * np.pi, 40)
    tones = np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None]).sum(0)
    return (0.02 * tones * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def test_sample_rate_resamples_to_the_models_rate(saved_model):
    model, _ = saved_model
    options = {"n_crops": 2, "crop_seconds": 1.0}
    reference = embed_waveform(model, _voiced(16000), **options)
    at_8k = embed_waveform(model, _voiced(8000), sample_rate=8000, **options)
    as_if_16k = embed_waveform(model, _voiced(8000), **options)
    assert embed_waveform(model, _voiced(16000), sample_rate=16000, **options) == pytest.approx(
        reference
    )

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    assert cosine(reference, at_8k) > 0.95
    assert cosine(reference, at_8k) > cosine(reference, as_if_16k)
    stereo = np.stack([_voiced(8000), _voiced(8000)], axis=1)
    np.testing.assert_allclose(
        embed_waveform(model, stereo, sample_rate=8000, **options), at_8k, atol=1e-5
    )


@pytest.mark.parametrize("rate", [0, -8000, 8000.0, True, "8k"])
def test_sample_rate_must_be_a_positive_int(saved_model, rate):
    model, _ = saved_model
    with pytest.raises(ValueError, match=r"^sample_rate: must be a positive int \(Hz\), got"):
        embed_waveform(model, _tone(1.0, 18), sample_rate=rate)


def test_nan_before_resampling_is_located_at_the_given_rate(saved_model):
    model, _ = saved_model
    wave = _tone(1.0, 19)[:8000].copy()
    wave[4000] = np.nan
    with pytest.raises(AudioDecodeError, match=r"waveform: 1 non-finite sample\(s\).*0\.500 s"):
        embed_waveform(model, wave, sample_rate=8000)


def test_files_state_their_own_rate(saved_model, tmp_path):
    model, _ = saved_model
    path = tmp_path / "a.wav"
    write_audio(path, _tone(1.0, 20), 16000)
    with pytest.raises(TypeError, match=r"sample_rate: a file states its own rate"):
        embed_file(model, path, sample_rate=8000)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['crops'\]"):
        score_files(model, path, path, crops=2)


@pytest.mark.parametrize("call", ["embed_file", "embed_waveform", "score_files"])
@pytest.mark.parametrize("as_path", [str, Path], ids=["str", "Path"])
def test_a_path_given_as_the_model_says_to_load_it_first(saved_model, tmp_path, call, as_path):
    _, checkpoint = saved_model
    audio = tmp_path / "a.wav"
    write_audio(audio, _tone(1.0, 21), 16000)
    args = {
        "embed_file": (audio,),
        "embed_waveform": (_tone(1.0, 21),),
        "score_files": (audio, audio),
    }[call]
    function = {"embed_file": embed_file, "embed_waveform": embed_waveform}.get(call, score_files)
    with pytest.raises(
        TypeError,
        match=r"^model: got the path '.*checkpoint\.pt', not a model; "
        r"call load_speaker_model\(.*\) first",
    ):
        function(as_path(checkpoint), *args)


def test_other_non_models_are_named(saved_model):
    _, checkpoint = saved_model
    with pytest.raises(TypeError, match=r"model: .*got a dict; .*model_from_checkpoint"):
        embed_waveform({"model_state": {}}, _tone(1.0, 22))
    with pytest.raises(TypeError, match=r"model: .*got a Linear; a Linear has no embed\(\)"):
        embed_waveform(torch.nn.Linear(2, 2), _tone(1.0, 22))
    with pytest.raises(TypeError, match=r"payload: got the path .*load_speaker_model\(path\)"):
        model_from_checkpoint(str(checkpoint))


def test_a_checkpoint_whose_architecture_disagrees_with_its_config_is_refused(tmp_path):
    model = build_model(_XVECTOR)
    payload = build_checkpoint("xvector", _XVECTOR, model.state_dict(), epoch=0, step=0)
    payload["architecture"] = "ecapa_tdnn"  # a hand edit: the weights are still an x-vector's
    path = tmp_path / "edited.pt"
    torch.save(payload, path)
    both = r"architecture 'ecapa_tdnn' disagrees with model_config\.architecture 'xvector'"
    with pytest.raises(CheckpointError, match=rf"edited\.pt: {both}"):
        load_speaker_model(path)
    # A payload in memory has not been through load_checkpoint's validation.
    with pytest.raises(CheckpointError, match=rf"^memory: {both}"):
        model_from_checkpoint(payload, source="memory")


def test_folders_and_bare_state_dicts_say_what_a_checkpoint_is(tmp_path, tiny_ecapa_config):
    folder = tmp_path / "wavlm-base-plus"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(
        CheckpointError,
        match=r"wavlm-base-plus: is a folder.*Hugging Face.*"
        r"model\.encoder\.pretrained of a training config",
    ):
        load_speaker_model(folder)
    bare = tmp_path / "state_dict.pt"
    torch.save(build_model(tiny_ecapa_config).state_dict(), bare)
    with pytest.raises(
        CheckpointError,
        match=r"state_dict\.pt: checkpoint lacks key\(s\).*bare state_dict.*"
        r"stores the model config",
    ):
        load_speaker_model(bare)
