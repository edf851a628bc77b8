"""Audio reading names what is wrong: a missing file apart from an undecodable one."""

from __future__ import annotations

import numpy as np
import pytest

from sv_kedro.audio.io import (
    AudioDecodeError,
    audio_files_under,
    audio_info,
    read_audio,
    write_audio,
)


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


def test_audio_files_under_finds_nested_audio_and_names_what_is_missing(tmp_path):
    (tmp_path / "a/b").mkdir(parents=True)
    write_audio(tmp_path / "a/b/x.FLAC", np.zeros(160, dtype=np.float32), 16000)
    write_audio(tmp_path / "a/y.wav", np.zeros(160, dtype=np.float32), 16000)
    (tmp_path / "a/notes.txt").write_text("not audio")
    found = audio_files_under(tmp_path, "noise")
    found = sorted(path.relative_to(tmp_path).as_posix() for path in found)
    assert found == ["a/b/x.FLAC", "a/y.wav"]
    with pytest.raises(FileNotFoundError, match="RIR folder does not exist"):
        audio_files_under(tmp_path / "absent", "RIR")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no audio files"):
        audio_files_under(tmp_path / "empty", "noise")


def test_file_the_decoder_cannot_open_names_the_cause(tmp_path, monkeypatch):
    # libsndfile reports a file it may not open as "System error."; tests run as root, where
    # chmod 000 does not stop reads, so both refusals are simulated.
    import sv_kedro.audio.io as audio_io

    path = tmp_path / "locked.wav"
    write_audio(path, np.zeros(160, dtype=np.float32), 16000)

    def system_error(*args, **kwargs):
        raise RuntimeError(f"Error opening {str(path)!r}: System error.")

    def refused_open(file, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(audio_io.sf, "SoundFile", system_error)
    with pytest.raises(AudioDecodeError, match=r"System error"):
        audio_info(path)  # the file opens: the decoder's own words are kept
    monkeypatch.setattr(audio_io, "open", refused_open, raising=False)
    with pytest.raises(
        AudioDecodeError, match=r"locked\.wav: cannot read audio header \(permission denied\)$"
    ):
        audio_info(path)
    with pytest.raises(
        AudioDecodeError, match=r"locked\.wav: cannot decode audio \(permission denied\)$"
    ):
        read_audio(path)


def test_broken_symlink_is_named_as_such(tmp_path):
    (tmp_path / "link.flac").symlink_to(tmp_path / "gone.flac")
    with pytest.raises(AudioDecodeError, match=r"link\.flac: broken symbolic link .*gone\.flac"):
        audio_info(tmp_path / "link.flac")


def _wav_with_list_chunk(path, frames: int = 16000) -> bytes:
    """A 16-bit mono WAV whose data chunk follows a LIST chunk (as many tools write)."""
    write_audio(path, 0.1 * np.sin(np.arange(frames) / 7.0).astype(np.float32), 16000)
    raw = path.read_bytes()
    at = raw.index(b"data")
    listing = b"LIST" + (6).to_bytes(4, "little") + b"INFOxx"
    riff_size = int.from_bytes(raw[4:8], "little") + len(listing)
    return raw[:4] + riff_size.to_bytes(4, "little") + raw[8:at] + listing + raw[at:]


def test_a_wav_cut_short_is_named_as_truncated(tmp_path):
    # libsndfile clamps the frame count to what the file holds: without a check a WAV
    # cut in half by an interrupted copy passes as a recording half as long.
    whole = tmp_path / "whole.wav"
    whole.write_bytes(_wav_with_list_chunk(whole))
    assert audio_info(whole).frames == 16000
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[: 44 + 14 + 16000])
    with pytest.raises(
        AudioDecodeError,
        match=r"cut\.wav: truncated: its header declares 16000 frames \(1\.00 s\), "
        r"the file holds 8000 \(0\.50 s\)",
    ):
        audio_info(cut)


def test_a_size_a_streaming_writer_never_filled_in_is_not_judged(tmp_path):
    unset = 0xFFFFFFFF
    path = tmp_path / "streamed.wav"
    raw = bytearray(_wav_with_list_chunk(path))
    at = raw.index(b"data") + 4
    raw[at : at + 4] = unset.to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    assert audio_info(path).frames == 16000
