"""The pooling study (Vaessen & van Leeuwen 2022): frame sequence -> one utterance vector.

Every pooling takes ``frames [batch, T, D]`` and ``mask [batch, T]`` (bool, True on valid
frames, padding at the end) and returns ``[batch, output_dim]``; padded frames never change
the result. ``build_pooling(name, dim)`` builds one of :data:`POOLING_NAMES`:

- ``mean``: mean over valid frames (D).
- ``mean+std``: mean and population standard deviation, concatenated (2D).
- ``attentive``: attentive statistics pooling (Okabe et al. 2018): a scalar score per frame
  ``e_t = v·tanh(W h_t + b) + k``, softmax over valid frames, weighted mean and weighted std
  (2D).
- ``quantile``: the 0, .25, .5, .75 and 1 quantiles of each feature over the valid frames,
  linear interpolation between order statistics like ``torch.quantile`` (5D).
- ``max``: feature-wise maximum over valid frames (D).
- ``first`` / ``last`` / ``middle``: the frame at index 0, ``n - 1``, ``(n - 1) // 2`` where
  ``n`` is the number of valid frames (D).
- ``random``: in training one valid frame drawn uniformly per utterance and per step; in eval
  mode the middle valid frame (same as ``middle``), so that embeddings are deterministic (D).
- ``first+cls``: a learnable CLS vector ``[D]`` that the SSL encoder prepends to the
  transformer's input (after the CNN feature projection, before the positional convolution);
  pooling reads the transformer output at position 0 (D). The model calls
  :meth:`ClsPooling.prefix_tokens` and passes it to ``SSLEncoder.forward(prefix=...)``.
- ``none``: no pooling; returns ``frames`` unchanged (frame-level CTC variant), output_dim D.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from sv_kedro.models.masking import (
    check_frames_and_mask,
    masked_mean,
    masked_mean_std,
    masked_softmax,
    valid_lengths,
    weighted_mean_std,
)
from sv_kedro.utils.params import as_float, as_int

POOLING_NAMES: tuple[str, ...] = (
    "mean",
    "mean+std",
    "attentive",
    "quantile",
    "max",
    "first",
    "last",
    "middle",
    "random",
    "first+cls",
    "none",
)
QUANTILES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


class Pooling(nn.Module):
    """Base class: ``forward(frames [batch, T, D], mask [batch, T] | None) -> [batch, out]``."""

    name: str = ""
    #: True for ``none``: the output stays ``[batch, T, D]``.
    frame_level: bool = False
    #: True for ``first+cls``: the encoder must prepend :meth:`prefix_tokens`.
    needs_prefix: bool = False

    def __init__(self, dim: int, output_dim: int) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"pooling '{self.name}': dim must be positive, got {dim}")
        self.dim = dim
        self.output_dim = output_dim

    def _check(self, frames: Tensor, mask: Tensor | None) -> Tensor:
        mask = check_frames_and_mask(frames, mask, f"pooling '{self.name}'")
        if frames.shape[-1] != self.dim:
            raise ValueError(
                f"pooling '{self.name}': frames have dim {frames.shape[-1]}, built for {self.dim}"
            )
        return mask

    def extra_repr(self) -> str:
        return f"dim={self.dim}, output_dim={self.output_dim}"


class MeanPooling(Pooling):
    name = "mean"

    def __init__(self, dim: int) -> None:
        super().__init__(dim, dim)

    def forward(self, frames: Tensor, mask: Tensor | None = None) -> Tensor:
        return masked_mean(frames, self._check(frames, mask))


class MeanStdPooling(Pooling):
    name = "mean+std"

    def __init__(self, dim: int) -> None:
        super().__init__(dim, 2 * dim)

    def forward(self, frames: Tensor, mask: Tensor | None = None) -> Tensor:
        mean, std = masked_mean_std(frames, self._check(frames, mask))
        return torch.cat([mean, std], dim=-1)


class AttentiveStatisticsPooling(Pooling):
    """Okabe et al. 2018: attention-weighted mean and std; ``hidden_dim`` is the size of W."""

    name = "attentive"

    def __init__(self, dim: int, hidden_dim: int = 128) -> None:
        super().__init__(dim, 2 * dim)
        self.attention = nn.Sequential(
            nn.Linear(dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, 1)
        )

    def forward(self, frames: Tensor, mask: Tensor | None = None) -> Tensor:
        mask = self._check(frames, mask)
        weights = masked_softmax(self.attention(frames), mask, dim=1)  # [batch, T, 1]
        mean, std = weighted_mean_std(frames, weights)
        return torch.cat([mean, std], dim=-1)


class QuantilePooling(Pooling):
    """Quantiles 0, .25, .5, .75, 1 of each feature over the valid frames (5D)."""

    name = "quantile"

    def __init__(self, dim: int, quantiles: tuple[float, ...] = QUANTILES) -> None:
        super().__init__(dim, len(quantiles) * dim)
        if not quantiles:  # output_dim 0: the head would get an empty vector
            raise ValueError("pooling 'quantile': needs at least one quantile")
        if not all(0.0 <= q <= 1.0 for q in quantiles):
            raise ValueError(f"pooling 'quantile': quantiles must lie in [0, 1], got {quantiles}")
        self.register_buffer("quantiles", torch.tensor(quantiles), persistent=False)

    def forward(self, frames: Tensor, mask: Tensor | None = None) -> Tensor:
        mask = self._check(frames, mask)
        # Padding sorts to the end as +inf, so rank r < n always picks a valid frame.
        filled = frames.masked_fill(~mask.unsqueeze(-1), float("inf"))
        ordered, _ = torch.sort(filled, dim=1)
        last = (valid_lengths(mask) - 1).to(frames.dtype)  # [batch]
        positions = self.quantiles.to(frames.dtype)[None, :] * last[:, None]  # [batch, Q]
        lower = positions.floor().long()
        upper = positions.ceil().long()
        fraction = (positions - lower.to(frames.dtype)).unsqueeze(-1)  # [batch, Q, 1]
        index_shape = (-1, -1, frames.shape[-1])
        low_values = ordered.gather(1, lower.unsqueeze(-1).expand(index_shape))
        high_values = ordered.gather(1, upper.unsqueeze(-1).expand(index_shape))
        values = low_values + fraction * (high_values - low_values)  # [batch, Q, D]
        return values.transpose(1, 2).reshape(frames.shape[0], -1)


class MaxPooling(Pooling):
    name = "max"

    def __init__(self, dim: int) -> None:
        super().__init__(dim, dim)

    def forward(self, frames: Tensor, mask: Tensor | None = None) -> Tensor:
        mask = self._check(frames, mask)
        filled = frames.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        return filled.max(dim=1).values


def _gather_frame(frames: Tensor, index: Tensor) -> Tensor:
    """``frames [batch, T, D]``, ``index [batch]`` -> ``frames[b, index[b]]`` ``[batch, D]``."""
    expanded = index.view(-1, 1, 1).expand(-1, 1, frames.shape[-1])
    return frames.gather(1, expanded).squeeze(1)


class FramePicking(Pooling):
    """``first``, ``last``, ``middle`` and ``random``: pick one valid frame per utterance."""

    def __init__(self, dim: int, which: str) -> None:
        if which not in ("first", "last", "middle", "random"):
            raise ValueError(f"frame picking: unknown position '{which}'")
        self.name = which
        super().__init__(dim, dim)

    def frame_index(self, mask: Tensor) -> Tensor:
        """Index of the frame to read for each row, ``[batch]``."""
        lengths = valid_lengths(mask)
        if self.name == "first":
            return torch.zeros_like(lengths)
        if self.name == "last":
            return lengths - 1
        if self.name == "random" and self.training:
            draws = torch.rand(lengths.shape, device=lengths.device)
            return (draws * lengths).long().clamp(max=lengths - 1)
        return (lengths - 1) // 2  # middle; also "random" in eval mode

    def forward(self, frames: Tensor, mask: Tensor | None = None) -> Tensor:
        mask = self._check(frames, mask)
        return _gather_frame(frames, self.frame_index(mask))


class ClsPooling(Pooling):
    """``first+cls``: a learnable CLS vector in front of the transformer input, read at 0."""

    name = "first+cls"
    needs_prefix = True

    def __init__(self, dim: int, init_std: float = 0.02) -> None:
        super().__init__(dim, dim)
        self.cls_token = nn.Parameter(torch.randn(dim) * init_std)

    def prefix_tokens(self) -> Tensor:
        """Vectors the encoder prepends to the transformer input, ``[n_prefix=1, D]``."""
        return self.cls_token.unsqueeze(0)

    def forward(self, frames: Tensor, mask: Tensor | None = None) -> Tensor:
        self._check(frames, mask)
        return frames[:, 0]


class NoPooling(Pooling):
    """``none``: frames pass through (``[batch, T, D]``) for frame-level (CTC) heads."""

    name = "none"
    frame_level = True

    def __init__(self, dim: int) -> None:
        super().__init__(dim, dim)

    def forward(self, frames: Tensor, mask: Tensor | None = None) -> Tensor:
        self._check(frames, mask)
        return frames


POOLING_OPTIONS: dict[str, tuple[str, ...]] = {
    "attentive": ("hidden_dim",),
    "quantile": ("quantiles",),
    "first+cls": ("init_std",),
}


def pooling_options(
    name: str, options: Mapping[str, object], where: str = "pooling"
) -> dict[str, object]:
    """``options`` of pooling ``name`` checked and converted, or a ``ValueError`` naming
    ``<where>`` and the option; needs no frame size, so a config is checked before its model
    (with its SSL encoder) is built.

    Each option would otherwise fail deep in torch or, worse, build a pooling that is not
    what was asked: ``hidden_dim: 0`` gives attention weights that ignore the frames,
    ``quantiles: "0.1,0.9"`` iterates the characters, ``init_std: .nan`` a NaN CLS token.
    """
    if name not in POOLING_NAMES:
        raise ValueError(
            f"{where}: unknown pooling {name!r}; choose one of {', '.join(POOLING_NAMES)}"
        )
    allowed = POOLING_OPTIONS.get(name, ())
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{where} '{name}': unknown option(s) {unknown}; allowed {list(allowed)}")
    checked: dict[str, object] = dict(options)
    if "hidden_dim" in options:
        hidden = as_int(options["hidden_dim"], f"{where}.hidden_dim")
        if hidden < 1:
            raise ValueError(f"{where}.hidden_dim must be >= 1, got {options['hidden_dim']!r}")
        checked["hidden_dim"] = hidden
    if "quantiles" in options:
        checked["quantiles"] = _checked_quantiles(options["quantiles"], f"{where}.quantiles")
    if "init_std" in options:
        std = as_float(options["init_std"], f"{where}.init_std")
        if not 0 <= std < math.inf:
            raise ValueError(f"{where}.init_std must be a finite number >= 0, got {std}")
        checked["init_std"] = std
    return checked


def _checked_quantiles(value: object, key: str) -> tuple[float, ...]:
    """A non-empty list of numbers in [0, 1]."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"{key} must be a non-empty list of numbers in [0, 1], got {value!r}")
    quantiles = tuple(as_float(q, f"{key}[{i}]") for i, q in enumerate(value))
    if not all(0.0 <= q <= 1.0 for q in quantiles):
        raise ValueError(f"{key} must lie in [0, 1], got {list(quantiles)}")
    return quantiles


def build_pooling(name: str, dim: int, **options: object) -> Pooling:
    """Build pooling ``name`` (one of :data:`POOLING_NAMES`) for frames of size ``dim``.

    ``options`` (see :func:`pooling_options`): ``hidden_dim`` for ``attentive``;
    ``quantiles`` for ``quantile``; ``init_std`` for ``first+cls``. The result has
    ``.output_dim``.
    """
    options = pooling_options(name, options)
    if name in ("first", "last", "middle", "random"):
        return FramePicking(dim, name)
    if name == "quantile":
        return QuantilePooling(dim, options.get("quantiles", QUANTILES))  # type: ignore[arg-type]
    simple: dict[str, type[Pooling]] = {
        "mean": MeanPooling,
        "mean+std": MeanStdPooling,
        "attentive": AttentiveStatisticsPooling,
        "max": MaxPooling,
        "first+cls": ClsPooling,
        "none": NoPooling,
    }
    return simple[name](dim, **options)  # type: ignore[arg-type]
