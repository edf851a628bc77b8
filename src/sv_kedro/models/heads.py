"""Speaker heads: FC layers, the embedding choice, linear or cosine classifiers, frame heads.

- ``ClassificationHead``: pooled vector -> FC blocks -> speaker logits. A block is
  ``Linear -> activation -> [BatchNorm] -> [Dropout]`` (the x-vector order, Snyder et al.
  2018). The embedding is the pooled vector itself (``embedding_layer="pooled"``) or the
  *affine output* (before the non-linearity) of hidden block ``i`` (``embedding_layer=i``,
  0-based), which is where x-vectors are read ("embedding a").
- ``CosineClassifier``: cosine similarity between the L2-normalised input and L2-normalised
  class weights, ``[batch, n_classes]`` in ``[-1, 1]``; the AAM loss scales it and applies the
  margin itself.
- ``FrameClassificationHead``: the same FC blocks applied to every frame, then ``n_classes +
  1`` logits per frame (index 0 = CTC blank), for the CTC variant.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
}


class CosineClassifier(nn.Module):
    """``x [..., in_dim] -> cos(x, w_c) [..., n_classes]`` in [-1, 1] (normalised both sides)."""

    def __init__(self, in_dim: int, n_classes: int) -> None:
        super().__init__()
        self.in_features = in_dim
        self.out_features = n_classes
        self.weight = nn.Parameter(nn.init.xavier_normal_(nn.Linear(in_dim, n_classes).weight))

    def forward(self, inputs: Tensor) -> Tensor:
        return F.linear(F.normalize(inputs, dim=-1), F.normalize(self.weight, dim=-1))

    def extra_repr(self) -> str:
        return f"in_dim={self.in_features}, n_classes={self.out_features}"


def build_classifier(kind: str, in_dim: int, n_classes: int) -> nn.Module:
    """``"linear"`` (plain logits, for CE) or ``"cosine"`` (cosines, for AAM)."""
    if kind == "linear":
        return nn.Linear(in_dim, n_classes)
    if kind == "cosine":
        return CosineClassifier(in_dim, n_classes)
    raise ValueError(f"head.classifier: '{kind}' is not 'linear' or 'cosine'")


class _FCBlock(nn.Module):
    """``Linear -> activation -> [BatchNorm] -> [Dropout]``; returns (affine, block output)."""

    def __init__(
        self, in_dim: int, out_dim: int, activation: str, batch_norm: bool, dropout: float
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"head.activation: '{activation}' is not one of {sorted(ACTIVATIONS)}")
        self.linear = nn.Linear(in_dim, out_dim)
        self.activation = ACTIVATIONS[activation]()
        self.norm = nn.BatchNorm1d(out_dim) if batch_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        affine = self.linear(inputs)
        hidden = self.activation(affine)
        if isinstance(self.norm, nn.BatchNorm1d) and hidden.dim() == 3:
            hidden = self.norm(hidden.transpose(1, 2)).transpose(1, 2)
        else:
            hidden = self.norm(hidden)
        return affine, self.dropout(hidden)


class HeadOutput(NamedTuple):
    embedding: Tensor
    logits: Tensor | None


class ClassificationHead(nn.Module):
    """``forward(pooled [batch, in_dim]) -> HeadOutput(embedding [batch, E], logits | None)``.

    ``n_classes`` of 0/None gives an embedding-only head (``logits=None``).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: list[int] | tuple[int, ...] = (),
        n_classes: int | None = None,
        embedding_layer: int | str = "pooled",
        classifier: str = "linear",
        activation: str = "relu",
        batch_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        dims = [in_dim, *[int(d) for d in hidden_dims]]
        self.blocks = nn.ModuleList(
            _FCBlock(dims[i], dims[i + 1], activation, batch_norm, dropout)
            for i in range(len(dims) - 1)
        )
        if embedding_layer == "pooled":
            self.embedding_dim = in_dim
        elif isinstance(embedding_layer, int) and 0 <= embedding_layer < len(self.blocks):
            self.embedding_dim = dims[embedding_layer + 1]
        else:
            raise ValueError(
                f"head.embedding_layer: {embedding_layer!r} must be 'pooled' or a hidden layer "
                f"index in [0, {len(self.blocks) - 1}] (hidden_dims={list(hidden_dims)})"
            )
        self.embedding_layer = embedding_layer
        self.in_dim = in_dim
        self.n_classes = int(n_classes or 0)
        self.classifier = (
            build_classifier(classifier, dims[-1], self.n_classes) if self.n_classes else None
        )

    def forward(self, pooled: Tensor) -> HeadOutput:
        embedding = pooled if self.embedding_layer == "pooled" else None
        hidden = pooled
        for index, block in enumerate(self.blocks):
            affine, hidden = block(hidden)
            if index == self.embedding_layer:
                embedding = affine
        logits = self.classifier(hidden) if self.classifier is not None else None
        assert embedding is not None  # guaranteed by the constructor's check
        return HeadOutput(embedding, logits)


class FrameClassificationHead(nn.Module):
    """``frames [batch, T, D] -> (features [batch, T, F], logits [batch, T, n_classes + 1])``.

    Index 0 of the logits is the CTC blank; ``features`` are the pre-logit frame features
    that the model pools (mean+std) for embeddings.

    The classifier starts with small weights (``init_std``) and a low blank bias
    (``blank_bias``): every frame then begins near "this speaker, not blank", the solution
    in which each frame carries the speaker. From random large logits CTC falls instead into
    "blank everywhere, a uniform guess on one frame", whose gradients vanish before the
    speakers are learned (measured on the generated corpus: validation EER 0.45 -> 0.17 with
    this start, no gain without it).
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        hidden_dims: list[int] | tuple[int, ...] = (),
        activation: str = "relu",
        dropout: float = 0.0,
        blank_bias: float = -3.0,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        if not n_classes or n_classes <= 0:
            raise ValueError("frame head (CTC): n_classes must be a positive number of speakers")
        dims = [in_dim, *[int(d) for d in hidden_dims]]
        self.blocks = nn.ModuleList(
            _FCBlock(dims[i], dims[i + 1], activation, False, dropout) for i in range(len(dims) - 1)
        )
        self.feature_dim = dims[-1]
        self.n_classes = int(n_classes)
        self.classifier = nn.Linear(dims[-1], self.n_classes + 1)
        with torch.no_grad():
            nn.init.normal_(self.classifier.weight, std=init_std)
            self.classifier.bias.zero_()
            self.classifier.bias[0] = blank_bias

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        hidden = frames
        for block in self.blocks:
            hidden = block(hidden)[1]
        return hidden, self.classifier(hidden)
