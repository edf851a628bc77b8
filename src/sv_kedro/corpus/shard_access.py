"""Random access by ``utt_id`` to the audio in WebDataset shards.

Training streams shards front to back (``training.shard_data``). Embedding extraction
wants utterances in length order instead, so :class:`ShardAudioReader` first records
where each sample's FLAC bytes lie inside its tar: one pass over the tar headers and the
small JSON members, no audio decoded. An utterance is then one seek and one read in a
file that is already open, instead of opening the utterance's own file; the training audio
need not stay beside its shards at all.

The pass over a tar is done once: its result is kept beside the shard as
``<shard>.locations.json`` (written atomically, keyed on the shard's fingerprint, size,
modification and status-change times), so later readers of a million-utterance corpus
load a small file per shard instead of walking every tar header again. A shard written
again, or a folder the reader cannot write to, simply means another pass.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf

from sv_kedro.corpus.shards import LOCATIONS_SUFFIX, ShardError, read_shard_index
from sv_kedro.utils.atomic import atomic_write_bytes

log = logging.getLogger(__name__)


class ShardAudioReader:
    """The waveforms of the shards in ``out_dir`` (a complete set with its ``index.json``).

    ``read(utt_id)`` returns ``(waveform float32 [time], sample_rate)``. Open files are
    per process and are not pickled, so the reader can go to DataLoader workers.
    ``keep_locations=False`` neither reads nor writes the ``.locations.json`` files.
    """

    def __init__(self, out_dir: str | os.PathLike[str], keep_locations: bool = True) -> None:
        self._handles: dict[int, BinaryIO] = {}
        self.out_dir = Path(out_dir)
        index = read_shard_index(self.out_dir)
        self.sample_rate = int(index["sample_rate"])
        self.shards = [self.out_dir / entry["name"] for entry in index["shards"]]
        # utt_id -> (shard number, byte offset of the FLAC data, its size)
        self.locations: dict[str, tuple[int, int, int]] = {}
        self.scanned = 0  # shards whose tar was walked (no usable .locations.json)
        for number, (shard, entry) in enumerate(zip(self.shards, index["shards"], strict=True)):
            samples = _kept_locations(shard, entry) if keep_locations else None
            if samples is None:
                samples = self._scan(shard)
                self.scanned += 1
                if keep_locations:
                    _keep_locations(shard, entry, samples)
            if len(samples) != int(entry["count"]):
                raise ShardError(
                    f"{shard}: holds {len(samples)} samples, its index says {entry['count']}; "
                    "write the shards again"
                )
            for utt_id, offset, size in samples:
                if utt_id in self.locations:
                    other = self.shards[self.locations[utt_id][0]]
                    raise ShardError(f"{shard}: {utt_id!r} is stored twice (also in {other})")
                self.locations[utt_id] = (number, offset, size)

    @staticmethod
    def _scan(shard: Path) -> list[tuple[str, int, int]]:
        """``(utt_id, FLAC data offset, size)`` of every sample of one shard, in tar order."""
        flac: dict[str, tuple[int, int]] = {}
        utt_ids: dict[str, str] = {}
        try:
            with tarfile.open(shard, "r:") as archive:
                for member in archive:
                    if not member.isfile():
                        continue
                    key, _, extension = member.name.rsplit("/", 1)[-1].partition(".")
                    if extension == "flac":
                        flac[key] = (member.offset_data, member.size)
                    elif extension == "json":
                        handle = archive.extractfile(member)
                        assert handle is not None  # isfile() members always have data
                        utt_ids[key] = str(json.loads(handle.read())["utt_id"])
        except (tarfile.TarError, OSError, ValueError, KeyError) as exc:
            raise ShardError(f"{shard}: cannot index its samples ({exc!r})") from exc
        unpaired = sorted(set(flac) ^ set(utt_ids))
        if unpaired:
            raise ShardError(f"{shard}: sample {unpaired[0]!r} lacks its audio or its metadata")
        return [(utt_id, *flac[key]) for key, utt_id in utt_ids.items()]

    def __len__(self) -> int:
        return len(self.locations)

    def __contains__(self, utt_id: object) -> bool:
        return utt_id in self.locations

    def check_holds(self, utt_ids: Sequence[str], what: str) -> None:
        """Raise a ``ShardError`` naming the first of ``utt_ids`` that no shard holds;
        ``what`` says whose utterances they are (``"utterances to embed"``)."""
        absent = [utt for utt in utt_ids if utt not in self.locations]
        if absent:
            raise ShardError(
                f"{self.out_dir}: the shards do not hold {len(absent)} of the {len(utt_ids)} "
                f"{what}, e.g. {absent[:3]}; write them from the manifest these come from"
            )

    def _handle(self, number: int) -> BinaryIO:
        handle = self._handles.get(number)
        if handle is None:
            handle = self._handles[number] = open(self.shards[number], "rb")
        return handle

    def read(
        self, utt_id: str, window: Callable[[int], tuple[int, int]] | None = None
    ) -> tuple[np.ndarray, int]:
        """``(waveform float32 [time], sample_rate)`` of ``utt_id``; errors name the shard.

        ``window(num_frames) -> (offset, frames)`` picks the frames to decode (FLAC seeks:
        a babble crop of a long utterance decodes the crop only); ``None`` decodes it all.
        """
        if utt_id not in self.locations:
            raise ShardError(f"{self.out_dir}: no shard holds {utt_id!r}")
        number, offset, size = self.locations[utt_id]
        handle = self._handle(number)
        handle.seek(offset)
        data = handle.read(size)
        if len(data) != size:
            raise ShardError(f"{self.shards[number]}: {utt_id!r} is cut short (truncated tar?)")
        try:
            with sf.SoundFile(io.BytesIO(data)) as sound:
                rate = sound.samplerate
                offset, frames = window(sound.frames) if window is not None else (0, -1)
                if offset:
                    sound.seek(offset)
                wave = sound.read(frames=frames, dtype="float32", always_2d=False)
        except Exception as exc:
            raise ShardError(
                f"{self.shards[number]}: {utt_id!r} cannot be decoded ({exc})"
            ) from exc
        if rate != self.sample_rate:
            raise ShardError(
                f"{self.shards[number]}: {utt_id!r} is {rate} Hz, the index says "
                f"{self.sample_rate} Hz"
            )
        return np.ascontiguousarray(wave), int(rate)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def __del__(self) -> None:
        self.close()


_LOCATIONS_FORMAT = 1


def locations_path(shard: Path) -> Path:
    """Where the reader keeps ``shard``'s sample locations."""
    return shard.with_name(shard.name + LOCATIONS_SUFFIX)


def _shard_state(shard: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """What the kept locations are valid for: this content, written at this moment. The
    status-change time changes with every write, even one whose copy tool set the
    modification time back (``cp -p``): the samples may lie elsewhere in that shard."""
    stat = shard.stat()
    return {
        "format": _LOCATIONS_FORMAT,
        "fingerprint": entry["fingerprint"],
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
    }


def _kept_locations(shard: Path, entry: dict[str, Any]) -> list[tuple[str, int, int]] | None:
    """The locations kept for ``shard``, or None where absent, unreadable or out of date."""
    path = locations_path(shard)
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        if kept.get("state") != _shard_state(shard, entry):
            return None
        return [(str(utt_id), int(offset), int(size)) for utt_id, offset, size in kept["samples"]]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _keep_locations(
    shard: Path, entry: dict[str, Any], samples: list[tuple[str, int, int]]
) -> None:
    """Keep ``samples`` beside ``shard``; a folder that cannot be written is left alone."""
    try:
        state = _shard_state(shard, entry)
        data = json.dumps({"state": state, "samples": samples}, separators=(",", ":"))
        atomic_write_bytes(locations_path(shard), data.encode())
    except OSError as exc:
        log.debug(
            "Cannot keep the locations of %s (%s); the next reader scans it again", shard, exc
        )
