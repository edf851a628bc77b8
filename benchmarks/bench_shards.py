"""Training reads: WebDataset shards (``data.shard_dir``) against the manifest's files.

Both sides yield batches of 3-s random crops of the same real speech (speechocean762 +
LibriSpeech cohort from ``/work/shared/data``, FLAC files) through a torch ``DataLoader``
with batch 32, in random order, with no augmentation, so only reading and decoding differ:

- files (baseline): ``SpeakerDataset`` over the manifest, shuffled; each item seeks into
  its own file and decodes the crop only;
- shards: ``ShardDataset`` over the shards written from the same manifest (1,000
  utterances per shard by default), each worker streaming whole tar files front to back
  through a shuffle buffer of 1,000 encoded samples and decoding each utterance whole.

``--task dino`` compares DINO's multi-crop items instead (2 global crops of 3 s and 4 local
of 2 s per utterance, from a window of at most 12 s, the paper's settings): files through
``MultiCropDataset``, shards through ``MultiCropShardDataset``; both decode the window only.

``--task extraction`` compares what embedding extraction reads (whole utterances, capped at
20 s, in the length-bucketed batches of ``scoring.extraction``, no model): files through
``EvaluationDataset``, shards through the same dataset with a ``ShardAudioReader``, whose
index of the tars (built inside the timed pass) turns each utterance into one seek and read.

``--task babble`` times babble augmentation's reads (``BabbleSource.sample``: 3-s babble of
3-8 other utterances, a random crop of each): from the shards by ``utt_id`` (only the
crop decoded) against the files (only the crop read), the same draws on both sides.

``--task index`` times that index alone: a reader loading the ``.locations.json`` each
shard's first reader kept, against the pass over every tar header (``keep_locations=False``),
with the page cache dropped before each and again warm.

Before every pass the page cache is dropped when the process may (root on Linux), so each
pass reads from the disk as a first epoch of a corpus larger than memory would; otherwise
the passes are warm and the script says so. Sides take turns; medians are reported.

Usage: ``python benchmarks/bench_shards.py [--workers 2 0] [--repeats 3] [--task dino]``
(or ``--task extraction``, ``--task babble``, ``--task index``).
Skips (exit 0) with a message when the shared data folder is absent.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from sv_kedro.audio.crops import CropSpec
from sv_kedro.audio.noise_sources import BabbleSource
from sv_kedro.corpus.folder_source import scan_folder_roots
from sv_kedro.corpus.shard_access import ShardAudioReader
from sv_kedro.corpus.shards import read_shard_index, shard_counts, write_webdataset_shards
from sv_kedro.scoring.extraction import CPU_BATCH_SECONDS
from sv_kedro.training.data import (
    EvaluationDataset,
    SpeakerDataset,
    bucket_by_length,
    collate_evaluation,
    collate_padded,
)
from sv_kedro.training.multicrop_data import (
    MultiCropDataset,
    MultiCropShardDataset,
    MultiCropViews,
    collate_multicrop,
)
from sv_kedro.training.shard_data import ShardDataset

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPEECH_CORPORA = ("speechocean762_train", "librispeech_cohort")


def drop_page_cache() -> bool:
    """Empty the page cache (needs root); False where not allowed."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def measure(dataset, workers: int, batch_size: int, shuffle: bool) -> tuple[float, bool]:
    """(utterances per second over one pass, whether the cache was dropped first)."""
    cold = drop_page_cache()
    start = time.perf_counter()
    dino = isinstance(dataset, (MultiCropDataset, MultiCropShardDataset))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate_multicrop if dino else collate_padded,
    )
    count = sum(len(batch["indices"] if dino else batch["waves"]) for batch in loader)
    return count / (time.perf_counter() - start), cold


def measure_epoch(
    dataset, epoch: int, workers: int, batch_size: int, shuffle: bool
) -> tuple[float, bool]:
    """:func:`measure` over ``dataset``'s epoch ``epoch`` (its seeded draws)."""
    dataset.set_epoch(epoch)
    return measure(dataset, workers, batch_size, shuffle)


def measure_extraction(manifest, shard_dir: str | None, workers: int) -> tuple[float, bool]:
    """Extraction's reads: whole utterances in length buckets, from shards or files."""
    cold = drop_page_cache()
    start = time.perf_counter()
    reader = ShardAudioReader(shard_dir) if shard_dir else None
    dataset = EvaluationDataset(manifest, n_crops=0, max_seconds=20.0, shards=reader)
    batches = bucket_by_length(dataset.durations, CPU_BATCH_SECONDS, 64)
    loader = DataLoader(
        dataset, batch_sampler=batches, collate_fn=collate_evaluation, num_workers=workers
    )
    count = sum(len(batch["indices"]) for batch in loader)
    return count / (time.perf_counter() - start), cold


def measure_index(shard_dir: str, keep_locations: bool, cold: bool) -> tuple[float, bool]:
    """(seconds to build a ``ShardAudioReader``, whether the page cache was dropped first)."""
    dropped = drop_page_cache() if cold else False
    start = time.perf_counter()
    reader = ShardAudioReader(shard_dir, keep_locations=keep_locations)
    seconds = time.perf_counter() - start
    assert reader.scanned == (0 if keep_locations else len(reader.shards))
    return seconds, dropped


def measure_babble(source: BabbleSource, draws: int, seconds: float) -> tuple[float, bool]:
    """(babble draws per second, whether the page cache was dropped first)."""
    cold = drop_page_cache()
    rng = np.random.default_rng(0)
    frames = round(seconds * 16000)
    start = time.perf_counter()
    for _ in range(draws):
        source.sample(frames, rng, int(rng.integers(3, 9)), None, 16000)
    return draws / (time.perf_counter() - start), cold


def take_turns(
    ours: Callable[[int], tuple[float, bool]],
    baseline: Callable[[int], tuple[float, bool]],
    repeats: int,
) -> tuple[float, float, bool]:
    """Median of ``ours(turn)`` and of ``baseline(turn)``, run in turns so both sides see
    the same machine load, and whether every pass started with the page cache dropped."""
    mine, theirs, colds = [], [], []
    for turn in range(repeats):
        value, cold = ours(turn)
        base, cold_too = baseline(turn)
        mine.append(value)
        theirs.append(base)
        colds.append(cold and cold_too)
    return float(np.median(mine)), float(np.median(theirs)), all(colds)


def report_babble(manifest, shard_dir: str, repeats: int, seconds: float) -> None:
    files = BabbleSource.from_manifest(manifest)
    shards = BabbleSource.from_manifest(manifest, ShardAudioReader(shard_dir))
    draws = 300
    rate, base, cold = take_turns(
        lambda _: measure_babble(shards, draws, seconds),
        lambda _: measure_babble(files, draws, seconds),
        repeats,
    )
    cache = "dropped before each pass" if cold else "warm (cannot drop)"
    print(f"{'draws':>5} {'shards draws/s':>15} {'files draws/s':>14} {'ratio':>7}  cache")
    print(f"{draws:>5} {rate:>15.1f} {base:>14.1f} {rate / base:>6.2f}x  {cache}")


def report_index(manifest, shard_dir: str, repeats: int) -> None:
    ShardAudioReader(shard_dir)  # the first reader keeps the locations
    print(f"{'pass':>5} {'kept locations s':>17} {'tar scan s':>11} {'speed-up':>9}  cache")
    for cold in (True, False):
        fast, slow, dropped = take_turns(
            lambda _, cold=cold: measure_index(shard_dir, True, cold),
            lambda _, cold=cold: measure_index(shard_dir, False, cold),
            repeats,
        )
        cache = "dropped before each" if dropped else "warm"
        name = "cold" if cold else "warm"
        print(f"{name:>5} {fast:>17.3f} {slow:>11.3f} {slow / fast:>8.1f}x  {cache}")
    per_million = slow / len(manifest) * 1e6 / 60
    print(f"tar scan, warm: {per_million:.1f} min per million utterances at this rate")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 0])
    parser.add_argument("--crop-seconds", type=float, default=3.0)
    parser.add_argument("--utterances-per-shard", type=int, default=1000)
    parser.add_argument("--shuffle-buffer", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="passes per side (medians)")
    parser.add_argument(
        "--task", choices=["speaker", "dino", "extraction", "babble", "index"], default="speaker"
    )
    args = parser.parse_args(argv)
    if not (args.data / SPEECH_CORPORA[0]).is_dir():
        print(f"SKIP: {args.data} (real speech for benchmarks) is absent")
        return 0
    torch.set_num_threads(1)
    manifest = scan_folder_roots([args.data / c for c in SPEECH_CORPORA], progress=False)
    codes = {s: k for k, s in enumerate(sorted(manifest["speaker"].unique()))}
    manifest = manifest.assign(speaker_index=manifest["speaker"].map(codes))
    crop = CropSpec("random", args.crop_seconds)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        write_webdataset_shards(manifest, tmp, args.utterances_per_shard, seed=0)
        written_s = time.perf_counter() - started
        index = read_shard_index(tmp)
        counts = shard_counts(tmp, index)
        stream = {
            "seed": 0,
            "num_replicas": 1,
            "rank": 0,
            "shuffle_buffer": args.shuffle_buffer,
            "shard_counts": counts,
        }
        if args.task == "dino":
            views = MultiCropViews(3.0, 2.0, 2, 4, max_read_seconds=12.0)
            files: Any = MultiCropDataset(manifest, 3.0, 2.0, 2, 4, max_read_seconds=12.0)
            rows = {utt: row for row, utt in enumerate(manifest["utt_id"])}
            shards: Any = MultiCropShardDataset(list(counts), views, rows, **stream)
        else:
            files = SpeakerDataset(manifest, crop, seed=0)
            speakers = dict(zip(manifest["speaker"], manifest["speaker_index"], strict=True))
            shards = ShardDataset(list(counts), crop, speaker_to_index=speakers, **stream)
        source_mb = manifest["path"].map(os.path.getsize).sum() / 1e6
        shard_mb = sum(e["bytes"] for e in index["shards"]) / 1e6
        print(
            f"{len(manifest)} utterances ({manifest['duration'].sum() / 3600:.2f} h, "
            f"{source_mb:.0f} MB of files) -> {len(counts)} shards ({shard_mb:.0f} MB) written "
            f"in {written_s:.1f} s; batch {args.batch_size}, "
            + {
                "dino": "DINO multi-crop items",
                "extraction": "whole utterances in extraction's length buckets",
                "index": "the reader's index of the tars",
                "babble": f"{args.crop_seconds:g}-s babble of 3-8 utterances",
            }.get(args.task, f"{args.crop_seconds:g}-s crops")
        )
        if args.task == "index":
            report_index(manifest, tmp, args.repeats)
            return 0
        if args.task == "babble":
            report_babble(manifest, tmp, args.repeats, args.crop_seconds)
            return 0
        print(f"{'workers':>7} {'shards utt/s':>13} {'files utt/s':>12} {'ratio':>7}  cache")
        for workers in args.workers:
            if args.task == "extraction":
                rate, base, cold = take_turns(
                    lambda _, w=workers: measure_extraction(manifest, tmp, w),
                    lambda _, w=workers: measure_extraction(manifest, None, w),
                    args.repeats,
                )
            else:
                rate, base, cold = take_turns(
                    lambda turn, w=workers: measure_epoch(shards, turn, w, args.batch_size, False),
                    lambda turn, w=workers: measure_epoch(files, turn, w, args.batch_size, True),
                    args.repeats,
                )
            cache = "dropped before each pass" if cold else "warm (cannot drop)"
            print(f"{workers:>7} {rate:>13.1f} {base:>12.1f} {rate / base:>6.2f}x  {cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
