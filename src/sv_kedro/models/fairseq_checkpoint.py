"""Reading a fairseq/UniLM checkpoint file, and telling which encoder kind it holds.

The file is loaded on CPU with the safe loader first (full unpickling only with
``allow_pickle``); a damaged file is told apart from one that holds pickled objects, and
errors name ``<where>.pretrained``. :func:`check_fairseq_kind` refuses a checkpoint of the
other kind (WavLM weights with ``kind: wav2vec2``, or the reverse) before conversion would
fail with a list of keys that does not say the cause. The key conversion itself is
:mod:`sv_kedro.models.fairseq_conversion`.
"""

from __future__ import annotations

import argparse
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sv_kedro.training.checkpoint_diagnosis import (
    REFUSED_GLOBAL,
    refusal_detail,
    unreadable_reason,
    zip_member_damage,
)

FINETUNED_PREFIX = "w2v_encoder.w2v_model."
# Weights only WavLM's attention has (relative position bias, gated relative position);
# wav2vec2 (and HuBERT) layers have none, and WavLMModel cannot be built without them.
_WAVLM_WEIGHT = re.compile(
    r"encoder\.layers\.\d+\.self_attn\.(relative_attention_bias|grep_linear|grep_a)\b.*"
)
_ATTENTION_WEIGHT = re.compile(r"encoder\.layers\.\d+\.self_attn\..+")


def fairseq_checkpoint_kind(fairseq_state: Mapping[str, Any]) -> tuple[str | None, str]:
    """The encoder kind whose model ``fairseq_state`` fits, judged by its weight names, and
    why; ``(None, "")`` when it has no transformer layers to judge by."""
    names = [str(name).removeprefix(FINETUNED_PREFIX) for name in fairseq_state]
    wavlm = next((name for name in names if _WAVLM_WEIGHT.fullmatch(name)), None)
    if wavlm is not None:
        return "wavlm", f"it has WavLM's relative position weights ({wavlm})"
    if any(_ATTENTION_WEIGHT.fullmatch(name) for name in names):
        return "wav2vec2", (
            "its attention layers have none of WavLM's relative position weights "
            "(self_attn.relative_attention_bias, self_attn.grep_linear, self_attn.grep_a)"
        )
    return None, ""


def check_fairseq_kind(fairseq_state: Any, kind: str, source: str, where: str = "encoder") -> None:
    """Refuse a checkpoint of the other kind, which would otherwise fail conversion with a
    list of unconsumed or missing keys that does not say the cause."""
    if not isinstance(fairseq_state, Mapping):
        return  # conversion reports what is wrong with it
    detected, evidence = fairseq_checkpoint_kind(fairseq_state)
    if detected is None or detected == kind:
        return
    raise ValueError(
        f"{where}.kind is {kind} but {source} looks like a {detected} checkpoint ({evidence}); "
        f"set {where}.kind: {detected}"
    )


def read_fairseq_checkpoint(
    path: str | Path, allow_pickle: bool = False, where: str = "encoder"
) -> dict[str, Any]:
    """Load a torch checkpoint on CPU. Tries the safe loader first (allowing
    ``argparse.Namespace``); full unpickling only with ``allow_pickle`` (trusted files).
    Errors name ``<where>.pretrained`` and the file, and tell a damaged file from one that
    holds pickled objects."""
    path = Path(path)
    key = f"{where}.pretrained"
    if not path.is_file():
        raise FileNotFoundError(f"{key}: fairseq checkpoint not found: {path}")
    damage = checkpoint_file_damage(path)
    if damage:
        raise ValueError(f"{key}: {path} is not a readable torch checkpoint: {damage}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        checkpoint = _load_refused(path, error, allow_pickle, where)
    if not isinstance(checkpoint, Mapping) or "model" not in checkpoint:
        raise ValueError(
            f"{key}: {path} is not a fairseq checkpoint (expected a dict with a 'model' key)"
        )
    return dict(checkpoint)


def checkpoint_file_damage(path: Path) -> str | None:
    """Why ``path`` cannot be a torch checkpoint (empty, truncated, not torch data);
    ``None`` when it looks intact. Zip archives are checked member by member (CRC)."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        return "the file is empty (truncated?)"
    if head.startswith(b"\x80"):
        return None  # torch's legacy pickle format: only loading can check it
    if not head.startswith(b"PK\x03\x04"):
        return (
            "corrupt, truncated or not a torch file: neither a zip archive nor a pickle "
            f"stream (it starts with {head!r})"
        )
    if not zipfile.is_zipfile(path):
        return "corrupt or truncated zip archive (its central directory cannot be read)"
    return zip_member_damage(path)


def _load_refused(path: Path, error: Exception, allow_pickle: bool, where: str) -> Any:
    """After the safe loader failed: a damaged file is reported as such; only an intact
    file holding pickled objects is unpickled (``allow_pickle``) or sent back with advice."""
    key = f"{where}.pretrained"
    if REFUSED_GLOBAL.search(str(error)) is None:
        raise ValueError(f"{key}: {unreadable_reason(path, str(path), error)}") from error
    if not allow_pickle:
        raise ValueError(
            f"{key}: {path}: the safe loader refused this checkpoint: it holds pickled "
            f"objects other than tensors and plain data ({refusal_detail(error)}) If you "
            f"trust the file, set {where}.allow_pickle: true to unpickle it fully."
        ) from error
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (ImportError, AttributeError) as missing:
        raise ValueError(
            f"{key}: {path}: unpickling needs code that is not installed ({missing})"
        ) from missing
    except Exception as failure:
        raise ValueError(f"{key}: {unreadable_reason(path, str(path), failure)}") from failure
