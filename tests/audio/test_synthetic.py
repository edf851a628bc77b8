"""The generated corpus: determinism, independence, bounds, speaker identity, learnability."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch

from sv_kedro.audio.features import mfcc_mean_std
from sv_kedro.audio.synthetic import SyntheticCorpus, SyntheticCorpusConfig
from sv_kedro.scoring.metrics import compute_eer

SMALL = SyntheticCorpusConfig(
    n_speakers=3, utterances_per_speaker=3, seed=5, min_duration_s=1.0, max_duration_s=2.0
)
CLEAN = dataclasses.replace(
    SMALL,
    n_speakers=6,
    utterances_per_speaker=2,
    snr_db_range=(45.0, 45.0),
    eq_strength_db=0.0,
    bandlimit_probability=0.0,
)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # Per-utterance features are tiny; extra intra-op threads only spin on a busy machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small() -> SyntheticCorpus:
    return SyntheticCorpus(SMALL)


@pytest.fixture(scope="module")
def small_waves(small: SyntheticCorpus) -> dict[str, np.ndarray]:
    return {utt.utt_id: small.render(utt.utt_id) for utt in small.utterances()}


def test_utterance_list_ids_and_durations(small: SyntheticCorpus) -> None:
    utts = small.utterances()
    assert len(utts) == len(small) == 9
    assert [u.utt_id for u in utts[:2]] == ["spk000/utt000.wav", "spk000/utt001.wav"]
    assert all(re.fullmatch(r"spk\d{3}/utt\d{3}\.wav", u.utt_id) for u in utts)
    assert all(u.utt_id.startswith(u.speaker + "/") for u in utts)
    assert all(SMALL.min_duration_s <= u.duration <= SMALL.max_duration_s for u in utts)
    assert all(u.num_frames == round(u.duration * SMALL.sample_rate) for u in utts)
    assert len({u.duration for u in utts}) == len(utts)  # durations vary
    assert {u.gender for u in utts} <= {"m", "f"}


def test_render_is_deterministic_and_seed_dependent(small_waves: dict[str, np.ndarray]) -> None:
    again = SyntheticCorpus(SMALL)
    utt_id = "spk001/utt002.wav"
    assert again.render(utt_id).tobytes() == small_waves[utt_id].tobytes()
    other = SyntheticCorpus(dataclasses.replace(SMALL, seed=6))
    assert other.speakers()[1] != again.speakers()[1]
    other_wave = other.render(utt_id)
    n = min(other_wave.size, small_waves[utt_id].size)
    assert not np.allclose(other_wave[:n], small_waves[utt_id][:n])


def test_render_does_not_depend_on_order(small_waves: dict[str, np.ndarray]) -> None:
    fresh = SyntheticCorpus(SMALL)
    for utt_id in reversed(list(small_waves)):
        assert fresh.render(utt_id).tobytes() == small_waves[utt_id].tobytes(), utt_id


def test_waves_have_right_length_and_level(
    small: SyntheticCorpus, small_waves: dict[str, np.ndarray]
) -> None:
    low, high = SMALL.peak_level_range
    for utt in small.utterances():
        wave = small_waves[utt.utt_id]
        assert wave.dtype == np.float32 and wave.shape == (utt.num_frames,)
        assert np.all(np.isfinite(wave))
        peak = float(np.abs(wave).max())
        assert low - 1e-6 <= peak <= high + 1e-6 < 1.0  # never clipped
        assert np.sqrt(np.mean(wave.astype(np.float64) ** 2)) > 0.02 * peak  # never silent


def test_same_speaker_utterances_are_not_near_identical(small_waves: dict[str, np.ndarray]) -> None:
    first, second = small_waves["spk000/utt000.wav"], small_waves["spk000/utt001.wav"]
    n = min(first.size, second.size)
    assert abs(np.corrcoef(first[:n], second[:n])[0, 1]) < 0.2
    a, b = mfcc_mean_std(first), mfcc_mean_std(second)
    assert np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) < 0.999
    assert not np.allclose(a, b, rtol=0.02, atol=0.02)


def test_speaker_traits_do_not_depend_on_corpus_size() -> None:
    big = SyntheticCorpus(dataclasses.replace(SMALL, n_speakers=5, utterances_per_speaker=7))
    assert big.speakers()[:3] == SyntheticCorpus(SMALL).speakers()
    assert big.speaker("spk002") == big.speakers()[2]


def _median_f0(wave: np.ndarray, sample_rate: int) -> float:
    """Median autocorrelation F0 over the loudest (voiced) 40 ms frames."""
    frame, hop = int(0.04 * sample_rate), int(0.01 * sample_rate)
    frames = np.lib.stride_tricks.sliding_window_view(wave.astype(np.float64), frame)[::hop]
    energy = (frames**2).sum(1)
    frames = frames[energy > np.quantile(energy, 0.7)]
    frames = (frames - frames.mean(1, keepdims=True)) * np.hanning(frame)
    spectrum = np.fft.rfft(frames, 2 * frame)
    acf = np.fft.irfft(np.abs(spectrum) ** 2)[:, :frame]
    lo, hi = sample_rate // 400, sample_rate // 60
    lags = lo + np.argmax(acf[:, lo:hi], axis=1)
    return float(np.median(sample_rate / lags))


def test_speaker_f0_trait_is_stable_across_utterances() -> None:
    corpus = SyntheticCorpus(CLEAN)
    estimates = {
        t.speaker: [_median_f0(corpus.render(f"{t.speaker}/utt{j:03d}.wav"), 16000) for j in (0, 1)]
        for t in corpus.speakers()
    }
    for traits in corpus.speakers():
        first, second = estimates[traits.speaker]
        assert abs(np.log(first / second)) < np.log(1.25), (traits.speaker, first, second)
        assert abs(np.log(first / traits.f0_median_hz)) < np.log(1.35), (traits, first)
    trait_f0 = [t.f0_median_hz for t in corpus.speakers()]
    measured = [np.mean(estimates[t.speaker]) for t in corpus.speakers()]
    assert np.corrcoef(trait_f0, measured)[0, 1] > 0.8


def test_mfcc_cosine_learns_but_does_not_solve_a_small_corpus() -> None:
    corpus = SyntheticCorpus(
        SyntheticCorpusConfig(n_speakers=8, utterances_per_speaker=6, seed=3, max_duration_s=3.0)
    )
    utts = corpus.utterances()
    emb = np.stack([mfcc_mean_std(corpus.render(u.utt_id)) for u in utts])
    emb -= emb.mean(0)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    first, second = np.triu_indices(len(utts), k=1)
    speakers = np.array([u.speaker for u in utts])
    labels = speakers[first] == speakers[second]
    eer = compute_eer(np.einsum("nd,nd->n", emb[first], emb[second]), labels)
    assert 0.0 < eer < 0.4, eer


def test_bad_config_and_unknown_ids_raise_clear_errors(small: SyntheticCorpus) -> None:
    with pytest.raises(ValueError, match="min_duration_s"):
        SyntheticCorpusConfig(min_duration_s=3.0, max_duration_s=2.0)
    with pytest.raises(ValueError, match="snr_db_range"):
        SyntheticCorpusConfig(snr_db_range=(30.0, 10.0))
    with pytest.raises(ValueError, match="n_speakers"):
        SyntheticCorpusConfig(n_speakers=0)
    assert SyntheticCorpusConfig(snr_db_range=[5, 20]).snr_db_range == (5.0, 20.0)  # YAML list
    assert SyntheticCorpusConfig.from_dict({"n_speakers": 2}).n_speakers == 2
    with pytest.raises(ValueError, match="n_speaker"):
        SyntheticCorpusConfig.from_dict({"n_speaker": 2})
    with pytest.raises(KeyError, match=re.escape("spk009/utt000.wav")):
        small.render("spk009/utt000.wav")
    with pytest.raises(KeyError, match="spk042"):
        small.speaker("spk042")
