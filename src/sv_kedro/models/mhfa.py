"""Multi-head factorized attentive pooling (MHFA; Peng et al., SLT 2022) over SSL layers.

Used by Miara, Lepage & Dehak (2024) on top of WavLM-Base+. From all hidden states
``[batch, T, D, L+1]``:

1. two learnable weightings over the ``L+1`` layers, softmax-normalised: one builds the keys,
   the other the values (``K = sum_l softmax(w_k)_l H_l``, same for ``V``) — ``[batch, T, D]``;
2. linear compression of keys and of values, ``D -> compression_dim`` (128);
3. a linear layer from compressed keys to ``n_heads`` (64) attention scores per frame,
   softmax over the **valid** frames of each utterance;
4. per head, the attention-weighted sum of the compressed values -> ``[batch, H, 128]``,
   flattened to ``H * 128``, then a linear layer to the ``embedding_dim`` (256) embedding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sv_kedro.models.masking import masked_softmax
from sv_kedro.utils.params import check_sizes


class MHFA(nn.Module):
    """``forward(hidden_states [batch, T, D, L+1], mask [batch, T] | None) -> [batch, E]``."""

    def __init__(
        self,
        dim: int,
        num_layers: int,
        compression_dim: int = 128,
        n_heads: int = 64,
        embedding_dim: int = 256,
    ) -> None:
        super().__init__()
        check_sizes(
            "MHFA",
            {
                "dim": dim,
                "num_layers": num_layers,
                "compression_dim": compression_dim,
                "n_heads": n_heads,
                "embedding_dim": embedding_dim,
            },
        )
        self.dim = dim
        self.num_layers = num_layers  # L+1 hidden states
        self.n_heads = n_heads
        self.compression_dim = compression_dim
        self.output_dim = embedding_dim
        # Equal logits: every layer starts with the same weight 1 / (L+1).
        self.key_layer_weights = nn.Parameter(torch.zeros(num_layers))
        self.value_layer_weights = nn.Parameter(torch.zeros(num_layers))
        self.key_compression = nn.Linear(dim, compression_dim)
        self.value_compression = nn.Linear(dim, compression_dim)
        self.head_scores = nn.Linear(compression_dim, n_heads)
        self.projection = nn.Linear(n_heads * compression_dim, embedding_dim)

    def layer_weights(self) -> tuple[Tensor, Tensor]:
        """Softmax-normalised key and value weights over the ``L+1`` layers."""
        return torch.softmax(self.key_layer_weights, 0), torch.softmax(self.value_layer_weights, 0)

    def forward(self, hidden_states: Tensor, mask: Tensor | None = None) -> Tensor:
        if hidden_states.dim() != 4 or hidden_states.shape[2:] != (self.dim, self.num_layers):
            raise ValueError(
                f"MHFA: expected hidden states [batch, frames, {self.dim}, {self.num_layers}], "
                f"got {tuple(hidden_states.shape)}"
            )
        if mask is None:
            mask = torch.ones(
                hidden_states.shape[:2], dtype=torch.bool, device=hidden_states.device
            )
        elif mask.shape != hidden_states.shape[:2]:
            raise ValueError(
                f"MHFA: mask {tuple(mask.shape)} does not match frames "
                f"{tuple(hidden_states.shape[:2])}"
            )
        key_weights, value_weights = self.layer_weights()
        keys = torch.matmul(hidden_states, key_weights.to(hidden_states.dtype))  # [batch, T, D]
        values = torch.matmul(hidden_states, value_weights.to(hidden_states.dtype))
        keys = self.key_compression(keys)  # [batch, T, c]
        values = self.value_compression(values)  # [batch, T, c]
        attention = masked_softmax(self.head_scores(keys), mask.bool(), dim=1)  # [batch, T, H]
        pooled = torch.einsum("bth,btc->bhc", attention, values)  # [batch, H, c]
        return self.projection(pooled.flatten(1))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, layers={self.num_layers}, compression_dim={self.compression_dim}, "
            f"n_heads={self.n_heads}, embedding_dim={self.output_dim}"
        )
