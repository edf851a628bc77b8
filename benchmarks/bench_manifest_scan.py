"""Manifest scan speed: ``scan_folder_roots`` against a naive glob + full-read scanner.

Generates ``--files`` short (``--seconds``, default 0.05 s, 16 kHz) wav files in a
``<speaker>/<utt>.wav`` tree under ``--cache-dir`` (kept and reused between runs; only
missing files are written),
then times, in the same run:

- sv_kedro: ``scan_folder_roots`` (``os.scandir`` walk + header-only reads, in a process
  pool of ``--workers``; also once with ``workers=0``);
- baseline ("naive"): ``glob.glob("**/*.wav", recursive=True)`` over the whole tree, then
  per file ``soundfile.read`` of all samples for the duration, as a notebook would do. The
  reads are timed on ``--baseline-files`` files and extrapolated to the whole tree.

Both run on a warm page cache (the tree was just written or scanned), so the figures are
CPU cost, not disk speed; on a cold network file system the header-only scan wins more.

    python benchmarks/bench_manifest_scan.py [--files 100000] [--workers 2]
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from sv_kedro.corpus.folder_source import scan_folder_roots
from sv_kedro.corpus.walk import walk_files

UTTERANCES_PER_SPEAKER = 100


def build_tree(root: Path, files: int, seconds: float = 0.05, rate: int = 16000) -> float:
    """Write the missing files of the tree; return the seconds it took."""
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    templates = []
    for _ in range(16):  # a few different payloads, so files are not all identical
        buffer = io.BytesIO()
        sf.write(buffer, 0.1 * rng.standard_normal(round(seconds * rate)), rate, format="WAV")
        templates.append(buffer.getvalue())
    for index in range(files):
        speaker, utt = divmod(index, UTTERANCES_PER_SPEAKER)
        path = root / f"spk{speaker:05d}" / f"utt{utt:03d}.wav"
        if index % UTTERANCES_PER_SPEAKER == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_bytes(templates[index % len(templates)])
    return time.perf_counter() - start


def naive_scan(root: Path, sample: int) -> tuple[float, float, int]:
    """Glob the whole tree, fully read ``sample`` files; return (glob s, read s per file, n)."""
    start = time.perf_counter()
    paths = sorted(glob.glob(os.path.join(root, "**", "*.wav"), recursive=True))
    glob_seconds = time.perf_counter() - start
    step = max(1, len(paths) // sample)
    chosen = paths[::step][:sample]
    rows = []
    start = time.perf_counter()
    for path in chosen:
        wave, rate = sf.read(path)
        relative = os.path.relpath(path, root)
        rows.append((relative, relative.split(os.sep)[0], len(wave) / rate, rate))
    read_seconds = (time.perf_counter() - start) / len(chosen)
    return glob_seconds, read_seconds, len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=0.05, help="length of each file")
    parser.add_argument("--baseline-files", type=int, default=5_000)
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "sv_kedro_bench_scan"
    )
    args = parser.parse_args()
    root = args.cache_dir / f"tree_{args.files}x{args.seconds:g}s"
    build_seconds = build_tree(root, args.files, seconds=args.seconds)
    print(
        f"tree: {args.files} files x {args.seconds:g} s under {root} "
        f"(prepared in {build_seconds:.1f} s)"
    )

    start = time.perf_counter()
    walked = walk_files(root, (".wav",))
    walk_seconds = time.perf_counter() - start
    assert len(walked) == args.files, f"tree holds {len(walked)} files, expected {args.files}"

    timings = {}
    for workers in sorted({0, args.workers}):
        start = time.perf_counter()
        manifest = scan_folder_roots([root], workers=workers, progress=False)
        timings[workers] = time.perf_counter() - start
        expected_frames = round(args.seconds * 16000)
        assert len(manifest) == args.files and (manifest["num_frames"] == expected_frames).all()

    glob_seconds, read_per_file, globbed = naive_scan(root, args.baseline_files)
    naive_seconds = glob_seconds + read_per_file * globbed
    naive_rate = args.files / naive_seconds

    print(f"walk only: os.scandir walk {walk_seconds:.2f} s vs glob {glob_seconds:.2f} s")
    print(
        f"baseline (glob + soundfile.read whole file, 1 process; reads timed on "
        f"{min(args.baseline_files, globbed)} files, extrapolated): {naive_seconds:.1f} s, "
        f"{naive_rate:,.0f} files/s"
    )
    for workers, seconds in timings.items():
        rate = args.files / seconds
        print(
            f"scan_folder_roots workers={workers}: {seconds:.1f} s, {rate:,.0f} files/s, "
            f"x{rate / naive_rate:.2f} vs baseline"
        )
    print(f"(machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
