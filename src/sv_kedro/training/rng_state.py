"""The global random generators' state as tensors, so it rides in a weights-only checkpoint.

Python's ``random``, NumPy's legacy global generator and torch's CPU (+CUDA) generators:
a resumed run draws the same crops, augmentations and dropout masks as an unbroken one.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from sv_kedro.training.checkpoint import CheckpointError

RNG_KEYS = (
    "python_version",
    "python_state",
    "python_gauss",
    "numpy_keys",
    "numpy_pos",
    "numpy_has_gauss",
    "numpy_cached_gaussian",
    "torch_cpu",
)


def capture_rng_state() -> dict[str, torch.Tensor | list[torch.Tensor]]:
    """Python ``random``, NumPy's legacy global generator and torch CPU (+CUDA) states.

    Everything is a tensor (or a list of CUDA state tensors), so the dict survives
    ``weights_only=True`` loading. ``restore_rng_state`` puts it back.
    """
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state(legacy=True)
    if np_name != "MT19937":
        raise CheckpointError(f"unexpected NumPy bit generator {np_name!r}")
    state: dict[str, torch.Tensor | list[torch.Tensor]] = {
        "python_version": torch.tensor(py_version, dtype=torch.int64),
        # MT19937 words are < 2**32, so int64 holds them exactly.
        "python_state": torch.tensor(py_internal, dtype=torch.int64),
        "python_gauss": torch.tensor([] if py_gauss is None else [py_gauss], dtype=torch.float64),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64).copy()),
        "numpy_pos": torch.tensor(int(np_pos), dtype=torch.int64),
        "numpy_has_gauss": torch.tensor(int(np_has_gauss), dtype=torch.int64),
        "numpy_cached_gaussian": torch.tensor(float(np_cached), dtype=torch.float64),
        "torch_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators captured by ``capture_rng_state``."""
    missing = [key for key in RNG_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"rng state lacks key(s) {missing}")
    python_gauss = state["python_gauss"].tolist()
    random.setstate(
        (
            int(state["python_version"]),
            tuple(int(v) for v in state["python_state"].tolist()),
            python_gauss[0] if python_gauss else None,
        )
    )
    np.random.set_state(
        (
            "MT19937",
            np.asarray(state["numpy_keys"].numpy(), dtype=np.uint32),
            int(state["numpy_pos"]),
            int(state["numpy_has_gauss"]),
            float(state["numpy_cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch_cpu"].to(torch.uint8).cpu())
    cuda_states = state.get("torch_cuda")
    if cuda_states and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if len(cuda_states) != count:
            warnings.warn(
                f"checkpoint holds RNG states for {len(cuda_states)} CUDA device(s), "
                f"this machine has {count}; restoring the first {min(count, len(cuda_states))}",
                stacklevel=2,
            )
        for device, device_state in enumerate(cuda_states[:count]):
            torch.cuda.set_rng_state(device_state.cpu(), device)
