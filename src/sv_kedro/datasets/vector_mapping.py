"""An external ``{utt_id: vector}`` mapping (a ``.pt`` embeddings file) as an ``EmbeddingTable``.

Every value is checked (string key, float tensor or array, one common dimension) so a bad
file fails with the offending utterance named instead of somewhere inside scoring.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from kedro.io.core import DatasetError

from sv_kedro.scoring.embedding_table import EmbeddingError, EmbeddingTable
from sv_kedro.training.checkpoint import REQUIRED_KEYS

_SHOWN = 5  # example keys quoted in a message


def table_from_vectors(mapping: Mapping[str, Any], source: str = "<embeddings>") -> EmbeddingTable:
    """``{utt_id: vector}`` (tensors or arrays, ``[dim]`` or ``[1, dim]``) -> ``EmbeddingTable``.

    Raises ``DatasetError`` naming the first key whose value is not a float vector, or,
    when the lengths differ, the keys whose length is not the most common one.
    """
    if not mapping:
        raise DatasetError(f"{source}: no embeddings")
    checkpoint_keys = [key for key in REQUIRED_KEYS if key in mapping]
    if len(checkpoint_keys) >= 2:
        raise DatasetError(
            f"{source} is a model checkpoint (it has the keys {checkpoint_keys}), not an "
            "embeddings file: pass it as the checkpoint, not the embeddings"
        )
    keys: list[str] = []
    rows: list[Any] = []
    keys_by_dim: defaultdict[int, list[str]] = defaultdict(list)
    all_tensors = True
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise DatasetError(f"{source}: key {key!r} is a {type(key).__name__}, not a string")
        is_tensor = isinstance(value, torch.Tensor)
        if not is_tensor:
            if not isinstance(value, np.ndarray):
                raise DatasetError(
                    f"{source}: embedding {key!r} is a {type(value).__name__}, "
                    "not a tensor or array"
                )
            all_tensors = False
        shape = tuple(value.shape)
        if is_tensor:
            floating, size = value.is_floating_point(), value.numel()
        else:
            floating, size = np.issubdtype(value.dtype, np.floating), value.size
        if not floating:
            raise DatasetError(f"{source}: embedding {key!r} has dtype {value.dtype}, not float")
        if len(shape) != 1 and (not shape or sum(n > 1 for n in shape) > 1):
            raise DatasetError(f"{source}: embedding {key!r} has shape {shape}, not a vector")
        keys_by_dim[size].append(key)
        keys.append(key)
        rows.append(value.reshape(-1))
    if len(keys_by_dim) > 1:
        raise DatasetError(_mixed_lengths(keys_by_dim, source))
    if all_tensors:
        vectors = torch.stack([row.detach().cpu() for row in rows]).float().numpy()
    else:
        vectors = np.stack(
            [
                row.detach().cpu().float().numpy() if isinstance(row, torch.Tensor) else row
                for row in rows
            ]
        ).astype(np.float32, copy=False)
    try:
        return EmbeddingTable(keys, vectors)
    except EmbeddingError as exc:
        raise DatasetError(f"{source}: {exc}") from exc


def _mixed_lengths(keys_by_dim: Mapping[int, list[str]], source: str) -> str:
    """Name the odd ones out: the keys whose length is not the most common one."""
    groups = sorted(keys_by_dim.items(), key=lambda item: -len(item[1]))
    (common, common_keys), others = groups[0], groups[1:]
    if len(common_keys) == len(others[0][1]):
        lengths = {dim: members[:_SHOWN] for dim, members in groups}
        return f"{source}: embeddings differ in length, with no majority: {lengths}"
    odd = [(key, dim) for dim, members in others for key in members]
    examples = ", ".join(f"{key!r} has {dim}" for key, dim in odd[:_SHOWN])
    return (
        f"{source}: {len(odd)} embedding(s) differ in length from the other "
        f"{len(common_keys)}, which have {common} values: {examples}"
    )
