"""On-the-fly augmentation in loader workers: additive noise, babble, music, reverb, speed.

NumPy/SciPy only (no torch), so it runs in ``DataLoader`` worker processes without
thread oversubscription. Each utterance gets one option of the random augmentation mix
``{none, reverb, noise, babble, music, reverb+noise}`` drawn with configurable weights:

- ``noise``: a background-noise crop at an SNR drawn uniformly from 0-15 dB;
- ``babble``: 3-8 utterances of *other* speakers of the corpus, each scaled to unit power
  and summed, mixed at 13-20 dB;
- ``music``: a music crop at 5-15 dB;
- ``reverb``: convolution with a real or simulated RIR (``sv_kedro.audio.rir``);
- ``reverb+noise``: reverb, then noise at the ``noise`` SNR range.

SNR is measured over the crop: ``10 log10(P_speech / P_added)`` with ``P`` the mean square.
Noise and music files are never read whole: each use decodes only a random crop of the
crop's length. Speed perturbation (factors such as 0.9/1.1) changes the speaker's voice,
so callers treat each factor as a new speaker (:func:`speed_perturbed_label`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import signal

from sv_kedro.audio.crops import crop_window, read_crop, wrap_pad
from sv_kedro.audio.io import AUDIO_SUFFIXES, audio_info
from sv_kedro.audio.rir import RirBank, resample_poly, reverberate

if TYPE_CHECKING:
    from sv_kedro.corpus.shard_access import ShardAudioReader

AUGMENTATION_OPTIONS: tuple[str, ...] = (
    "none",
    "reverb",
    "noise",
    "babble",
    "music",
    "reverb+noise",
)
MUSAN_CATEGORIES = {"noise": "noise", "music": "music", "speech": "speech"}


@dataclass(frozen=True)
class AugmentationConfig:
    """Weights of the augmentation options (normalised to probabilities) and their ranges."""

    weights: Mapping[str, float] = field(
        default_factory=lambda: dict.fromkeys(AUGMENTATION_OPTIONS, 1.0)
    )
    noise_snr_db: tuple[float, float] = (0.0, 15.0)
    babble_snr_db: tuple[float, float] = (13.0, 20.0)
    music_snr_db: tuple[float, float] = (5.0, 15.0)
    babble_speakers: tuple[int, int] = (3, 8)
    speed_factors: tuple[float, ...] = ()
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        unknown = sorted(set(self.weights) - set(AUGMENTATION_OPTIONS))
        if unknown:
            raise ValueError(
                f"unknown augmentation option(s) {unknown}; known: {list(AUGMENTATION_OPTIONS)}"
            )
        negative = {k: v for k, v in self.weights.items() if v < 0}
        if negative:
            raise ValueError(f"augmentation weights must be >= 0, got {negative}")
        if sum(self.weights.values()) <= 0:
            raise ValueError("augmentation weights sum to 0: give at least one option a weight")
        for name in ("noise_snr_db", "babble_snr_db", "music_snr_db"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {(low, high)}")
        low, high = self.babble_speakers
        if not 1 <= low <= high:
            raise ValueError(f"babble_speakers must satisfy 1 <= low <= high, got {(low, high)}")
        if any(not f > 0 for f in self.speed_factors):
            raise ValueError(f"speed_factors must be > 0, got {self.speed_factors}")

    @classmethod
    def from_dict(cls, params: Mapping[str, object]) -> AugmentationConfig:
        """From Kedro parameters (lists become tuples; unknown keys are an error)."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown augmentation parameter(s) {unknown}; known: {sorted(known)}")
        converted = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        return cls(**converted)

    def probabilities(self) -> dict[str, float]:
        total = float(sum(self.weights.values()))
        return {k: float(self.weights.get(k, 0.0)) / total for k in AUGMENTATION_OPTIONS}


def mix_at_snr(speech: np.ndarray, added: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech + g * added`` with ``g`` such that ``10 log10(P_speech / P(g * added)) = snr_db``.

    Both ``[time]`` of equal length. A silent speech or silent ``added`` is returned unchanged.
    """
    if speech.shape != added.shape:
        raise ValueError(f"cannot mix shapes {speech.shape} and {added.shape}")
    speech_power = float(np.mean(np.square(speech, dtype=np.float64)))
    added_power = float(np.mean(np.square(added, dtype=np.float64)))
    if speech_power == 0.0 or added_power == 0.0:
        return speech.astype(np.float32, copy=True)
    gain = math.sqrt(speech_power / (added_power * 10.0 ** (snr_db / 10.0)))
    return (speech + gain * added).astype(np.float32)


def speed_perturb(wave: np.ndarray, factor: float) -> np.ndarray:
    """Play ``wave`` ``[time]`` ``factor`` times faster (pitch shifts too): ``[~time / factor]``."""
    if factor == 1.0:
        return wave
    ratio = Fraction(factor).limit_denominator(100)
    out = signal.resample_poly(wave, ratio.denominator, ratio.numerator)
    return out.astype(np.float32, copy=False)


def speed_perturbed_label(
    label: int, factor: float, factors: Sequence[float], num_speakers: int
) -> int:
    """Class of ``label`` after speed ``factor``: 1.0 keeps it; the k-th other factor in
    ``factors`` (k = 1, 2, ...) maps to ``label + k * num_speakers``."""
    if factor == 1.0 or label < 0:
        return label
    others = [f for f in factors if f != 1.0]
    if factor not in others:
        raise ValueError(f"speed factor {factor} is not one of {list(factors)}")
    return label + (others.index(factor) + 1) * num_speakers


@dataclass(frozen=True)
class NoiseFile:
    path: str
    num_frames: int
    sample_rate: int
    category: str


def _read_random_crop(
    path: str,
    num_frames: int,
    file_rate: int,
    frames: int,
    sample_rate: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """A random crop of ``frames`` frames at ``sample_rate`` (reads only what it needs)."""
    file_frames = math.ceil(frames * file_rate / sample_rate)
    wave = read_crop(path, num_frames, file_frames, "random", rng)
    if file_rate != sample_rate:
        wave = wrap_pad(resample_poly(wave, file_rate, sample_rate), frames)
    return wave


class NoiseBank:
    """Background-noise (or music, speech) files by category, read as random crops."""

    def __init__(self, files: Sequence[NoiseFile]) -> None:
        self.files = list(files)
        self._by_category: dict[str, list[NoiseFile]] = {}
        for item in self.files:
            self._by_category.setdefault(item.category, []).append(item)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def categories(self) -> list[str]:
        return sorted(self._by_category)

    def count(self, category: str) -> int:
        return len(self._by_category.get(category, ()))

    @classmethod
    def from_files(cls, paths: Sequence[str | os.PathLike[str]], category: str) -> NoiseBank:
        files = []
        for path in sorted(os.fspath(p) for p in paths):
            info = audio_info(path)
            if info.frames <= 0:
                raise ValueError(f"{path}: noise file has no audio frames")
            files.append(NoiseFile(path, info.frames, info.sample_rate, category))
        return cls(files)

    @classmethod
    def from_folder(cls, root: str | os.PathLike[str], category: str) -> NoiseBank:
        """Every audio file under ``root`` (recursively), all in ``category``."""
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: noise folder does not exist")
        paths = [p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES]
        if not paths:
            raise ValueError(f"{root}: no audio files ({sorted(AUDIO_SUFFIXES)}) found")
        return cls.from_files(paths, category)

    @classmethod
    def from_musan(cls, root: str | os.PathLike[str]) -> NoiseBank:
        """MUSAN's layout ``musan/{noise,music,speech}/**`` -> categories noise, music, speech."""
        root = Path(root)
        present = [name for name in MUSAN_CATEGORIES if (root / name).is_dir()]
        if not present:
            raise FileNotFoundError(
                f"{root}: not a MUSAN folder (expected sub-folders {sorted(MUSAN_CATEGORIES)})"
            )
        banks = [cls.from_folder(root / name, MUSAN_CATEGORIES[name]) for name in present]
        return cls([f for bank in banks for f in bank.files])

    def merged(self, other: NoiseBank) -> NoiseBank:
        return NoiseBank(self.files + other.files)

    def sample(
        self, category: str, frames: int, rng: np.random.Generator, sample_rate: int = 16000
    ) -> np.ndarray:
        """A random crop ``[frames]`` of a random file of ``category``, at ``sample_rate``."""
        choices = self._by_category.get(category)
        if not choices:
            raise KeyError(f"noise bank has no {category!r} files (categories: {self.categories})")
        item = choices[int(rng.integers(0, len(choices)))]
        return _read_random_crop(
            item.path, item.num_frames, item.sample_rate, frames, sample_rate, rng
        )


class BabbleSource:
    """Utterances of a corpus grouped by speaker, summed into babble of other speakers.

    Each of ``sources`` is a file path, or, with ``shards`` (a
    :class:`~sv_kedro.corpus.shard_access.ShardAudioReader`), the ``utt_id`` the shards
    hold: babble then reads the shards and the corpus's files need not be present.
    """

    def __init__(
        self,
        sources: Sequence[str],
        num_frames: Sequence[int],
        sample_rates: Sequence[int],
        speakers: Sequence[str],
        shards: ShardAudioReader | None = None,
    ) -> None:
        if not (len(sources) == len(num_frames) == len(sample_rates) == len(speakers)):
            raise ValueError(
                "BabbleSource: sources, num_frames, sample_rates and speakers differ in length"
            )
        if not sources:
            raise ValueError("BabbleSource needs at least one utterance")
        self.sources = [str(p) for p in sources]
        self.shards = shards
        if shards is not None:
            absent = [utt for utt in self.sources if utt not in shards]
            if absent:
                raise ValueError(
                    f"babble: the shards in {shards.out_dir} do not hold {len(absent)} of the "
                    f"manifest's utterances, e.g. {absent[:3]}"
                )
        self.num_frames = np.asarray(num_frames, dtype=np.int64)
        self.sample_rates = np.asarray(sample_rates, dtype=np.int64)
        by_speaker: dict[str, list[int]] = {}
        for index, speaker in enumerate(speakers):
            by_speaker.setdefault(str(speaker), []).append(index)
        self.speakers = sorted(by_speaker)
        self._utterances = [np.asarray(by_speaker[s]) for s in self.speakers]

    @classmethod
    def from_manifest(
        cls, manifest: pd.DataFrame, shards: ShardAudioReader | None = None
    ) -> BabbleSource:
        """From a manifest (columns ``path``, ``num_frames``, ``sample_rate``, ``speaker``;
        with ``shards``, ``utt_id`` instead of ``path``)."""
        source = "path" if shards is None else "utt_id"
        needed = {source, "num_frames", "sample_rate", "speaker"}
        missing = sorted(needed - set(manifest.columns))
        if missing:
            raise ValueError(f"manifest for babble lacks column(s) {missing}")
        return cls(
            manifest[source].astype(str).tolist(),
            manifest["num_frames"].tolist(),
            manifest["sample_rate"].tolist(),
            manifest["speaker"].astype(str).tolist(),
            shards,
        )

    @classmethod
    def from_files(cls, paths: Sequence[str | os.PathLike[str]]) -> BabbleSource:
        """Each file is its own speaker (e.g. MUSAN ``speech``)."""
        infos = [audio_info(p) for p in paths]
        return cls(
            [os.fspath(p) for p in paths],
            [i.frames for i in infos],
            [i.sample_rate for i in infos],
            [os.fspath(p) for p in paths],
        )

    def sample(
        self,
        frames: int,
        rng: np.random.Generator,
        count: int,
        exclude_speaker: str | None = None,
        sample_rate: int = 16000,
    ) -> tuple[np.ndarray, int]:
        """Babble ``[frames]``: ``count`` distinct speakers other than ``exclude_speaker``
        (fewer if the corpus has fewer), one random crop each at unit power, summed.
        Returns ``(babble, speakers_used)``."""
        draw = min(len(self.speakers), count + 1)
        picked = [int(i) for i in rng.choice(len(self.speakers), size=draw, replace=False)]
        picked = [i for i in picked if self.speakers[i] != exclude_speaker][:count]
        if not picked:
            raise ValueError(f"no speakers other than {exclude_speaker!r} for babble")
        babble = np.zeros(frames, dtype=np.float64)
        for speaker_index in picked:
            utterances = self._utterances[speaker_index]
            utt = int(utterances[int(rng.integers(0, len(utterances)))])
            crop = self._random_crop(utt, frames, sample_rate, rng)
            power = float(np.mean(np.square(crop, dtype=np.float64)))
            if power > 0:
                babble += crop / math.sqrt(power)
        return babble.astype(np.float32), len(picked)

    def _random_crop(
        self, utt: int, frames: int, sample_rate: int, rng: np.random.Generator
    ) -> np.ndarray:
        if self.shards is None:
            return _read_random_crop(
                self.sources[utt],
                int(self.num_frames[utt]),
                int(self.sample_rates[utt]),
                frames,
                sample_rate,
                rng,
            )
        rate = self.shards.sample_rate
        stored = math.ceil(frames * rate / sample_rate)
        wave, _ = self.shards.read(
            self.sources[utt], lambda n: crop_window(n, stored, "random", rng)
        )
        if rate != sample_rate:
            wave = resample_poly(wave, rate, sample_rate)
        return wrap_pad(wave, frames)


class Augmenter:
    """Draws one option of the augmentation mix per utterance and applies it.

    ``__call__(wave [time], rng, speaker) -> [time]``; ``augment`` also returns the option
    name. Options with a non-zero weight must have their resources: ``noise`` and
    ``reverb+noise`` a bank with ``noise`` files, ``music`` one with ``music`` files,
    ``babble`` a :class:`BabbleSource`, ``reverb`` a :class:`RirBank`.
    """

    def __init__(
        self,
        config: AugmentationConfig | None = None,
        noise_bank: NoiseBank | None = None,
        rir_bank: RirBank | None = None,
        babble_source: BabbleSource | None = None,
        seed: int = 0,
    ) -> None:
        self.config = config or AugmentationConfig()
        self.noise_bank = noise_bank
        self.rir_bank = rir_bank
        self.babble_source = babble_source
        self._rng = np.random.default_rng(seed)
        probabilities = self.config.probabilities()
        self.options = [o for o in AUGMENTATION_OPTIONS if probabilities[o] > 0]
        self._probabilities = np.array([probabilities[o] for o in self.options])
        for option in self.options:
            problem = self._missing_resource(option)
            if problem:
                raise ValueError(
                    f"augmentation option {option!r} has weight "
                    f"{self.config.weights[option]} but {problem}"
                )

    def _missing_resource(self, option: str) -> str | None:
        if option in ("reverb", "reverb+noise") and self.rir_bank is None:
            return "no rir_bank was given"
        if option == "babble" and self.babble_source is None:
            return "no babble_source was given"
        category = {"noise": "noise", "reverb+noise": "noise", "music": "music"}.get(option)
        if category and (self.noise_bank is None or not self.noise_bank.count(category)):
            have = self.noise_bank.categories if self.noise_bank else []
            return f"the noise bank has no {category!r} files (categories: {have})"
        return None

    def choose(self, rng: np.random.Generator) -> str:
        return self.options[int(rng.choice(len(self.options), p=self._probabilities))]

    def draw_speed(self, rng: np.random.Generator) -> float:
        """A speed factor drawn uniformly from ``config.speed_factors`` (1.0 when none)."""
        factors = self.config.speed_factors
        return float(factors[int(rng.integers(0, len(factors)))]) if factors else 1.0

    def augment(
        self, wave: np.ndarray, rng: np.random.Generator, speaker: str | None = None
    ) -> tuple[np.ndarray, str]:
        """Apply a drawn option to mono ``wave`` ``[time]``; returns ``(augmented, option)``."""
        if wave.ndim != 1:
            raise ValueError(f"augment expects a mono [time] waveform, got shape {wave.shape}")
        option = self.choose(rng)
        cfg, frames = self.config, wave.shape[0]
        out = wave.astype(np.float32, copy=True)
        if option in ("reverb", "reverb+noise"):
            out = reverberate(out, self.rir_bank.sample(rng))
        if option in ("noise", "reverb+noise", "music"):
            category = "music" if option == "music" else "noise"
            snr_range = cfg.music_snr_db if option == "music" else cfg.noise_snr_db
            added = self.noise_bank.sample(category, frames, rng, cfg.sample_rate)
            out = mix_at_snr(out, added, float(rng.uniform(*snr_range)))
        elif option == "babble":
            low, high = cfg.babble_speakers
            count = int(rng.integers(low, high + 1))
            added, _ = self.babble_source.sample(frames, rng, count, speaker, cfg.sample_rate)
            out = mix_at_snr(out, added, float(rng.uniform(*cfg.babble_snr_db)))
        return out, option

    def __call__(
        self, wave: np.ndarray, rng: np.random.Generator | None = None, speaker: str | None = None
    ) -> np.ndarray:
        return self.augment(wave, self._rng if rng is None else rng, speaker)[0]
