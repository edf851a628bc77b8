"""m4a -> 16 kHz mono FLAC: resumable after an interruption, failures listed, not fatal."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from sv_kedro.corpus.conversion import convert_to_wav


def encode_m4a(path: Path, seconds: float, rate: int = 16000, channels: int = 1, seed: int = 0):
    """Encode noise-modulated tones to AAC in an m4a container with PyAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    tone = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t) + 0.02 * rng.standard_normal(t.size)
    planes = np.stack([tone] * channels).astype(np.float32)  # fltp: [channels, time]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono" if channels == 1 else "stereo"
        frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout=stream.layout.name)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _stamp(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_ino, stat.st_mtime_ns


def test_interrupted_conversion_resumes_without_rewriting(tmp_path: Path) -> None:
    sources = [tmp_path / "m4a" / f"u{i}.m4a" for i in range(4)]
    for i, src in enumerate(sources[:3]):
        encode_m4a(src, 0.5, seed=i)
    encode_m4a(sources[3], 0.5, rate=44100, channels=2, seed=3)
    corrupt = tmp_path / "m4a" / "corrupt.m4a"
    corrupt.write_bytes(np.random.default_rng(0).bytes(2048))
    jobs = [(src, tmp_path / "out" / f"{src.stem}.flac") for src in [*sources, corrupt]]

    # A run stopped after two files (as if killed): its outputs exist, a temp file lingers.
    first = convert_to_wav(jobs[:2], workers=0, progress=False)
    assert (first.converted, first.skipped, first.failed) == (2, 0, [])
    leftover = tmp_path / "out" / ".u2.flac.x1y2.tmp.flac"
    leftover.write_bytes(b"truncated by a kill")
    stamps = {dst: _stamp(dst) for _, dst in jobs[:2]}

    second = convert_to_wav(jobs, workers=1, progress=False)
    assert (second.converted, second.skipped) == (2, 2)
    assert len(second.failed) == 1
    failed_src, reason = second.failed[0]
    assert failed_src == str(corrupt)
    assert "corrupt.m4a" in reason
    assert {dst: _stamp(dst) for dst in stamps} == stamps
    for src, dst in jobs[:4]:
        wave, rate = sf.read(dst)
        assert rate == 16000 and wave.ndim == 1
        # AAC adds up to ~2 frames of priming/padding; the length stays ~0.5 s.
        assert 0.5 <= len(wave) / rate < 0.65, src
        assert np.sqrt(np.mean(wave**2)) > 0.1
    assert not (tmp_path / "out" / "corrupt.flac").exists()

    third = convert_to_wav(jobs, workers=0, progress=False)
    assert (third.converted, third.skipped, len(third.failed)) == (0, 4, 1)


def test_output_suffix_must_match_the_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"job 0: output .*a\.wav does not end in \.flac"):
        convert_to_wav([(tmp_path / "a.m4a", tmp_path / "a.wav")], progress=False)
    with pytest.raises(ValueError, match="audio_format must be one of"):
        convert_to_wav([], audio_format="mp3", progress=False)
