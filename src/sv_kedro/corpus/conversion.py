"""Decode compressed audio (m4a/aac) into 16 kHz mono PCM files, resumably, in parallel.

VoxCeleb2 ships as ~1.1 M AAC files. Decoding them once up front (PyAV in worker
processes, no ``ffmpeg`` subprocess per file) lets training read PCM with cheap seeks.
Every output is written atomically, so an output that exists is complete: a re-run
skips it and an interrupted conversion resumes where it stopped. Files that cannot be
decoded are listed with the reason and do not stop the run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sv_kedro.audio.io import AudioDecodeError, read_audio, resample, to_mono, write_audio
from sv_kedro.corpus.manifest import parallel_map

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("flac", "wav")


@dataclass
class ConversionResult:
    """How many outputs were written or already there, and which sources failed (and why)."""

    converted: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.converted + self.skipped + len(self.failed)


def _convert_one(job: tuple[str, str, int]) -> tuple[str, str]:
    """Worker: ``(status, reason)`` with status ``converted``, ``skipped`` or ``failed``."""
    src, dst, sample_rate = job
    if os.path.exists(dst):
        return "skipped", ""
    try:
        wave, rate = read_audio(src)
    except (AudioDecodeError, OSError) as exc:
        return "failed", str(exc)
    if wave.shape[0] == 0:
        return "failed", f"{src}: decoded no samples"
    wave = resample(to_mono(wave), rate, sample_rate)
    # The AAC decoder and the resampler can overshoot full scale; 16-bit PCM would wrap.
    wave = np.clip(wave, -1.0, 1.0 - 1.0 / 32768)
    try:
        write_audio(dst, wave, sample_rate)
    except OSError as exc:
        return "failed", f"{dst}: cannot write ({exc})"
    return "converted", ""


def convert_to_wav(
    jobs: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]],
    sample_rate: int = 16000,
    workers: int = 2,
    audio_format: str = "flac",
    progress: bool = True,
    batch_size: int = 8,
) -> ConversionResult:
    """Decode each ``(src, dst)`` job to 16-bit mono PCM at ``sample_rate`` in ``dst``.

    ``audio_format`` (``"flac"`` or ``"wav"``) must match every ``dst`` suffix; it is
    checked up front so a typo fails before any work. Outputs that already exist are
    skipped; sources that fail to decode are returned in ``failed`` as
    ``(src, reason)``. ``workers`` processes decode in parallel (0: in this process);
    jobs go to them in batches of ``batch_size`` with a bounded number in flight.
    """
    if audio_format not in OUTPUT_FORMATS:
        raise ValueError(f"audio_format must be one of {OUTPUT_FORMATS}, got {audio_format!r}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
    work: list[tuple[str, str, int]] = []
    for index, (src, dst) in enumerate(jobs):
        dst_path = Path(dst)
        if dst_path.suffix.lower() != f".{audio_format}":
            raise ValueError(
                f"conversion job {index}: output {dst} does not end in .{audio_format} "
                f"(audio_format={audio_format!r})"
            )
        if os.path.abspath(src) == os.path.abspath(dst):
            raise ValueError(f"conversion job {index}: output {dst} is the source file itself")
        work.append((os.fspath(src), os.fspath(dst), sample_rate))

    result = ConversionResult()
    statuses = parallel_map(
        _convert_one,
        work,
        workers=workers,
        batch_size=batch_size,
        desc=f"convert to {audio_format}",
        progress=progress,
    )
    for (src, _, _), (status, reason) in zip(work, statuses, strict=True):
        if status == "converted":
            result.converted += 1
        elif status == "skipped":
            result.skipped += 1
        else:
            result.failed.append((src, reason))
    logger.info(
        "conversion: %d converted, %d already done, %d failed",
        result.converted,
        result.skipped,
        len(result.failed),
    )
    for src, reason in result.failed[:10]:
        logger.warning("could not convert %s: %s", src, reason)
    return result
