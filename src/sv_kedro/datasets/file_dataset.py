"""``VersionedFileDataset``: the fsspec and versioning plumbing every file dataset shares.

A subclass calls ``super().__init__(filepath=..., version=..., credentials=...,
fs_args=..., metadata=...)`` and implements ``load``/``save``; it gets the filesystem
(``self._fs``, ``self._protocol``), Kedro versioning, ``_describe`` (extend it with
``_describe_options``), ``_exists`` (override ``_exists_marker`` when a file other than the
path marks a complete dataset) and cache invalidation. :func:`check_known_args` refuses
misspelt ``load_args`` / ``save_args`` keys, which would otherwise be ignored.
"""

from __future__ import annotations

import os
from copy import deepcopy
from pathlib import PurePosixPath
from typing import Any, TypeVar

import fsspec
from kedro.io.core import (
    AbstractVersionedDataset,
    DatasetError,
    Version,
    get_filepath_str,
    get_protocol_and_path,
)

_DI = TypeVar("_DI")
_DO = TypeVar("_DO")


class VersionedFileDataset(AbstractVersionedDataset[_DI, _DO]):
    """A versionable dataset stored at one path of any fsspec filesystem."""

    def __init__(
        self,
        *,
        filepath: str | os.PathLike[str],
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        fs_options = {**deepcopy(credentials or {}), **deepcopy(fs_args or {})}
        protocol, path = get_protocol_and_path(os.fspath(filepath), version)
        if protocol == "file":
            fs_options.setdefault("auto_mkdir", True)
        self._protocol = protocol
        self._fs = fsspec.filesystem(protocol, **fs_options)
        self.metadata = metadata
        super().__init__(
            filepath=PurePosixPath(path),
            version=version,
            exists_function=self._fs.exists,
            glob_function=self._fs.glob,
        )

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": self._filepath,
            "protocol": self._protocol,
            **self._describe_options(),
            "version": self._version,
        }

    def _describe_options(self) -> dict[str, Any]:
        """The subclass's own settings for ``_describe`` (format, load/save args)."""
        return {}

    def _exists_marker(self, path: str) -> str:
        """The file whose presence means the dataset at ``path`` exists (``path`` itself)."""
        return path

    def _exists(self) -> bool:
        try:
            path = get_filepath_str(self._get_load_path(), self._protocol)
        except DatasetError:
            return False
        return bool(self._fs.exists(self._exists_marker(path)))

    def _release(self) -> None:
        super()._release()
        self._invalidate_cache()

    def _invalidate_cache(self) -> None:
        self._fs.invalidate_cache(get_filepath_str(self._filepath, self._protocol))


def check_known_args(
    what: str, given: dict[str, Any] | None, allowed: dict[str, Any], filepath: object
) -> None:
    """Refuse keys of ``given`` (``load_args``/``save_args``) that ``allowed`` lacks."""
    unknown = sorted(set(given or {}) - set(allowed))
    if unknown:
        raise DatasetError(f"{filepath}: unknown {what} {unknown}; allowed: {sorted(allowed)}")
