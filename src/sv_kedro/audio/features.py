"""Acoustic features: log-mel filterbanks (torch, differentiable) and MFCC statistics.

Framing follows the Kaldi convention: 25 ms windows every 10 ms, no centre padding, so a
signal of ``n`` samples has ``1 + (n - win) // hop`` frames and every frame lies wholly
inside the signal. That is what makes padded batches exact: the valid frames of a padded
utterance are computed from the same samples as the frames of the unpadded one, and with
``lengths`` the mean normalisation only averages those frames.

Each frame has its DC removed, is pre-emphasised (within the frame, first sample against
itself), Hamming-windowed, and its power spectrum is pooled by an HTK-style triangular mel
filterbank from ``torchaudio.functional.melscale_fbanks``; the log is floored.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torchaudio.functional as taf
from torch import Tensor, nn

__all__ = ["LogMelFbank", "fbank", "frame_lengths", "mfcc_mean_std"]

LOG_FLOOR = 1e-6  # mel-power floor: keeps log(0) finite; a full-scale frame is ~1e4


def _frame_sizes(sample_rate: int, win_ms: float, hop_ms: float) -> tuple[int, int, int]:
    win = round(sample_rate * win_ms / 1000)
    hop = round(sample_rate * hop_ms / 1000)
    if win < 2 or hop < 1:
        raise ValueError(f"window {win_ms} ms / hop {hop_ms} ms too short at {sample_rate} Hz")
    n_fft = 1 << (win - 1).bit_length()
    return win, hop, n_fft


def _frame_count(lengths: Tensor, win: int, hop: int) -> Tensor:
    lengths = lengths.long()
    return torch.where(lengths >= win, 1 + torch.div(lengths - win, hop, rounding_mode="floor"), 0)


def frame_lengths(
    lengths: Tensor, sample_rate: int = 16000, win_ms: float = 25.0, hop_ms: float = 10.0
) -> Tensor:
    """Whole frames ``[batch]`` in signals of ``lengths [batch]`` samples (0 if too short)."""
    win, hop, _ = _frame_sizes(sample_rate, win_ms, hop_ms)
    return _frame_count(lengths, win, hop)


@functools.lru_cache(maxsize=16)
def _cpu_mel_matrix(
    n_fft: int, n_mels: int, sample_rate: int, f_min: float, f_max: float
) -> Tensor:
    # Building the filterbank costs more than filtering a 3 s utterance: build it once.
    return taf.melscale_fbanks(n_fft // 2 + 1, f_min, f_max, n_mels, sample_rate, mel_scale="htk")


def _mel_matrix(
    n_fft: int,
    n_mels: int,
    sample_rate: int,
    f_min: float,
    f_max: float | None,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """Triangular HTK mel filterbank ``[n_fft // 2 + 1, n_mels]`` (read-only, may be shared)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= {sample_rate / 2} Hz, got {f_min}, {f_max}")
    matrix = _cpu_mel_matrix(n_fft, n_mels, sample_rate, float(f_min), float(f_max))
    return matrix.to(device=device, dtype=dtype)


def _check_batch(wave: Tensor, lengths: Tensor | None, win: int) -> tuple[Tensor, Tensor | None]:
    if wave.dim() == 1:
        wave = wave.unsqueeze(0)
    if wave.dim() != 2:
        raise ValueError(f"fbank: wave must be [batch, time] or [time], got {tuple(wave.shape)}")
    if wave.shape[1] < win:
        raise ValueError(f"fbank: {wave.shape[1]} samples is shorter than one {win}-sample window")
    if not wave.is_floating_point() or wave.dtype in (torch.float16, torch.bfloat16):
        wave = wave.float()  # FFTs need float32/64
    if lengths is None:
        return wave, None
    lengths = torch.as_tensor(lengths, device=wave.device).long()
    if lengths.shape != (wave.shape[0],):
        raise ValueError(
            f"fbank: lengths must be [batch={wave.shape[0]}], got {tuple(lengths.shape)}"
        )
    bad = torch.nonzero((lengths < win) | (lengths > wave.shape[1])).flatten().tolist()
    if bad:
        raise ValueError(
            f"fbank: lengths of batch rows {bad} ({lengths[bad].tolist()} samples) must lie in "
            f"[{win}, {wave.shape[1]}] (one window .. padded length)"
        )
    return wave, lengths


def _log_mel(
    wave: Tensor, window: Tensor, mel: Tensor, hop: int, n_fft: int, preemphasis: float
) -> Tensor:
    frames = wave.unfold(-1, window.numel(), hop)  # [batch, frames, win]
    frames = frames - frames.mean(dim=-1, keepdim=True)
    if preemphasis:
        frames = torch.cat(
            [frames[..., :1] * (1 - preemphasis), frames[..., 1:] - preemphasis * frames[..., :-1]],
            dim=-1,
        )
    spectrum = torch.fft.rfft(frames * window, n=n_fft)
    # real^2 + imag^2 rather than abs()**2: abs has no gradient at 0 (digital silence).
    power = spectrum.real.square() + spectrum.imag.square()
    return torch.log((power @ mel).clamp_min(LOG_FLOOR))  # [batch, frames, n_mels]


def _mean_normalise(feats: Tensor, n_frames: Tensor | None) -> Tensor:
    if n_frames is None:
        return feats - feats.mean(dim=1, keepdim=True)
    valid = torch.arange(feats.shape[1], device=feats.device)[None, :] < n_frames[:, None]
    valid = valid.unsqueeze(-1).to(feats.dtype)
    mean = (feats * valid).sum(dim=1, keepdim=True) / n_frames[:, None, None].to(feats.dtype)
    return (feats - mean) * valid  # padding frames set to 0


def fbank(
    wave: Tensor,
    sample_rate: int = 16000,
    n_mels: int = 80,
    *,
    lengths: Tensor | None = None,
    mean_norm: bool = True,
    win_ms: float = 25.0,
    hop_ms: float = 10.0,
    f_min: float = 20.0,
    f_max: float | None = None,
    preemphasis: float = 0.97,
) -> tuple[Tensor, Tensor]:
    """Log-mel filterbank of a batch of waveforms, on the input's device, differentiable.

    Args:
        wave: ``[batch, time]`` (or ``[time]``, treated as a batch of one), padded at the end.
        lengths: valid samples per row ``[batch]``; frames beyond a row's length are padding:
            left out of its mean and set to 0 after mean normalisation.
        mean_norm: subtract each utterance's mean over its valid frames (cepstral mean norm).

    Returns:
        ``(features [batch, frames, n_mels], frame_lengths [batch] int64)``.
    """
    win, hop, n_fft = _frame_sizes(sample_rate, win_ms, hop_ms)
    window = torch.hamming_window(win, periodic=False)
    mel = _mel_matrix(n_fft, n_mels, sample_rate, f_min, f_max, torch.device("cpu"), torch.float32)
    return _features(wave, lengths, window, mel, hop, n_fft, preemphasis, mean_norm)


def _features(
    wave: Tensor,
    lengths: Tensor | None,
    window: Tensor,
    mel: Tensor,
    hop: int,
    n_fft: int,
    preemphasis: float,
    mean_norm: bool,
) -> tuple[Tensor, Tensor]:
    """Shared body of ``fbank`` and ``LogMelFbank``: checks, log-mel, lengths, mean norm."""
    win = window.numel()
    wave, lengths = _check_batch(wave, lengths, win)
    window = window.to(device=wave.device, dtype=wave.dtype)
    mel = mel.to(device=wave.device, dtype=wave.dtype)
    feats = _log_mel(wave, window, mel, hop, n_fft, preemphasis)
    if lengths is None:
        n_frames = None
    else:
        n_frames = _frame_count(lengths, win, hop)
    if mean_norm:
        feats = _mean_normalise(feats, n_frames)
    if n_frames is None:
        n_frames = torch.full(
            (feats.shape[0],), feats.shape[1], dtype=torch.long, device=feats.device
        )
    return feats, n_frames


class LogMelFbank(nn.Module):
    """``fbank`` as a model's front end; window and mel matrix are non-persistent buffers.

    ``forward(wave [batch, time], lengths [batch] | None) -> (features [batch, frames, n_mels],
    frame_lengths [batch])``. The buffers follow ``.to(device)`` and stay out of the
    state dict, so checkpoints do not depend on the front end's settings.
    """

    def __init__(
        self,
        n_mels: int = 80,
        sample_rate: int = 16000,
        mean_norm: bool = True,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        f_min: float = 20.0,
        f_max: float | None = None,
        preemphasis: float = 0.97,
    ) -> None:
        super().__init__()
        self.n_mels, self.sample_rate, self.mean_norm = n_mels, sample_rate, mean_norm
        self.win_ms, self.hop_ms, self.preemphasis = win_ms, hop_ms, preemphasis
        self.win, self.hop, self.n_fft = _frame_sizes(sample_rate, win_ms, hop_ms)
        self.register_buffer(
            "window", torch.hamming_window(self.win, periodic=False), persistent=False
        )
        mel = _mel_matrix(
            self.n_fft, n_mels, sample_rate, f_min, f_max, torch.device("cpu"), torch.float32
        )
        self.register_buffer("mel", mel.clone(), persistent=False)  # own copy, not the cache

    def forward(self, wave: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return _features(
            wave,
            lengths,
            self.window,
            self.mel,
            self.hop,
            self.n_fft,
            self.preemphasis,
            self.mean_norm,
        )

    def extra_repr(self) -> str:
        return (
            f"n_mels={self.n_mels}, sample_rate={self.sample_rate}, mean_norm={self.mean_norm}, "
            f"win={self.win}, hop={self.hop}, n_fft={self.n_fft}"
        )


def mfcc_mean_std(
    wave: np.ndarray, sample_rate: int = 16000, n_mfcc: int = 30, n_mels: int = 40
) -> np.ndarray:
    """Classic baseline embedding: mean and std over frames of MFCCs, ``[2 * n_mfcc]`` float32.

    MFCCs are the orthonormal DCT-II (``torchaudio.functional.create_dct``) of the
    ``n_mels``-band log-mel filterbank above, without mean normalisation (the mean is half
    the embedding). Coefficients c1..c{n_mfcc} are kept and c0 is left out: c0 is the frame
    log energy, so its mean measures recording level, a channel nuisance that would
    otherwise dominate a cosine score.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"mfcc_mean_std: wave must be mono [time], got shape {wave.shape}")
    if not 1 <= n_mfcc < n_mels:
        raise ValueError(f"mfcc_mean_std: need 1 <= n_mfcc < n_mels, got {n_mfcc} and {n_mels}")
    with torch.no_grad():
        log_mel, _ = fbank(torch.from_numpy(wave)[None], sample_rate, n_mels, mean_norm=False)
        dct = taf.create_dct(n_mfcc + 1, n_mels, norm="ortho")[:, 1:]  # drop c0
        cepstra = log_mel[0] @ dct  # [frames, n_mfcc]
        stats = torch.cat([cepstra.mean(dim=0), cepstra.std(dim=0, unbiased=False)])
    return stats.numpy().astype(np.float32)
