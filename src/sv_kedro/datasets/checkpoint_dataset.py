"""``CheckpointDataset``: a training checkpoint (see ``sv_kedro.training.checkpoint``)."""

from __future__ import annotations

import io
import os
from typing import Any, ClassVar

from kedro.io.core import (
    DatasetError,
    Version,
    get_filepath_str,
)

from sv_kedro.datasets.file_dataset import VersionedFileDataset, check_known_args
from sv_kedro.datasets.previews import JSONPreview, json_preview
from sv_kedro.training.checkpoint import (
    CheckpointError,
    checkpoint_summary,
    checkpoint_to_bytes,
    load_checkpoint,
    save_checkpoint,
    validate_checkpoint,
)

Checkpoint = dict[str, Any]


class CheckpointDataset(VersionedFileDataset[Checkpoint, Checkpoint]):
    """Load/save the checkpoint payload dict; ``torch.load(weights_only=True)`` only.

    Catalog example::

        model_checkpoint:
          type: sv_kedro.datasets.CheckpointDataset
          filepath: data/06_models/wavlm_mhfa.pt
          versioned: true
          load_args: {map_location: cpu}

    ``load_args``: ``map_location`` (default ``cpu``) and ``mmap`` (map tensor storages
    from a local file instead of reading them). Saves are validated, then written
    atomically (temp file, fsync, rename) on local disks.
    """

    DEFAULT_LOAD_ARGS: ClassVar[dict[str, Any]] = {"map_location": "cpu", "mmap": False}

    def __init__(
        self,
        *,
        filepath: str | os.PathLike[str],
        load_args: dict[str, Any] | None = None,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        check_known_args("load_args", load_args, self.DEFAULT_LOAD_ARGS, filepath)
        super().__init__(
            filepath=filepath,
            version=version,
            credentials=credentials,
            fs_args=fs_args,
            metadata=metadata,
        )
        self._load_args = {**self.DEFAULT_LOAD_ARGS, **(load_args or {})}

    def _describe_options(self) -> dict[str, Any]:
        return {"load_args": self._load_args}

    def load(self) -> Checkpoint:
        path = get_filepath_str(self._get_load_path(), self._protocol)
        return self._read_checkpoint(path, **self._load_args)

    def save(self, data: Checkpoint) -> None:
        path = get_filepath_str(self._get_save_path(), self._protocol)
        if self._protocol == "file":
            save_checkpoint(path, data)
        else:
            validate_checkpoint(data, source=path)
            payload = checkpoint_to_bytes(data)
            with self._fs.open(path, "wb") as handle:
                handle.write(payload)
        self._invalidate_cache()

    def preview(self) -> JSONPreview:
        """Architecture, parameter count, epoch, step, metrics and model config as JSON."""
        path = get_filepath_str(self._get_load_path(), self._protocol)
        # Mapping the storages keeps the preview of a multi-GB checkpoint cheap.
        payload = self._read_checkpoint(path, map_location="cpu", mmap=self._protocol == "file")
        summary = checkpoint_summary(payload)
        summary["filepath"] = path
        summary["version"] = self.resolve_load_version()
        return json_preview(summary)

    def _read_checkpoint(self, path: str, map_location: Any, mmap: bool) -> Checkpoint:
        if not self._fs.exists(path):
            raise DatasetError(f"{path}: checkpoint file not found")
        try:
            if self._protocol == "file":
                return load_checkpoint(path, map_location=map_location, mmap=mmap)
            with self._fs.open(path, "rb") as handle:
                buffer = io.BytesIO(handle.read())
            buffer.name = path  # type: ignore[attr-defined]  # errors name the file
            return load_checkpoint(buffer, map_location=map_location)
        except CheckpointError as exc:  # preview() is not wrapped by kedro; be uniform
            raise DatasetError(str(exc)) from exc
