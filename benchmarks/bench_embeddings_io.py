"""Embedding I/O: the compact npy folder against the published ``.pt`` dict (the baseline).

Writes ``--size`` x ``--dim`` random float32 embeddings keyed like
``id00012/21Uxsk56VDQ/00001.wav`` through ``EmbeddingsDataset`` in both formats, then
times save, load, and memory-mapped load of the compact format against save and load of
the ``.pt`` dict. Files go to a temp folder (``--workdir``, default /tmp) and are deleted.

Loads follow the saves directly, so they read from the page cache: they measure
decoding cost, not disk speed. Needs about 4x the matrix size in RAM for the ``.pt``
baseline (one tensor object per utterance).

    python benchmarks/bench_embeddings_io.py --size 1000000
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import string
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sv_kedro.datasets import EmbeddingsDataset
from sv_kedro.scoring.embedding_table import EmbeddingTable


def make_table(size: int, dim: int, seed: int = 0) -> EmbeddingTable:
    """``size`` random unit-free float32 ``[size, dim]`` vectors with VoxCeleb-style keys."""
    rng = np.random.default_rng(seed)
    alphabet = np.array(list(string.ascii_letters + string.digits + "-_"))
    videos_per_speaker, utts_per_video = 20, 10
    n_videos = -(-size // utts_per_video)
    video_ids = ["".join(row) for row in rng.choice(alphabet, size=(n_videos, 11))]
    keys = [
        f"id{(i // utts_per_video) // videos_per_speaker:05d}/"
        f"{video_ids[i // utts_per_video]}/{i % utts_per_video + 1:05d}.wav"
        for i in range(size)
    ]
    vectors = rng.standard_normal((size, dim), dtype=np.float32)
    return EmbeddingTable(keys, vectors)


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="number of embeddings")
    parser.add_argument("--dim", type=int, default=256, help="embedding dimension")
    parser.add_argument("--workdir", default=tempfile.gettempdir(), help="scratch folder")
    args = parser.parse_args()

    print(
        f"embeddings: {args.size:,} x {args.dim} float32 "
        f"({args.size * args.dim * 4 / 2**20:.0f} MiB), CPU threads: {os.cpu_count()}"
    )
    build_s, table = timed(lambda: make_table(args.size, args.dim))
    print(f"generated keys and vectors in {build_s:.2f} s")
    scratch = Path(tempfile.mkdtemp(prefix="bench_embeddings_", dir=args.workdir))
    results: dict[str, float] = {}
    try:
        compact = EmbeddingsDataset(filepath=str(scratch / "compact"))
        mapped = EmbeddingsDataset(filepath=str(scratch / "compact"), load_args={"mmap_mode": "r"})
        published = EmbeddingsDataset(filepath=str(scratch / "published.pt"))

        results["npy save"], _ = timed(lambda: compact.save(table))
        results["npy load"], loaded = timed(compact.load)
        assert loaded.keys_[-1] == table.keys_[-1]
        np.testing.assert_array_equal(loaded.vectors[-1], table.vectors[-1])
        del loaded
        results["npy mmap open"], opened = timed(mapped.load)
        results["npy mmap open+scan"], _ = timed(
            lambda: float(mapped.load().vectors.sum(dtype=np.float64))
        )
        del opened

        results["pt save"], _ = timed(lambda: published.save(table))
        results["pt load"], loaded = timed(published.load)
        np.testing.assert_array_equal(loaded.vectors[-1], table.vectors[-1])
        del loaded

        size_npy = folder_bytes(scratch / "compact")
        size_pt = folder_bytes(scratch / "published.pt")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"on disk: npy folder {size_npy / 2**20:.0f} MiB, pt dict {size_pt / 2**20:.0f} MiB")
    width = max(map(len, results))
    for name, seconds in results.items():
        print(f"{name:<{width}}  {seconds:8.3f} s")
    print("speed-up against the .pt dict baseline (baseline seconds / compact seconds):")
    print(f"  save: {results['pt save'] / results['npy save']:.1f}x")
    print(f"  load: {results['pt load'] / results['npy load']:.1f}x")
    print(f"  load (mmap, open): {results['pt load'] / results['npy mmap open']:.1f}x")
    print(
        f"  load (mmap, open + full scan): "
        f"{results['pt load'] / results['npy mmap open+scan']:.1f}x"
    )


if __name__ == "__main__":
    main()
