"""``EmbeddingsDataset``: utterance id -> speaker embedding, loaded as an ``EmbeddingTable``.

Two on-disk formats:

``pt``
    What external SSL toolkits publish: ``torch.save({utt_id: Tensor[dim]})``, keys like
    ``id00012/21Uxsk56VDQ/00001.wav``. Read with ``torch.load(weights_only=True)`` only.
    Convenient for exchange, slow at scale (one pickled tensor per utterance).
``npy`` (for a path that is no existing file and has no ``.pt``/``.pth`` suffix)
    A folder ``<name>/`` holding ``vectors.npy`` (float32 ``[n, dim]``), ``keys.txt`` (one
    utt_id per line, in row order) and ``meta.json`` (count, dim, format version; written
    last, so its presence marks a complete folder). Loads at disk speed and can be
    memory-mapped (``load_args: {mmap_mode: r}``). Written to a temp folder beside the
    target and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, ClassVar

import numpy as np
import torch
from kedro.io.core import (
    DatasetError,
    Version,
    get_filepath_str,
)

from sv_kedro.datasets.embedding_projection import (
    SPEAKER_LABELS,
    ProjectionError,
    labels_for,
    pca_2d,
    projection_png_preview,
    sample_rows,
)
from sv_kedro.datasets.file_dataset import VersionedFileDataset, check_known_args
from sv_kedro.datasets.previews import ImagePreview, TablePreview, embeddings_table_preview
from sv_kedro.datasets.vector_mapping import table_from_vectors
from sv_kedro.scoring.embedding_table import EmbeddingError, EmbeddingTable
from sv_kedro.training.checkpoint import CheckpointError, torch_load_weights_only
from sv_kedro.utils.atomic import atomic_write_path

VECTORS_FILE = "vectors.npy"
KEYS_FILE = "keys.txt"
META_FILE = "meta.json"
COMPACT_FORMAT_NAME = "sv-kedro-embeddings"
COMPACT_FORMAT_VERSION = 1
FORMATS = ("pt", "npy")
_PT_SUFFIXES = (".pt", ".pth")


class EmbeddingsDataset(VersionedFileDataset[EmbeddingTable, Any]):
    """Load an ``EmbeddingTable``; save an ``EmbeddingTable`` or ``{utt_id: tensor/array}``.

    Catalog example::

        test_embeddings:
          type: sv_kedro.datasets.EmbeddingsDataset
          filepath: data/07_model_output/test_embeddings     # npy folder
          load_args: {mmap_mode: r}
          versioned: true

        ssl_embeddings:
          type: sv_kedro.datasets.EmbeddingsDataset
          filepath: data/01_raw/dino_embeddings.pt            # format inferred: pt

    Non-finite or zero vectors load as they are; ``EmbeddingTable.check_usable()`` finds them.

    kedro-viz shows a table by default; ``metadata: {kedro-viz: {preview_args: {kind:
    projection, labels_from: speaker}}}`` shows a PCA scatter instead (see
    :meth:`projection_preview`).
    """

    DEFAULT_LOAD_ARGS: ClassVar[dict[str, Any]] = {"mmap_mode": None}

    def __init__(
        self,
        *,
        filepath: str | os.PathLike[str],
        format: str | None = None,
        load_args: dict[str, Any] | None = None,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        filepath = os.fspath(filepath)
        if format is None:
            # The compact format is a folder: a file is a torch file whatever its name
            # (published embeddings come as .pkl or .bin too).
            is_file = filepath.lower().endswith(_PT_SUFFIXES) or os.path.isfile(filepath)
            format = "pt" if is_file else "npy"
        if format not in FORMATS:
            raise DatasetError(f"{filepath}: unknown embeddings format {format!r}; use {FORMATS}")
        check_known_args("load_args", load_args, self.DEFAULT_LOAD_ARGS, filepath)
        self._format = format
        self._load_args = {**self.DEFAULT_LOAD_ARGS, **(load_args or {})}
        if self._load_args["mmap_mode"] not in (None, "r", "c"):
            raise DatasetError(f"{filepath}: mmap_mode must be null, 'r' or 'c'")
        super().__init__(
            filepath=filepath,
            version=version,
            credentials=credentials,
            fs_args=fs_args,
            metadata=metadata,
        )
        if self._load_args["mmap_mode"] and (self._protocol != "file" or format != "npy"):
            raise DatasetError(f"{filepath}: mmap_mode needs the npy format on a local disk")
        if _viz_preview_kind(metadata) == "projection":
            # kedro-viz picks its renderer from the return annotation of ``preview``, so an
            # entry that asks for the projection must expose an image-annotated preview.
            self.preview = self._viz_projection_preview  # type: ignore[method-assign]

    def _describe_options(self) -> dict[str, Any]:
        return {"format": self._format, "load_args": self._load_args}

    def load(self) -> EmbeddingTable:
        path = get_filepath_str(self._get_load_path(), self._protocol)
        if self._format == "pt":
            return self._load_pt(path)
        return self._load_npy(path)

    def save(self, data: EmbeddingTable | Mapping[str, Any]) -> None:
        path = get_filepath_str(self._get_save_path(), self._protocol)
        table = data if isinstance(data, EmbeddingTable) else table_from_vectors(data, path)
        if self._format == "pt":
            self._save_pt(table, path)
        else:
            self._save_npy(table, path)
        self._invalidate_cache()

    def _exists_marker(self, path: str) -> str:
        # The npy folder is complete once meta.json, written last, is there.
        return path if self._format == "pt" else f"{path}/{META_FILE}"

    def preview(self, nrows: int = 10, nvalues: int = 4) -> TablePreview:
        """Key, dim, L2 norm and the first ``nvalues`` values of the first ``nrows`` rows."""
        path = get_filepath_str(self._get_load_path(), self._protocol)
        if self._format == "pt":
            # A pickle cannot be read in part; at least only the shown rows are stacked.
            mapping = self._read_pt(path, mmap=self._protocol == "file")
            table = table_from_vectors(dict(islice(mapping.items(), nrows)), path)
            return embeddings_table_preview(table.keys_, table.vectors, nrows, nvalues)
        meta = self._read_meta(path)
        with self._fs.open(f"{path}/{KEYS_FILE}", "r", encoding="utf-8") as handle:
            keys = [line.rstrip("\n") for line in islice(handle, nrows)]
        if self._protocol == "file":
            vectors = np.load(f"{path}/{VECTORS_FILE}", mmap_mode="r", allow_pickle=False)
        else:
            vectors = self._load_npy(path).vectors
        _check_shape(vectors, meta, path)
        return embeddings_table_preview(keys, vectors, nrows, nvalues)

    def projection_preview(
        self,
        labels_from: str = SPEAKER_LABELS,
        label_column: str = "label",
        max_points: int = 1500,
        seed: int = 0,
    ) -> ImagePreview:
        """PNG of the embeddings' 2-D PCA projection (of L2-normalised rows), one colour per
        label: the speaker folder of the utt_id (``labels_from="speaker"``) or the
        ``label_column`` of a parquet/CSV table at path ``labels_from`` (e.g. pseudo-labels).
        At most ``max_points`` rows (a seeded sample) are read and drawn.
        """
        path = get_filepath_str(self._get_load_path(), self._protocol)
        if self._format == "pt" or self._protocol != "file":
            table = self.load()
            keys, vectors = table.keys_, table.vectors
        else:
            meta = self._read_meta(path)
            with self._fs.open(f"{path}/{KEYS_FILE}", "r", encoding="utf-8") as handle:
                keys = handle.read().split("\n")[:-1]
            vectors = np.load(f"{path}/{VECTORS_FILE}", mmap_mode="r", allow_pickle=False)
            _check_shape(vectors, meta, path)
        rows = sample_rows(len(keys), max_points, seed)
        shown_keys = [keys[i] for i in rows]
        try:
            coords, explained = pca_2d(np.asarray(vectors[rows]))
            labels = labels_for(shown_keys, labels_from, label_column)
        except ProjectionError as exc:
            raise DatasetError(f"{path}: {exc}") from exc
        label_name = SPEAKER_LABELS if labels_from == SPEAKER_LABELS else label_column
        title = f"{PurePosixPath(path).name}: PCA of {len(rows)} / {len(keys)} embeddings"
        return projection_png_preview(coords, labels, explained, title, label_name)

    def _viz_projection_preview(self, kind: str = "projection", **kwargs: Any) -> ImagePreview:
        if kind != "projection":
            raise DatasetError(f"{self._filepath}: preview kind {kind!r}; use 'projection'")
        return self.projection_preview(**kwargs)

    # -- pt --------------------------------------------------------------------------

    def _load_pt(self, path: str) -> EmbeddingTable:
        return table_from_vectors(self._read_pt(path), path)

    def _read_pt(self, path: str, mmap: bool = False) -> Mapping[str, Any]:
        if not self._fs.exists(path):
            raise DatasetError(f"{path}: embeddings file not found")
        try:
            # The loader checks the zip's CRCs (a damaged byte would load as a wrong vector,
            # not as NaN); a mapped read (a preview) checks the index only.
            if self._protocol == "file":
                mapping = torch_load_weights_only(path, path, mmap=mmap)
            else:
                with self._fs.open(path, "rb") as handle:
                    mapping = torch_load_weights_only(handle, path)
        except CheckpointError as exc:
            raise DatasetError(str(exc)) from exc
        if not isinstance(mapping, Mapping):
            raise DatasetError(
                f"{path}: expected a dict of utt_id -> tensor, got {type(mapping).__name__}"
            )
        return mapping

    def _save_pt(self, table: EmbeddingTable, path: str) -> None:
        matrix = torch.from_numpy(np.ascontiguousarray(table.vectors, dtype=np.float32))
        # One storage per tensor, as external tools publish it (a shared-storage view
        # would drag the whole matrix along when a consumer saves a single vector).
        mapping = {key: matrix[i].clone() for i, key in enumerate(table.keys_)}
        if self._protocol == "file":
            _atomic_torch_save(mapping, Path(path))
        else:
            with self._fs.open(path, "wb") as handle:
                torch.save(mapping, handle)

    # -- npy -------------------------------------------------------------------------

    def _read_meta(self, path: str) -> dict[str, Any]:
        meta_path = f"{path}/{META_FILE}"
        if not self._fs.exists(meta_path):
            what = "incomplete embeddings folder" if self._fs.exists(path) else "not found"
            raise DatasetError(f"{path}: {what} (no {META_FILE})")
        with self._fs.open(meta_path, "r", encoding="utf-8") as handle:
            try:
                meta = json.load(handle)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{meta_path}: not valid JSON ({exc})") from exc
        if meta.get("format") != COMPACT_FORMAT_NAME:
            raise DatasetError(f"{meta_path}: not an sv-kedro embeddings folder")
        if meta.get("format_version", 0) > COMPACT_FORMAT_VERSION:
            raise DatasetError(
                f"{meta_path}: format_version {meta['format_version']} is newer "
                f"than this code reads ({COMPACT_FORMAT_VERSION})"
            )
        return meta

    def _load_npy(self, path: str) -> EmbeddingTable:
        meta = self._read_meta(path)
        with self._fs.open(f"{path}/{KEYS_FILE}", "r", encoding="utf-8") as handle:
            keys = handle.read().split("\n")[:-1]
        if len(keys) != meta["count"]:
            raise DatasetError(
                f"{path}/{KEYS_FILE}: {len(keys)} keys but {META_FILE} says {meta['count']}"
            )
        vectors_path = f"{path}/{VECTORS_FILE}"
        try:
            if self._protocol == "file":
                vectors = np.load(
                    vectors_path, mmap_mode=self._load_args["mmap_mode"], allow_pickle=False
                )
            else:
                with self._fs.open(vectors_path, "rb") as handle:
                    vectors = np.load(handle, allow_pickle=False)
        except ValueError as exc:  # object arrays (pickles) are refused here
            raise DatasetError(f"{vectors_path}: refused or unreadable ({exc})") from exc
        _check_shape(vectors, meta, path)
        try:
            return EmbeddingTable(keys, vectors)
        except EmbeddingError as exc:
            raise DatasetError(f"{path}: {exc}") from exc

    def _save_npy(self, table: EmbeddingTable, path: str) -> None:
        bad = next((k for k in table.keys_ if "\n" in k or "\r" in k), None)
        if bad is not None:
            raise DatasetError(f"{path}: utterance id {bad!r} contains a line break")
        if self._protocol != "file":
            with tempfile.TemporaryDirectory() as folder:
                _write_npy_folder(table, Path(folder))
                for name in (VECTORS_FILE, KEYS_FILE, META_FILE):  # meta last: the marker
                    self._fs.put_file(str(Path(folder) / name), f"{path}/{name}")
            return
        target = Path(path)
        if target.exists() and not (target / META_FILE).is_file():
            raise DatasetError(
                f"{target}: exists and is not an embeddings folder; refusing to replace it"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        )
        try:
            _write_npy_folder(table, staging)
            _replace_folder(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _viz_preview_kind(metadata: Mapping[str, Any] | None) -> str:
    viz = (metadata or {}).get("kedro-viz") or {}
    return str((viz.get("preview_args") or {}).get("kind", "table"))


def _check_shape(vectors: np.ndarray, meta: Mapping[str, Any], path: str) -> None:
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
        raise DatasetError(
            f"{path}/{VECTORS_FILE}: expected a float [n, dim] array, "
            f"got {vectors.dtype} {vectors.shape}"
        )
    if vectors.shape != (meta["count"], meta["dim"]):
        raise DatasetError(
            f"{path}/{VECTORS_FILE}: shape {vectors.shape} but {META_FILE} says "
            f"({meta['count']}, {meta['dim']})"
        )


def _write_npy_folder(table: EmbeddingTable, folder: Path) -> None:
    vectors = np.asarray(table.vectors)
    if vectors.dtype != np.float32:
        vectors = vectors.astype(np.float32)
    with (folder / VECTORS_FILE).open("wb") as handle:
        np.save(handle, vectors, allow_pickle=False)
        _flush(handle)
    with (folder / KEYS_FILE).open("w", encoding="utf-8", newline="\n") as handle:
        handle.write("".join(f"{key}\n" for key in table.keys_))
        _flush(handle)
    meta = {
        "format": COMPACT_FORMAT_NAME,
        "format_version": COMPACT_FORMAT_VERSION,
        "count": int(vectors.shape[0]),
        "dim": int(vectors.shape[1]),
        "dtype": "float32",
    }
    with (folder / META_FILE).open("w", encoding="utf-8") as handle:
        json.dump(meta, handle, indent=2)
        _flush(handle)


def _replace_folder(staging: Path, target: Path) -> None:
    """Rename ``staging`` onto ``target``; an old folder is moved aside first, then removed.

    A folder cannot be swapped in one rename when the target exists; readers may then see
    no folder for an instant, but never a partly written one.
    """
    if not target.exists():
        os.replace(staging, target)
        return
    retired = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(target, retired)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(retired, target)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def _atomic_torch_save(obj: Any, target: Path) -> None:
    with atomic_write_path(target) as tmp, tmp.open("wb") as handle:
        torch.save(obj, handle)
        _flush(handle)


def _flush(handle: BinaryIO | Any) -> None:
    handle.flush()
    with contextlib.suppress(OSError):
        os.fsync(handle.fileno())
