"""``SpeakerModel``: front end + pooling (or MHFA, or a TDNN back-bone) + head.

Architectures (``model.architecture``):

- ``ssl``: :class:`SSLEncoder` -> pooling from the study -> :class:`ClassificationHead`.
  With pooling ``none`` (the CTC variant) a :class:`FrameClassificationHead` maps every frame
  to ``n_classes + 1`` logits (0 = blank) and the embedding is mean+std over valid frames of
  the pre-logit frame features.
- ``ssl_mhfa``: :class:`SSLEncoder` (all hidden states) -> :class:`MHFA` -> head.
- ``xvector`` / ``ecapa_tdnn``: :class:`LogMelFbank` (on the model's device) ->
  :class:`XVectorTDNN` / :class:`ECAPATDNN` -> head.

``forward(waves [batch, samples], lengths [batch] | None) -> SpeakerOutput`` and
``embed(waves, lengths) -> [batch, E]`` (eval mode, no grad, so no SpecAugment, dropout or
LayerDrop; the previous train/eval mode is restored).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from sv_kedro.models.heads import ClassificationHead, FrameClassificationHead
from sv_kedro.models.masking import masked_mean_std
from sv_kedro.models.mhfa import MHFA
from sv_kedro.models.pooling import Pooling
from sv_kedro.models.ssl_encoder import SSLEncoder


class SpeakerOutput(NamedTuple):
    """``embedding [batch, E]``; ``logits [batch, C]`` (cosines for a cosine head);
    ``frame_logits [batch, T, C+1]`` and ``frame_mask [batch, T]`` for the CTC variant."""

    embedding: Tensor
    logits: Tensor | None = None
    frame_logits: Tensor | None = None
    frame_mask: Tensor | None = None


class SpeakerModel(nn.Module):
    """Wires ``frontend`` + ``pooling`` + ``head``; see the module docstring."""

    def __init__(
        self,
        architecture: str,
        frontend: nn.Module,
        pooling: nn.Module,
        head: ClassificationHead | FrameClassificationHead,
        model_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.architecture = architecture
        self.frontend = frontend
        self.pooling = pooling
        self.head = head
        self.model_config: dict[str, Any] = dict(model_config or {})
        self.frame_level = isinstance(head, FrameClassificationHead)
        if self.frame_level and not getattr(pooling, "frame_level", False):
            raise ValueError("SpeakerModel: a frame-level (CTC) head needs pooling 'none'")
        if self.frame_level:
            self.embedding_dim = 2 * head.feature_dim
        else:
            self.embedding_dim = head.embedding_dim

    @property
    def uses_ssl(self) -> bool:
        return isinstance(self.frontend, SSLEncoder)

    # ------------------------------------------------------------- training hooks
    def set_step(self, step: int) -> None:
        """Apply the encoder's freezing schedule at optimiser step ``step`` (SSL only)."""
        if self.uses_ssl:
            self.frontend.set_step(step)

    def encoder_frozen(self, step: int) -> bool:
        return self.uses_ssl and self.frontend.encoder_frozen(step)

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the pre-trained part (the SSL encoder); empty for fbank models."""
        return iter(self.frontend.parameters()) if self.uses_ssl else iter(())

    def backend_parameters(self) -> Iterator[nn.Parameter]:
        """Everything else (pooling, MHFA, TDNN, head): usually a higher learning rate."""
        encoder_ids = {id(p) for p in self.encoder_parameters()}
        return (p for p in self.parameters() if id(p) not in encoder_ids)

    # -------------------------------------------------------------------- forward
    def forward(self, waves: Tensor, lengths: Tensor | None = None) -> SpeakerOutput:
        if self.uses_ssl:
            return self._forward_ssl(waves, lengths)
        feats, frame_lengths = self.frontend(waves, lengths)
        pooled = self.pooling(feats, frame_lengths)
        embedding, logits = self.head(pooled)
        return SpeakerOutput(embedding, logits)

    def _forward_ssl(self, waves: Tensor, lengths: Tensor | None) -> SpeakerOutput:
        needs_states = isinstance(self.pooling, MHFA)
        prefix = None
        if isinstance(self.pooling, Pooling) and self.pooling.needs_prefix:
            prefix = self.pooling.prefix_tokens()
        encoded = self.frontend(waves, lengths, prefix=prefix, output_hidden_states=needs_states)
        if needs_states:
            pooled = self.pooling(encoded.hidden_states, encoded.mask)
        elif self.frame_level:
            features, frame_logits = self.head(self.pooling(encoded.frames, encoded.mask))
            mean, std = masked_mean_std(features, encoded.mask)
            return SpeakerOutput(torch.cat([mean, std], dim=-1), None, frame_logits, encoded.mask)
        else:
            pooled = self.pooling(encoded.frames, encoded.mask)
        embedding, logits = self.head(pooled)
        return SpeakerOutput(embedding, logits)

    def embed(self, waves: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Speaker embeddings ``[batch, E]`` in eval mode without gradients."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self.forward(waves, lengths).embedding
        finally:
            self.train(was_training)
