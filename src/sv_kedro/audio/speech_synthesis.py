"""The source-filter speech synthesiser behind the generated corpus (``audio.synthetic``).

``render_utterance(config, traits, utt_index, n)`` plans one utterance's content and prosody
(syllables, consonants, pauses, F0 contour), generates the glottal and noise sources, filters
them frame-wise through the speaker's formants, then adds noise and the channel. See the
``audio.synthetic`` module docstring for the generative model; this module holds its parts.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import fft as sp_fft
from scipy import signal

if TYPE_CHECKING:
    from sv_kedro.audio.synthetic import SpeakerTraits, SyntheticCorpusConfig

# Seed-sequence stream tag of an utterance's content, sources and channel.
_STREAM_RENDER = 12

# F1-F3 (Hz) of ten vowels for an adult male reference tract (classic averages):
# i, I, E, ae, a, O, U, u, V, 3r.
VOWEL_FORMANTS_HZ = np.array(
    [
        [270, 2290, 3010],
        [390, 1990, 2550],
        [530, 1840, 2480],
        [660, 1720, 2410],
        [730, 1090, 2440],
        [570, 840, 2410],
        [440, 1020, 2240],
        [300, 870, 2240],
        [640, 1190, 2390],
        [490, 1350, 1690],
    ],
    dtype=np.float64,
)
_EMPHASIS = 0.8  # first-order high-frequency emphasis of the voiced path
HIGH_FORMANTS_HZ = (3500.0, 4500.0, 5500.0, 6500.0)  # reference F4..F7


@dataclass(frozen=True)
class _Consonant:
    kind: str  # (voiced_)fricative, aspirate, (voiced_)plosive, nasal or approximant
    formants_hz: tuple[float, float, float] | None = None  # None: coarticulated from neighbours
    noise_centre_hz: float = 0.0
    noise_bandwidth_hz: float = 0.0
    noise_gain: float = 0.0


_CONSONANTS = (
    _Consonant("fricative", None, 6000, 3000, 0.30),  # s
    _Consonant("fricative", None, 3500, 1800, 0.30),  # sh
    _Consonant("fricative", None, 4500, 6000, 0.10),  # f
    _Consonant("fricative", None, 5000, 5000, 0.08),  # th
    _Consonant("voiced_fricative", (300, 1500, 2500), 6000, 3000, 0.18),  # z
    _Consonant("voiced_fricative", (300, 1200, 2300), 4500, 6000, 0.07),  # v
    _Consonant("aspirate", None, noise_gain=0.25),  # h
    _Consonant("plosive", None, 1200, 2500, 0.45),  # p
    _Consonant("plosive", None, 4200, 3000, 0.45),  # t
    _Consonant("plosive", None, 2200, 1500, 0.45),  # k
    _Consonant("voiced_plosive", (250, 900, 2200), 1200, 2500, 0.30),  # b
    _Consonant("voiced_plosive", (250, 1700, 2600), 4200, 3000, 0.30),  # d
    _Consonant("voiced_plosive", (250, 2000, 2300), 2200, 1500, 0.30),  # g
    _Consonant("nasal", (250, 1100, 2200)),  # m
    _Consonant("nasal", (250, 1500, 2500)),  # n
    _Consonant("approximant", (360, 1300, 2700)),  # l
    _Consonant("approximant", (310, 1060, 1380)),  # r
    _Consonant("approximant", (300, 610, 2200)),  # w
    _Consonant("approximant", (260, 2070, 3020)),  # j
)


@dataclass
class _ControlTracks:
    """Per-millisecond synthesis parameters of one utterance (``[n_ms]`` or ``[n_ms, 3]``)."""

    voicing: np.ndarray
    frication: np.ndarray
    aspiration: np.ndarray
    formants_hz: np.ndarray  # F1..F3
    bandwidth_mult: np.ndarray
    noise_centre_hz: np.ndarray
    noise_bandwidth_hz: np.ndarray
    f0_hz: np.ndarray


_NAN3 = (np.nan, np.nan, np.nan)


def _consonant_rows(c: _Consonant, traits: SpeakerTraits, scale: float) -> list[tuple]:
    """Segments ``(ms, voicing, frication, aspiration, F1, F2, F3, centre, bw, bw_mult)``."""
    form = _NAN3 if c.formants_hz is None else tuple(np.multiply(c.formants_hz, traits.vtl_scale))
    noise = (c.noise_centre_hz * traits.vtl_scale, c.noise_bandwidth_hz)
    gain, silent = c.noise_gain, (np.nan, np.nan)
    rows = {
        "fricative": [(70 * scale, 0.0, gain, 0.0, *_NAN3, *noise, 1.0)],
        "voiced_fricative": [(60 * scale, 0.35, gain, 0.0, *form, *noise, 1.3)],
        "aspirate": [(50 * scale, 0.0, 0.0, gain, *_NAN3, *silent, 1.0)],
        "plosive": [
            (55 * scale, 0.0, 0.0, 0.0, *_NAN3, *silent, 1.0),  # closure
            (12, 0.0, gain, 0.0, *_NAN3, *noise, 1.0),  # burst
            (30 * scale, 0.0, 0.0, 0.2, *_NAN3, *silent, 1.0),  # aspiration
        ],
        "voiced_plosive": [
            (45 * scale, 0.08, 0.0, 0.0, *form, *silent, 1.5),  # voice bar
            (10, 0.3, gain, 0.0, *form, *noise, 1.0),  # burst
        ],
        "nasal": [(60 * scale, 0.35, 0.0, 0.0, *form, *silent, 1.8)],
        "approximant": [(55 * scale, 0.6, 0.0, 0.0, *form, *silent, 1.2)],
    }
    return rows[c.kind]


def _fill_nan(track: np.ndarray, default: float) -> np.ndarray:
    """Linear interpolation over NaN runs: unspecified targets glide between neighbours."""
    valid = ~np.isnan(track)
    if not valid.any():
        return np.full_like(track, default)
    index = np.arange(track.size)
    return np.interp(index, index[valid], track[valid])


def _smooth(track: np.ndarray, width_ms: int) -> np.ndarray:
    """Hann-weighted moving average along axis 0 with edge padding (keeps the length)."""
    kernel = np.hanning(width_ms + 2)[1:-1]
    kernel /= kernel.sum()
    half = width_ms // 2
    pad = [(half, width_ms - 1 - half)] + [(0, 0)] * (track.ndim - 1)
    padded = np.pad(track, pad, mode="edge")
    if track.ndim == 1:
        return np.convolve(padded, kernel, mode="valid")
    return np.stack(
        [np.convolve(padded[:, i], kernel, mode="valid") for i in range(track.shape[1])], 1
    )


def _plan_utterance(
    traits: SpeakerTraits, rng: np.random.Generator, n_ms: int, pause_probability: float
) -> _ControlTracks:
    """Draw the content and prosody of one utterance as per-millisecond control tracks."""
    syllable_ms = 1000.0 / (traits.speaking_rate_hz * np.exp(0.08 * rng.standard_normal()))
    vowel_targets = VOWEL_FORMANTS_HZ * np.asarray(traits.vowel_scale) * traits.vtl_scale
    # Silence at both ends, at most 1/8 of the utterance each so short ones still hold speech.
    lead = int(rng.integers(30, max(31, min(300, n_ms // 8))))
    trail = int(rng.integers(30, max(31, min(250, n_ms // 8))))
    rows: list[tuple] = [(lead, 0.0, 0.0, 0.0, *_NAN3, np.nan, np.nan, 1.0)]
    elapsed = float(lead)
    accents: list[tuple[float, float]] = []  # (centre ms, semitones)
    phrase_starts = [0, lead]

    def emit(new_rows: list[tuple]) -> None:
        nonlocal elapsed
        for row in new_rows:
            ms = max(1, round(row[0]))
            rows.append((ms, *row[1:]))
            elapsed += ms

    def random_consonant() -> list[tuple]:
        consonant = _CONSONANTS[int(rng.integers(len(_CONSONANTS)))]
        scale = syllable_ms / 220.0 * np.exp(0.15 * rng.standard_normal())
        return _consonant_rows(consonant, traits, scale)

    while elapsed < n_ms - trail:
        n_syllables = int(rng.integers(1, 4))
        stressed_syllable = int(rng.integers(n_syllables))
        for syllable in range(n_syllables):
            for _ in range(int(rng.choice(3, p=[0.25, 0.6, 0.15]))):
                emit(random_consonant())
            stressed = syllable == stressed_syllable
            vowel_ms = (
                syllable_ms * (0.5 if stressed else 0.33) * np.exp(0.15 * rng.standard_normal())
            )
            target = vowel_targets[int(rng.integers(len(vowel_targets)))]
            target = target * np.exp(0.04 * rng.standard_normal(3))  # token-to-token scatter
            if stressed:
                height = traits.accent_semitones * rng.uniform(0.4, 1.0)
                accents.append((elapsed + vowel_ms / 2, height))
            emit([(vowel_ms, 1.0 if stressed else 0.6, 0.0, 0.0, *target, np.nan, np.nan, 1.0)])
            if rng.random() < 0.35:
                emit(random_consonant())
        if rng.random() < pause_probability:
            emit([(rng.uniform(120, 400), 0.0, 0.0, 0.0, *_NAN3, np.nan, np.nan, 1.0)])
            phrase_starts.append(int(elapsed))

    table = np.asarray(rows, dtype=np.float64)
    tracks = np.repeat(table[:, 1:], table[:, 0].astype(np.int64), axis=0)[: n_ms - trail]
    tracks = np.concatenate([tracks, np.zeros((n_ms - tracks.shape[0], tracks.shape[1]))])
    tracks[n_ms - trail :, 3:8] = np.nan  # trailing silence: no targets of its own
    formants = np.stack([_fill_nan(tracks[:, 3 + i], VOWEL_FORMANTS_HZ[8, i]) for i in range(3)], 1)
    return _ControlTracks(
        voicing=_smooth(tracks[:, 0], 12),
        frication=_smooth(tracks[:, 1], 6),
        aspiration=_smooth(tracks[:, 2], 10),
        formants_hz=_smooth(formants, 40),
        bandwidth_mult=_smooth(np.where(tracks[:, 8] > 0, tracks[:, 8], 1.0), 20),
        noise_centre_hz=_fill_nan(tracks[:, 6], 4000.0),
        noise_bandwidth_hz=_fill_nan(tracks[:, 7], 3000.0),
        f0_hz=_f0_contour(traits, rng, n_ms, accents, phrase_starts, syllable_ms),
    )


def _f0_contour(
    traits: SpeakerTraits,
    rng: np.random.Generator,
    n_ms: int,
    accents: list[tuple[float, float]],
    phrase_starts: list[int],
    syllable_ms: float,
) -> np.ndarray:
    """F0 in Hz per millisecond: register + phrase declination + accents + slow drift."""
    semitones = np.zeros(n_ms)
    bounds = [*sorted(set(min(s, n_ms) for s in phrase_starts)), n_ms]
    for start, stop in itertools.pairwise(bounds):
        declination = rng.uniform(1.0, 3.5)
        semitones[start:stop] = np.linspace(declination / 2, -declination / 2, stop - start)
    if accents:
        centres, heights = np.asarray(accents).T
        t = np.arange(n_ms)[None, :]
        sigma = 0.3 * syllable_ms
        bumps = heights[:, None] * np.exp(-0.5 * ((t - centres[:, None]) / sigma) ** 2)
        semitones += bumps.sum(axis=0)
    knots = np.arange(0, n_ms + 100, 100)
    semitones += np.interp(np.arange(n_ms), knots, 0.5 * rng.standard_normal(knots.size))
    register = traits.f0_median_hz * 2.0 ** (0.7 * rng.standard_normal() / 12)
    return np.clip(register * 2.0 ** (_smooth(semitones, 30) / 12), 50.0, 500.0)


def _glottal_source(
    traits: SpeakerTraits, rng: np.random.Generator, f0_hz: np.ndarray, fs: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rosenberg flow derivative with jitter, shimmer and tilt, and the open-phase mask.

    Returns ``(excitation [time], open_phase [time] bool)``; the excitation is per unit of
    phase, so its level does not depend on F0.
    """
    phase = np.cumsum(f0_hz / fs)
    n_cycles = int(phase[-1] * 1.5) + 4  # jitter can only stretch the count a little
    jitter = 1.0 + traits.jitter * rng.standard_normal(n_cycles)
    shimmer = 1.0 + traits.shimmer * rng.standard_normal(n_cycles)
    phase = np.cumsum(f0_hz * jitter[phase.astype(np.int64)] / fs)
    cycle = phase.astype(np.int64)
    frac = phase - cycle
    rise = traits.open_quotient * traits.speed_quotient
    fall = traits.open_quotient - rise
    flow = np.where(
        frac < rise,
        0.5 * (1.0 - np.cos(np.pi * frac / rise)),
        np.where(frac < traits.open_quotient, np.cos(0.5 * np.pi * (frac - rise) / fall), 0.0),
    )
    excitation = np.diff(flow, prepend=0.0) * (fs / f0_hz) * shimmer[cycle]
    tilt = traits.spectral_tilt
    excitation = signal.lfilter([1.0 - tilt], [1.0, -tilt], excitation)
    return excitation, frac < traits.open_quotient


def _cascade_response(freqs: np.ndarray, bandwidths: np.ndarray, fs: int, n_fft: int) -> np.ndarray:
    """Frequency response ``[frames, n_fft//2+1]`` of cascaded two-pole resonators.

    ``freqs`` and ``bandwidths`` are ``[frames, n_resonators]`` in Hz; each resonator has
    unit gain at DC; resonators at or above 0.45 fs are left out.
    """
    z1 = np.exp(-2j * np.pi * np.arange(n_fft // 2 + 1) / n_fft).astype(np.complex64)
    z2 = z1 * z1
    radius = np.exp(-np.pi * bandwidths / fs)
    c1 = (-2.0 * radius * np.cos(2 * np.pi * freqs / fs)).astype(np.float32)
    c2 = (radius * radius).astype(np.float32)
    c1[freqs >= 0.45 * fs] = 0.0
    c2[freqs >= 0.45 * fs] = 0.0
    response = np.ones((freqs.shape[0], z1.size), dtype=np.complex64)
    for k in range(freqs.shape[1]):
        a1, a2 = c1[:, k, None], c2[:, k, None]
        response *= (1.0 + a1 + a2) / (1.0 + a1 * z1 + a2 * z2)
    return response


def _noise_shape(centre: np.ndarray, bandwidth: np.ndarray, fs: int, n_fft: int) -> np.ndarray:
    """Frication spectrum ``[frames, bins]``: unit-peak resonance on a gentle high-pass."""
    centre = np.minimum(centre, 0.45 * fs)[:, None]
    z1 = np.exp(-2j * np.pi * np.arange(n_fft // 2 + 1) / n_fft).astype(np.complex64)
    radius = np.exp(-np.pi * bandwidth / fs)[:, None]
    c1, c2 = -2.0 * radius * np.cos(2 * np.pi * centre / fs), radius * radius
    at_peak = np.exp(-2j * np.pi * centre / fs)
    peak_gain = np.abs(1.0 + c1 * at_peak + c2 * at_peak**2)
    c1, c2, peak_gain = (x.astype(np.float32) for x in (c1, c2, peak_gain))
    high_pass = ((1.0 - 0.9 * z1) / 1.9).astype(np.complex64)
    return (peak_gain * high_pass) / (1.0 + c1 * z1 + c2 * (z1 * z1))


def _short_time_filter(
    voiced: np.ndarray,
    frication: np.ndarray,
    tracks: _ControlTracks,
    traits: SpeakerTraits,
    fs: int,
) -> np.ndarray:
    """Filter both sources with their time-varying envelopes by overlap-add (8 ms hop).

    Frames are Hann-windowed (4 hops long, summing to 2), zero-padded to twice their length
    so the resonators' ringing is kept rather than wrapped, then overlap-added.
    """
    n = voiced.size
    hop = fs // 125
    win_len, n_fft = 4 * hop, 8 * hop
    n_frames = (n + win_len) // hop + 1
    padded = np.zeros((2, n_frames * hop + win_len), dtype=np.float32)
    padded[0, win_len : win_len + n] = voiced
    padded[1, win_len : win_len + n] = frication
    frames = np.lib.stride_tricks.sliding_window_view(padded, win_len, axis=1)
    frames = frames[:, ::hop][:, :n_frames]
    spectra = sp_fft.rfft(frames * signal.get_window("hann", win_len).astype(np.float32), n=n_fft)

    centre_ms = (np.arange(n_frames) * hop - win_len / 2) * 1000.0 / fs
    at = np.clip(np.round(centre_ms), 0, tracks.f0_hz.size - 1).astype(np.int64)
    freqs = tracks.formants_hz[at]
    bandwidths = traits.bandwidth_scale * tracks.bandwidth_mult[at, None] * (40.0 + 0.05 * freqs)
    high = np.asarray(traits.high_formants_hz)[None, :]  # static: one response per utterance
    static = _cascade_response(high, traits.bandwidth_scale * (40.0 + 0.05 * high), fs, n_fft)
    # Radiation / higher-pole correction: +6 dB/oct above ~1 kHz brings the long-term
    # spectrum to that of real speech (about -20 dB at 4 kHz re 500 Hz).
    z1 = np.exp(-2j * np.pi * np.arange(n_fft // 2 + 1) / n_fft)
    static = static * ((1.0 - _EMPHASIS * z1) / (1.0 - _EMPHASIS)).astype(np.complex64)
    tract = _cascade_response(freqs, bandwidths, fs, n_fft) * static
    spectra = spectra[0] * tract + spectra[1] * _noise_shape(
        tracks.noise_centre_hz[at], tracks.noise_bandwidth_hz[at], fs, n_fft
    )
    out_frames = sp_fft.irfft(spectra, n=n_fft)
    out = np.zeros((n_frames + n_fft // hop) * hop)
    for k in range(n_fft // hop):  # overlap-add, one hop-wide slice of every frame at a time
        out[k * hop : k * hop + n_frames * hop] += out_frames[:, k * hop : (k + 1) * hop].ravel()
    return out[win_len : win_len + n] / 2.0


def _channel_sos(config: SyntheticCorpusConfig, rng: np.random.Generator) -> np.ndarray:
    """Second-order sections of a random microphone/channel: high-pass, peaking EQ, low-pass."""
    fs = config.sample_rate
    highpass = rng.uniform(*config.highpass_hz_range)
    sections = [signal.butter(2, highpass, "highpass", fs=fs, output="sos")]
    for _ in range(config.eq_bands):
        gain_db = rng.uniform(-config.eq_strength_db, config.eq_strength_db)
        centre = np.exp(rng.uniform(np.log(150.0), np.log(min(6000.0, 0.4 * fs))))
        q = rng.uniform(0.5, 2.0)
        # Peaking biquad (audio EQ cookbook form).
        amp, w0 = 10.0 ** (gain_db / 40.0), 2 * np.pi * centre / fs
        alpha = np.sin(w0) / (2 * q)
        b = np.array([1 + alpha * amp, -2 * np.cos(w0), 1 - alpha * amp])
        a = np.array([1 + alpha / amp, -2 * np.cos(w0), 1 - alpha / amp])
        sections.append(np.r_[b / a[0], a / a[0]][None, :])
    if rng.random() < config.bandlimit_probability:
        cutoff = min(rng.uniform(*config.lowpass_hz_range), 0.47 * fs)
        sections.append(signal.butter(4, cutoff, "lowpass", fs=fs, output="sos"))
    return np.concatenate(sections, axis=0)


def _coloured_noise(
    rng: np.random.Generator, n: int, fs: int, colour_range: tuple[float, float]
) -> np.ndarray:
    """Unit-power noise with power spectrum 1/f^beta, beta uniform in ``colour_range``."""
    beta = rng.uniform(*colour_range)
    n_fft = sp_fft.next_fast_len(n, real=True)
    spectrum = sp_fft.rfft(rng.standard_normal(n_fft))
    freqs = np.maximum(sp_fft.rfftfreq(n_fft, 1.0 / fs), 20.0)
    noise = sp_fft.irfft(spectrum * freqs ** (-beta / 2), n=n_fft)[:n]
    return noise / np.sqrt(np.mean(noise**2))


def _active_power(wave: np.ndarray, fs: int) -> float:
    """Mean power over 20 ms frames within 30 dB of the loudest frame."""
    frame = fs // 50
    energy = (wave[: wave.size // frame * frame].reshape(-1, frame) ** 2).mean(axis=1)
    return float(energy[energy >= energy.max() * 1e-3].mean())


def render_utterance(
    config: SyntheticCorpusConfig, traits: SpeakerTraits, utt_index: int, n: int
) -> np.ndarray:
    fs = config.sample_rate
    rng = np.random.default_rng([config.seed, _STREAM_RENDER, traits.index, utt_index])
    n_ms = int(np.ceil(n * 1000 / fs)) + 1
    tracks = _plan_utterance(traits, rng, n_ms, config.pause_probability)
    t_ms, grid = np.arange(n) * (1000.0 / fs), np.arange(n_ms)
    voicing = np.interp(t_ms, grid, tracks.voicing)
    excitation, open_phase = _glottal_source(traits, rng, np.interp(t_ms, grid, tracks.f0_hz), fs)
    breath = np.interp(t_ms, grid, tracks.aspiration) + traits.breathiness * voicing * (
        0.3 + 0.7 * open_phase
    )
    noise = rng.standard_normal((2, n))
    voiced_source = voicing * excitation + breath * noise[0]
    frication_source = np.interp(t_ms, grid, tracks.frication) * noise[1]
    speech = _short_time_filter(voiced_source, frication_source, tracks, traits, fs)

    snr_db = rng.uniform(*config.snr_db_range)
    noise_power = _active_power(speech, fs) / 10.0 ** (snr_db / 10.0)
    noisy = speech + np.sqrt(noise_power) * _coloured_noise(rng, n, fs, config.noise_colour_range)
    wave = signal.sosfilt(_channel_sos(config, rng), noisy)
    peak = rng.uniform(*config.peak_level_range)
    return (wave * (peak / np.max(np.abs(wave)))).astype(np.float32)
