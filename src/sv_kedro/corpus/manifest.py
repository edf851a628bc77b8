"""Manifests: one row per utterance, built from audio headers only.

A manifest is a DataFrame with the columns in :data:`MANIFEST_COLUMNS` (plus the optional
``session``, ``gender`` and ``error``). Scanning reads each file's header, never its
samples, so a million-file corpus is scanned in minutes; header reads run in a process
pool when ``workers > 0``. A file whose header cannot be read does not stop the scan: it
comes back with ``num_frames == -1`` and the reason in ``error``, for validation to report.

This module also holds :func:`parallel_map` (an ordered, bounded-memory process-pool map
with a progress bar), which the corpus modules share; finding the files is
:func:`sv_kedro.corpus.walk.walk_files`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from sv_kedro.audio.io import AudioDecodeError, audio_info

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS: tuple[str, ...] = (
    "utt_id",
    "speaker",
    "path",
    "duration",
    "num_frames",
    "sample_rate",
    "channels",
    "source",
)
OPTIONAL_COLUMNS: tuple[str, ...] = ("session", "gender", "error")

_STRING_COLUMNS = ("utt_id", "speaker", "path", "source")
_INT_COLUMNS = ("num_frames", "sample_rate", "channels")
_FLOAT_COLUMNS = ("duration",)

# Header reads are ~50 µs each: ship them to workers in batches, not one future per file.
HEADER_BATCH = 512

T = TypeVar("T")
R = TypeVar("R")


class ManifestError(ValueError):
    """A manifest is malformed; the message says which column or utt_id is wrong."""


def empty_manifest() -> pd.DataFrame:
    """A manifest with no rows but the right columns and dtypes."""
    return pd.DataFrame(
        {
            "utt_id": pd.Series([], dtype=str),
            "speaker": pd.Series([], dtype=str),
            "path": pd.Series([], dtype=str),
            "duration": pd.Series([], dtype="float64"),
            "num_frames": pd.Series([], dtype="int64"),
            "sample_rate": pd.Series([], dtype="int64"),
            "channels": pd.Series([], dtype="int64"),
            "source": pd.Series([], dtype=str),
        }
    )


def check_manifest(df: pd.DataFrame, name: str = "manifest") -> pd.DataFrame:
    """Check columns, dtypes and utt_id uniqueness; return ``df`` unchanged or raise.

    Raises :class:`ManifestError` naming the missing column, the column with the wrong
    dtype, or (up to five of) the duplicated utt_ids.
    """
    if not isinstance(df, pd.DataFrame):
        raise ManifestError(f"{name}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [column for column in MANIFEST_COLUMNS if column not in df.columns]
    if missing:
        raise ManifestError(
            f"{name}: missing column(s) {missing}; a manifest needs {list(MANIFEST_COLUMNS)}"
        )
    for column in _STRING_COLUMNS:
        if len(df) and not pd.api.types.is_string_dtype(df[column]):
            raise ManifestError(
                f"{name}: column {column!r} must hold strings, has {df[column].dtype}"
            )
        if df[column].isna().any():
            row = int(np.flatnonzero(df[column].isna().to_numpy())[0])
            raise ManifestError(f"{name}: column {column!r} is empty at row {row}")
    for column in _INT_COLUMNS:
        if not pd.api.types.is_integer_dtype(df[column]):
            raise ManifestError(
                f"{name}: column {column!r} must be integer, has {df[column].dtype}"
            )
    for column in _FLOAT_COLUMNS:
        if not pd.api.types.is_float_dtype(df[column]):
            raise ManifestError(f"{name}: column {column!r} must be float, has {df[column].dtype}")
    duplicated = df["utt_id"][df["utt_id"].duplicated()]
    if len(duplicated):
        examples = sorted(set(duplicated))[:5]
        raise ManifestError(
            f"{name}: {len(duplicated)} duplicated utt_id(s), e.g. {examples}; utt_ids must be "
            "unique (pool clashing roots with root-prefixed ids)"
        )
    return df


def _apply_batch(func: Callable[[T], R], batch: list[T]) -> list[R]:
    return [func(item) for item in batch]


def _init_worker() -> None:
    # Each worker is one of N processes on N cores: keep OpenMP/torch single-threaded
    # (this also keeps a forked child away from the parent's OpenMP thread pool).
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def process_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """A pool of ``workers`` single-threaded worker processes.

    Workers are forked where the platform can (as torch's DataLoader does on Linux):
    they start in milliseconds with the audio stack already imported, and a caller's
    script needs no ``if __name__ == "__main__"`` guard, which ``spawn`` and
    ``forkserver`` would require (they re-import ``__main__`` in every worker).
    """
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker
    )


def parallel_map(
    func: Callable[[T], R],
    items: Sequence[T],
    workers: int = 0,
    batch_size: int = 64,
    desc: str | None = None,
    progress: bool = True,
    unit: str = "file",
) -> Iterator[R]:
    """Yield ``func(item)`` for each item, in input order, with a tqdm progress bar.

    ``workers == 0`` runs in this process. Otherwise items go to a process pool in
    batches of ``batch_size``, and at most ``4 * workers`` batches are in flight, so a
    million items never become a million futures. ``func`` must be a module-level
    function (picklable) and should turn per-item failures into return values: an
    exception it raises propagates and stops the map.
    """
    bar = tqdm(total=len(items), desc=desc, unit=unit, disable=not progress, leave=False)
    try:
        if workers <= 0:
            for item in items:
                yield func(item)
                bar.update(1)
            return
        batches = (list(items[i : i + batch_size]) for i in range(0, len(items), batch_size))
        with process_pool(workers) as pool:
            in_flight: collections.deque[concurrent.futures.Future[list[R]]] = collections.deque()
            for batch in batches:
                in_flight.append(pool.submit(_apply_batch, func, batch))
                if len(in_flight) >= 4 * workers:
                    results = in_flight.popleft().result()
                    bar.update(len(results))
                    yield from results
            while in_flight:
                results = in_flight.popleft().result()
                bar.update(len(results))
                yield from results
    finally:
        bar.close()


def read_header(path: str) -> tuple[int, int, int, str]:
    """``(num_frames, sample_rate, channels, error)`` of one file; ``(-1, 0, 0, reason)`` if bad."""
    try:
        info = audio_info(path)
    except AudioDecodeError as exc:
        return -1, 0, 0, str(exc)
    except OSError as exc:
        return -1, 0, 0, f"{path}: {exc}"
    return info.frames, info.sample_rate, info.channels, ""


def scan_files(
    paths: Sequence[str],
    utt_ids: Sequence[str],
    speakers: Sequence[str],
    source: str,
    sessions: Sequence[str] | None = None,
    workers: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Read the header of each file and return a manifest, rows in input order.

    ``paths`` are made absolute. Every row carries an ``error`` column: ``""`` for a
    readable header, otherwise the reason, with ``num_frames = -1``, ``sample_rate = 0``,
    ``channels = 0`` and ``duration = NaN``. ``sessions`` (same length) adds a ``session``
    column.
    """
    if not (len(paths) == len(utt_ids) == len(speakers)):
        raise ValueError(
            f"scan_files: paths ({len(paths)}), utt_ids ({len(utt_ids)}) and speakers "
            f"({len(speakers)}) must have the same length"
        )
    if sessions is not None and len(sessions) != len(paths):
        raise ValueError(f"scan_files: sessions ({len(sessions)}) != paths ({len(paths)})")
    absolute = [os.path.abspath(os.fspath(path)) for path in paths]
    headers = list(
        parallel_map(
            read_header,
            absolute,
            workers=workers,
            batch_size=HEADER_BATCH,
            desc=f"headers {source}",
            progress=progress,
        )
    )
    frames = np.array([header[0] for header in headers], dtype=np.int64)
    rates = np.array([header[1] for header in headers], dtype=np.int64)
    channels = np.array([header[2] for header in headers], dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        duration = np.where((frames >= 0) & (rates > 0), frames / np.maximum(rates, 1), np.nan)
    columns: dict[str, Any] = {
        "utt_id": pd.Series(list(utt_ids), dtype=str),
        "speaker": pd.Series(list(speakers), dtype=str),
        "path": pd.Series(absolute, dtype=str),
        "duration": duration.astype(np.float64),
        "num_frames": frames,
        "sample_rate": rates,
        "channels": channels,
        "source": pd.Series([source] * len(absolute), dtype=str),
    }
    if sessions is not None:
        columns["session"] = pd.Series(list(sessions), dtype=str)
    columns["error"] = pd.Series([header[3] for header in headers], dtype=str)
    if not absolute:
        frame = empty_manifest()
        if sessions is not None:
            frame["session"] = pd.Series([], dtype=str)
        frame["error"] = pd.Series([], dtype=str)
        return frame
    return pd.DataFrame(columns)
