"""Mask helpers shared by the models: lengths -> masks, masked statistics and softmax.

Convention everywhere in ``sv_kedro.models``: a frame mask is a bool tensor ``[batch, frames]``
that is ``True`` on valid frames; valid frames come first and padding sits at the end.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Variance floor before the square root: keeps the std (and its gradient) finite for
# constant or single-frame inputs; far below the variance of any real feature.
VARIANCE_FLOOR = 1e-6


def lengths_to_mask(lengths: Tensor, max_length: int) -> Tensor:
    """``lengths [batch]`` (int) -> bool mask ``[batch, max_length]``, True on valid positions."""
    positions = torch.arange(max_length, device=lengths.device)
    return positions[None, :] < lengths[:, None]


def check_frames_and_mask(frames: Tensor, mask: Tensor | None, where: str) -> Tensor:
    """Validate ``frames [batch, T, D]`` and ``mask [batch, T]``; return a bool mask.

    A missing mask means every frame is valid. Every row must have at least one valid frame.
    """
    if frames.dim() != 3:
        raise ValueError(f"{where}: frames must be [batch, frames, dim], got {tuple(frames.shape)}")
    if mask is None:
        return torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
    if mask.shape != frames.shape[:2]:
        raise ValueError(
            f"{where}: mask shape {tuple(mask.shape)} does not match frames "
            f"{tuple(frames.shape[:2])} (expected [batch, frames])"
        )
    mask = mask.bool()
    if not bool(mask.any(dim=1).all()):
        empty = torch.nonzero(~mask.any(dim=1)).flatten().tolist()
        raise ValueError(f"{where}: rows {empty} have no valid frame")
    return mask


def masked_mean(frames: Tensor, mask: Tensor) -> Tensor:
    """Mean over valid frames: ``frames [batch, T, D]``, ``mask [batch, T]`` -> ``[batch, D]``."""
    weights = mask.to(frames.dtype).unsqueeze(-1)
    counts = weights.sum(dim=1).clamp(min=1.0)
    return (frames * weights).sum(dim=1) / counts


def masked_mean_std(frames: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and (population) standard deviation over valid frames, each ``[batch, D]``."""
    mean = masked_mean(frames, mask)
    weights = mask.to(frames.dtype).unsqueeze(-1)
    counts = weights.sum(dim=1).clamp(min=1.0)
    variance = (((frames - mean.unsqueeze(1)) ** 2) * weights).sum(dim=1) / counts
    return mean, variance.clamp(min=VARIANCE_FLOOR).sqrt()


def weighted_mean_std(frames: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std under frame weights that sum to one over time.

    ``frames [batch, T, D]``, ``weights [batch, T, D]`` or ``[batch, T, 1]`` -> ``[batch, D]`` x2.
    """
    mean = (frames * weights).sum(dim=1)
    second = (frames * frames * weights).sum(dim=1)
    variance = second - mean * mean
    return mean, variance.clamp(min=VARIANCE_FLOOR).sqrt()


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = 1) -> Tensor:
    """Softmax over ``dim`` (time) that gives exactly zero weight to padded frames.

    ``scores [batch, T, ...]``, ``mask [batch, T]`` (broadcast over trailing dims).
    """
    shape = list(mask.shape) + [1] * (scores.dim() - mask.dim())
    expanded = mask.view(shape)
    filled = scores.masked_fill(~expanded, torch.finfo(scores.dtype).min)
    weights = torch.softmax(filled, dim=dim)
    return weights * expanded.to(weights.dtype)


def valid_lengths(mask: Tensor) -> Tensor:
    """Number of valid frames per row, ``[batch]`` (int64)."""
    return mask.long().sum(dim=1)
