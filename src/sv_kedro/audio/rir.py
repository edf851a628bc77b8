"""Room impulse responses: real RIR files or a cached bank of simulated ones, and reverb.

Reverberation is an FFT convolution of the waveform with an RIR whose direct path (its
largest-magnitude tap, or the known direct tap of a simulated RIR) is scaled to 1 and
aligned to time 0, so the reverberant speech keeps the dry speech's direct-sound level
and timing, and its length.

Simulated RIRs follow a simple statistical model: a unit direct-path impulse after a short
delay, a few sparse early reflections in the first 50 ms, and a Gaussian-noise tail with
an exponential envelope that decays by 60 dB in RT60 seconds (drawn uniformly per RIR),
scaled to a random direct-to-reverberant ratio. It needs no room geometry and is what
"reverberation" augmentation needs when no measured RIRs are available.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
from scipy import signal

from sv_kedro.audio.io import audio_files_under, audio_info, read_audio, to_mono
from sv_kedro.utils.atomic import atomic_write_path

CACHE_FORMAT_VERSION = 1


def resample_poly(wave: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Polyphase resampling of ``[time]`` with SciPy (no torch needed in loader workers)."""
    if orig_rate == new_rate:
        return wave
    divisor = gcd(int(orig_rate), int(new_rate))
    out = signal.resample_poly(wave, new_rate // divisor, orig_rate // divisor)
    return out.astype(np.float32, copy=False)


@dataclass(frozen=True)
class Rir:
    """One impulse response: float32 ``[taps]`` with ``taps[direct_index] == 1``."""

    taps: np.ndarray
    direct_index: int


def prepare_rir(taps: np.ndarray, direct_index: int | None = None) -> Rir:
    """Scale ``taps`` so the direct path is 1; the direct path is the largest |tap| unless given."""
    taps = np.asarray(taps, dtype=np.float32)
    if taps.ndim != 1 or taps.shape[0] == 0:
        raise ValueError(f"an RIR must be a non-empty [taps] array, got shape {taps.shape}")
    if direct_index is None:
        direct_index = int(np.argmax(np.abs(taps)))
    peak = float(taps[direct_index])
    if peak == 0.0:
        raise ValueError("RIR direct path is zero (the impulse response is silent)")
    return Rir(taps=(taps / peak).astype(np.float32), direct_index=int(direct_index))


def reverberate(wave: np.ndarray, rir: Rir) -> np.ndarray:
    """Convolve ``wave`` ``[time]`` with ``rir`` (FFT); the output is ``[time]`` too.

    The output is aligned on the RIR's direct path, so sample ``t`` of the result holds the
    direct sound of input sample ``t`` plus the reflections of earlier samples.
    """
    wet = signal.oaconvolve(wave.astype(np.float32, copy=False), rir.taps, mode="full")
    start = rir.direct_index
    return np.ascontiguousarray(wet[start : start + wave.shape[0]], dtype=np.float32)


def simulate_rir(
    rng: np.random.Generator,
    sample_rate: int,
    rt60: float,
    max_seconds: float = 1.0,
    drr_db_range: tuple[float, float] = (-3.0, 12.0),
) -> Rir:
    """One synthetic RIR (see the module docstring) with reverberation time ``rt60`` s."""
    if not rt60 > 0:
        raise ValueError(f"rt60 must be > 0, got {rt60}")
    length = max(int(0.06 * sample_rate), int(min(max_seconds, 1.2 * rt60) * sample_rate))
    delay = int(rng.integers(0, int(0.005 * sample_rate) + 1))
    times = np.arange(length - delay) / sample_rate
    # 60 dB energy decay in rt60 seconds: amplitude exp(-3 ln(10) t / rt60).
    envelope = np.exp(-3.0 * np.log(10.0) * times / rt60)
    reverberant = rng.standard_normal(length - delay) * envelope
    reverberant[0] = 0.0
    early_count = int(rng.integers(4, 13))
    early_pos = rng.integers(int(0.002 * sample_rate), int(0.05 * sample_rate), early_count)
    early_pos = early_pos[early_pos < reverberant.shape[0]]
    early_amp = rng.uniform(0.2, 0.8, early_pos.shape[0]) * rng.choice(
        [-1.0, 1.0], early_pos.shape[0]
    )
    reverberant[early_pos] += early_amp * envelope[early_pos] * 3.0
    drr_db = rng.uniform(*drr_db_range)
    energy = float(np.sum(reverberant**2))
    if energy > 0:
        reverberant *= np.sqrt(10.0 ** (-drr_db / 10.0) / energy)
    taps = np.zeros(length, dtype=np.float32)
    taps[delay] = 1.0
    taps[delay:] += reverberant.astype(np.float32)
    return prepare_rir(taps, direct_index=delay)


class RirBank:
    """A set of RIRs to draw from: in memory (simulated) or files read on first use.

    Files are read whole (RIRs are short), downmixed, resampled to ``sample_rate`` and
    kept in a per-process cache of at most ``max_cached`` responses.
    """

    def __init__(
        self,
        rirs: Sequence[Rir] = (),
        sample_rate: int = 16000,
        paths: Sequence[str | os.PathLike[str]] = (),
        max_cached: int = 2048,
    ) -> None:
        if rirs and paths:
            raise ValueError("RirBank takes either in-memory rirs or paths, not both")
        self.sample_rate = int(sample_rate)
        self.paths = [os.fspath(p) for p in paths]
        self._rirs = list(rirs)
        self._cache: dict[int, Rir] = {}
        self.max_cached = max_cached
        self.from_cache = False
        if not self._rirs and not self.paths:
            raise ValueError("RirBank needs at least one RIR (no rirs and no paths given)")

    def __len__(self) -> int:
        return len(self._rirs) or len(self.paths)

    @classmethod
    def from_files(
        cls, paths: Sequence[str | os.PathLike[str]], sample_rate: int = 16000
    ) -> RirBank:
        missing = [os.fspath(p) for p in paths if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"RIR files not found: {missing[:5]}")
        return cls(paths=sorted(os.fspath(p) for p in paths), sample_rate=sample_rate)

    @classmethod
    def from_folder(cls, root: str | os.PathLike[str], sample_rate: int = 16000) -> RirBank:
        """All audio files under ``root`` (recursively), e.g. ``/data/rir/*.flac``."""
        return cls.from_files(audio_files_under(root, "RIR"), sample_rate)

    @classmethod
    def simulated(
        cls,
        count: int,
        sample_rate: int = 16000,
        rt60_range: tuple[float, float] = (0.2, 1.0),
        seed: int = 0,
        max_seconds: float = 1.0,
    ) -> RirBank:
        if count <= 0:
            raise ValueError(f"count must be > 0, got {count}")
        low, high = rt60_range
        if not 0 < low <= high:
            raise ValueError(f"rt60_range must satisfy 0 < low <= high, got {rt60_range}")
        rng = np.random.default_rng(seed)
        rirs = [
            simulate_rir(rng, sample_rate, float(rng.uniform(low, high)), max_seconds)
            for _ in range(count)
        ]
        return cls(rirs=rirs, sample_rate=sample_rate)

    @classmethod
    def load_or_simulate(
        cls,
        cache_path: str | os.PathLike[str],
        count: int,
        sample_rate: int = 16000,
        rt60_range: tuple[float, float] = (0.2, 1.0),
        seed: int = 0,
        max_seconds: float = 1.0,
    ) -> RirBank:
        """The simulated bank from ``cache_path`` (.npz) if it was built with these
        parameters, else simulate it and write the cache atomically. ``from_cache`` tells which."""
        params = {
            "version": CACHE_FORMAT_VERSION,
            "count": int(count),
            "sample_rate": int(sample_rate),
            "rt60_range": [float(rt60_range[0]), float(rt60_range[1])],
            "seed": int(seed),
            "max_seconds": float(max_seconds),
        }
        cache_path = Path(cache_path)
        if cache_path.suffix != ".npz":
            raise ValueError(f"{cache_path}: the RIR cache must be an .npz file")
        if cache_path.is_file():
            with np.load(cache_path, allow_pickle=False) as stored:
                if json.loads(str(stored["params"])) == params:
                    taps, lengths, directs = stored["taps"], stored["lengths"], stored["direct"]
                    rirs = [
                        Rir(taps=np.array(taps[i, : lengths[i]]), direct_index=int(directs[i]))
                        for i in range(taps.shape[0])
                    ]
                    bank = cls(rirs=rirs, sample_rate=sample_rate)
                    bank.from_cache = True
                    return bank
        bank = cls.simulated(count, sample_rate, rt60_range, seed, max_seconds)
        lengths = np.array([r.taps.shape[0] for r in bank._rirs], dtype=np.int64)
        taps = np.zeros((len(bank._rirs), int(lengths.max())), dtype=np.float32)
        for i, rir in enumerate(bank._rirs):
            taps[i, : rir.taps.shape[0]] = rir.taps
        directs = np.array([r.direct_index for r in bank._rirs], dtype=np.int64)
        with atomic_write_path(cache_path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, taps=taps, lengths=lengths, direct=directs, params=json.dumps(params))
        return bank

    def get(self, index: int) -> Rir:
        """RIR number ``index`` (files: read, downmixed, resampled and normalised)."""
        if self._rirs:
            return self._rirs[index]
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        path = self.paths[index]
        wave, rate = read_audio(path)
        taps = resample_poly(to_mono(wave), rate, self.sample_rate)
        try:
            rir = prepare_rir(taps)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        if len(self._cache) >= self.max_cached:
            self._cache.pop(next(iter(self._cache)))
        self._cache[index] = rir
        return rir

    def sample(self, rng: np.random.Generator) -> Rir:
        """A uniformly drawn RIR."""
        return self.get(int(rng.integers(0, len(self))))

    def durations(self) -> list[float]:
        """Seconds per RIR (files: from their headers)."""
        if self._rirs:
            return [r.taps.shape[0] / self.sample_rate for r in self._rirs]
        return [audio_info(p).duration for p in self.paths]
