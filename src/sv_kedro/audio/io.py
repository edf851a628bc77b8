"""Reading and writing audio files.

wav and flac go through soundfile, which reads headers without decoding and seeks to a
frame for partial reads. m4a/aac/mp4 go through PyAV (FFmpeg's decoders).

Waveforms are float32 NumPy arrays: ``[time]`` for mono, ``[time, channels]`` otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from sv_kedro.utils.atomic import atomic_write_path

SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg"}
PYAV_SUFFIXES = {".m4a", ".aac", ".mp4", ".mp3", ".opus", ".webm"}
AUDIO_SUFFIXES = SOUNDFILE_SUFFIXES | PYAV_SUFFIXES


class AudioDecodeError(RuntimeError):
    """An audio file could not be read; the message names the file and the reason."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says about it."""

    frames: int
    sample_rate: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _suffix(path: str | os.PathLike[str]) -> str:
    return Path(path).suffix.lower()


def _decode_error(path: str, what: str, exc: Exception) -> AudioDecodeError:
    # The decoders report a missing or unopenable file as a generic "System error" or a
    # codec failure; opening it ourselves (only once decoding has failed) names the cause.
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        if os.path.islink(path):
            return AudioDecodeError(
                f"{path}: broken symbolic link (its target {os.readlink(path)} does not exist)"
            )
        return AudioDecodeError(f"{path}: no such file")
    except OSError as os_exc:
        cause = (os_exc.strerror or str(os_exc)).lower()
        return AudioDecodeError(f"{path}: {what} ({cause})")
    return AudioDecodeError(f"{path}: {what} ({exc})")


def audio_files_under(root: str | os.PathLike[str], what: str) -> list[Path]:
    """Every audio file under ``root`` (recursively, by suffix); errors name ``what``
    (``"noise"``, ``"RIR"``) when the folder is missing or holds no audio."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: {what} folder does not exist")
    paths = [p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES]
    if not paths:
        raise ValueError(f"{root}: no audio files ({sorted(AUDIO_SUFFIXES)}) found")
    return paths


def audio_info(path: str | os.PathLike[str]) -> AudioInfo:
    """Read frame count, sample rate and channel count from the header, not the samples."""
    path = os.fspath(path)
    try:
        if _suffix(path) in PYAV_SUFFIXES:
            return _pyav_info(path)
        # SoundFile reads the header only; sf.info() also formats a description we don't use.
        with sf.SoundFile(path) as handle:
            info = AudioInfo(
                frames=int(handle.frames),
                sample_rate=int(handle.samplerate),
                channels=int(handle.channels),
            )
        if _suffix(path) == ".wav":
            _refuse_truncated_wav(path, info)
        return info
    except AudioDecodeError:
        raise
    except Exception as exc:  # soundfile raises several types for bad headers
        raise _decode_error(path, "cannot read audio header", exc) from exc


def _refuse_truncated_wav(path: str, info: AudioInfo) -> None:
    """Raise when a WAV file holds fewer sample bytes than its header declares.

    libsndfile clamps the frame count to what the file holds, so a WAV cut short by an
    interrupted copy or download would otherwise pass as a shorter recording. A header
    whose data size was never filled in (0 or 0xFFFFFFFF, as streaming writers leave it) or
    whose data chunk is not in the first 4 KiB is not judged.
    """
    # One raw descriptor, no buffered file object: this runs for every WAV a scan lists.
    fd = os.open(path, os.O_RDONLY)
    try:
        head, file_bytes = os.pread(fd, 4096, 0), os.fstat(fd).st_size
    finally:
        os.close(fd)
    declared = _wav_data_chunk(head)
    if declared is None:
        return
    data_bytes, data_offset, block_align = declared
    held = file_bytes - data_offset
    if data_bytes in (0, 0xFFFFFFFF) or data_bytes <= held or block_align <= 0:
        return
    rate = info.sample_rate or 1
    frames = data_bytes // block_align
    raise AudioDecodeError(
        f"{path}: truncated: its header declares {frames} frames ({frames / rate:.2f} s), "
        f"the file holds {info.frames} ({info.frames / rate:.2f} s); copy or convert it again"
    )


def _wav_data_chunk(head: bytes) -> tuple[int, int, int] | None:
    """``(declared data bytes, offset of the data, bytes per frame)`` from the first bytes
    of a RIFF/WAVE file, or None when they do not show them."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    offset, block_align = 12, 0
    while offset + 8 <= len(head):
        chunk, size = (
            head[offset : offset + 4],
            int.from_bytes(head[offset + 4 : offset + 8], "little"),
        )
        if chunk == b"fmt " and offset + 22 <= len(head):
            block_align = int.from_bytes(head[offset + 20 : offset + 22], "little")
        if chunk == b"data":
            return size, offset + 8, block_align
        offset += 8 + size + (size & 1)  # chunks are padded to an even length
    return None


def read_audio(
    path: str | os.PathLike[str], offset: int = 0, frames: int = -1
) -> tuple[np.ndarray, int]:
    """Read ``frames`` samples starting at sample ``offset`` (all of them when -1).

    For wav/flac only the requested frames are read from disk. Returns ``(waveform,
    sample_rate)`` with waveform float32 ``[time]`` (mono) or ``[time, channels]``.
    """
    path = os.fspath(path)
    if offset < 0:
        raise ValueError(f"{path}: offset must be >= 0, got {offset}")
    try:
        if _suffix(path) in PYAV_SUFFIXES:
            wave, rate = _pyav_read(path, offset, frames)
        else:
            with sf.SoundFile(path) as handle:
                rate = handle.samplerate
                if offset:
                    handle.seek(min(offset, handle.frames))
                wave = handle.read(frames=frames, dtype="float32", always_2d=True)
    except AudioDecodeError:
        raise
    except Exception as exc:
        raise _decode_error(path, "cannot decode audio", exc) from exc
    if wave.shape[1] == 1:
        wave = wave[:, 0]
    return np.ascontiguousarray(wave, dtype=np.float32), int(rate)


def write_audio(
    path: str | os.PathLike[str], waveform: np.ndarray, sample_rate: int, subtype: str = "PCM_16"
) -> None:
    """Write ``waveform`` (``[time]`` or ``[time, channels]``) atomically; format from suffix."""
    path = Path(path)
    if path.suffix.lower() not in SOUNDFILE_SUFFIXES:
        raise ValueError(f"{path}: can only write {sorted(SOUNDFILE_SUFFIXES)}")
    with atomic_write_path(path) as tmp:
        sf.write(
            tmp,
            np.asarray(waveform),
            int(sample_rate),
            subtype=subtype,
            format=path.suffix.lstrip(".").upper(),
        )


def to_mono(waveform: np.ndarray) -> np.ndarray:
    """Average the channels of a ``[time, channels]`` waveform; pass ``[time]`` through."""
    return waveform if waveform.ndim == 1 else waveform.mean(axis=1, dtype=np.float32)


def resample(waveform: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling of a ``[time]`` or ``[time, channels]`` waveform."""
    if orig_rate == new_rate:
        return waveform
    import torch
    import torchaudio.functional as taf

    tensor = torch.from_numpy(np.ascontiguousarray(waveform.T if waveform.ndim == 2 else waveform))
    out = taf.resample(tensor, orig_rate, new_rate).numpy()
    return np.ascontiguousarray(out.T if waveform.ndim == 2 else out, dtype=np.float32)


def _pyav_info(path: str) -> AudioInfo:
    import av

    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise AudioDecodeError(f"{path}: no audio stream")
            stream = container.streams.audio[0]
            rate = int(stream.codec_context.sample_rate or stream.rate or 0)
            channels = int(stream.codec_context.channels or 0)
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / 1_000_000
            else:
                seconds = 0.0
            return AudioInfo(frames=round(seconds * rate), sample_rate=rate, channels=channels)
    except AudioDecodeError:
        raise
    except Exception as exc:
        raise _decode_error(path, "cannot read audio header", exc) from exc


def _pyav_read(path: str, offset: int, frames: int) -> tuple[np.ndarray, int]:
    """Decode with PyAV to float32 ``[time, channels]``; seek near ``offset`` first."""
    import av

    chunks: list[np.ndarray] = []
    with av.open(path) as container:
        if not container.streams.audio:
            raise AudioDecodeError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate)
        first = 0  # sample index of the first decoded sample
        if offset > rate and stream.time_base is not None:
            # Seek to a keyframe before the offset, then decode forward to it.
            container.seek(
                int((offset / rate - 0.5) / stream.time_base),
                stream=stream,
                backward=True,
                any_frame=False,
            )
            first = None
        wanted_end = offset + frames if frames >= 0 else None
        decoded = 0
        for frame in container.decode(stream):
            if first is None:
                first = (
                    round(float(frame.pts * stream.time_base) * rate)
                    if frame.pts is not None
                    else 0
                )
            array = frame.to_ndarray()
            # Planar formats are [channels, time]; packed are [1, time * channels].
            if frame.format.is_planar:
                array = array.T
            else:
                array = array.reshape(-1, len(frame.layout.channels))
            chunks.append(_to_float32(array))
            decoded += array.shape[0]
            if wanted_end is not None and first + decoded >= wanted_end:
                break
    if not chunks:
        raise AudioDecodeError(f"{path}: decoded no audio frames")
    wave = np.concatenate(chunks, axis=0)
    start = max(0, offset - (first or 0))
    stop = None if frames < 0 else start + frames
    return wave[start:stop], rate


def _to_float32(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.float32:
        return array
    if array.dtype == np.float64:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        scale = float(np.iinfo(array.dtype).max) + 1.0
        return (array.astype(np.float32) / scale).astype(np.float32)
    raise AudioDecodeError(f"unsupported sample format {array.dtype}")
