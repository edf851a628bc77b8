"""Training checkpoints: one plain dict, written atomically, read with ``weights_only=True``.

The payload (``format_version`` 1)::

    {
        "format_version": 1,
        "architecture": str,                   # e.g. "wavlm_mhfa", "ecapa_tdnn"
        "model_config": dict,                  # JSON-able constructor arguments
        "model_state": {name: Tensor},         # the model's state_dict
        "training_state": {
            "epoch": int, "step": int,
            "optimizer": state_dict | None, "scheduler": state_dict | None,
            "rng": dict of tensors | None,     # from ``rng_state.capture_rng_state()``
            "sampler": dict | None, "loss_gate": dict | None,
        },
        "metrics": {name: float},
    }

Only what ``torch.load(weights_only=True)`` accepts may go in (tensors, numbers, strings,
``None``, lists, tuples, dicts), so loading a checkpoint can never run code; ``save``
checks this up front and names the offending key instead of writing a file that cannot
be read back.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

from sv_kedro.training.checkpoint_diagnosis import (
    REFUSED_GLOBAL,
    CheckpointError,
    bare_state_hint,
    folder_message,
    refusal_detail,
    unreadable_reason,
    verify_zip_checksums,
)
from sv_kedro.utils.atomic import atomic_write_path

CHECKPOINT_FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "format_version",
    "architecture",
    "model_config",
    "model_state",
    "training_state",
    "metrics",
)
TRAINING_STATE_KEYS = ("epoch", "step", "optimizer", "scheduler", "rng", "sampler", "loss_gate")

# Exactly the types the weights-only unpickler rebuilds without extra allow-listing;
# subclasses (numpy scalars are float subclasses, namedtuples are tuples) are not.
_SAFE_SCALARS = (type(None), bool, int, float, complex, str, bytes, bytearray)
_SAFE_DICTS = (dict, OrderedDict, Counter)
_SAFE_SEQUENCES = (list, tuple, set)
_SAFE_TORCH = (torch.Size, torch.dtype, torch.device)


def build_checkpoint(
    architecture: str,
    model_config: Mapping[str, Any],
    model_state: Mapping[str, torch.Tensor],
    *,
    epoch: int,
    step: int,
    optimizer: Mapping[str, Any] | None = None,
    scheduler: Mapping[str, Any] | None = None,
    rng: Mapping[str, Any] | None = None,
    sampler: Mapping[str, Any] | None = None,
    loss_gate: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Assemble a format-1 payload of CPU copies (loads anywhere, unaffected by later steps)."""
    payload = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "architecture": architecture,
        "model_config": dict(model_config),
        "model_state": OrderedDict(
            (name, _cpu_copy(tensor)) for name, tensor in model_state.items()
        ),
        "training_state": {
            "epoch": int(epoch),
            "step": int(step),
            "optimizer": _to_cpu(optimizer),
            "scheduler": _to_cpu(scheduler),
            "rng": None if rng is None else dict(rng),
            "sampler": None if sampler is None else dict(sampler),
            "loss_gate": None if loss_gate is None else dict(loss_gate),
        },
        "metrics": {name: float(value) for name, value in (metrics or {}).items()},
    }
    validate_checkpoint(payload)
    return payload


def validate_checkpoint(payload: Any, source: str = "<checkpoint>") -> None:
    """Raise ``CheckpointError`` naming ``source`` and the key when ``payload`` is malformed."""
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"{source}: expected a dict payload, got {type(payload).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(
            f"{source}: checkpoint lacks key(s) {missing}{bare_state_hint(payload)}"
        )
    version = payload["format_version"]
    if type(version) is not int:
        raise CheckpointError(f"{source}: format_version must be an int, got {version!r}")
    if version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: format_version {version} is newer than this code reads "
            f"({CHECKPOINT_FORMAT_VERSION}); upgrade sv-kedro"
        )
    if version < 1:
        raise CheckpointError(f"{source}: format_version must be >= 1, got {version}")
    if not isinstance(payload["architecture"], str) or not payload["architecture"]:
        raise CheckpointError(f"{source}: architecture must be a non-empty string")
    _check_model_config(payload["model_config"], source)
    check_architecture_agrees(payload["architecture"], payload["model_config"], source)
    _check_model_state(payload["model_state"], source)
    _check_training_state(payload["training_state"], source)
    _check_metrics(payload["metrics"], source)


def save_checkpoint(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> None:
    """Validate, then write ``payload`` atomically: temp file beside ``path``, fsync, rename."""
    path = Path(path)
    validate_checkpoint(payload, source=str(path))
    check_weights_only_safe(payload, source=str(path))
    with atomic_write_path(path) as tmp:
        with tmp.open("wb") as handle:
            torch.save(dict(payload), handle)
            handle.flush()
            os.fsync(handle.fileno())
    _fsync_directory(path.parent)


def checkpoint_to_bytes(payload: Mapping[str, Any]) -> bytes:
    """The serialised checkpoint (for filesystems without local paths)."""
    validate_checkpoint(payload)
    check_weights_only_safe(payload)
    buffer = io.BytesIO()
    torch.save(dict(payload), buffer)
    return buffer.getvalue()


def load_checkpoint(
    source: str | os.PathLike[str] | BinaryIO,
    map_location: str | torch.device | None = "cpu",
    mmap: bool = False,
) -> dict[str, Any]:
    """Load and validate a checkpoint with ``torch.load(weights_only=True)`` only.

    ``source`` is a path or a binary file object. ``mmap=True`` (paths only) maps tensor
    storages instead of reading them, which makes a summary of a large file cheap; files
    in torch's legacy (non-zip) format are read normally.

    The CRC-32 of every zip member is verified first (see :func:`verify_zip_checksums`;
    about 0.06 s per 100 MB from the page cache). With ``mmap=True`` only the metadata's
    are, as mapped tensor data is not read: use a mapped load for summaries, not weights.
    """
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        if Path(name).is_dir():
            raise CheckpointError(folder_message(name))
        if not Path(name).is_file():
            raise CheckpointError(f"{name}: checkpoint file not found")
    else:
        name = str(getattr(source, "name", "<stream>"))
        if mmap:
            raise CheckpointError(f"{name}: mmap needs a file path, not a stream")
    payload = torch_load_weights_only(source, name, map_location=map_location, mmap=mmap)
    validate_checkpoint(payload, source=name)
    return payload


def torch_load_weights_only(
    source: str | os.PathLike[str] | BinaryIO,
    name: str,
    map_location: str | torch.device | None = "cpu",
    mmap: bool = False,
) -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file and say why.

    A pickle that asks for any global outside torch's allow-list (a class, a function
    such as ``open`` or ``os.system``) is refused before anything is constructed. A file
    that is not a torch file at all, or a damaged one, is reported as such: torch's
    unpickler fails on random bytes with an ``UnpicklingError`` too.
    """
    if mmap and isinstance(source, (str, os.PathLike)) and not zipfile.is_zipfile(source):
        mmap = False  # legacy (pre-1.6) files cannot be mapped; read them instead
    # torch does not check the zip's CRCs; a mapped load reads (and checks) the index only.
    verify_zip_checksums(source, name, tensor_data=not mmap)
    try:
        return torch.load(source, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if REFUSED_GLOBAL.search(str(exc)) is None:
            raise CheckpointError(unreadable_reason(source, name, exc)) from exc
        raise CheckpointError(
            f"{name}: refused to load: the file holds objects that weights_only=True "
            f"loading does not allow (a pickle that could run code); only tensors, "
            f"numbers, strings and containers are accepted. {refusal_detail(exc)}"
        ) from exc
    except Exception as exc:  # a corrupt file can fail anywhere in the unpickler
        raise CheckpointError(unreadable_reason(source, name, exc)) from exc


def check_weights_only_safe(obj: Any, source: str = "<checkpoint>", where: str = "") -> None:
    """Raise naming the key path of the first value ``weights_only`` loading would refuse."""
    kind = type(obj)
    if kind in _SAFE_SCALARS or isinstance(obj, torch.Tensor) or kind in _SAFE_TORCH:
        return
    if kind in _SAFE_DICTS:
        for key, value in obj.items():
            if type(key) not in _SAFE_SCALARS:
                raise CheckpointError(
                    f"{source}: key {key!r} at {where or '<root>'} is a {type(key).__name__}; "
                    "weights_only loading cannot rebuild it"
                )
            check_weights_only_safe(value, source, f"{where}.{key}" if where else str(key))
        return
    if kind in _SAFE_SEQUENCES:
        for index, value in enumerate(obj):
            check_weights_only_safe(value, source, f"{where}[{index}]")
        return
    hint = " (convert it with torch.from_numpy or .tolist())" if kind.__module__ == "numpy" else ""
    raise CheckpointError(
        f"{source}: value at {where or '<root>'} is a {kind.__module__}.{kind.__qualname__}, "
        f"which torch.load(weights_only=True) refuses{hint}"
    )


def checkpoint_summary(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-able digest: architecture, parameter count, epoch, step, metrics, config.

    ``parameter_count`` counts the elements of the floating-point tensors of
    ``model_state`` (parameters plus float buffers such as batch-norm statistics; a
    state_dict alone cannot tell them apart).
    """
    model_state = payload.get("model_state") or {}
    training = payload.get("training_state") or {}
    float_tensors = [
        t for t in model_state.values() if isinstance(t, torch.Tensor) and t.is_floating_point()
    ]
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in float_tensors})
    return {
        "format_version": payload.get("format_version"),
        "architecture": payload.get("architecture"),
        "parameter_count": int(sum(t.numel() for t in float_tensors)),
        "state_tensors": len(model_state),
        "state_megabytes": round(
            sum(
                t.numel() * t.element_size()
                for t in model_state.values()
                if isinstance(t, torch.Tensor)
            )
            / 2**20,
            3,
        ),
        "dtypes": dtypes,
        "epoch": training.get("epoch"),
        "step": training.get("step"),
        "has_optimizer_state": training.get("optimizer") is not None,
        "has_scheduler_state": training.get("scheduler") is not None,
        "has_rng_state": training.get("rng") is not None,
        "has_sampler_state": training.get("sampler") is not None,
        "has_loss_gate_state": training.get("loss_gate") is not None,
        "metrics": {k: _json_float(v) for k, v in (payload.get("metrics") or {}).items()},
        "config": json.loads(json.dumps(payload.get("model_config") or {}, default=str)),
    }


def _check_model_config(config: Any, source: str) -> None:
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{source}: model_config must be a dict, got {type(config).__name__}")
    try:
        json.dumps(config, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: model_config is not JSON-serialisable ({exc})") from exc


def check_architecture_agrees(
    architecture: Any, model_config: Mapping[str, Any], source: str = "<checkpoint>"
) -> None:
    """Raise when ``model_config`` names an architecture other than ``architecture``.

    ``model_config`` is what rebuilds the model, so a disagreement means the file was
    hand-edited or put together from two models, and which one ``model_state`` belongs to
    cannot be told. A config without the key (a generic model's constructor arguments)
    leaves ``architecture`` a plain label and is accepted.
    """
    if "architecture" not in model_config or model_config["architecture"] == architecture:
        return
    raise CheckpointError(
        f"{source}: architecture {architecture!r} disagrees with model_config.architecture "
        f"{model_config['architecture']!r}; the checkpoint was hand-edited or mixed up from "
        "two models. Set both to the architecture model_state was trained as, or re-export "
        "the checkpoint"
    )


def _check_model_state(state: Any, source: str) -> None:
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{source}: model_state must be a state_dict (a dict of tensors)")
    for name, value in state.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{source}: model_state key {name!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{source}: model_state[{name!r}] is a {type(value).__name__}, not a tensor"
            )


def _check_training_state(training: Any, source: str) -> None:
    if not isinstance(training, Mapping):
        raise CheckpointError(f"{source}: training_state must be a dict")
    missing = [key for key in ("epoch", "step") if key not in training]
    if missing:
        raise CheckpointError(f"{source}: training_state lacks key(s) {missing}")
    for key in ("epoch", "step"):
        value = training[key]
        if type(value) is not int or value < 0:
            raise CheckpointError(
                f"{source}: training_state.{key} must be an int >= 0, got {value!r}"
            )
    for key in ("optimizer", "scheduler", "rng", "sampler", "loss_gate"):
        value = training.get(key)
        if value is not None and not isinstance(value, Mapping):
            raise CheckpointError(
                f"{source}: training_state.{key} must be a dict or None, got {type(value).__name__}"
            )


def _check_metrics(metrics: Any, source: str) -> None:
    if not isinstance(metrics, Mapping):
        raise CheckpointError(f"{source}: metrics must be a dict of name -> float")
    for name, value in metrics.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{source}: metric name {name!r} is not a string")
        if type(value) not in (int, float):
            raise CheckpointError(
                f"{source}: metrics[{name!r}] must be a float, got {type(value).__name__}"
            )


def _to_cpu(state: Mapping[str, Any] | None) -> Any:
    """Copy a (nested) state_dict with every tensor on the CPU."""
    if state is None:
        return None

    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return _cpu_copy(value)
        if type(value) in _SAFE_DICTS:
            return type(value)((k, move(v)) for k, v in value.items())
        if type(value) in (list, tuple):
            return type(value)(move(v) for v in value)
        return value

    return move(dict(state))


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    # A copy, never a view: training goes on mutating the live tensors in place, and a
    # view of a larger storage would save all of it.
    return tensor.detach().to("cpu", copy=True)


def _json_float(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def _fsync_directory(folder: Path) -> None:
    """Make the rename durable; some filesystems do not allow opening a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
