"""A generated, speech-like corpus: N speakers x M utterances, deterministic from a seed.

The generative model is a source-filter synthesiser: a Rosenberg glottal pulse train and
noise sources drive a cascade of two-pole formant resonators (Klatt style): F1-F3 move with
the content, F4-F7 are fixed per speaker, and a first-order emphasis stands in for lip
radiation and the missing higher poles. Frication noise has its own resonance. The
time-varying filtering is done frame-wise in the short-time Fourier domain (8 ms hop,
overlap-add with zero padding, so resonator ringing is kept rather than wrapped), which
vectorises the whole utterance: about 20 ms of one core per 3 s of audio.

**Speaker identity** (``SpeakerTraits``: drawn once per speaker from ``(seed, speaker)``
and identical in every one of that speaker's utterances):

- gender ("m"/"f"): selects the population means of F0, vocal-tract length, open quotient
  and breathiness;
- median F0 and the height of the pitch accents (semitones);
- vocal-tract length, as a scale factor on every formant;
- a personal vowel space: a small multiplicative offset on F1-F3 of each vowel
  (articulation habit, accent), and the speaker's own F4-F7, which content does not move;
- formant bandwidth scale;
- glottal source: open quotient and speed quotient of the pulse, extra spectral tilt
  (one-pole low-pass), jitter (per-cycle period perturbation), shimmer (per-cycle amplitude);
- breathiness: aspiration noise pulsed with the glottal open phase;
- speaking rate (syllables per second).

``trait_spread`` scales every deviation from the population means: 0 makes all speakers of
one gender identical, larger values make speakers easier to tell apart.

Difficulty: with the defaults (40 x 12), a cosine on MFCC mean+std embeddings reaches about
20% EER (see ``benchmarks/bench_synthetic_mfcc_eer.py``). What hurts that baseline most is
SNR variation, the noise colour (white noise fills the weak high bands of speech) and
band-limiting; EQ of a few dB matters little.

**Nuisance** (drawn per utterance from ``(seed, speaker, utterance)``):

- content: words of 1-3 syllables shaped (C)(C)V(C) over 10 vowels and 19 consonants
  (voiceless/voiced fricatives, plosives with closure, burst and aspiration, nasals,
  approximants, /h/), random lexical stress, per-token formant scatter, coarticulated
  formant transitions, pauses between words;
- prosody: register shift, declination over each phrase, accents on stressed syllables,
  slow F0 drift, a per-utterance change of speaking rate;
- duration (uniform in ``[min_duration_s, max_duration_s]``) and leading/trailing silence;
- additive coloured noise (power spectrum 1/f^beta, beta uniform in ``noise_colour_range``)
  at an SNR uniform in ``snr_db_range``, measured against the active speech;
- channel (applied to speech plus noise): ``eq_bands`` random peaking biquads of up to
  +-``eq_strength_db``, a high-pass in ``highpass_hz_range`` and, with
  ``bandlimit_probability``, a low-pass in ``lowpass_hz_range``;
- level: peak-normalised to a peak uniform in ``peak_level_range``.

Every random choice of an utterance comes from its own seed sequence, so rendering is
order-independent and can run lazily or in parallel workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import cached_property

import numpy as np

from sv_kedro.audio.speech_synthesis import HIGH_FORMANTS_HZ, VOWEL_FORMANTS_HZ, render_utterance

__all__ = ["SpeakerTraits", "SyntheticCorpus", "SyntheticCorpusConfig", "SyntheticUtterance"]

# Seed-sequence stream tags: speaker traits, utterance duration (rendering uses its own).
_STREAM_SPEAKER, _STREAM_DURATION = 11, 13


@dataclass(frozen=True)
class SyntheticCorpusConfig:
    """Size, seed and difficulty of the generated corpus (all durations in seconds)."""

    n_speakers: int = 40
    utterances_per_speaker: int = 12
    seed: int = 0
    sample_rate: int = 16000
    min_duration_s: float = 1.5
    max_duration_s: float = 4.0
    snr_db_range: tuple[float, float] = (10.0, 30.0)
    noise_colour_range: tuple[float, float] = (1.5, 2.0)  # beta of the 1/f^beta noise spectrum
    eq_strength_db: float = 4.0
    eq_bands: int = 3
    highpass_hz_range: tuple[float, float] = (40.0, 150.0)
    bandlimit_probability: float = 0.1
    lowpass_hz_range: tuple[float, float] = (5000.0, 7600.0)
    trait_spread: float = 1.0
    female_probability: float = 0.5
    pause_probability: float = 0.15
    peak_level_range: tuple[float, float] = (0.2, 0.9)

    @classmethod
    def from_dict(cls, params: dict) -> SyntheticCorpusConfig:
        """Build from a parameters mapping (e.g. Kedro params), naming any unknown key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(
                f"unknown synthetic corpus parameter(s) {unknown}; known: {sorted(known)}"
            )
        return cls(**params)

    def __post_init__(self) -> None:
        # YAML gives lists; keep the dataclass hashable and immutable.
        for name in (
            "snr_db_range",
            "noise_colour_range",
            "highpass_hz_range",
            "lowpass_hz_range",
            "peak_level_range",
        ):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 2 or value[0] > value[1]:
                raise ValueError(f"SyntheticCorpusConfig.{name} must be (low, high), got {value}")
            object.__setattr__(self, name, value)
        checks = [
            (self.n_speakers >= 1, "n_speakers must be >= 1"),
            (self.utterances_per_speaker >= 1, "utterances_per_speaker must be >= 1"),
            (self.sample_rate >= 8000, "sample_rate must be >= 8000 Hz"),
            (
                0.5 <= self.min_duration_s <= self.max_duration_s,
                "need 0.5 <= min_duration_s <= max_duration_s",
            ),
            (
                self.eq_strength_db >= 0 and self.eq_bands >= 0,
                "eq_strength_db and eq_bands must be >= 0",
            ),
            (0.0 <= self.bandlimit_probability <= 1.0, "bandlimit_probability must be in [0, 1]"),
            (0.0 <= self.female_probability <= 1.0, "female_probability must be in [0, 1]"),
            (0.0 <= self.pause_probability < 1.0, "pause_probability must be in [0, 1)"),
            (self.trait_spread >= 0, "trait_spread must be >= 0"),
            (
                0.0 < self.peak_level_range[0] and self.peak_level_range[1] < 1.0,
                "peak_level_range must lie in (0, 1)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SyntheticCorpusConfig: {message} (config: {self})")


@dataclass(frozen=True)
class SpeakerTraits:
    """What makes a synthetic speaker: fixed across all of the speaker's utterances."""

    speaker: str
    index: int
    gender: str  # "m" or "f"
    f0_median_hz: float
    accent_semitones: float
    vtl_scale: float  # formant scale factor (> 1: shorter vocal tract)
    vowel_scale: tuple[tuple[float, float, float], ...]  # [n_vowels][F1..F3] multipliers
    high_formants_hz: tuple[float, ...]  # F4..F7, fixed whatever the content
    bandwidth_scale: float
    open_quotient: float
    speed_quotient: float  # fraction of the open phase spent opening
    spectral_tilt: float  # one-pole low-pass coefficient on the glottal source, [0, 1)
    jitter: float  # relative std of the period, per cycle
    shimmer: float  # relative std of the amplitude, per cycle
    breathiness: float  # aspiration noise relative to the voiced source
    speaking_rate_hz: float  # syllables per second


@dataclass(frozen=True)
class SyntheticUtterance:
    """One utterance of the corpus; ``render`` produces its samples."""

    utt_id: str  # e.g. "spk007/utt003.wav"
    speaker: str
    gender: str
    duration: float  # seconds, = num_frames / sample_rate
    num_frames: int = field(default=0)


def _draw_traits(config: SyntheticCorpusConfig, index: int, speaker: str) -> SpeakerTraits:
    rng = np.random.default_rng([config.seed, _STREAM_SPEAKER, index])
    spread = config.trait_spread
    female = bool(rng.random() < config.female_probability)
    z = rng.standard_normal(15) * spread
    vowel_z = rng.standard_normal(VOWEL_FORMANTS_HZ.shape) * spread
    vtl = (1.17 if female else 1.0) * np.exp(0.045 * z[0])
    high = np.asarray(HIGH_FORMANTS_HZ) * vtl * np.exp(0.05 * z[[1, 2, 13, 14]])
    for k in range(1, 4):  # keep the high formants ordered and at least 300 Hz apart
        high[k] = max(high[k], high[k - 1] + 300.0)
    return SpeakerTraits(
        speaker=speaker,
        index=index,
        gender="f" if female else "m",
        f0_median_hz=float((210.0 if female else 118.0) * np.exp(0.15 * z[3])),
        accent_semitones=float(3.0 * np.exp(0.3 * z[4])),
        vtl_scale=float(vtl),
        vowel_scale=tuple(tuple(float(v) for v in row) for row in np.exp(0.05 * vowel_z)),
        high_formants_hz=tuple(float(f) for f in high),
        bandwidth_scale=float(np.exp(0.2 * z[5])),
        open_quotient=float(np.clip((0.68 if female else 0.55) + 0.07 * z[6], 0.3, 0.9)),
        speed_quotient=float(np.clip(0.65 + 0.08 * z[7], 0.4, 0.85)),
        spectral_tilt=float(np.clip(0.35 + 0.15 * z[8], 0.0, 0.85)),
        jitter=float(0.008 * np.exp(0.4 * z[9])),
        shimmer=float(0.04 * np.exp(0.4 * z[10])),
        breathiness=float((0.08 if female else 0.04) * np.exp(0.6 * z[11])),
        speaking_rate_hz=float(4.5 * np.exp(0.12 * z[12])),
    )


class SyntheticCorpus:
    """The generated corpus: speakers, utterance list and per-utterance rendering.

    Nothing is rendered up front; ``render(utt_id)`` synthesises one utterance from its own
    seed, so the result does not depend on which utterances were rendered before.
    """

    def __init__(self, config: SyntheticCorpusConfig | None = None) -> None:
        self.config = config if config is not None else SyntheticCorpusConfig()

    @cached_property
    def _speaker_width(self) -> int:
        return max(3, len(str(self.config.n_speakers - 1)))

    @cached_property
    def _utt_width(self) -> int:
        return max(3, len(str(self.config.utterances_per_speaker - 1)))

    @cached_property
    def _traits(self) -> list[SpeakerTraits]:
        return [
            _draw_traits(self.config, i, f"spk{i:0{self._speaker_width}d}")
            for i in range(self.config.n_speakers)
        ]

    @cached_property
    def _utterances(self) -> dict[str, tuple[SyntheticUtterance, int, int]]:
        cfg, table = self.config, {}
        for traits in self._traits:
            for j in range(cfg.utterances_per_speaker):
                rng = np.random.default_rng([cfg.seed, _STREAM_DURATION, traits.index, j])
                frames = round(
                    rng.uniform(cfg.min_duration_s, cfg.max_duration_s) * cfg.sample_rate
                )
                utt_id = f"{traits.speaker}/utt{j:0{self._utt_width}d}.wav"
                utt = SyntheticUtterance(
                    utt_id, traits.speaker, traits.gender, frames / cfg.sample_rate, frames
                )
                table[utt_id] = (utt, traits.index, j)
        return table

    def __len__(self) -> int:
        return self.config.n_speakers * self.config.utterances_per_speaker

    def speakers(self) -> list[SpeakerTraits]:
        """Traits of every speaker, in speaker order."""
        return list(self._traits)

    def speaker(self, speaker: str) -> SpeakerTraits:
        """Traits of one speaker by id (e.g. ``"spk007"``)."""
        for traits in self._traits:
            if traits.speaker == speaker:
                return traits
        raise KeyError(f"no speaker {speaker!r} in the synthetic corpus (ids run spk000..)")

    def utterances(self) -> list[SyntheticUtterance]:
        """Every utterance, speaker-major: ``spk000/utt000.wav``, ``spk000/utt001.wav``, ..."""
        return [entry[0] for entry in self._utterances.values()]

    def utterance(self, utt_id: str) -> SyntheticUtterance:
        return self._lookup(utt_id)[0]

    def render(self, utt_id: str) -> np.ndarray:
        """Samples of one utterance, float32 ``[time]``, peak in ``peak_level_range``."""
        utt, speaker_index, utt_index = self._lookup(utt_id)
        return render_utterance(self.config, self._traits[speaker_index], utt_index, utt.num_frames)

    def _lookup(self, utt_id: str) -> tuple[SyntheticUtterance, int, int]:
        try:
            return self._utterances[utt_id]
        except KeyError:
            example = next(iter(self._utterances))
            raise KeyError(
                f"no utterance {utt_id!r} in the synthetic corpus "
                f"({self.config.n_speakers} speakers x {self.config.utterances_per_speaker}, "
                f"ids like {example!r})"
            ) from None
