"""WebDataset tar shards of a manifest, for sequential reading during training.

Reading a million small files at random is slow on network and spinning disks; reading a
few hundred large tar files front to back is not. Each shard ``shard-000000.tar`` holds
samples in the WebDataset layout: consecutive members ``<key>.flac`` (16-bit FLAC, mono)
and ``<key>.json`` (``utt_id``, ``speaker``, ``sample_rate``, plus ``speaker_index`` and
``duration`` when known). Keys are zero-padded positions (no dots, as WebDataset splits
the key from the extension at the first dot). Utterances are shuffled with a seed before
being cut into shards, so every shard mixes many speakers.

Shards are written atomically, one at a time, and ``index.json`` is rewritten after each:
it lists shard names, sample counts and two fingerprints per shard. ``fingerprint`` covers
the audio (sample rate, ``utt_id`` and ``path`` of each sample) and is what a reader checks
against its manifest; ``metadata_fingerprint`` adds the labels stored in the JSON. The
index also records each shard file as written: its size, modification and status-change
times and CRC-32. On a re-run a shard is skipped when its fingerprints match and its file
is the one written: same size and times (one ``stat``), or, where only its times differ (a
copy, a ``chmod``), the same CRC-32 (one read of the file). So an interrupted run resumes
where it stopped, and a shard rewritten since by another tool is written again even when
its size did not change (a copy that kept the times, ``cp -p``, still changes the
status-change time, which a copy tool cannot set back). Beside a shard, the first
``ShardAudioReader`` (``corpus.shard_access``) keeps ``<shard>.locations.json``; writing the
shard again removes it, as it removes the files of shards a smaller run no longer has.
Reading the samples back is :mod:`sv_kedro.corpus.shard_records`.

Training takes labels from its own manifest by ``utt_id``, never from the shard's JSON, so
one set of shards serves any labelling of the same utterances: the corpus's speakers, or
the pseudo-labels of each ``ssl_pseudo_labeling`` round.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf

from sv_kedro.audio.io import read_audio, resample, to_mono
from sv_kedro.utils.atomic import atomic_write_bytes, atomic_write_path

logger = logging.getLogger(__name__)

INDEX_NAME = "index.json"
# Beside each shard, ``shard_access.ShardAudioReader`` keeps where its samples lie.
LOCATIONS_SUFFIX = ".locations.json"
SHARD_PATTERN = "shard-{:06d}.tar"
INDEX_FORMAT = "sv_kedro.webdataset/2"


class ShardError(RuntimeError):
    """A shard that cannot be written or read; the message names the shard and sample."""


def _shard_fingerprint(rows: pd.DataFrame, sample_rate: int) -> str:
    """The audio a shard holds: which utterances, from which files, at which rate."""
    digest = hashlib.sha256(f"{sample_rate}\n".encode())
    for utt_id, path in zip(rows["utt_id"], rows["path"], strict=True):
        digest.update(f"{utt_id}\t{path}\n".encode())
    return digest.hexdigest()


def _metadata_fingerprint(rows: pd.DataFrame) -> str:
    """The labels written into the samples' JSON (informational: readers do not use them)."""
    digest = hashlib.sha256()
    indices = rows["speaker_index"] if "speaker_index" in rows else [""] * len(rows)
    for utt_id, speaker, index in zip(rows["utt_id"], rows["speaker"], indices, strict=True):
        digest.update(f"{utt_id}\t{speaker}\t{index}\n".encode())
    return digest.hexdigest()


def _shuffled(manifest: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The manifest in shard order: sorted by ``utt_id``, then permuted with ``seed``."""
    table = manifest.sort_values("utt_id", kind="stable").reset_index(drop=True)
    return table.iloc[np.random.default_rng(seed).permutation(len(table))].reset_index(drop=True)


def _flac_bytes(path: str, sample_rate: int) -> tuple[bytes, float]:
    wave, rate = read_audio(path)
    wave = to_mono(wave)
    if rate != sample_rate:
        wave = resample(wave, rate, sample_rate)
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(wave, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue(), len(wave) / sample_rate


def _add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # fixed so that identical content gives identical shards
    archive.addfile(info, io.BytesIO(data))


def _write_shard(target: Path, rows: pd.DataFrame, first_key: int, sample_rate: int) -> None:
    with (
        atomic_write_path(target) as tmp,
        tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as archive,
    ):
        for offset, row in enumerate(rows.itertuples(index=False)):
            key = f"{first_key + offset:09d}"
            audio, duration = _flac_bytes(str(row.path), sample_rate)
            meta: dict[str, Any] = {
                "utt_id": str(row.utt_id),
                "speaker": str(row.speaker),
                "sample_rate": int(sample_rate),
                "duration": round(duration, 6),
            }
            if hasattr(row, "speaker_index"):
                meta["speaker_index"] = int(row.speaker_index)
            _add_member(archive, f"{key}.flac", audio)
            _add_member(archive, f"{key}.json", json.dumps(meta, sort_keys=True).encode())


def _file_state(shard: Path) -> dict[str, int]:
    """What the index records of a shard file as written: its size and times."""
    stat = shard.stat()
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns}


def _crc32(shard: Path) -> int:
    """CRC-32 of the whole file (zlib's: about 2.5 GB/s once the file is in memory)."""
    crc = 0
    with open(shard, "rb") as handle:
        while block := handle.read(1 << 23):
            crc = zlib.crc32(block, crc)
    return crc


def _times_differ(state: dict[str, int], entry: dict[str, Any]) -> bool:
    return state["mtime_ns"] != entry.get("mtime_ns") or state["ctime_ns"] != entry.get("ctime_ns")


def _is_as_written(shard: Path, entry: dict[str, Any]) -> bool:
    """Whether ``shard`` holds the bytes its index ``entry`` recorded: same size and times,
    or same size and CRC-32 where only the times differ. An entry without a CRC (written
    by an earlier sv-kedro) cannot tell a same-size replacement apart: no."""
    if "crc32" not in entry or not shard.is_file():
        return False
    state = _file_state(shard)
    if state["bytes"] != entry.get("bytes"):
        return False
    return not _times_differ(state, entry) or _crc32(shard) == entry["crc32"]


def _read_index(out_dir: Path) -> dict[str, Any]:
    path = out_dir / INDEX_NAME
    if not path.is_file():
        return {}
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        logger.warning("%s is not valid JSON (%s); rewriting every shard", path, exc)
        return {}
    return {entry["name"]: entry for entry in index.get("shards", [])}


def write_webdataset_shards(
    manifest: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    utterances_per_shard: int,
    seed: int,
    sample_rate: int = 16000,
) -> dict[str, Any]:
    """Write ``manifest``'s audio as WebDataset tar shards under ``out_dir``.

    Audio is read from ``manifest["path"]``, downmixed to mono and resampled to
    ``sample_rate`` when it differs. Shards already complete (same fingerprints and size as
    recorded in ``index.json``, and the same file: see the module docstring) are kept;
    shard files beyond the new shard count, left by an earlier and larger run, are removed.

    Returns:
        The index written to ``out_dir/index.json``: format, seed, sample rate, totals and
        ``shards`` = list of ``{name, count, speakers, bytes, mtime_ns, ctime_ns, crc32,
        fingerprint, metadata_fingerprint}``.
    """
    for column in ("utt_id", "speaker", "path"):
        if column not in manifest.columns:
            raise ShardError(f"manifest lacks column {column!r}; has {list(manifest.columns)}")
    if utterances_per_shard < 1:
        raise ShardError(f"utterances_per_shard must be >= 1, got {utterances_per_shard}")
    if manifest.empty:
        raise ShardError("manifest is empty: nothing to shard")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = _shuffled(manifest, seed)
    previous = _read_index(out_dir)
    entries: list[dict[str, Any]] = []
    written = skipped = 0
    n_shards = -(-len(table) // utterances_per_shard)
    for shard in range(n_shards):
        start = shard * utterances_per_shard
        rows = table.iloc[start : start + utterances_per_shard]
        name = SHARD_PATTERN.format(shard)
        target = out_dir / name
        fingerprint = _shard_fingerprint(rows, sample_rate)
        metadata = _metadata_fingerprint(rows)
        old = previous.get(name)
        if (
            old is not None
            and old.get("fingerprint") == fingerprint
            and old.get("metadata_fingerprint") == metadata
            and _is_as_written(target, old)
        ):
            skipped += 1
            crc = int(old["crc32"])
        else:
            target.with_name(name + LOCATIONS_SUFFIX).unlink(missing_ok=True)
            try:
                _write_shard(target, rows, start, sample_rate)
            except Exception as exc:
                raise ShardError(f"{target}: cannot write shard ({exc})") from exc
            written += 1
            crc = _crc32(target)  # read back from the page cache: far cheaper than encoding
        entries.append(
            {
                "name": name,
                "count": len(rows),
                "speakers": int(rows["speaker"].nunique()),
                # The times now, so that a shard copied since is checked by its CRC once.
                **_file_state(target),
                "crc32": crc,
                "fingerprint": fingerprint,
                "metadata_fingerprint": metadata,
            }
        )
        index = _index(entries, table, seed, sample_rate, utterances_per_shard, n_shards)
        atomic_write_bytes(out_dir / INDEX_NAME, json.dumps(index, indent=1).encode())
    names = {entry["name"] for entry in entries}
    for stale in sorted(out_dir.glob("shard-*.tar")):
        if stale.name not in names:
            stale.unlink()
            logger.info("Removed %s, left by an earlier run with more shards", stale)
    for stale in sorted(out_dir.glob(f"shard-*.tar{LOCATIONS_SUFFIX}")):
        if stale.name.removesuffix(LOCATIONS_SUFFIX) not in names:
            stale.unlink()
    logger.info(
        "WebDataset shards in %s: %d written, %d already complete", out_dir, written, skipped
    )
    return index


def _index(
    entries: list[dict[str, Any]],
    table: pd.DataFrame,
    seed: int,
    sample_rate: int,
    utterances_per_shard: int,
    n_shards: int,
) -> dict[str, Any]:
    return {
        "format": INDEX_FORMAT,
        "seed": int(seed),
        "sample_rate": int(sample_rate),
        "utterances_per_shard": int(utterances_per_shard),
        "num_shards": int(n_shards),
        "num_utterances": len(table),
        "num_speakers": int(table["speaker"].nunique()),
        "complete": len(entries) == n_shards,
        "shards": list(entries),
    }


def read_shard_index(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``out_dir/index.json`` of a complete shard set; an error names what is wrong."""
    path = Path(out_dir) / INDEX_NAME
    if not path.is_file():
        raise ShardError(f"{path}: shard index not found (write shards with data_engineering)")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ShardError(f"{path}: not valid JSON ({exc})") from exc
    if index.get("format") != INDEX_FORMAT:
        raise ShardError(
            f"{path}: format {index.get('format')!r}, expected {INDEX_FORMAT!r} (shards of an "
            "earlier sv-kedro); write them again: kedro run --pipeline data_engineering"
        )
    if not index.get("complete"):
        raise ShardError(f"{path}: shards are incomplete (an interrupted run); write them again")
    return index


def shard_paths(out_dir: str | os.PathLike[str]) -> list[Path]:
    """The shard files listed by ``out_dir/index.json``, in order; error if incomplete."""
    return [Path(out_dir) / entry["name"] for entry in read_shard_index(out_dir)["shards"]]


def shard_counts(
    out_dir: str | os.PathLike[str], index: dict[str, Any] | None = None
) -> dict[str, int]:
    """``{shard path: samples}`` for the shards ``index`` lists (read from
    ``out_dir/index.json`` when not given), in order: what the shard streams size with."""
    index = read_shard_index(out_dir) if index is None else index
    return {str(Path(out_dir) / entry["name"]): int(entry["count"]) for entry in index["shards"]}


def check_shards_hold(manifest: pd.DataFrame, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Check that the shards in ``out_dir`` hold exactly ``manifest``; return their index.

    Every shard's audio fingerprint is recomputed from the manifest (the same seeded order
    and shard size the writer used), so shards written from another manifest, another split
    or with other paths are refused before training reads a sample from them. Speaker
    labels are not compared: a relabelled manifest (pseudo-labels) of the same utterances
    reads the same shards. Each shard file must also exist with the size the index
    recorded: a shard deleted, truncated or replaced by another shard since it was written
    is refused here, before training, rather than read (a copy of another shard would pass
    every later check and train on its utterances twice). A shard whose times differ from
    the recorded ones is read whole once to compare its CRC-32: one rewritten with other
    bytes of the same size is refused, a copy of the same bytes is read.
    """
    index = read_shard_index(out_dir)
    if len(manifest) != index["num_utterances"]:
        raise ShardError(
            f"{out_dir}: the shards hold {index['num_utterances']} utterances, the training "
            f"manifest {len(manifest)}; write the shards again from this manifest"
        )
    table = _shuffled(manifest, int(index["seed"]))
    size = int(index["utterances_per_shard"])
    checked = 0  # shards read whole because their times changed
    for number, entry in enumerate(index["shards"]):
        rows = table.iloc[number * size : (number + 1) * size]
        shard = Path(out_dir) / entry["name"]
        if _shard_fingerprint(rows, int(index["sample_rate"])) != entry["fingerprint"]:
            raise ShardError(
                f"{shard}: holds other utterances than the training "
                "manifest (another split or corpus); write the shards again from this manifest"
            )
        checked += _check_shard_file(shard, entry, number * size)
    if checked:
        logger.info(
            "%s: %d shard(s) were copied or touched since index.json was written; their "
            "CRC-32 shows the same content. Running data_engineering again keeps them and "
            "records their new times, which spares this read",
            out_dir,
            checked,
        )
    return index


def _check_shard_file(shard: Path, entry: dict[str, Any], first_key: int) -> bool:
    """``shard`` exists with the recorded size, and its first sample is the one the writer
    put first (keys number the samples across all shards): two reads of a few bytes. Where
    its times differ from the recorded ones, its CRC-32 must match too (a read of the
    whole file, then ``True``)."""
    again = "write the shards again (data_engineering with data_engineering.shards.enabled)"
    if not shard.is_file():
        raise ShardError(f"{shard}: missing, but index.json lists it; {again}")
    state = _file_state(shard)
    size, recorded_bytes = state["bytes"], entry.get("bytes")
    if recorded_bytes is not None and size != int(recorded_bytes):
        raise ShardError(
            f"{shard}: {size} bytes, but index.json recorded {recorded_bytes} when it was "
            f"written: the file was changed or replaced since; {again}"
        )
    try:
        with tarfile.open(shard, "r|") as archive:
            member = archive.next()
    except (tarfile.TarError, OSError) as exc:
        raise ShardError(f"{shard}: cannot read tar ({exc}); {again}") from exc
    key = member.name.split(".", 1)[0] if member is not None else ""
    if key != f"{first_key:09d}":
        raise ShardError(
            f"{shard}: starts with sample {key or 'nothing'}, but the writer put sample "
            f"{first_key:09d} first: the file was replaced (by another shard?); {again}"
        )
    if "crc32" not in entry or not _times_differ(state, entry):
        return False  # unchanged since written, or an index too old to tell
    crc = _crc32(shard)
    if crc != int(entry["crc32"]):
        raise ShardError(
            f"{shard}: its bytes changed since it was written (CRC-32 {crc:08x}, index.json "
            f"recorded {int(entry['crc32']):08x}) though its size did not; {again}"
        )
    return True
