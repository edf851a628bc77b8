"""Paths given in parameters: resolved against the project root, several roots in one value."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute: ``~`` expanded, relative paths taken from the working directory.

    ``kedro run`` runs from the project root, so ``data/...`` and ``../shared/...`` in the
    parameters mean the same thing as in the catalog.
    """
    expanded = Path(path).expanduser()
    return expanded if expanded.is_absolute() else (Path.cwd() / expanded).resolve()


def split_roots(value: Any, parameter: str) -> list[str]:
    """Roots as a list; a string may hold several separated by ``os.pathsep``.

    ``kedro run --params`` splits its argument at commas, so several roots on the command
    line are written ``<parameter>=/a:/b``. ``parameter`` names the key in error messages.
    """
    if isinstance(value, (str, os.PathLike)):
        roots = [part for part in str(value).split(os.pathsep) if part]
    elif isinstance(value, (list, tuple)):
        roots = [str(part) for part in value]
    else:
        raise ValueError(f"parameter {parameter} must be a list of paths, got {value!r}")
    if not roots:
        raise ValueError(
            f"parameter {parameter} is empty: list the corpus roots, e.g. "
            f'--params "{parameter}=[/data/corpus]" or conf/local'
        )
    return roots
