"""Damaging a torch zip file the way a bad disk or copy does: a few bytes flipped inside
one member's stored data, the archive's structure left intact (so only CRCs can tell)."""

from __future__ import annotations

import zipfile
from pathlib import Path


def flip_member_bytes(
    path: str | Path, member: str | None = None, count: int = 256, mask: int = 0xFF
) -> str:
    """XOR ``count`` bytes in the middle of ``member``'s data (the largest member by
    default) with ``mask``; returns the member's name."""
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    info = (
        max(infos, key=lambda i: i.file_size)
        if member is None
        else next(i for i in infos if i.filename == member)
    )
    with open(path, "r+b") as handle:
        # The local header: 30 bytes, then the name and the extra field (lengths at 26, 28).
        handle.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(handle.read(2), "little") for _ in range(2))
        count = min(count, info.file_size)
        middle = info.header_offset + 30 + name_len + extra_len + (info.file_size - count) // 2
        handle.seek(middle)
        flipped = bytes(byte ^ mask for byte in handle.read(count))
        handle.seek(middle)
        handle.write(flipped)
    return info.filename
