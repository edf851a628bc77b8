"""Audio reading names what is wrong: a missing file apart from an undecodable one."""

from __future__ import annotations

import numpy as np
import pytest

from sv_kedro.audio.io import AudioDecodeError, audio_info, read_audio, write_audio


@pytest.mark.parametrize("name", ["absent.wav", "absent.flac", "absent.m4a"])
def test_missing_file_is_named_as_missing(tmp_path, name):
    path = tmp_path / name
    with pytest.raises(AudioDecodeError, match=rf"{name}: no such file"):
        read_audio(path)
    with pytest.raises(AudioDecodeError, match=rf"{name}: no such file"):
        audio_info(path)


@pytest.mark.parametrize("name", ["noise.wav", "noise.m4a"])
def test_undecodable_file_is_named_as_undecodable(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(AudioDecodeError, match=rf"{name}: cannot decode audio"):
        read_audio(path)
    with pytest.raises(AudioDecodeError, match=rf"{name}: cannot read audio header"):
        audio_info(path)


def test_written_audio_reads_back(tmp_path):
    wave = (0.1 * np.random.default_rng(1).standard_normal(1600)).astype(np.float32)
    path = tmp_path / "clip.flac"
    write_audio(path, wave, 16000)
    read, rate = read_audio(path, offset=100, frames=200)
    assert rate == 16000 and audio_info(path).frames == 1600
    np.testing.assert_allclose(read, wave[100:300], atol=1 / 2**15)
