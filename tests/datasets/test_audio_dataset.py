"""AudioDataset: wav/flac round trips, m4a decoding, partial/mono/resampled loads, previews,
and use inside a kedro PartitionedDataset."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from kedro.io import DatasetError, Version
from kedro_datasets.partitions import PartitionedDataset
from matplotlib import image as mpimg

from sv_kedro.datasets import AudioDataset

RATE = 16000


def _tone(freq: float, seconds: float = 0.5, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.argmax(spectrum) * rate / len(wave))


def test_wav_round_trip_pcm16_and_float(tmp_path):
    wave = _tone(440.0)
    pcm = AudioDataset(filepath=str(tmp_path / "pcm.wav"))
    pcm.save((wave, RATE))
    loaded, rate = pcm.load()
    assert rate == RATE and loaded.dtype == np.float32 and loaded.shape == wave.shape
    assert np.abs(loaded - wave).max() <= 1.0 / 32768 + 1e-7

    exact = AudioDataset(filepath=str(tmp_path / "float.wav"), save_args={"subtype": "FLOAT"})
    exact.save((wave, RATE))
    np.testing.assert_array_equal(exact.load()[0], wave)


def test_flac_stereo_round_trip_and_load_args(tmp_path):
    stereo = np.stack([_tone(300.0), _tone(1000.0)], axis=1)  # [time, 2]
    path = tmp_path / "spk" / "utt.flac"
    AudioDataset(filepath=str(path)).save((stereo, RATE))
    loaded, rate = AudioDataset(filepath=str(path)).load()
    assert loaded.shape == stereo.shape and rate == RATE
    np.testing.assert_allclose(loaded, stereo, atol=1.0 / 32768 + 1e-7)

    part, _ = AudioDataset(filepath=str(path), load_args={"offset": 100, "frames": 50}).load()
    np.testing.assert_array_equal(part, loaded[100:150])

    mono, mono_rate = AudioDataset(
        filepath=str(path), load_args={"mono": True, "sample_rate": 8000}
    ).load()
    assert mono.ndim == 1 and mono_rate == 8000 and len(mono) == len(stereo) // 2
    spectrum = np.abs(np.fft.rfft(mono))
    top_two = sorted(np.argsort(spectrum)[-2:] * 8000 / len(mono))
    assert top_two == [pytest.approx(300.0, abs=5.0), pytest.approx(1000.0, abs=5.0)]


def test_m4a_is_decoded_but_not_written(tmp_path):
    import av

    wave = _tone(440.0, seconds=1.0)
    path = tmp_path / "clip.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(wave[None, :], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = RATE, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)

    dataset = AudioDataset(filepath=str(path))
    loaded, rate = dataset.load()
    assert rate == RATE and loaded.ndim == 1
    assert abs(len(loaded) - len(wave)) < 2048  # AAC pads to whole 1024-sample frames
    assert _peak_hz(loaded, rate) == pytest.approx(440.0, abs=3.0)
    with pytest.raises(DatasetError, match=r"clip\.m4a: cannot save '\.m4a' audio"):
        dataset.save((wave, RATE))


def test_missing_file_and_bad_data_give_clear_errors(tmp_path):
    missing = tmp_path / "nowhere" / "x.wav"
    with pytest.raises(DatasetError, match=r"nowhere/x\.wav: audio file not found"):
        AudioDataset(filepath=str(missing)).load()
    dataset = AudioDataset(filepath=str(tmp_path / "y.wav"))
    with pytest.raises(DatasetError, match=r"looks like \[channels, time\]"):
        dataset.save((np.zeros((2, 4000), dtype=np.float32), RATE))
    with pytest.raises(DatasetError, match="NaN or inf"):
        dataset.save((np.full(100, np.nan, dtype=np.float32), RATE))
    with pytest.raises(DatasetError, match="sample_rate must be a positive int"):
        dataset.save((np.zeros(100, dtype=np.float32), 0))
    with pytest.raises(DatasetError, match=r"unknown load_args \['gain'\]"):
        AudioDataset(filepath=str(tmp_path / "y.wav"), load_args={"gain": 2})
    assert not (tmp_path / "y.wav").exists()


def test_preview_is_a_decodable_png(tmp_path):
    dataset = AudioDataset(filepath=str(tmp_path / "stereo.wav"))
    dataset.save((np.stack([_tone(200.0, 2.0), _tone(800.0, 2.0)], axis=1), RATE))
    preview = dataset.preview(max_seconds=1.0, n_mels=40)
    png = base64.b64decode(preview)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = mpimg.imread(io.BytesIO(png), format="png")
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 200
    assert pixels[..., :3].std() > 0.05  # something was drawn
    assert type(dataset).preview.__annotations__["return"] == "ImagePreview"


def test_versioned_and_in_memory_filesystem(tmp_path):
    versioned = AudioDataset(filepath=str(tmp_path / "v.wav"), version=Version(None, None))
    versioned.save((_tone(500.0), RATE))
    assert versioned.exists()
    assert (tmp_path / "v.wav").is_dir()  # versions live in v.wav/<timestamp>/v.wav
    assert _peak_hz(versioned.load()[0], RATE) == pytest.approx(500.0, abs=3.0)

    remote = AudioDataset(filepath="memory://audio-test/clip.flac")
    remote.save((_tone(700.0), RATE))
    assert remote.exists()
    assert _peak_hz(remote.load()[0], RATE) == pytest.approx(700.0, abs=3.0)
    assert base64.b64decode(remote.preview())[:4] == b"\x89PNG"


def test_partitioned_dataset_saves_lazily_and_loads_back(tmp_path):
    root = tmp_path / "corpus"
    corpus = PartitionedDataset(
        path=str(root), dataset="sv_kedro.datasets.AudioDataset", filename_suffix=".wav"
    )
    freqs = {"spk001/utt001": 300.0, "spk001/utt002": 400.0, "spk002/utt001": 500.0}
    generated: list[str] = []

    def generator(partition_id: str):
        def make() -> tuple[np.ndarray, int]:
            # Lazy saving writes each partition before the next one is generated.
            earlier = sorted(freqs)[: sorted(freqs).index(partition_id)]
            assert all((root / f"{p}.wav").is_file() for p in earlier)
            generated.append(partition_id)
            return _tone(freqs[partition_id]), RATE

        return make

    corpus.save({pid: generator(pid) for pid in freqs})
    assert generated == sorted(freqs)
    assert (root / "spk002" / "utt001.wav").is_file()

    loaded = PartitionedDataset(
        path=str(root), dataset="sv_kedro.datasets.AudioDataset", filename_suffix=".wav"
    ).load()
    assert sorted(loaded) == sorted(freqs)
    for pid, load in loaded.items():
        wave, rate = load()
        assert rate == RATE
        assert _peak_hz(wave, rate) == pytest.approx(freqs[pid], abs=3.0)
