"""Log-mel filterbanks and the MFCC mean+std baseline embedding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sv_kedro.audio.features import LogMelFbank, fbank, frame_lengths, mfcc_mean_std


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # Tiny tensors: extra intra-op threads only spin on a busy machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _noise(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.1


def test_shapes_and_frame_lengths() -> None:
    feats, n_frames = fbank(_noise(2, 16000), 16000, n_mels=80)
    assert feats.shape == (2, 98, 80)  # 1 + (16000 - 400) // 160
    assert n_frames.tolist() == [98, 98] and n_frames.dtype == torch.int64
    assert torch.isfinite(feats).all()
    single, _ = fbank(_noise(16000), 16000, n_mels=40)  # [time] is a batch of one
    assert single.shape == (1, 98, 40)
    assert frame_lengths(torch.tensor([399, 400, 559, 560, 16000])).tolist() == [0, 1, 1, 2, 98]


def test_mean_norm_zeroes_the_utterance_mean() -> None:
    feats, _ = fbank(_noise(3, 8000), 16000, mean_norm=True)
    assert feats.mean(dim=1).abs().max() < 1e-4
    raw, _ = fbank(_noise(3, 8000), 16000, mean_norm=False)
    assert raw.mean(dim=1).abs().max() > 1.0


def test_lengths_make_padded_and_unpadded_features_equal() -> None:
    long_wave, short_wave = _noise(12000, seed=1), _noise(7000, seed=2)
    batch = torch.zeros(2, 12000)
    batch[0], batch[1, :7000] = long_wave, short_wave
    batch[1, 7000:] = 0.7  # loud padding: it must not leak into the short row's mean
    padded, n_frames = fbank(batch, 16000, lengths=torch.tensor([12000, 7000]))
    alone_long, _ = fbank(long_wave[None], 16000)
    alone_short, short_frames = fbank(short_wave[None], 16000)
    assert n_frames.tolist() == [alone_long.shape[1], alone_short.shape[1]] == [73, 42]
    assert short_frames.tolist() == [42]
    torch.testing.assert_close(padded[0], alone_long[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(padded[1, :42], alone_short[0], atol=1e-4, rtol=1e-4)
    assert torch.all(padded[1, 42:] == 0)
    unmasked, _ = fbank(batch, 16000)  # without lengths the padding shifts the mean
    assert not torch.allclose(unmasked[1, :42], alone_short[0], atol=1e-2)


def test_fbank_is_differentiable_and_keeps_dtype_and_device() -> None:
    wave = _noise(2, 4000).double().requires_grad_(True)
    feats, _ = fbank(wave, 16000, lengths=torch.tensor([4000, 3000]))
    assert feats.dtype == torch.float64 and feats.device == wave.device
    feats.square().sum().backward()
    assert wave.grad is not None and torch.isfinite(wave.grad).all() and wave.grad.abs().sum() > 0
    silent = torch.zeros(1, 1600, requires_grad=True)  # digital silence: gradient must stay finite
    fbank(silent, 16000)[0].sum().backward()
    assert torch.isfinite(silent.grad).all()


def test_a_tone_lands_in_the_mel_band_at_its_frequency() -> None:
    t = torch.arange(16000) / 16000
    feats, _ = fbank(torch.sin(2 * torch.pi * 1000 * t)[None], 16000, n_mels=40, mean_norm=False)
    band = int(feats[0].mean(0).argmax())
    mel_1k, mel_top = 2595 * np.log10(1 + 1000 / 700), 2595 * np.log10(1 + 8000 / 700)
    mel_bottom = 2595 * np.log10(1 + 20 / 700)
    expected = (mel_1k - mel_bottom) / (mel_top - mel_bottom) * 41 - 1  # centres of 40 triangles
    assert abs(band - expected) <= 1, (band, expected)


def test_module_matches_function_and_stays_out_of_state_dict() -> None:
    module = LogMelFbank(n_mels=64, sample_rate=16000, mean_norm=True)
    wave, lengths = _noise(2, 9000), torch.tensor([9000, 6000])
    got, got_frames = module(wave, lengths)
    want, want_frames = fbank(wave, 16000, 64, lengths=lengths, mean_norm=True)
    torch.testing.assert_close(got, want)
    assert torch.equal(got_frames, want_frames)
    assert dict(module.state_dict()) == {}
    assert module.double()(wave.double())[0].dtype == torch.float64


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="shorter than one 400-sample window"):
        fbank(_noise(1, 300), 16000)
    with pytest.raises(ValueError, match=r"\[batch, time\]"):
        fbank(_noise(1, 2, 800), 16000)
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        fbank(_noise(2, 800), 16000, lengths=torch.tensor([800, 100]))
    with pytest.raises(ValueError, match="lengths must be"):
        fbank(_noise(2, 800), 16000, lengths=torch.tensor([800]))


def test_mfcc_mean_std_shape_and_level_invariance() -> None:
    wave = _noise(24000, seed=3).numpy()
    wave[8000:16000] *= 5.0  # some dynamics, so std is not flat
    emb = mfcc_mean_std(wave, 16000, n_mfcc=30)
    assert emb.shape == (60,) and emb.dtype == np.float32 and np.all(np.isfinite(emb))
    assert np.all(emb[30:] >= 0) and emb[30:].max() > 0.05
    # c0 is left out, so a gain change (a constant log-mel shift) leaves the embedding alone.
    np.testing.assert_allclose(mfcc_mean_std(0.25 * wave), emb, atol=1e-3)
    with pytest.raises(ValueError, match="mono"):
        mfcc_mean_std(np.zeros((100, 2), dtype=np.float32))
