"""Crops: modes, partial reads, wrap-padding, evaluation inputs."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from sv_kedro.audio.crops import (
    CropSpec,
    crop_array,
    crop_window,
    evaluation_inputs,
    read_crop,
    wrap_pad,
)
from sv_kedro.audio.io import AudioDecodeError

RATE = 16000


def _ramp_file(path, frames: int, channels: int = 1, subtype: str = "FLOAT"):
    """A file whose sample ``t`` is ``t / frames`` (channel c adds c), so offsets are visible."""
    ramp = (np.arange(frames, dtype=np.float32) / frames)[:, None] + np.arange(channels)[None, :]
    sf.write(path, ramp if channels > 1 else ramp[:, 0], RATE, subtype=subtype)
    return ramp


def test_crop_spec_validates_mode_and_length():
    assert CropSpec("random", 3.0).frames(RATE) == 48000
    with pytest.raises(ValueError, match="mode must be one of"):
        CropSpec("middle", 3.0)
    with pytest.raises(ValueError, match="seconds must be > 0"):
        CropSpec("start", 0.0)


def test_crop_window_modes():
    rng = np.random.default_rng(0)
    assert crop_window(100, 30, "start") == (0, 30)
    assert crop_window(100, 30, "end") == (70, 30)
    offsets = {crop_window(100, 30, "random", rng)[0] for _ in range(400)}
    assert min(offsets) >= 0 and max(offsets) <= 70 and len(offsets) > 40
    # contiguous: 100 // 30 = 3 chunks at 0, 30, 60, cycling with the index
    assert [crop_window(100, 30, "contiguous", index=i)[0] for i in range(5)] == [0, 30, 60, 0, 30]
    # random_contiguous: same chunks shifted by one base in [0, 10] drawn from the rng
    shifted = [
        crop_window(100, 30, "random_contiguous", np.random.default_rng(5), index=i)[0]
        for i in range(3)
    ]
    base = shifted[0]
    assert 0 <= base <= 10 and shifted == [base, base + 30, base + 60]
    # a short utterance is read whole in every mode
    for mode in ("start", "end", "random", "contiguous", "random_contiguous"):
        assert crop_window(20, 30, mode, rng, index=3) == (0, 20)
    with pytest.raises(ValueError, match="needs an rng"):
        crop_window(100, 30, "random")


def test_read_crop_reads_less_than_ten_percent_of_a_long_file(tmp_path, monkeypatch):
    path = tmp_path / "long.wav"
    ramp = _ramp_file(path, 60 * RATE)[:, 0]
    frames_read: list[int] = []
    original_read = sf.SoundFile.read

    def counting_read(self, *args, **kwargs):
        data = original_read(self, *args, **kwargs)
        frames_read.append(len(data))
        return data

    monkeypatch.setattr(sf.SoundFile, "read", counting_read)
    crop_frames = 3 * RATE
    rng = np.random.default_rng(1)
    crop = read_crop(path, 60 * RATE, crop_frames, "random", rng)
    offset, _ = crop_window(60 * RATE, crop_frames, "random", np.random.default_rng(1))
    assert sum(frames_read) == crop_frames
    assert sum(frames_read) < 0.1 * 60 * RATE
    np.testing.assert_array_equal(crop, ramp[offset : offset + crop_frames])


def test_short_file_is_wrap_padded_and_multichannel_downmixed(tmp_path):
    path = tmp_path / "short.wav"
    ramp = _ramp_file(path, 1000, channels=2)
    crop = read_crop(path, None, 2500, "random", np.random.default_rng(0))
    mono = ramp.mean(axis=1)
    assert crop.shape == (2500,) and crop.dtype == np.float32
    np.testing.assert_allclose(crop, np.concatenate([mono, mono, mono[:500]]), atol=1e-6)


def test_read_crop_of_empty_read_names_the_file(tmp_path):
    path = tmp_path / "tiny.wav"
    _ramp_file(path, 100)
    # a manifest claiming more frames than the file has: the read past the end is empty
    with pytest.raises(AudioDecodeError, match=r"tiny\.wav"):
        read_crop(path, 10_000, 50, "end")


def test_wrap_pad_and_crop_array():
    wave = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(wrap_pad(wave, 10), [0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    np.testing.assert_array_equal(crop_array(np.arange(10.0), 4, "end"), [6, 7, 8, 9])
    with pytest.raises(ValueError, match="empty"):
        wrap_pad(np.zeros(0, dtype=np.float32), 3)


def test_evaluation_inputs_match_documented_offsets(tmp_path):
    path = tmp_path / "utt.wav"
    total = 10 * RATE + 3
    ramp = _ramp_file(path, total)[:, 0]
    inputs = evaluation_inputs(path, n_crops=5, crop_seconds=4.0)
    length = 4 * RATE
    expected = [round(i * (total - length) / 4) for i in range(5)]
    assert inputs.offsets.tolist() == expected
    assert expected[0] == 0 and expected[-1] + length == total
    assert inputs.crops.shape == (5, length)
    for row, offset in enumerate(expected):
        np.testing.assert_array_equal(inputs.crops[row], ramp[offset : offset + length])
    np.testing.assert_array_equal(inputs.full, ramp)


def test_evaluation_inputs_cap_and_short_utterance():
    wave = np.arange(30 * RATE, dtype=np.float32)
    capped = evaluation_inputs(wave, n_crops=3, crop_seconds=4.0, max_seconds=20.0)
    assert capped.full.shape == (20 * RATE,)
    assert capped.offsets.tolist() == [0, 8 * RATE, 16 * RATE]
    short = evaluation_inputs(wave[:RATE], n_crops=5, crop_seconds=4.0)
    assert short.offsets.tolist() == [0] * 5
    tiled = np.tile(wave[:RATE], 4)
    for row in short.crops:
        np.testing.assert_array_equal(row, tiled)
    single = evaluation_inputs(wave[: 6 * RATE], n_crops=1, crop_seconds=4.0)
    assert single.offsets.tolist() == [RATE]


@pytest.mark.parametrize("crop_seconds", [0, -2.0, 1e-6, float("nan"), float("inf"), "4"])
def test_evaluation_inputs_refuse_a_crop_length_that_is_no_crop(crop_seconds):
    wave = np.ones(RATE, dtype=np.float32)
    with pytest.raises(ValueError, match=rf"crop_seconds must be > 0 .*got {crop_seconds!r}"):
        evaluation_inputs(wave, n_crops=2, crop_seconds=crop_seconds)


def test_evaluation_inputs_refuse_a_crop_count_that_is_not_an_integer():
    with pytest.raises(ValueError, match=r"n_crops must be an integer >= 0, got '3'"):
        evaluation_inputs(np.ones(RATE, dtype=np.float32), n_crops="3", crop_seconds=1.0)
