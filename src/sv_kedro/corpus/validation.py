"""Data-quality checks on a manifest: exclude what is unusable, fix what can be fixed.

Checks, in this order (the first that applies decides a file's fate):

1. ``unreadable`` - the header could not be read (``num_frames == -1``), or later the
   samples could not be decoded;
2. ``empty`` - zero frames;
3. ``too_short`` / ``too_long`` - duration outside ``[min_duration, max_duration]``;
4. ``multichannel`` / ``sample_rate`` - excluded here when the policy says ``"exclude"``;
5. ``non_finite`` - NaN or infinite samples (only float-PCM files can hold them, so only
   those are read whole for this check);
6. ``silent`` - RMS level below ``silence_rms_db`` dBFS, measured on a bounded number of
   evenly spaced blocks so a one-hour file costs as much as a ten-second one;
7. fixes - a multi-channel file is downmixed and/or a file at another rate is resampled
   into a 16-bit mono FLAC copy under ``fixed_dir`` (mirroring the utt_id), and its
   manifest row then points at the copy.

Raw files are only ever read: ``fixed_dir`` must lie outside every corpus root, or the
copies would be scanned as new utterances next time. Copies are written atomically and
reused when they are newer than their source, so an interrupted validation resumes where
it stopped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import pandas as pd

from sv_kedro.audio.io import (
    AudioDecodeError,
    audio_info,
    read_audio,
    resample,
    to_mono,
    write_audio,
)
from sv_kedro.corpus.audio_levels import count_non_finite, level_db, non_finite_samples, rms_dbfs
from sv_kedro.corpus.manifest import MANIFEST_COLUMNS, parallel_map
from sv_kedro.utils.params import check_keys, coerce_scalars

logger = logging.getLogger(__name__)

REPORT_COLUMNS = ("utt_id", "path", "reason", "action", "detail")
REASONS = (
    "unreadable",
    "empty",
    "too_short",
    "too_long",
    "non_finite",
    "silent",
    "multichannel",
    "sample_rate",
)


@dataclass(frozen=True)
class ValidationPolicy:
    """What to exclude and what to fix.

    ``min_duration`` / ``max_duration`` in seconds (``max_duration=None``: no limit);
    ``silence_rms_db`` in dBFS (a full-scale sine is -3 dBFS; digital silence is -inf);
    ``silence_blocks`` blocks of ``silence_block_seconds`` are read per long file to
    estimate the level; ``workers`` processes read samples and write fixed copies.
    """

    min_duration: float = 0.5
    max_duration: float | None = None
    silence_rms_db: float = -60.0
    target_sample_rate: int = 16000
    multichannel: Literal["downmix", "exclude"] = "downmix"
    wrong_rate: Literal["resample", "exclude"] = "resample"
    workers: int = 0
    silence_blocks: int = 8
    silence_block_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.min_duration < 0:
            raise ValueError(f"ValidationPolicy.min_duration must be >= 0, got {self.min_duration}")
        if self.max_duration is not None and self.max_duration <= self.min_duration:
            raise ValueError(
                f"ValidationPolicy.max_duration ({self.max_duration}) must exceed "
                f"min_duration ({self.min_duration})"
            )
        if self.multichannel not in ("downmix", "exclude"):
            raise ValueError(
                f"ValidationPolicy.multichannel must be 'downmix' or 'exclude', "
                f"got {self.multichannel!r}"
            )
        if self.wrong_rate not in ("resample", "exclude"):
            raise ValueError(
                "ValidationPolicy.wrong_rate must be 'resample' or 'exclude', "
                f"got {self.wrong_rate!r}"
            )
        if self.target_sample_rate <= 0:
            raise ValueError(
                f"ValidationPolicy.target_sample_rate must be > 0, got {self.target_sample_rate}"
            )
        if self.silence_blocks < 1 or self.silence_block_seconds <= 0:
            raise ValueError(
                "ValidationPolicy.silence_blocks and silence_block_seconds must be > 0"
            )

    @classmethod
    def from_dict(
        cls,
        settings: Mapping[str, Any],
        where: str = "validation",
        error: type[Exception] = ValueError,
    ) -> ValidationPolicy:
        """A policy from parameters: unknown keys and values that are no numbers raise
        ``error`` naming ``<where>.<key>`` (``--params`` hands strings through as given)."""
        check_keys(settings, [f.name for f in fields(cls)], where, error)
        values = coerce_scalars(cls, settings, where, error)
        try:
            return cls(**values)
        except ValueError as exc:
            raise error(f"{where}: {exc}") from exc


@dataclass(frozen=True)
class _Task:
    """One file for a worker: measure its level and, when ``target`` is set, fix it."""

    path: str
    num_frames: int
    sample_rate: int
    silence_rms_db: float
    silence_blocks: int
    silence_block_seconds: float
    target: str | None
    target_rate: int


@dataclass(frozen=True)
class _Outcome:
    status: Literal["ok", "non_finite", "silent", "unreadable"]
    detail: str
    frames: int = 0
    reused: bool = False


def _reusable_copy(target: str, source: str, target_rate: int) -> int | None:
    """Frames of a copy left by an earlier run, if it is newer than its source and in the
    target format (mono at ``target_rate``); ``None`` when it must be (re)written."""
    try:
        if os.stat(target).st_mtime_ns < os.stat(source).st_mtime_ns:
            return None
        info = audio_info(target)
    except (FileNotFoundError, AudioDecodeError):
        return None
    if info.sample_rate != target_rate or info.channels != 1:
        return None
    return info.frames


def _inspect(task: _Task) -> _Outcome:
    """Worker: the silence check, then the fix (reusing a fresh copy from an earlier run)."""
    reused_frames = None
    if task.target is not None:
        reused_frames = _reusable_copy(task.target, task.path, task.target_rate)
    needs_copy = task.target is not None and reused_frames is None
    try:
        if needs_copy:
            # The whole file is needed for the copy anyway: measure the level on it.
            wave, rate = read_audio(task.path)
            nan, inf = count_non_finite([wave])
            level = level_db([wave], task.path)
        else:
            nan, inf = non_finite_samples(task.path)
            level = rms_dbfs(
                task.path,
                task.num_frames,
                task.sample_rate,
                task.silence_blocks,
                task.silence_block_seconds,
            )
    except (AudioDecodeError, OSError) as exc:
        return _Outcome("unreadable", f"cannot decode samples: {exc}")
    if nan or inf or np.isnan(level) or level == float("inf"):
        return _Outcome("non_finite", f"{nan} NaN / {inf} inf sample(s)")
    if level < task.silence_rms_db:
        return _Outcome("silent", f"RMS {level:.1f} dBFS < {task.silence_rms_db:g} dBFS")
    if task.target is None:
        return _Outcome("ok", "")
    if reused_frames is not None:
        return _Outcome("ok", "", frames=reused_frames, reused=True)
    wave = resample(to_mono(wave), rate, task.target_rate)
    # Resampling can overshoot full scale slightly; 16-bit PCM would wrap, so clip.
    wave = np.clip(wave, -1.0, 1.0 - 1.0 / 32768)
    write_audio(task.target, wave, task.target_rate)
    return _Outcome("ok", "", frames=int(wave.shape[0]))


def _fixed_target(fixed_dir: Path, utt_id: str) -> Path:
    relative = PurePosixPath(utt_id)
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(
            f"utt_id {utt_id!r} is not a relative path; cannot mirror it under {fixed_dir}"
        )
    return fixed_dir.joinpath(*relative.parts).with_suffix(".flac")


def corpus_roots(manifest: pd.DataFrame) -> list[Path]:
    """The folders ``manifest``'s files were scanned from, resolved and sorted.

    A row's root is its path less the utt_id's parts below the speaker's folder (a
    root-prefixed ``<rootname>/<speaker>/...`` id keeps its root, not the root's parent);
    rows whose path does not end in those parts name no root.
    """
    roots = set()
    for utt_id, speaker, path in zip(
        manifest["utt_id"].astype(str),
        manifest["speaker"].astype(str),
        manifest["path"].astype(str),
        strict=True,
    ):
        if not utt_id.startswith(speaker + "/"):
            continue
        # From the speaker's own folder down: "spk/utt.wav" also for "root/spk/utt.wav".
        tail = utt_id[len(speaker) - len(speaker.rpartition("/")[2]) :]
        posix = path.replace(os.sep, "/")
        if posix.endswith("/" + tail):
            roots.add(posix[: -len(tail) - 1] or "/")
    return sorted({Path(root).expanduser().resolve() for root in roots})


def _check_fixed_dir_outside(fixed_root: Path, roots: list[Path]) -> None:
    for root in roots:
        if fixed_root == root or root in fixed_root.parents:
            raise ValueError(
                f"fixed_dir {fixed_root} is inside the corpus root {root}: the fixed copies "
                "would be written into the corpus and scanned as new utterances next time; "
                "choose a fixed_dir outside the corpus"
            )


def _header_reason(  # noqa: PLR0911 - one return per check, in the documented order
    row: dict[str, Any], policy: ValidationPolicy
) -> tuple[str, str] | None:
    """The first header-level reason to exclude ``row``, as ``(reason, detail)``."""
    error = row.get("error", "")
    if row["num_frames"] < 0 or (isinstance(error, str) and error):
        return "unreadable", str(error) if isinstance(error, str) and error else "unreadable header"
    if row["num_frames"] == 0:
        return "empty", "0 frames"
    if row["duration"] < policy.min_duration:
        return "too_short", f"{row['duration']:.3f} s < {policy.min_duration:g} s"
    if policy.max_duration is not None and row["duration"] > policy.max_duration:
        return "too_long", f"{row['duration']:.3f} s > {policy.max_duration:g} s"
    if policy.multichannel == "exclude" and row["channels"] > 1:
        return "multichannel", f"{row['channels']} channels"
    if policy.wrong_rate == "exclude" and row["sample_rate"] != policy.target_sample_rate:
        return "sample_rate", f"{row['sample_rate']} Hz != {policy.target_sample_rate} Hz"
    return None


def validate_manifest(
    manifest: pd.DataFrame,
    policy: ValidationPolicy,
    fixed_dir: str | os.PathLike[str],
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply ``policy`` to ``manifest``; return ``(clean manifest, quality report)``.

    The clean manifest keeps the surviving rows in their order, without the ``error``
    column; fixed rows keep their ``utt_id`` but get the copy's ``path``,
    ``sample_rate``, ``channels = 1``, ``num_frames`` and ``duration``. The report has
    one row per excluded or fixed file: ``utt_id, path, reason, action, detail``, with
    ``action`` one of ``excluded``, ``downmixed``, ``resampled``, ``downmixed+resampled``.

    Raises ``ValueError`` before reading any samples when ``fixed_dir`` is a corpus root
    or lies inside one (see :func:`corpus_roots`).
    """
    missing = [column for column in MANIFEST_COLUMNS if column not in manifest.columns]
    if missing:
        raise ValueError(f"validate_manifest: manifest lacks column(s) {missing}")
    fixed_root = Path(fixed_dir).expanduser().resolve()
    _check_fixed_dir_outside(fixed_root, corpus_roots(manifest))
    frame = manifest.reset_index(drop=True)
    report: list[dict[str, str]] = []
    keep = np.ones(len(frame), dtype=bool)

    tasks: list[_Task] = []
    task_rows: list[int] = []
    fix_actions: dict[int, tuple[str, str, str]] = {}  # row -> (reason, action, detail)
    records = frame.to_dict("records")
    for index, row in enumerate(records):
        header_reason = _header_reason(row, policy)
        if header_reason is not None:
            keep[index] = False
            report.append(_report_row(row, *header_reason, "excluded"))
            continue
        target = None
        fixes = []
        if row["channels"] > 1:
            fixes.append(("multichannel", "downmixed", f"{row['channels']} channels -> mono"))
        if row["sample_rate"] != policy.target_sample_rate:
            fixes.append(
                (
                    "sample_rate",
                    "resampled",
                    f"{row['sample_rate']} Hz -> {policy.target_sample_rate} Hz",
                )
            )
        if fixes:
            target_path = _fixed_target(fixed_root, row["utt_id"])
            if target_path == Path(row["path"]).resolve():
                raise ValueError(
                    f"{row['path']}: the fixed copy would overwrite the raw file; "
                    f"choose a fixed_dir outside the corpus"
                )
            target = str(target_path)
            # One report row per file: the first fix names the reason, the detail lists all.
            fix_actions[index] = (
                fixes[0][0],
                "+".join(fix[1] for fix in fixes),
                "; ".join(fix[2] for fix in fixes),
            )
        tasks.append(
            _Task(
                path=str(row["path"]),
                num_frames=int(row["num_frames"]),
                sample_rate=int(row["sample_rate"]),
                silence_rms_db=policy.silence_rms_db,
                silence_blocks=policy.silence_blocks,
                silence_block_seconds=policy.silence_block_seconds,
                target=target,
                target_rate=policy.target_sample_rate,
            )
        )
        task_rows.append(index)

    targets = pd.Series([task.target for task in tasks if task.target is not None], dtype=object)
    if targets.duplicated().any():
        clashes = sorted(set(targets[targets.duplicated()]))
        raise ValueError(
            f"fixed copies of different utt_ids would share a path, e.g. {clashes[:3]}"
        )

    outcomes = parallel_map(
        _inspect, tasks, workers=policy.workers, batch_size=16, desc="validate", progress=progress
    )
    paths = frame["path"].astype(object).to_numpy(copy=True)
    rates = frame["sample_rate"].to_numpy(copy=True)
    channels = frame["channels"].to_numpy(copy=True)
    num_frames = frame["num_frames"].to_numpy(copy=True)
    durations = frame["duration"].to_numpy(dtype=np.float64, copy=True)
    for index, task, outcome in zip(task_rows, tasks, outcomes, strict=True):
        row = records[index]
        if outcome.status != "ok":
            keep[index] = False
            report.append(_report_row(row, outcome.status, outcome.detail, "excluded"))
            continue
        if task.target is None:
            continue
        reason, action, detail = fix_actions[index]
        if outcome.reused:
            detail += " (copy from an earlier run reused)"
        report.append(_report_row(row, reason, detail, action))
        paths[index] = task.target
        rates[index] = policy.target_sample_rate
        channels[index] = 1
        num_frames[index] = outcome.frames
        durations[index] = outcome.frames / policy.target_sample_rate

    clean = frame.assign(
        path=pd.Series(paths, dtype=str),
        sample_rate=rates,
        channels=channels,
        num_frames=num_frames,
        duration=durations,
    )
    clean = clean.loc[keep].drop(columns=["error"], errors="ignore").reset_index(drop=True)
    report_frame = pd.DataFrame(report, columns=list(REPORT_COLUMNS)).astype(str)
    _log_summary(len(frame), clean, report_frame)
    return clean, report_frame


def _report_row(row: dict[str, Any], reason: str, detail: str, action: str) -> dict[str, str]:
    return {
        "utt_id": str(row["utt_id"]),
        "path": str(row["path"]),
        "reason": reason,
        "action": action,
        "detail": detail,
    }


def _log_summary(total: int, clean: pd.DataFrame, report: pd.DataFrame) -> None:
    if report.empty:
        logger.info("validation: all %d files passed", total)
        return
    counts = report.groupby(["reason", "action"]).size()
    summary = ", ".join(f"{reason}/{action}: {count}" for (reason, action), count in counts.items())
    logger.info("validation: %d of %d files kept (%s)", len(clean), total, summary)
