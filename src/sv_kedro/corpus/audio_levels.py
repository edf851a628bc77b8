"""Audio levels and non-finite samples: what validation (and the Python API) measure
before deciding that a file is silent or holds NaN/inf samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from sv_kedro.audio.io import PYAV_SUFFIXES, AudioDecodeError, read_audio

# Integer PCM, FLAC and compressed audio cannot encode NaN or inf; float PCM can.
_FLOAT_SUBTYPES = frozenset({"FLOAT", "DOUBLE"})
_SCAN_BLOCK_FRAMES = 1 << 16


def level_db(pieces: list[np.ndarray], path: str) -> float:
    """RMS level in dBFS of the samples of ``pieces`` together: ``-inf`` for digital
    silence, NaN when a sample is NaN; ``path`` names the source in the error for none."""
    total = sum(float(np.square(piece, dtype=np.float64).sum()) for piece in pieces)
    count = sum(piece.size for piece in pieces)
    if count == 0:
        raise AudioDecodeError(f"{path}: decoded no samples")
    mean_square = total / count
    if mean_square == 0:
        return float("-inf")
    # NaN samples give NaN (never -inf, which would read as digital silence).
    return float(10.0 * np.log10(mean_square))


def count_non_finite(pieces: list[np.ndarray]) -> tuple[int, int]:
    """``(NaN samples, infinite samples)`` in ``pieces``."""
    return (
        sum(int(np.isnan(piece).sum()) for piece in pieces),
        sum(int(np.isinf(piece).sum()) for piece in pieces),
    )


def non_finite_samples(path: str) -> tuple[int, int]:
    """``(NaN samples, infinite samples)`` of a float-PCM file, read block by block;
    ``(0, 0)`` without reading the samples for formats that cannot hold either.

    Samples are read as float32, as the pipelines read them, so a float64 value beyond
    float32's range counts as infinite.
    """
    if Path(path).suffix.lower() in PYAV_SUFFIXES:
        return 0, 0
    try:
        with sf.SoundFile(path) as handle:
            if handle.subtype not in _FLOAT_SUBTYPES:
                return 0, 0
            nan = inf = 0
            for block in handle.blocks(blocksize=_SCAN_BLOCK_FRAMES, dtype="float32"):
                block_nan, block_inf = count_non_finite([block])
                nan, inf = nan + block_nan, inf + block_inf
    except sf.LibsndfileError as exc:
        raise AudioDecodeError(f"{path}: cannot decode audio ({exc})") from exc
    return nan, inf


def rms_dbfs(
    path: str, num_frames: int, sample_rate: int, blocks: int, block_seconds: float
) -> float:
    """RMS level in dBFS over all channels, from at most ``blocks`` evenly spaced blocks.

    Returns ``-inf`` for digital silence, NaN or ``inf`` when the blocks hold NaN or
    infinite samples. Files shorter than the blocks together are
    read whole.
    """
    block = max(1, round(block_seconds * sample_rate))
    if num_frames <= blocks * block:
        return level_db([read_audio(path)[0]], path)
    offsets = np.linspace(0, num_frames - block, blocks).astype(np.int64)
    return level_db([read_audio(path, offset=int(o), frames=block)[0] for o in offsets], path)
