"""Optimisers and parameter groups: separate encoder/head LRs and layer-wise LR decay.

Layer-wise decay (as in BEiT / data2vec fine-tuning): with ``L`` transformer layers found
by ``layer_pattern`` under ``encoder_prefix``, a parameter of layer ``i`` (0-based) sits at
depth ``d = i + 1``; every other encoder parameter (CNN feature extractor, feature
projection, positional convolution, ...) sits at depth 0. Its LR is
``base_lr * layer_decay ** (L - d)``: the top layer gets ``base_lr``, lower layers get
geometrically less. Parameters outside the encoder (pooling, heads) get ``head_lr``.
Biases and normalisation weights (1-d tensors) get no weight decay.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "adamw", "sgd")
DEFAULT_LAYER_PATTERN = r"(?:^|\.)layers?\.(\d+)\."


def build_param_groups(
    model: nn.Module,
    base_lr: float,
    head_lr: float | None = None,
    layer_decay: float = 1.0,
    weight_decay: float = 0.0,
    encoder_prefix: str = "encoder.",
    layer_pattern: str = DEFAULT_LAYER_PATTERN,
) -> list[dict[str, Any]]:
    """Parameter groups for ``torch.optim`` with per-depth LRs.

    Args:
        model: the (unwrapped) model; frozen parameters (``requires_grad=False``) are skipped.
        base_lr: LR of the encoder's top layer (and of the whole encoder without decay).
        head_lr: LR of everything outside ``encoder_prefix``; ``None`` means ``base_lr``.
        layer_decay: factor in (0, 1] applied once per layer below the top.
        weight_decay: applied to tensors with 2+ dims; biases and norms get 0.
        encoder_prefix: parameter-name prefix of the encoder (e.g. ``"encoder."``).
        layer_pattern: regex whose first group is the layer index inside an encoder name.

    Returns:
        A list of dicts with ``params``, ``lr``, ``weight_decay`` and a ``name`` such as
        ``"encoder.depth3"`` or ``"head"`` (extra keys are kept by torch optimisers and
        make logs readable).
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must lie in (0, 1], got {layer_decay}")
    if base_lr <= 0 or (head_lr is not None and head_lr <= 0):
        raise ValueError(f"learning rates must be > 0, got lr={base_lr}, head_lr={head_lr}")
    head_lr = base_lr if head_lr is None else head_lr
    pattern = re.compile(layer_pattern)

    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    depths: dict[str, int] = {}
    for name, _ in trainable:
        if encoder_prefix and name.startswith(encoder_prefix):
            match = pattern.search(name[len(encoder_prefix) :])
            depths[name] = int(match.group(1)) + 1 if match else 0
    num_layers = max(depths.values(), default=0)
    if not depths and head_lr != base_lr:
        logger.warning(
            "no trainable parameter starts with encoder_prefix=%r; every parameter gets "
            "head_lr=%g and lr=%g is unused",
            encoder_prefix,
            head_lr,
            base_lr,
        )

    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, param in trainable:
        # Without weight decay there is nothing to split: fewer groups, faster steps.
        decays = param.ndim >= 2 or weight_decay == 0.0
        if name in depths:
            depth = depths[name]
            key = (f"encoder.depth{depth}", decays)
            lr = base_lr * layer_decay ** (num_layers - depth)
        else:
            key = ("head", decays)
            lr = head_lr
        group = groups.setdefault(
            key,
            {
                "params": [],
                "lr": lr,
                "weight_decay": weight_decay if decays else 0.0,
                "name": key[0] if decays else f"{key[0]}.no_decay",
            },
        )
        group["params"].append(param)
    # Deterministic order (lowest encoder depth first, head last) so that optimiser
    # state_dicts line up across processes and resumes.
    return sorted(groups.values(), key=lambda g: _group_order(g["name"]))


def _group_order(name: str) -> tuple[int, int, str]:
    if name.startswith("encoder.depth"):
        return (0, int(name.removeprefix("encoder.depth").split(".")[0]), name)
    return (1, 0, name)


def build_optimizer(
    param_groups: Iterable[dict[str, Any]],
    name: str = "adamw",
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    momentum: float = 0.9,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """``adam`` | ``adamw`` | ``sgd`` over the given groups (each carries its LR and decay)."""
    groups = list(param_groups)
    default_lr = groups[0]["lr"] if groups else 1e-3
    if name == "adam":
        return torch.optim.Adam(groups, lr=default_lr, betas=tuple(betas), eps=eps)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=default_lr, betas=tuple(betas), eps=eps)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=default_lr, momentum=momentum, nesterov=nesterov)
    raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {name!r}")
