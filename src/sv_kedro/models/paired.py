"""Paired-input verification model for the pair BCE loss (Vaessen & van Leeuwen 2022).

Both utterances go through the SSL encoder's CNN + feature projection separately; their
valid frames are packed into one sequence per pair,
``[CLS] features(a) [SEP] features(b) [END]`` (learnable CLS/SEP/END vectors, padding at the
end), which one transformer (the SSL encoder's) reads. ``head`` turns its output into the
same-speaker logit:

- ``cls`` (the paper's): a linear layer on the CLS output.
- ``segment_cosine``: ``scale * cos(mean_a, mean_b) + bias`` over the mean transformer output
  of each side's frames, which still attended to the other side's. From random weights the
  CLS head does not learn to compare within a CPU budget (the paper starts it from
  pre-trained wav2vec2); this head does, so the tiny base configuration uses it.

Padding of either input never changes a pair's logit.

Verification uses :meth:`PairedSpeakerModel.score_pairs` (one forward pass per trial).
:meth:`PairedSpeakerModel.embed` exists for inspection and clustering only: the mean of the
transformer output over one utterance's valid frames, which the BCE objective never trained.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from sv_kedro.models.masking import lengths_to_mask, masked_mean, valid_lengths
from sv_kedro.models.ssl_encoder import SSLEncoder


class PairedSpeakerModel(nn.Module):
    """``forward(wave_a, len_a, wave_b, len_b) -> logits [batch]`` (same-speaker logit)."""

    architecture = "ssl_paired"
    heads = ("cls", "segment_cosine")

    def __init__(
        self,
        encoder: SSLEncoder,
        init_std: float = 0.02,
        head: str = "cls",
        model_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if head not in self.heads:
            raise ValueError(f"paired.head must be one of {self.heads}, got {head!r}")
        dim = encoder.hidden_size
        self.frontend = encoder
        self.cls_token = nn.Parameter(torch.randn(dim) * init_std)
        self.sep_token = nn.Parameter(torch.randn(dim) * init_std)
        self.end_token = nn.Parameter(torch.randn(dim) * init_std)
        self.head = head
        if head == "cls":
            self.classifier = nn.Linear(dim, 1)
        else:
            # Random-encoder cosines crowd near 1; this start puts the boundary at 0.5.
            self.score_scale = nn.Parameter(torch.tensor(5.0))
            self.score_bias = nn.Parameter(torch.tensor(-2.5))
        self.embedding_dim = dim
        self.model_config: dict[str, Any] = dict(model_config or {})

    def set_step(self, step: int) -> None:
        self.frontend.set_step(step)

    def encoder_frozen(self, step: int) -> bool:
        return self.frontend.encoder_frozen(step)

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.frontend.parameters())

    def backend_parameters(self) -> Iterator[nn.Parameter]:
        encoder_ids = {id(p) for p in self.frontend.parameters()}
        return (p for p in self.parameters() if id(p) not in encoder_ids)

    def pack_pair(
        self, frames_a: Tensor, mask_a: Tensor, frames_b: Tensor, mask_b: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``[CLS] a [SEP] b [END]`` per row -> ``(sequence [batch, L, D], mask [batch, L])``."""
        batch, _, dim = frames_a.shape
        length_a, length_b = valid_lengths(mask_a), valid_lengths(mask_b)
        total = length_a + length_b + 3
        sequence = frames_a.new_zeros(batch, int(total.max()), dim)
        rows = torch.arange(batch, device=frames_a.device)
        sequence[:, 0] = self.cls_token.to(sequence.dtype)
        row_a, time_a = mask_a.nonzero(as_tuple=True)
        sequence[row_a, time_a + 1] = frames_a[row_a, time_a]
        sequence[rows, length_a + 1] = self.sep_token.to(sequence.dtype)
        row_b, time_b = mask_b.nonzero(as_tuple=True)
        sequence[row_b, time_b + length_a[row_b] + 2] = frames_b[row_b, time_b]
        sequence[rows, total - 1] = self.end_token.to(sequence.dtype)
        return sequence, lengths_to_mask(total, sequence.shape[1])

    def score_pairs(
        self,
        wave_a: Tensor,
        len_a: Tensor | None,
        wave_b: Tensor,
        len_b: Tensor | None,
    ) -> Tensor:
        """Same-speaker logits ``[batch]`` for pairs ``(wave_a[i], wave_b[i])``."""
        if wave_a.shape[0] != wave_b.shape[0]:
            raise ValueError(
                f"score_pairs: batch sizes differ ({wave_a.shape[0]} vs {wave_b.shape[0]})"
            )
        frames_a, mask_a = self.frontend.extract_features(wave_a, len_a)[:2]
        frames_b, mask_b = self.frontend.extract_features(wave_b, len_b)[:2]
        return self.pair_logits(frames_a, mask_a, frames_b, mask_b)

    def pair_logits(
        self, frames_a: Tensor, mask_a: Tensor, frames_b: Tensor, mask_b: Tensor
    ) -> Tensor:
        """Same-speaker logits ``[batch]`` from both sides' CNN features ``[batch, T, D]``."""
        sequence, mask = self.pack_pair(frames_a, mask_a, frames_b, mask_b)
        encoded = self.frontend.encode(sequence, mask, output_hidden_states=False).frames
        if self.head == "cls":
            return self.classifier(encoded[:, 0]).squeeze(-1)
        length_a = valid_lengths(mask_a)[:, None]
        end_b = length_a + valid_lengths(mask_b)[:, None] + 2
        position = torch.arange(encoded.shape[1], device=encoded.device)
        side_a = (position >= 1) & (position <= length_a)
        side_b = (position >= length_a + 2) & (position < end_b)
        cosine = nn.functional.cosine_similarity(
            masked_mean(encoded, side_a), masked_mean(encoded, side_b), dim=-1
        )
        return self.score_scale * cosine + self.score_bias

    def forward(
        self, wave_a: Tensor, len_a: Tensor | None, wave_b: Tensor, len_b: Tensor | None
    ) -> Tensor:
        return self.score_pairs(wave_a, len_a, wave_b, len_b)

    def embed(self, waves: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Mean transformer output over valid frames ``[batch, D]`` (eval, no grad)."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                encoded = self.frontend(waves, lengths, output_hidden_states=False)
                return masked_mean(encoded.frames, encoded.mask)
        finally:
            self.train(was_training)
