"""An external ``{utt_id: vector}`` mapping (a ``.pt`` embeddings file) as an ``EmbeddingTable``.

Every value is checked (string key, float tensor or array, one common dimension) so a bad
file fails with the offending utterance named instead of somewhere inside scoring.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from kedro.io.core import DatasetError

from sv_kedro.scoring.embedding_table import EmbeddingError, EmbeddingTable


def table_from_vectors(mapping: Mapping[str, Any], source: str = "<embeddings>") -> EmbeddingTable:
    """``{utt_id: vector}`` (tensors or arrays, ``[dim]`` or ``[1, dim]``) -> ``EmbeddingTable``.

    Raises ``DatasetError`` naming the first key whose value is not a float vector of the
    common dimension.
    """
    if not mapping:
        raise DatasetError(f"{source}: no embeddings")
    keys: list[str] = []
    rows: list[Any] = []
    dim: int | None = None
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
        if dim is None:
            dim = size
        elif size != dim:
            raise DatasetError(
                f"{source}: embedding {key!r} has {size} values, the others have {dim}"
            )
        keys.append(key)
        rows.append(value.reshape(-1))
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
