"""ECAPA-TDNN (Desplanques, Thienpondt & Demuynck, INTERSPEECH 2020), mask-aware.

``(feats [batch, T, n_mels], lengths [batch]) -> embedding [batch, 192]``:

1. ``Conv1d(k=5) -> ReLU -> BN`` to ``C`` channels (512 or 1024);
2. three SE-Res2Blocks (kernel 3, dilations 2, 3, 4, scale 8): ``1x1 conv -> Res2 dilated conv
   -> 1x1 conv -> squeeze-excitation`` plus a residual connection; the input of each block
   is the sum of the outputs of the initial layer and all preceding blocks (the paper's
   residual summation);
3. multi-layer feature aggregation: the three block outputs concatenated -> ``1x1 conv`` to
   1536 channels;
4. attentive statistics pooling with global context: each frame's attention input is the
   frame concatenated with the utterance mean and std; channel-wise attention softmax over
   the valid frames; weighted mean and std (3072) -> BN;
5. ``FC -> BN`` to the 192-d embedding.

Every layer's ``conv -> ReLU -> BN`` output is zeroed on padded frames, so the padded
convolutions see the same zeros as one utterance on its own; the SE means, the global
context and the attention only use valid frames; batch norm takes training statistics from
valid frames only. A padded batch therefore gives the same embeddings as one-by-one (eval).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sv_kedro.models.masking import (
    lengths_to_mask,
    masked_mean,
    masked_mean_std,
    masked_softmax,
    weighted_mean_std,
)
from sv_kedro.models.tdnn import MaskedBatchNorm1d


class ConvBlock(nn.Module):
    """``Conv1d -> ReLU -> BN``, zeroed on padded frames; ``[batch, C, T]`` -> same length."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, dilation: int = 1):
        super().__init__()
        padding = dilation * (kernel - 1) // 2
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, dilation=dilation, padding=padding)
        self.activation = nn.ReLU()
        self.norm = MaskedBatchNorm1d(out_channels)

    def forward(self, inputs: Tensor, mask: Tensor) -> Tensor:
        outputs = self.norm(self.activation(self.conv(inputs)), mask)
        return outputs * mask[:, None, :].to(outputs.dtype)


class SqueezeExcitation(nn.Module):
    """Channel gates from the mean over valid frames: ``C -> bottleneck -> C``, sigmoid."""

    def __init__(self, channels: int, bottleneck: int = 128) -> None:
        super().__init__()
        self.squeeze = nn.Linear(channels, bottleneck)
        self.excite = nn.Linear(bottleneck, channels)

    def forward(self, inputs: Tensor, mask: Tensor) -> Tensor:
        summary = masked_mean(inputs.transpose(1, 2), mask)  # [batch, C]
        gates = torch.sigmoid(self.excite(torch.relu(self.squeeze(summary))))
        return inputs * gates.unsqueeze(-1)


class Res2Conv(nn.Module):
    """Res2Net dilated convolution: ``scale`` channel groups, group ``i`` gets ``x_i +
    y_{i-1}`` (group 0 passes through unchanged)."""

    def __init__(self, channels: int, kernel: int, dilation: int, scale: int = 8) -> None:
        super().__init__()
        if channels % scale:
            raise ValueError(f"ECAPA: channels {channels} not divisible by Res2 scale {scale}")
        self.scale = scale
        width = channels // scale
        self.convs = nn.ModuleList(
            ConvBlock(width, width, kernel, dilation) for _ in range(scale - 1)
        )

    def forward(self, inputs: Tensor, mask: Tensor) -> Tensor:
        groups = torch.chunk(inputs, self.scale, dim=1)
        outputs = [groups[0]]
        previous: Tensor | None = None
        for index, conv in enumerate(self.convs, start=1):
            block_input = groups[index] if previous is None else groups[index] + previous
            previous = conv(block_input, mask)
            outputs.append(previous)
        return torch.cat(outputs, dim=1)


class SERes2Block(nn.Module):
    def __init__(
        self, channels: int, kernel: int, dilation: int, scale: int = 8, se_bottleneck: int = 128
    ) -> None:
        super().__init__()
        self.conv_in = ConvBlock(channels, channels, 1)
        self.res2 = Res2Conv(channels, kernel, dilation, scale)
        self.conv_out = ConvBlock(channels, channels, 1)
        self.se = SqueezeExcitation(channels, se_bottleneck)

    def forward(self, inputs: Tensor, mask: Tensor) -> Tensor:
        hidden = self.conv_out(self.res2(self.conv_in(inputs, mask), mask), mask)
        return self.se(hidden, mask) + inputs


class ContextAttentiveStatsPooling(nn.Module):
    """Channel-wise attentive statistics pooling with global context: ``[batch, C, T]`` ->
    ``[batch, 2C]``."""

    def __init__(self, channels: int, attention_dim: int = 128) -> None:
        super().__init__()
        self.attention_in = ConvBlock(3 * channels, attention_dim, 1)
        self.attention_out = nn.Conv1d(attention_dim, channels, 1)

    def forward(self, inputs: Tensor, mask: Tensor) -> Tensor:
        frames = inputs.transpose(1, 2)  # [batch, T, C]
        mean, std = masked_mean_std(frames, mask)
        length = inputs.shape[-1]
        context = torch.cat(
            [
                inputs,
                mean.unsqueeze(-1).expand(-1, -1, length),
                std.unsqueeze(-1).expand(-1, -1, length),
            ],
            dim=1,
        )
        scores = self.attention_out(torch.tanh(self.attention_in(context, mask)))  # [batch, C, T]
        weights = masked_softmax(scores.transpose(1, 2), mask, dim=1)  # [batch, T, C]
        weighted_mean, weighted_std = weighted_mean_std(frames, weights)
        return torch.cat([weighted_mean, weighted_std], dim=-1)


class ECAPATDNN(nn.Module):
    """``forward(feats [batch, T, n_mels], lengths [batch] | None) -> [batch, embedding_dim]``."""

    def __init__(
        self,
        n_mels: int = 80,
        channels: int = 512,
        embedding_dim: int = 192,
        dilations: tuple[int, ...] = (2, 3, 4),
        kernel: int = 3,
        scale: int = 8,
        se_bottleneck: int = 128,
        mfa_channels: int = 1536,
        attention_dim: int = 128,
        residual_sum: bool = True,
    ) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.output_dim = embedding_dim
        self.residual_sum = residual_sum
        self.front = ConvBlock(n_mels, channels, 5)
        self.blocks = nn.ModuleList(
            SERes2Block(channels, kernel, dilation, scale, se_bottleneck) for dilation in dilations
        )
        self.aggregate = ConvBlock(len(dilations) * channels, mfa_channels, 1)
        self.pooling = ContextAttentiveStatsPooling(mfa_channels, attention_dim)
        self.pooled_norm = nn.BatchNorm1d(2 * mfa_channels)
        self.embedding = nn.Linear(2 * mfa_channels, embedding_dim)
        self.embedding_norm = nn.BatchNorm1d(embedding_dim)

    def forward(self, feats: Tensor, lengths: Tensor | None = None) -> Tensor:
        if feats.dim() != 3 or feats.shape[-1] != self.n_mels:
            raise ValueError(
                f"ECAPA-TDNN: features must be [batch, frames, {self.n_mels}], "
                f"got {tuple(feats.shape)}"
            )
        if lengths is None:
            lengths = torch.full((feats.shape[0],), feats.shape[1], device=feats.device)
        if int(lengths.min()) < 1:
            raise ValueError(f"ECAPA-TDNN: every utterance needs a frame, got {lengths.tolist()}")
        mask = lengths_to_mask(lengths.to(feats.device), feats.shape[1])
        inputs = feats.transpose(1, 2) * mask[:, None, :].to(feats.dtype)
        hidden = self.front(inputs, mask)
        running_sum = hidden
        block_outputs = []
        for block in self.blocks:
            hidden = block(running_sum if self.residual_sum else hidden, mask)
            block_outputs.append(hidden)
            running_sum = running_sum + hidden
        aggregated = self.aggregate(torch.cat(block_outputs, dim=1), mask)
        pooled = self.pooled_norm(self.pooling(aggregated, mask))
        return self.embedding_norm(self.embedding(pooled))
