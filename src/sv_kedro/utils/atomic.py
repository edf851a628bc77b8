"""Atomic file writes: write to a temporary file beside the target, then rename.

A reader never sees a half-written file, and an interrupted run leaves either the old
file or nothing, never a truncated one.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# mkstemp creates its file 0600; the renamed file should get the mode a plain open() gives.
# The umask can only be read by setting it, so it is read once, at import.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_write_path(target: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success.

    The temporary file keeps the target's suffix (or ``suffix``) so that libraries which
    pick a format from the extension (soundfile, pandas) still do the right thing.
    On an exception the temporary file is removed and ``target`` is left untouched. The
    file ends with the usual permissions (``0666`` less the umask), not ``mkstemp``'s 0600.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}."
    tmp_suffix = f".tmp{target.suffix if suffix is None else suffix}"
    # A killed writer (SIGKILL, power loss) could not remove its temporary file; the next
    # write of the same target does, so interrupted runs leave no debris behind.
    for leftover in target.parent.glob(f"{glob.escape(prefix)}*{glob.escape(tmp_suffix)}"):
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            leftover.unlink()
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=tmp_suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.is_file():
            tmp.chmod(0o666 & ~_UMASK)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_write_path(target) as tmp:
        tmp.write_bytes(data)
