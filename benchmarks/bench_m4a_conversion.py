"""m4a -> 16 kHz mono PCM conversion: ``convert_to_wav`` against one ffmpeg process per file.

Encodes ``--files`` AAC files of ``--seconds`` s each (16 kHz mono like VoxCeleb2, or
``--rate``/``--channels``) with PyAV into ``--cache-dir`` (reused between runs), then
measures conversion throughput in audio seconds per wall second, in the same run, for:

- baseline (the original recipe): ``ffmpeg -y -i in.m4a -ac 1 -ar 16000 out.wav``, one
  subprocess per file, ``--workers`` at a time (thread pool driving the subprocesses);
- sv_kedro ``convert_to_wav`` with the same ``--workers``, writing wav (like for like)
  and flac (the project default, compressed: half the disk).

Outputs go to fresh temporary folders each run. Without ``ffmpeg`` on PATH the baseline
is skipped with a message (``apt-get install -y ffmpeg``).

    python benchmarks/bench_m4a_conversion.py [--files 200] [--seconds 8] [--workers 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from sv_kedro.corpus.conversion import convert_to_wav


def encode_m4a(path: Path, seconds: float, rate: int, channels: int, seed: int) -> None:
    """Speech-like test signal: a gliding harmonic tone with amplitude modulation and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    pitch = 120 + 60 * np.sin(2 * np.pi * 0.3 * t + seed)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6)) * (
        0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    )
    wave = 0.15 * voice + 0.01 * rng.standard_normal(t.size)
    planes = np.stack([wave] * channels).astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono" if channels == 1 else "stereo"
        frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout=stream.layout.name)
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


def prepare_sources(
    folder: Path, files: int, seconds: float, rate: int, channels: int
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for index in range(files):
        path = folder / f"utt{index:05d}.m4a"
        if not path.exists():
            partial = path.with_name(f".{path.name}.tmp.m4a")
            encode_m4a(partial, seconds, rate, channels, seed=index)
            os.replace(partial, path)
        sources.append(path)
    return sources


def ffmpeg_one(src: Path, dst: Path) -> None:
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(src),
            "-ac",
            "1",
            "-ar",
            "16000",
            str(dst),
        ],
        check=True,
    )


def run_ffmpeg(sources: list[Path], out: Path, workers: int) -> float:
    out.mkdir(parents=True)
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(ffmpeg_one, sources, [out / f"{src.stem}.wav" for src in sources]))
    return time.perf_counter() - start


def run_ours(sources: list[Path], out: Path, workers: int, audio_format: str) -> float:
    jobs = [(src, out / f"{src.stem}.{audio_format}") for src in sources]
    start = time.perf_counter()
    result = convert_to_wav(jobs, workers=workers, audio_format=audio_format, progress=False)
    seconds = time.perf_counter() - start
    assert result.converted == len(sources) and not result.failed, result
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=int, default=16000)
    parser.add_argument("--channels", type=int, default=1, choices=(1, 2))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "sv_kedro_bench_m4a"
    )
    args = parser.parse_args()
    folder = args.cache_dir / f"m4a_{args.files}x{args.seconds:g}s_{args.rate}_{args.channels}ch"
    start = time.perf_counter()
    sources = prepare_sources(folder, args.files, args.seconds, args.rate, args.channels)
    audio_seconds = args.files * args.seconds
    print(
        f"{args.files} m4a files x {args.seconds:g} s ({args.rate} Hz, {args.channels} ch) "
        f"in {folder} (prepared in {time.perf_counter() - start:.1f} s); workers={args.workers}"
    )

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_m4a_") as scratch:
        if shutil.which("ffmpeg") is None:
            print("baseline skipped: ffmpeg is not on PATH (apt-get install -y ffmpeg)")
        else:
            results["ffmpeg subprocess per file -> wav (baseline)"] = run_ffmpeg(
                sources, Path(scratch) / "ffmpeg", args.workers
            )
        for audio_format in ("wav", "flac"):
            results[f"convert_to_wav -> {audio_format}"] = run_ours(
                sources, Path(scratch) / audio_format, args.workers, audio_format
            )
        check, rate = sf.read(Path(scratch) / "flac" / f"{sources[0].stem}.flac")
        assert rate == 16000 and check.ndim == 1

    baseline = results.get("ffmpeg subprocess per file -> wav (baseline)")
    for name, seconds in results.items():
        speed = audio_seconds / seconds
        ratio = f", x{baseline / seconds:.2f} vs baseline" if baseline else ""
        print(f"{name}: {seconds:.1f} s wall, {speed:,.0f} audio s per wall s{ratio}")
    print(f"(machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
