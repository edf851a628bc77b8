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
Noise, music and babble come from ``sv_kedro.audio.noise_sources``, which decodes only a
random crop of the crop's length per use. Speed perturbation (factors such as 0.9/1.1)
changes the speaker's voice, so callers treat each factor as a new speaker
(:func:`speed_perturbed_label`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
from scipy import signal

from sv_kedro.audio.noise_sources import BabbleSource, NoiseBank
from sv_kedro.audio.rir import RirBank, reverberate

AUGMENTATION_OPTIONS: tuple[str, ...] = (
    "none",
    "reverb",
    "noise",
    "babble",
    "music",
    "reverb+noise",
)


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
