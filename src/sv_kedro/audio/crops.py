"""Fixed-length crops of utterances, read from disk without decoding the whole file.

Training reads a short crop (2-6 s) of each utterance; for wav/flac only the crop's frames
are decoded (``sv_kedro.audio.io.read_audio`` seeks), so a crop costs the same for a 5-s
and a 5-min file. Evaluation uses the full utterance plus a few evenly spaced crops
(:func:`evaluation_inputs`).

Crop modes (``T`` = utterance frames, ``L`` = crop frames; when ``T <= L`` every mode
returns the whole utterance, wrap-padded to ``L``):

``start``
    offset 0.
``end``
    offset ``T - L`` (the last ``L`` frames).
``random``
    offset drawn uniformly from the integers ``0 .. T - L`` inclusive with ``rng``.
``contiguous``
    the utterance is cut into ``K = T // L`` consecutive non-overlapping chunks starting
    at frame 0; crop number ``index`` (the n-th time this utterance is cropped, e.g. the
    epoch) is chunk ``index % K``, at offset ``(index % K) * L``. The last ``T - K * L``
    frames are never used.
``random_contiguous``
    as ``contiguous``, but the chunks start at a base offset drawn uniformly from
    ``0 .. T - K * L`` inclusive with ``rng``: offset ``base + (index % K) * L``. For the
    chunks of successive ``index`` values to be non-overlapping, ``rng`` must be seeded
    per utterance only (not per epoch), so that ``base`` is the same each time;
    ``SpeakerDataset`` does exactly that.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from numbers import Real
from typing import Literal, get_args

import numpy as np

from sv_kedro.audio.io import AudioDecodeError, audio_info, read_audio, resample, to_mono

CropMode = Literal["start", "end", "random", "random_contiguous", "contiguous"]
CROP_MODES: tuple[str, ...] = get_args(CropMode)


@dataclass(frozen=True)
class CropSpec:
    """How to crop training utterances: a mode (see the module docstring) and a length."""

    mode: CropMode
    seconds: float

    def __post_init__(self) -> None:
        if self.mode not in CROP_MODES:
            raise ValueError(f"CropSpec.mode must be one of {CROP_MODES}, got {self.mode!r}")
        if not self.seconds > 0:
            raise ValueError(f"CropSpec.seconds must be > 0, got {self.seconds!r}")

    def frames(self, sample_rate: int) -> int:
        """Crop length in frames at ``sample_rate`` (rounded to the nearest frame)."""
        return max(1, round(self.seconds * sample_rate))


def crop_window(
    num_frames: int,
    crop_frames: int,
    mode: str,
    rng: np.random.Generator | None = None,
    index: int = 0,
) -> tuple[int, int]:
    """Where to read a crop: ``(offset, frames)`` in frames of the utterance.

    ``frames`` is ``min(crop_frames, num_frames)``: a short utterance is read whole and
    wrap-padded by the caller. Modes are defined in the module docstring; ``rng`` is needed
    by ``random`` and ``random_contiguous`` only.
    """
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode must be one of {CROP_MODES}, got {mode!r}")
    if crop_frames <= 0:
        raise ValueError(f"crop_frames must be > 0, got {crop_frames}")
    if num_frames <= 0:
        raise ValueError(f"cannot crop an utterance of {num_frames} frames")
    if index < 0:
        raise ValueError(f"crop index must be >= 0, got {index}")
    if num_frames <= crop_frames:
        return 0, num_frames
    if mode == "start":
        return 0, crop_frames
    if mode == "end":
        return num_frames - crop_frames, crop_frames
    if mode in ("random", "random_contiguous") and rng is None:
        raise ValueError(f"crop mode {mode!r} needs an rng")
    if mode == "random":
        return int(rng.integers(0, num_frames - crop_frames + 1)), crop_frames
    chunks = num_frames // crop_frames
    base = 0
    if mode == "random_contiguous":
        base = int(rng.integers(0, num_frames - chunks * crop_frames + 1))
    return base + (index % chunks) * crop_frames, crop_frames


def wrap_pad(wave: np.ndarray, length: int) -> np.ndarray:
    """Tile ``wave`` ``[time]`` (repeat it from its start) up to ``length``; trim if longer."""
    if wave.shape[0] == 0:
        raise ValueError("cannot wrap-pad an empty waveform")
    if wave.shape[0] >= length:
        return wave[:length]
    repeats = math.ceil(length / wave.shape[0])
    return np.tile(wave, repeats)[:length]


def crop_array(
    wave: np.ndarray,
    crop_frames: int,
    mode: str,
    rng: np.random.Generator | None = None,
    index: int = 0,
) -> np.ndarray:
    """Crop an in-memory mono ``[time]`` waveform to ``[crop_frames]`` (same modes)."""
    offset, frames = crop_window(wave.shape[0], crop_frames, mode, rng, index)
    return wrap_pad(wave[offset : offset + frames], crop_frames)


def read_crop(
    path: str | os.PathLike[str],
    num_frames: int | None,
    crop_frames: int,
    mode: str,
    rng: np.random.Generator | None = None,
    index: int = 0,
) -> np.ndarray:
    """Read one crop of a file as mono float32 ``[crop_frames]`` at the file's sample rate.

    Only the crop's frames are decoded (wav/flac seek). ``num_frames`` is the file's length
    from the manifest (``None``: read from the header). Multi-channel audio is averaged to
    mono; a file shorter than the crop (or one that yields fewer frames than its header
    promised) is wrap-padded to ``crop_frames``.
    """
    if num_frames is None:
        num_frames = audio_info(path).frames
    offset, frames = crop_window(int(num_frames), crop_frames, mode, rng, index)
    wave, _ = read_audio(path, offset, frames)
    wave = to_mono(wave)
    if wave.shape[0] == 0:
        raise AudioDecodeError(
            f"{os.fspath(path)}: read 0 frames at offset {offset} "
            f"(manifest says {num_frames} frames)"
        )
    return wrap_pad(wave, crop_frames)


@dataclass(frozen=True)
class EvaluationInputs:
    """What embedding extraction feeds a model for one utterance.

    ``full``: float32 ``[T]``, the whole utterance (capped at ``max_seconds``);
    ``crops``: float32 ``[n_crops, L]``; ``offsets``: int64 ``[n_crops]``, each crop's first
    frame in ``full`` (0 for wrap-padded crops of a short utterance).
    """

    full: np.ndarray
    crops: np.ndarray
    offsets: np.ndarray
    sample_rate: int


def evaluation_offsets(num_frames: int, crop_frames: int, n_crops: int) -> np.ndarray:
    """Offsets of ``n_crops`` evenly spaced crops: see :func:`evaluation_inputs`."""
    if isinstance(n_crops, bool) or not isinstance(n_crops, (int, np.integer)) or n_crops < 0:
        raise ValueError(f"n_crops must be an integer >= 0, got {n_crops!r}")
    span = num_frames - crop_frames
    if span <= 0:
        return np.zeros(n_crops, dtype=np.int64)
    if n_crops == 1:
        return np.array([round(span / 2)], dtype=np.int64)
    return np.array([round(i * span / (n_crops - 1)) for i in range(n_crops)], dtype=np.int64)


def evaluation_inputs(
    path_or_wave: str | os.PathLike[str] | np.ndarray,
    n_crops: int = 5,
    crop_seconds: float = 4.0,
    max_seconds: float | None = None,
    sample_rate: int = 16000,
) -> EvaluationInputs:
    """The full utterance plus ``n_crops`` evenly spaced crops (the paper: full + 5 of 4 s).

    Exact definition, relied on by embedding extraction and scoring:

    1. ``full``: the utterance as mono float32 at ``sample_rate`` (a file at another rate
       is resampled; a waveform argument is taken to be at ``sample_rate`` already),
       truncated to its first ``round(max_seconds * sample_rate)`` frames when
       ``max_seconds`` is given. ``T = len(full)``.
    2. ``L = round(crop_seconds * sample_rate)``. If ``T > L``, crop ``i`` (``0 <= i < N``)
       is ``full[o_i : o_i + L]`` with ``o_i = round(i * (T - L) / (N - 1))`` (Python's
       ``round``: halves go to the even integer), so the first crop starts at frame 0 and
       the last ends at frame ``T``; with ``N == 1`` the single crop is centred,
       ``o_0 = round((T - L) / 2)``.
    3. If ``T <= L`` every crop is the whole utterance wrap-padded (tiled) to ``L``, offset 0.

    Raises ``ValueError`` when ``crop_seconds`` is not positive or shorter than one sample.
    """
    valid = isinstance(crop_seconds, Real) and not isinstance(crop_seconds, bool)
    crop_frames = round(crop_seconds * sample_rate) if valid and math.isfinite(crop_seconds) else 0
    if crop_frames < 1:
        raise ValueError(
            f"crop_seconds must be > 0 and at least one sample at {sample_rate} Hz, "
            f"got {crop_seconds!r}"
        )
    if isinstance(path_or_wave, np.ndarray):
        wave = to_mono(np.asarray(path_or_wave, dtype=np.float32))
    else:
        wave, rate = read_audio(path_or_wave)
        wave = to_mono(wave)
        if rate != sample_rate:
            wave = resample(wave, rate, sample_rate)
    if max_seconds is not None:
        if not max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {max_seconds!r}")
        wave = wave[: round(max_seconds * sample_rate)]
    if wave.shape[0] == 0:
        where = "waveform" if isinstance(path_or_wave, np.ndarray) else os.fspath(path_or_wave)
        raise AudioDecodeError(f"{where}: empty utterance, nothing to evaluate")
    offsets = evaluation_offsets(wave.shape[0], crop_frames, n_crops)
    source = wrap_pad(wave, crop_frames) if wave.shape[0] <= crop_frames else wave
    crops = np.zeros((n_crops, crop_frames), dtype=np.float32)
    for row, offset in enumerate(offsets):
        crops[row] = source[offset : offset + crop_frames]
    return EvaluationInputs(
        full=np.ascontiguousarray(wave, dtype=np.float32),
        crops=crops,
        offsets=offsets,
        sample_rate=sample_rate,
    )
