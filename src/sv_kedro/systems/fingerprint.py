"""Run fingerprints: which training folder a run resumes from.

A training run resumes from ``<work_dir>/<fingerprint>/checkpoints/last.pt``. The
fingerprint covers everything the run learns from (settings, the training utterances and
their labels, the weights it starts from), so a changed setting, new pseudo-labels or a
retrained previous stage start a fresh folder instead of silently continuing a run that
learned something else, while an interrupted identical run picks up where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch

MANIFEST_COLUMNS: tuple[str, ...] = ("utt_id", "speaker_index", "path")
# Settings that change how a run reports, not what it learns: changing them resumes.
REPORTING_KEYS = frozenset({"log_every", "progress_bar", "checkpoint_every_steps"})


def state_digest(state: Mapping[str, torch.Tensor], digest: Any) -> None:
    """Feed a model state dict into ``digest`` (names, dtypes, shapes and every value).

    The dtype counts: float16 and bfloat16 weights of one shape can share their bytes.
    """
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
        digest.update(value.view(-1).view(torch.uint8).numpy().tobytes())


def run_fingerprint(
    train_manifest: pd.DataFrame,
    settings: Mapping[str, Any],
    initial_state: Mapping[str, torch.Tensor] | None = None,
) -> str:
    """12 hex digits identifying what a run learns from: ``settings`` (JSON-able), the
    manifest's ``utt_id`` / ``speaker_index`` / ``path`` columns and ``initial_state``.

    Keys in ``REPORTING_KEYS`` are left out at any depth of ``settings``.
    """
    learned = _without_reporting_keys(settings)
    digest = hashlib.sha256(json.dumps(learned, sort_keys=True, default=str).encode())
    columns = [c for c in MANIFEST_COLUMNS if c in train_manifest.columns]
    digest.update(pd.util.hash_pandas_object(train_manifest[columns], index=False).values)
    if initial_state is not None:
        state_digest(initial_state, digest)
    return digest.hexdigest()[:12]


def _without_reporting_keys(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            key: _without_reporting_keys(item)
            for key, item in value.items()
            if key not in REPORTING_KEYS
        }
    if isinstance(value, (list, tuple)):
        return [_without_reporting_keys(item) for item in value]
    return value
