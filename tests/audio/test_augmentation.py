"""On-the-fly augmentation: SNRs, babble, reverb, RIR cache, determinism, MUSAN layout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from sv_kedro.audio.augmentation import (
    AugmentationConfig,
    Augmenter,
    mix_at_snr,
    speed_perturb,
    speed_perturbed_label,
)
from sv_kedro.audio.noise_sources import BabbleSource, NoiseBank
from sv_kedro.audio.rir import RirBank, prepare_rir, reverberate
from sv_kedro.corpus.shard_access import ShardAudioReader
from sv_kedro.corpus.shards import ShardError, write_webdataset_shards

RATE = 16000
SPEAKER_TONES = {f"spk{k}": 300.0 + 100.0 * k for k in range(6)}


def _snr_db(clean: np.ndarray, augmented: np.ndarray) -> float:
    added = augmented.astype(np.float64) - clean
    return 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(added**2))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """MUSAN-like folders with noise and music, and a corpus of speakers who each hum one tone."""
    root = tmp_path_factory.mktemp("aug")
    rng = np.random.default_rng(0)
    (root / "musan/noise/free").mkdir(parents=True)
    (root / "musan/music/fma").mkdir(parents=True)
    sf.write(root / "musan/noise/free/white.wav", 0.1 * rng.standard_normal(20 * RATE), RATE)
    sf.write(root / "musan/noise/free/hum8k.wav", 0.2 * rng.standard_normal(8000 * 3), 8000)
    t = np.arange(10 * RATE) / RATE
    sf.write(root / "musan/music/fma/chord.flac", 0.3 * np.sin(2 * np.pi * 440 * t), RATE)
    rows = []
    for speaker, tone in SPEAKER_TONES.items():
        for utt in range(2):
            path = root / "corpus" / speaker / f"u{utt}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            frames = (3 + utt) * RATE
            sf.write(path, 0.5 * np.sin(2 * np.pi * tone * np.arange(frames) / RATE), RATE)
            rows.append(
                {
                    "utt_id": f"{speaker}/u{utt}.wav",
                    "speaker": speaker,
                    "path": str(path),
                    "num_frames": frames,
                    "sample_rate": RATE,
                }
            )
    return root, pd.DataFrame(rows)


def _speech(seed: int = 0, seconds: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.shape)).astype(
        np.float32
    )


def _only(option: str, **kwargs) -> AugmentationConfig:
    return AugmentationConfig(weights={option: 1.0}, **kwargs)


def test_musan_layout_and_partial_noise_reads(corpus, monkeypatch):
    root, _ = corpus
    bank = NoiseBank.from_musan(root / "musan")
    assert bank.categories == ["music", "noise"] and bank.count("noise") == 2
    frames_read: list[int] = []
    original_read = sf.SoundFile.read

    def counting_read(self, *args, **kwargs):
        data = original_read(self, *args, **kwargs)
        frames_read.append(len(data))
        return data

    monkeypatch.setattr(sf.SoundFile, "read", counting_read)
    for seed in range(6):
        crop = bank.sample("noise", RATE, np.random.default_rng(seed), RATE)
        assert crop.shape == (RATE,) and np.isfinite(crop).all()
    # white.wav holds 20 s; hum8k.wav (8 kHz) needs 8000 frames for 1 s at 16 kHz
    assert set(frames_read) <= {RATE, 8000} and max(frames_read) < 0.1 * 20 * RATE
    with pytest.raises(FileNotFoundError, match="not a MUSAN folder"):
        NoiseBank.from_musan(root / "corpus")


@pytest.mark.parametrize(("option", "snr_range"), [("noise", (0.0, 15.0)), ("music", (5.0, 15.0))])
def test_noise_and_music_snr_within_paper_ranges(corpus, option, snr_range):
    root, _ = corpus
    augmenter = Augmenter(_only(option), noise_bank=NoiseBank.from_musan(root / "musan"))
    clean = _speech()
    snrs = []
    for seed in range(12):
        augmented, chosen = augmenter.augment(clean, np.random.default_rng(seed))
        assert chosen == option and augmented.shape == clean.shape
        snrs.append(_snr_db(clean, augmented))
    assert snr_range[0] - 1e-3 <= min(snrs) and max(snrs) <= snr_range[1] + 1e-3
    assert max(snrs) - min(snrs) > 2.0  # drawn, not fixed


def test_babble_uses_three_to_eight_other_speakers(corpus):
    _, manifest = corpus
    source = BabbleSource.from_manifest(manifest)
    excluded = "spk2"
    for seed in range(5):
        babble, used = source.sample(2 * RATE, np.random.default_rng(seed), 4, excluded, RATE)
        assert used == 4
        spectrum = np.abs(np.fft.rfft(babble))
        freqs = np.fft.rfftfreq(babble.shape[0], 1 / RATE)
        at = {spk: spectrum[np.argmin(np.abs(freqs - tone))] for spk, tone in SPEAKER_TONES.items()}
        present = [spk for spk, level in at.items() if level > 0.1 * max(at.values())]
        assert excluded not in present and len(present) == 4
    # 5 other speakers exist: asking for 8 gives all 5
    assert source.sample(RATE, np.random.default_rng(0), 8, excluded, RATE)[1] == 5
    augmenter = Augmenter(_only("babble"), babble_source=source)
    clean = _speech()
    snrs = [_snr_db(clean, augmenter(clean, np.random.default_rng(s), excluded)) for s in range(10)]
    assert 13.0 - 1e-3 <= min(snrs) and max(snrs) <= 20.0 + 1e-3


def test_babble_from_shards_equals_babble_from_the_files(corpus, tmp_path):
    """With shards, babble reads its crops by utt_id: the files' babble sample for sample
    (16-bit audio is stored losslessly), with the files gone."""
    _, manifest = corpus
    write_webdataset_shards(manifest, tmp_path / "shards", utterances_per_shard=5, seed=1)
    from_files = BabbleSource.from_manifest(manifest)
    copy = manifest.assign(path=[str(tmp_path / f"gone{i}.wav") for i in range(len(manifest))])
    from_shards = BabbleSource.from_manifest(copy, ShardAudioReader(tmp_path / "shards"))
    for seed in range(4):
        expected, used = from_files.sample(RATE, np.random.default_rng(seed), 3, "spk1", RATE)
        got, used_too = from_shards.sample(RATE, np.random.default_rng(seed), 3, "spk1", RATE)
        assert used == used_too == 3
        np.testing.assert_allclose(got, expected, atol=1e-6)
    stranger = copy.assign(utt_id=["spk9/x.wav", *copy.utt_id[1:]])
    with pytest.raises(ShardError, match=r"do not hold 1 of the 12 babble utterances.*spk9/x\.wav"):
        BabbleSource.from_manifest(stranger, ShardAudioReader(tmp_path / "shards"))


def test_reverb_keeps_length_and_direct_path():
    rir = prepare_rir(np.array([0.1, 0.0, 2.0, 0.4, -0.2], dtype=np.float32))
    assert rir.direct_index == 2 and rir.taps[2] == 1.0
    impulse = np.zeros(50, dtype=np.float32)
    impulse[10] = 1.0
    wet = reverberate(impulse, rir)
    assert wet.shape == impulse.shape
    np.testing.assert_allclose(wet[[8, 10, 11, 12]], [0.05, 1.0, 0.2, -0.1], atol=1e-6)
    speech = _speech()
    augmenter = Augmenter(_only("reverb"), rir_bank=RirBank.simulated(4, RATE, seed=1))
    assert augmenter(speech, np.random.default_rng(0)).shape == speech.shape


def test_simulated_rir_bank_cache_is_reused(tmp_path):
    cache = tmp_path / "rirs.npz"
    first = RirBank.load_or_simulate(cache, count=5, rt60_range=(0.3, 0.6), seed=3)
    stamp = cache.stat().st_mtime_ns
    again = RirBank.load_or_simulate(cache, count=5, rt60_range=(0.3, 0.6), seed=3)
    assert not first.from_cache and again.from_cache and cache.stat().st_mtime_ns == stamp
    for k in range(5):
        np.testing.assert_array_equal(first.get(k).taps, again.get(k).taps)
        assert first.get(k).direct_index == again.get(k).direct_index
    changed = RirBank.load_or_simulate(cache, count=5, rt60_range=(0.3, 0.6), seed=4)
    assert not changed.from_cache
    taps = changed.get(0).taps
    # the tail decays: the last tenth holds far less energy than the first tenth
    tenth = taps.shape[0] // 10
    assert np.sum(taps[-tenth:] ** 2) < 0.01 * np.sum(taps[:tenth] ** 2)


def test_augmentation_deterministic_per_rng(corpus):
    root, manifest = corpus
    augmenter = Augmenter(
        AugmentationConfig(),
        noise_bank=NoiseBank.from_musan(root / "musan"),
        rir_bank=RirBank.simulated(3, RATE, seed=0),
        babble_source=BabbleSource.from_manifest(manifest),
    )
    clean = _speech(seconds=1.0)
    outputs = [augmenter.augment(clean, np.random.default_rng(s), "spk0") for s in range(12)]
    repeats = [augmenter.augment(clean, np.random.default_rng(s), "spk0") for s in range(12)]
    for (wave, option), (again, option_again) in zip(outputs, repeats, strict=True):
        assert option == option_again
        np.testing.assert_array_equal(wave, again)
    assert len({option for _, option in outputs}) >= 4
    assert not np.array_equal(outputs[0][0], outputs[1][0]) or outputs[0][1] == "none"


def test_missing_resources_and_bad_config_are_clear(corpus):
    root, _ = corpus
    noise_only = NoiseBank.from_folder(root / "musan/noise", "noise")
    with pytest.raises(ValueError, match=r"'music'.*no 'music' files"):
        Augmenter(_only("music"), noise_bank=noise_only)
    with pytest.raises(ValueError, match="no rir_bank"):
        Augmenter(_only("reverb+noise"), noise_bank=noise_only)
    with pytest.raises(ValueError, match="unknown augmentation option"):
        AugmentationConfig(weights={"echo": 1.0})
    with pytest.raises(ValueError, match="unknown augmentation parameter"):
        AugmentationConfig.from_dict({"snr": [0, 5]})
    config = AugmentationConfig.from_dict({"weights": {"none": 1.0}, "speed_factors": [0.9, 1.1]})
    assert config.speed_factors == (0.9, 1.1)


def test_speed_perturbation_and_label_remap():
    wave = _speech(seconds=1.0)
    assert abs(speed_perturb(wave, 1.1).shape[0] - RATE / 1.1) < 1
    assert abs(speed_perturb(wave, 0.9).shape[0] - RATE / 0.9) < 1
    factors = (0.9, 1.0, 1.1)
    assert [speed_perturbed_label(3, f, factors, 10) for f in factors] == [13, 3, 23]
    with pytest.raises(ValueError, match="not one of"):
        speed_perturbed_label(3, 1.2, factors, 10)


def test_mix_at_snr_exact():
    speech, noise = _speech(1), np.random.default_rng(2).standard_normal(2 * RATE)
    assert _snr_db(speech, mix_at_snr(speech, noise.astype(np.float32), 7.5)) == pytest.approx(
        7.5, abs=1e-3
    )


@pytest.mark.shared_data
def test_real_rirs_and_noise(shared_data):
    rirs = RirBank.from_folder(shared_data / "rir")
    impulse = np.zeros(RATE, dtype=np.float32)
    impulse[100] = 1.0
    for index in range(len(rirs)):
        wet = reverberate(impulse, rirs.get(index))
        # the direct path keeps the dry level and timing; reflections come after it
        assert wet.shape == impulse.shape and wet[100] == pytest.approx(1.0)
        assert np.abs(wet[:100]).max() <= 1.0 and np.abs(wet[101:]).max() <= 1.0
    bank = NoiseBank.from_folder(shared_data / "noise", "noise")
    augmenter = Augmenter(_only("noise"), noise_bank=bank, rir_bank=rirs)
    clean = _speech(seconds=3.0)
    for seed in range(4):
        snr = _snr_db(clean, augmenter(clean, np.random.default_rng(seed)))
        assert -1e-3 <= snr <= 15.0 + 1e-3
