"""Why a checkpoint file cannot be read, in words: damaged bytes (zip CRC-32), not torch
data at all, a plain pickle, a folder, a bare ``state_dict``, or objects the weights-only
loader refuses. ``training.checkpoint`` and the fairseq reader raise these messages.
"""

from __future__ import annotations

import os
import re
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

# What torch says when the weights-only unpickler meets a global outside its allow-list
# (``Unsupported global: GLOBAL ...``, or ``... unsupported GLOBAL ... is blocked``); its
# other refusals (``Unsupported operand 197``) are what random bytes produce.
REFUSED_GLOBAL = re.compile(r"unsupported global", re.IGNORECASE)
# Every torch.save file starts with one of these: a zip archive (torch >= 1.6) or the
# legacy format's pickle protocol opcode.
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"
_LEGACY_TORCH = b"\x80\x02"  # torch.save(..., _use_new_zipfile_serialization=False)


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read; the message names the file and key."""


def verify_zip_checksums(
    source: str | os.PathLike[str] | BinaryIO, name: str, tensor_data: bool = True
) -> None:
    """Raise ``CheckpointError`` naming the first member of a torch zip whose bytes fail
    their CRC-32 (see :func:`zip_member_damage`)."""
    damage = zip_member_damage(source, tensor_data)
    if damage:
        raise CheckpointError(f"{name}: {damage}")


def zip_member_damage(
    source: str | os.PathLike[str] | BinaryIO, tensor_data: bool = True
) -> str | None:
    """Why a torch zip is damaged (its first member whose bytes fail their CRC-32, or that
    cannot be read), checking all members or, with ``tensor_data=False``, all but
    ``<archive>/data/*``; ``None`` when the members read back intact.

    torch.load does not check the CRCs, so a damaged tensor would load as wrong weights. A
    file that is not a zip (torch's legacy format, or no torch file at all) is left to
    torch's reader, as is a stream that cannot seek back to where it was.
    """
    if not isinstance(source, (str, os.PathLike)):
        try:
            start = source.tell() if source.seekable() else None
        except (AttributeError, OSError, ValueError):
            start = None
        if start is None:
            return None
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        archive = None
    try:
        if archive is None:
            return None
        with archive:
            return _first_damaged_member(archive, tensor_data)
    finally:
        if not isinstance(source, (str, os.PathLike)):
            source.seek(start)


def _first_damaged_member(archive: zipfile.ZipFile, tensor_data: bool) -> str | None:
    members = [
        info
        for info in archive.infolist()
        if tensor_data or info.filename.split("/")[1:2] != ["data"]
    ]
    if not any(info.CRC for info in members if info.file_size):
        # torch.save under torch.utils.serialization.config.save.compute_crc32 = False
        # stores 0 for every CRC: there is nothing to verify, and no damage to report.
        return None
    for info in members:
        try:
            with archive.open(info) as member:
                while member.read(1 << 20):
                    pass
        except zipfile.BadZipFile as exc:
            what = "fails its CRC check" if "CRC" in str(exc) else f"is damaged ({exc})"
            return f"corrupt: {info.filename} {what}"
        except (OSError, EOFError, ValueError, zlib.error) as exc:
            return f"corrupt or truncated: {info.filename} cannot be read ({exc})"
    return None


def unreadable_reason(
    source: str | os.PathLike[str] | BinaryIO, name: str, exc: BaseException
) -> str:
    """Why ``source`` did not load: not torch data at all, or a damaged torch file."""
    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        return folder_message(name)
    head = _file_head(source)
    if head == b"":
        return f"{name}: not a readable torch file: it is empty"
    if head is not None and not head.startswith((_ZIP_MAGIC, _PICKLE_PROTO)):
        return (
            f"{name}: not a readable torch file: neither a zip archive nor a pickle "
            f"stream (it starts with {head!r})"
        )
    if head is not None and head.startswith(_PICKLE_PROTO) and not head.startswith(_LEGACY_TORCH):
        # torch.save writes a zip archive (or, in its legacy format, pickle protocol 2): a
        # pickle of another protocol came from pickle.dump, not from torch.save.
        return (
            f"{name}: a plain pickle (pickle.dump), not a torch.save file, so it is not read "
            "(unpickling can run code); re-save it with torch.save, e.g. "
            "torch.save({utt_id: torch.as_tensor(vector)}, path)"
        )
    return f"{name}: not a readable torch file: corrupt or truncated ({refusal_detail(exc)})"


def folder_message(name: str) -> str:
    """Why a folder is not loaded, and what the caller probably meant."""
    folder = Path(name)
    if (folder / "config.json").is_file():
        # What save_pretrained writes: an encoder to fine-tune, not a trained model.
        hint = (
            "; it looks like a Hugging Face (pre-trained encoder) folder, which belongs in "
            "model.encoder.pretrained of a training config, not here: pass the "
            "checkpoint .pt file a training run writes"
        )
    else:
        inside = sorted(path.name for path in folder.glob("*.pt"))[:3]
        hint = f"; pass a checkpoint file inside it, e.g. {inside}" if inside else ""
    return f"{name}: is a folder, not a torch file{hint}"


def bare_state_hint(payload: Mapping[str, Any]) -> str:
    """A hint when ``payload`` is a plain ``model.state_dict()`` (name -> tensor)."""
    if payload and all(isinstance(value, torch.Tensor) for value in payload.values()):
        return (
            "; it looks like a bare state_dict (name -> tensor), not a project checkpoint, "
            "which also stores the model config the model is rebuilt from (write one with "
            "build_checkpoint and save_checkpoint)"
        )
    return ""


def _file_head(source: str | os.PathLike[str] | BinaryIO) -> bytes | None:
    """The first bytes of ``source`` (from the start of a stream); ``None`` when unknown."""
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as handle:
                return handle.read(len(_ZIP_MAGIC))
        source.seek(0)
        return source.read(len(_ZIP_MAGIC))
    except (OSError, AttributeError, ValueError):
        return None


def refusal_detail(exc: BaseException) -> str:
    """The informative sentence of torch's long weights-only message (or its first line)."""
    text = str(exc).strip()
    marker = "WeightsUnpickler error:"
    if marker in text:
        return "Detail: " + _first_sentence(text.split(marker, 1)[1])
    # A blocked module's refusal comes without the marker, after torch's general advice.
    refusal = next((line for line in text.splitlines() if REFUSED_GLOBAL.search(line)), None)
    if refusal is not None:
        return "Detail: " + _first_sentence(refusal)
    return _first_sentence(text) if text else type(exc).__name__


def _first_sentence(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line.split(". ", 1)[0].strip().rstrip(".") + "."
