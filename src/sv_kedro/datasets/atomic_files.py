"""kedro-datasets' Parquet, CSV, JSON and text datasets, written atomically on local disk.

The originals open the target itself for writing, so a run interrupted mid-save (or a
full disk) leaves a truncated manifest or report, and the next run fails on it far from
the cause. These classes write the file beside the target and rename it over the target
only once it is complete (``utils.atomic``). Loading, previews, ``save_args`` and remote
paths are the originals'. Saved as before: a remote path (s3://, gs://, ...), since an
object store's upload is already all or nothing, and a versioned dataset, whose every save
goes to a new folder that nothing reads before the save returns.

Use them in the catalog like the originals::

    train_manifest:
      type: sv_kedro.datasets.AtomicParquetDataset
      filepath: data/03_primary/train_manifest.parquet
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from kedro.io.core import get_filepath_str
from kedro_datasets.json import JSONDataset
from kedro_datasets.pandas import CSVDataset, ParquetDataset
from kedro_datasets.text import TextDataset

from sv_kedro.utils.atomic import atomic_write_path


class _AtomicLocalSave:
    """Mixin: the parent's ``save`` writes a temporary file, which is renamed on success.

    The parent asks ``_get_save_path`` where to write; during a save that answer is the
    temporary file, so every ``save_args`` option and format detail stays the parent's.
    """

    _atomic_target: PurePosixPath | None = None

    def save(self, data: Any) -> None:
        if getattr(self, "_protocol", None) != "file" or getattr(self, "_version", None):
            super().save(data)  # type: ignore[misc]
            return
        target = get_filepath_str(self._get_save_path(), "file")
        with atomic_write_path(target) as tmp:
            self._atomic_target = PurePosixPath(tmp)
            try:
                super().save(data)  # type: ignore[misc]
            finally:
                self._atomic_target = None

    def _get_save_path(self) -> PurePosixPath:
        if self._atomic_target is not None:
            return self._atomic_target
        return super()._get_save_path()  # type: ignore[misc]


class AtomicParquetDataset(_AtomicLocalSave, ParquetDataset):
    """``pandas.ParquetDataset`` whose local saves are atomic."""


class AtomicCSVDataset(_AtomicLocalSave, CSVDataset):
    """``pandas.CSVDataset`` whose local saves are atomic."""


class AtomicJSONDataset(_AtomicLocalSave, JSONDataset):
    """``json.JSONDataset`` whose local saves are atomic."""


class AtomicTextDataset(_AtomicLocalSave, TextDataset):
    """``text.TextDataset`` whose local saves are atomic."""
