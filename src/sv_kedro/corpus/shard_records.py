"""Reading WebDataset shards back: each sample's FLAC and JSON, decoded on demand.

The writer, the index and the checks of a shard set against a manifest live in
:mod:`sv_kedro.corpus.shards`.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from sv_kedro.corpus.shards import ShardError


def iter_webdataset_shards(
    paths: Iterable[str | os.PathLike[str]],
) -> Iterator[tuple[str, str, np.ndarray, int]]:
    """Yield ``(utt_id, speaker, waveform float32 [time], sample_rate)`` shard by shard.

    Each tar is streamed front to back (``tarfile`` mode ``r|``), so a shard is never
    loaded whole. A sample missing its audio or its metadata is an error naming the shard
    and key.
    """
    for given in paths:
        for record in iter_shard_records(given):
            yield record.decode()


class ShardRecord:
    """One sample of a shard, still encoded. ``metadata()`` parses its JSON only;
    ``decode(window)`` decodes its FLAC, all of it or only the frames ``window`` picks.
    Readers that skip samples (a resumed epoch) never pay for their decoding."""

    __slots__ = ("_meta", "key", "parts", "shard")

    def __init__(self, shard: Path, key: str, parts: dict[str, bytes]) -> None:
        self.shard, self.key, self.parts = shard, key, parts
        self._meta: dict[str, Any] | None = None

    def _error(self, message: str) -> ShardError:
        return ShardError(f"{self.shard}: sample {self.key!r} {message}")

    def metadata(self) -> dict[str, Any]:
        """The sample's JSON (``utt_id``, ``speaker``, ``sample_rate``, ...), checked."""
        if self._meta is None:
            try:
                meta = json.loads(self.parts["json"])
            except Exception as exc:
                raise self._error(f"cannot be decoded ({exc})") from exc
            missing = [field for field in ("utt_id", "speaker", "sample_rate") if field not in meta]
            if missing:
                raise self._error(f"metadata lacks {missing}")
            self._meta = meta
        return self._meta

    def decode(
        self, window: Callable[[int], tuple[int, int]] | None = None
    ) -> tuple[str, str, np.ndarray, int]:
        """``(utt_id, speaker, waveform float32 [time], sample_rate)``.

        ``window(num_frames) -> (offset, frames)`` picks the frames to decode (FLAC seeks,
        so a 3-s crop of a 20-s utterance decodes 3 s); ``None`` decodes all of them.
        """
        meta = self.metadata()
        try:
            with sf.SoundFile(io.BytesIO(self.parts["flac"])) as handle:
                rate = handle.samplerate
                offset, frames = window(handle.frames) if window is not None else (0, -1)
                if offset:
                    handle.seek(offset)
                wave = handle.read(frames=frames, dtype="float32", always_2d=False)
        except Exception as exc:
            raise self._error(f"cannot be decoded ({exc})") from exc
        if int(meta["sample_rate"]) != int(rate):
            raise self._error(f"says {meta['sample_rate']} Hz but its audio is {rate} Hz")
        return str(meta["utt_id"]), str(meta["speaker"]), np.ascontiguousarray(wave), int(rate)


def iter_shard_records(path: str | os.PathLike[str]) -> Iterator[ShardRecord]:
    """The samples of one shard in file order, undecoded (see :func:`iter_webdataset_shards`)."""
    shard = Path(path)
    pending: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(shard, "r|") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                key, dot, extension = base.partition(".")
                if not dot:
                    raise ShardError(f"{shard}: member {member.name!r} has no extension")
                handle = archive.extractfile(member)
                assert handle is not None  # isfile() members always have data
                parts = pending.setdefault(key, {})
                parts[extension] = handle.read()
                if "flac" in parts and "json" in parts:
                    yield ShardRecord(shard, key, pending.pop(key))
    except tarfile.TarError as exc:
        raise ShardError(f"{shard}: cannot read tar ({exc})") from exc
    if pending:
        key, parts = next(iter(pending.items()))
        raise ShardError(
            f"{shard}: sample {key!r} is incomplete (has {sorted(parts)}, needs flac and json)"
        )
