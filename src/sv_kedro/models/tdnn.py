"""x-vector TDNN (Snyder et al., ICASSP 2018) on log-mel filterbanks, mask-aware.

Frame layers are dilated 1-d convolutions without padding (the TDNN contexts
``[t-2, t+2]``, ``{t-2, t, t+2}``, ``{t-3, t, t+3}``, ``{t}``, ``{t}`` = kernels 5, 3, 3, 1, 1
with dilations 1, 2, 3, 1, 1), each ``conv -> ReLU -> BatchNorm``, 512 channels and 1500 before
pooling. Statistics pooling (mean and std over the valid output frames) gives 3000 values;
the segment layers (512 -> 512, embedding = affine output of the first) live in the
:class:`~sv_kedro.models.heads.ClassificationHead` (``hidden_dims=[512, 512]``,
``embedding_layer=0``, ``batch_norm=True``), which :func:`build_model` sets up.

Without padding, an utterance of ``n`` frames gives ``n - 14`` output frames, which only
depend on its own frames: padded batches give the same statistics as one-by-one. Batch norm
uses statistics of valid frames only in training (:class:`MaskedBatchNorm1d`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sv_kedro.models.masking import lengths_to_mask, masked_mean_std


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over ``[batch, C, T]`` whose training statistics skip padded frames.

    Same parameters and buffers as ``nn.BatchNorm1d`` (state dicts are interchangeable).
    """

    def forward(self, inputs: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None or inputs.dim() != 3 or not self.training or not self.track_running_stats:
            return super().forward(inputs)
        weights = mask[:, None, :].to(inputs.dtype)
        count = weights.sum()
        mean = (inputs * weights).sum(dim=(0, 2)) / count
        variance = (((inputs - mean[None, :, None]) ** 2) * weights).sum(dim=(0, 2)) / count
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )
            unbiased = variance * count / (count - 1).clamp(min=1.0)
            self.running_mean.lerp_(mean.detach(), momentum)
            self.running_var.lerp_(unbiased.detach(), momentum)
        normed = (inputs - mean[None, :, None]) / torch.sqrt(variance[None, :, None] + self.eps)
        if self.affine:
            normed = normed * self.weight[None, :, None] + self.bias[None, :, None]
        return normed


class TDNNLayer(nn.Module):
    """``conv(kernel, dilation, no padding) -> ReLU -> BatchNorm`` on ``[batch, C, T]``."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, dilation=dilation)
        self.activation = nn.ReLU()
        self.norm = MaskedBatchNorm1d(out_channels)
        self.context = (kernel - 1) * dilation

    def forward(self, inputs: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        outputs = self.activation(self.conv(inputs))
        out_mask = mask[:, self.context :] if self.context else mask
        return self.norm(outputs, out_mask), out_mask


class XVectorTDNN(nn.Module):
    """Frame layers + statistics pooling: ``(feats [batch, T, F], lengths [batch])`` ->
    ``[batch, 2 * stats_channels]`` (3000 by default)."""

    def __init__(
        self,
        n_mels: int = 40,
        channels: int = 512,
        stats_channels: int = 1500,
        kernels: tuple[int, ...] = (5, 3, 3, 1, 1),
        dilations: tuple[int, ...] = (1, 2, 3, 1, 1),
    ) -> None:
        super().__init__()
        if len(kernels) != len(dilations):
            raise ValueError("x-vector: kernels and dilations must have the same length")
        widths = [n_mels] + [channels] * (len(kernels) - 1) + [stats_channels]
        self.layers = nn.ModuleList(
            TDNNLayer(widths[i], widths[i + 1], kernels[i], dilations[i])
            for i in range(len(kernels))
        )
        self.context = sum(layer.context for layer in self.layers)
        self.n_mels = n_mels
        self.output_dim = 2 * stats_channels

    def forward(self, feats: Tensor, lengths: Tensor | None = None) -> Tensor:
        if feats.dim() != 3 or feats.shape[-1] != self.n_mels:
            raise ValueError(
                f"x-vector: features must be [batch, frames, {self.n_mels}], "
                f"got {tuple(feats.shape)}"
            )
        if lengths is None:
            lengths = torch.full((feats.shape[0],), feats.shape[1], device=feats.device)
        if int(lengths.min()) <= self.context:
            raise ValueError(
                f"x-vector: each utterance needs more than {self.context} feature frames "
                f"(the TDNN context); got frame lengths {lengths.tolist()}"
            )
        mask = lengths_to_mask(lengths.to(feats.device), feats.shape[1])
        hidden = feats.transpose(1, 2)  # [batch, F, T]
        for layer in self.layers:
            hidden, mask = layer(hidden, mask)
        mean, std = masked_mean_std(hidden.transpose(1, 2), mask)
        return torch.cat([mean, std], dim=-1)
