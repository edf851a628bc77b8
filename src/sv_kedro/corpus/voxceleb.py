"""VoxCeleb1 and VoxCeleb2 as released: zips (or their extracted folders) plus meta csvs.

Expected under ``root`` (each part optional, at least one present):

- ``vox1_dev_wav.zip`` / ``vox1_test_wav.zip`` holding ``wav/idNNNNN/<video>/NNNNN.wav``;
- ``vox2_dev_aac.zip`` / ``vox2_test_aac.zip`` holding ``dev/aac/idNNNNN/<video>/NNNNN.m4a``
  (or ``aac/...``); the download comes in pieces: ``cat vox2_dev_aac_parta* > vox2_dev_aac.zip``;
- or, instead of a zip, the extracted folder ``root/<part>`` or ``root/<zip stem>``;
- ``vox1_meta.csv`` (tab-separated) and ``vox2_meta.csv`` (comma-separated, space-padded,
  UTF-8 BOM, CRLF) for speaker genders.

Whatever the prefix inside a zip, files are recognised by their ``idNNNNN/<video>/<n>``
tail, and extracted to ``extract_dir/<part>/idNNNNN/<video>/<n>.<ext>``. The AAC files of
VoxCeleb2 are decoded once to 16 kHz mono FLAC under ``converted_dir/<part>/``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from sv_kedro.corpus.conversion import convert_to_wav
from sv_kedro.corpus.manifest import check_manifest, scan_files
from sv_kedro.corpus.walk import walk_files
from sv_kedro.utils.atomic import atomic_write_path

logger = logging.getLogger(__name__)

# idNNNNN/<video>/<utterance>.<ext> at the end of a member path, whatever comes before.
_TAIL = re.compile(r"(?:^|/)(id\d+)/([^/]+)/([^/]+)\.(wav|m4a)$", re.IGNORECASE)
_SPEAKER = re.compile(r"^id\d+$")


@dataclass(frozen=True)
class VoxPart:
    name: str
    zip_name: str
    suffix: str  # audio suffix inside the release

    @property
    def compressed(self) -> bool:
        return self.suffix == ".m4a"


VOX_PARTS: dict[str, VoxPart] = {
    part.name: part
    for part in (
        VoxPart("vox1_dev", "vox1_dev_wav.zip", ".wav"),
        VoxPart("vox1_test", "vox1_test_wav.zip", ".wav"),
        VoxPart("vox2_dev", "vox2_dev_aac.zip", ".m4a"),
        VoxPart("vox2_test", "vox2_test_aac.zip", ".m4a"),
    )
}


class VoxCelebError(ValueError):
    """A VoxCeleb file is missing or malformed; the message names the file (and line)."""


def _read_meta(path: str | os.PathLike[str], delimiter: str, id_column: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VoxCeleb meta file {path} does not exist")
    # utf-8-sig drops the BOM of vox2_meta.csv; splitlines handles its CRLF endings.
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    if not lines:
        raise VoxCelebError(f"{path}: empty meta file")
    header = [name.strip() for name in lines[0].split(delimiter)]
    for column in (id_column, "Gender", "Set"):
        if column not in header:
            raise VoxCelebError(
                f"{path}:1: header {header} lacks column {column!r} "
                f"(fields separated by {delimiter!r})"
            )
    id_at, gender_at, set_at = (header.index(c) for c in (id_column, "Gender", "Set"))
    rows: list[tuple[str, str, str]] = []
    seen: dict[str, int] = {}
    for line_number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = [value.strip() for value in line.split(delimiter)]
        if len(fields) != len(header):
            raise VoxCelebError(
                f"{path}:{line_number}: expected {len(header)} fields separated by "
                f"{delimiter!r}, got {len(fields)}: {line!r}"
            )
        speaker, gender, subset = fields[id_at], fields[gender_at].lower(), fields[set_at]
        if not _SPEAKER.match(speaker):
            raise VoxCelebError(f"{path}:{line_number}: speaker id {speaker!r} is not idNNNNN")
        if gender not in ("m", "f"):
            raise VoxCelebError(f"{path}:{line_number}: gender {gender!r} is not 'm' or 'f'")
        if speaker in seen:
            raise VoxCelebError(
                f"{path}:{line_number}: speaker {speaker} already listed on line {seen[speaker]}"
            )
        seen[speaker] = line_number
        rows.append((speaker, gender, subset))
    return pd.DataFrame(rows, columns=["speaker", "gender", "set"]).astype(str)


def read_vox1_meta(path: str | os.PathLike[str]) -> pd.DataFrame:
    """``vox1_meta.csv`` (tab-separated) -> DataFrame[speaker, gender ("m"/"f"), set]."""
    return _read_meta(path, "\t", "VoxCeleb1 ID")


def read_vox2_meta(path: str | os.PathLike[str]) -> pd.DataFrame:
    """``vox2_meta.csv`` (comma-separated, padded, BOM, CRLF) -> DataFrame[speaker, gender, set]."""
    return _read_meta(path, ",", "VoxCeleb2 ID")


def _tail(relative: str) -> tuple[str, str, str] | None:
    """``(speaker, video, utterance stem)`` from a path ending in ``idN/<video>/<n>.<ext>``."""
    match = _TAIL.search(relative)
    if match is None or match.group(2) in (".", ".."):
        return None
    return match.group(1), match.group(2), match.group(3)


def extract_zip(
    zip_path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    suffix: str,
    progress: bool = True,
) -> int:
    """Extract the ``suffix`` audio members of a VoxCeleb zip to ``dest/idN/<video>/<n><suffix>``.

    Members already extracted with the right size are skipped (resume); each file is
    written atomically; the zip is only read. Returns how many files were written.
    """
    dest = Path(dest)
    written = 0
    ignored: list[str] = []
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise VoxCelebError(f"{zip_path}: not a readable zip ({exc})") from exc
    with archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        bar = tqdm(
            members,
            desc=f"extract {Path(zip_path).name}",
            unit="file",
            leave=False,
            disable=not progress,
        )
        for info in bar:
            tail = _tail(info.filename) if info.filename.lower().endswith(suffix) else None
            if tail is None:
                ignored.append(info.filename)
                continue
            speaker, video, stem = tail
            target = dest / speaker / video / f"{stem}{suffix}"
            try:
                if target.stat().st_size == info.file_size:
                    continue
            except FileNotFoundError:
                pass
            with (
                atomic_write_path(target) as tmp,
                archive.open(info) as src,
                open(tmp, "wb") as out,
            ):
                shutil.copyfileobj(src, out, 1 << 20)
            written += 1
    if ignored:
        logger.warning(
            "%s: ignored %d member(s) not shaped idNNNNN/<video>/<n>%s, e.g. %s",
            zip_path,
            len(ignored),
            suffix,
            ignored[:3],
        )
    return written


def _locate(
    part: VoxPart, root: Path, extract_dir: Path, progress: bool
) -> tuple[Path | None, list[Path]]:
    """Folder holding the part's audio (extracting its zip first), and the places looked at."""
    zip_path = root / part.zip_name
    folders = [root / part.name, root / Path(part.zip_name).stem, extract_dir / part.name]
    if zip_path.is_file():
        dest = extract_dir / part.name
        written = extract_zip(zip_path, dest, part.suffix, progress=progress)
        logger.info(
            "%s: extracted %d new file(s) from %s to %s", part.name, written, zip_path, dest
        )
        return dest, [zip_path, *folders]
    for folder in folders:
        if folder.is_dir():
            return folder, [zip_path, *folders]
    return None, [zip_path, *folders]


def _list_part(part: VoxPart, folder: Path) -> list[tuple[str, str, str, str]]:
    """``(speaker, video, stem, absolute path)`` of each audio file, sorted, de-duplicated."""
    entries: dict[tuple[str, str, str], str] = {}
    misplaced = 0
    for relative in walk_files(folder, (part.suffix,)):
        tail = _tail(relative)
        if tail is None:
            misplaced += 1
            continue
        entries.setdefault(tail, str(folder / relative))
    if misplaced:
        logger.warning(
            "%s: %d file(s) under %s not shaped idN/<video>/<n>", part.name, misplaced, folder
        )
    return [(*key, entries[key]) for key in sorted(entries)]


def _genders(root: Path, vox1_meta: Path | None, vox2_meta: Path | None) -> dict[str, str]:
    genders: dict[str, str] = {}
    for given, default, reader in (
        (vox1_meta, root / "vox1_meta.csv", read_vox1_meta),
        (vox2_meta, root / "vox2_meta.csv", read_vox2_meta),
    ):
        path = given if given is not None else default
        if given is None and not default.is_file():
            logger.warning("%s not found: genders of its speakers are left empty", default)
            continue
        meta = reader(path)
        genders.update(zip(meta["speaker"], meta["gender"], strict=True))
    return genders


def prepare_voxceleb(
    root: str | os.PathLike[str],
    extract_dir: str | os.PathLike[str],
    converted_dir: str | os.PathLike[str],
    parts: Sequence[str] = ("vox1_dev", "vox1_test", "vox2_dev", "vox2_test"),
    workers: int = 2,
    audio_format: str = "flac",
    vox1_meta: str | os.PathLike[str] | None = None,
    vox2_meta: str | os.PathLike[str] | None = None,
    vox2_id_suffix: str = ".wav",
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Extract, convert and scan VoxCeleb; return ``(manifest, conversion failures)``.

    Manifest: ``utt_id`` is ``idNNNNN/<video>/NNNNN.wav`` (VoxCeleb2 ids also end in
    ``vox2_id_suffix``, ``.wav`` as in the usual VoxCeleb2 trial lists), ``speaker`` the
    id, ``session`` the video, ``gender`` from the meta csvs (``""`` when unknown),
    ``source`` the part name; VoxCeleb2 rows point at the converted files. Failures:
    DataFrame[part, utt_id, path, reason] of AAC files that could not be decoded (left
    out of the manifest). Missing parts are skipped with a log line.
    """
    unknown = [name for name in parts if name not in VOX_PARTS]
    if unknown:
        raise ValueError(f"unknown VoxCeleb part(s) {unknown}; choose from {list(VOX_PARTS)}")
    root = Path(root).expanduser().resolve()
    extract_dir = Path(extract_dir).expanduser().resolve()
    converted_dir = Path(converted_dir).expanduser().resolve()
    genders = _genders(
        root, Path(vox1_meta) if vox1_meta else None, Path(vox2_meta) if vox2_meta else None
    )

    frames: list[pd.DataFrame] = []
    failures: list[dict[str, str]] = []
    looked_for: list[str] = []
    for name in parts:
        part = VOX_PARTS[name]
        folder, candidates = _locate(part, root, extract_dir, progress)
        if folder is None:
            looked_for.extend(map(str, candidates))
            logger.info(
                "%s: not found (looked for %s); skipped", name, ", ".join(map(str, candidates))
            )
            continue
        listing = _list_part(part, folder)
        if not listing:
            logger.warning("%s: no %s files under %s; skipped", name, part.suffix, folder)
            looked_for.append(f"{folder} (holds no {part.suffix} files)")
            continue
        speakers = [speaker for speaker, _, _, _ in listing]
        videos = [video for _, video, _, _ in listing]
        id_suffix = vox2_id_suffix if part.compressed else part.suffix
        utt_ids = [f"{spk}/{video}/{stem}{id_suffix}" for spk, video, stem, _ in listing]
        paths = [path for *_, path in listing]
        if part.compressed:
            targets = [
                str(converted_dir / name / spk / video / f"{stem}.{audio_format}")
                for spk, video, stem, _ in listing
            ]
            result = convert_to_wav(
                list(zip(paths, targets, strict=True)),
                workers=workers,
                audio_format=audio_format,
                progress=progress,
            )
            failed = {src: reason for src, reason in result.failed}
            for utt_id, src in zip(utt_ids, paths, strict=True):
                if src in failed:
                    failures.append(
                        {"part": name, "utt_id": utt_id, "path": src, "reason": failed[src]}
                    )
            kept = [index for index, src in enumerate(paths) if src not in failed]
            speakers, videos, utt_ids = (
                [values[i] for i in kept] for values in (speakers, videos, utt_ids)
            )
            paths = [targets[i] for i in kept]
        manifest = scan_files(
            paths,
            utt_ids,
            speakers,
            source=name,
            sessions=videos,
            workers=workers,
            progress=progress,
        )
        manifest["gender"] = pd.Series([genders.get(spk, "") for spk in speakers], dtype=str)
        unknown_speakers = sorted({spk for spk in speakers if spk not in genders})
        if unknown_speakers and genders:
            logger.warning(
                "%s: %d speaker(s) not in the meta files, e.g. %s",
                name,
                len(unknown_speakers),
                unknown_speakers[:5],
            )
        logger.info("%s: %d utterances of %d speakers", name, len(manifest), len(set(speakers)))
        frames.append(manifest)

    if not frames:
        raise FileNotFoundError(
            f"no VoxCeleb part {list(parts)} found under {root}; looked for: "
            + ", ".join(looked_for)
            + " (join downloaded pieces first: cat vox1_dev_wav_parta* > vox1_dev_wav.zip)"
        )
    manifest = check_manifest(pd.concat(frames, ignore_index=True), name=f"VoxCeleb under {root}")
    failures_frame = pd.DataFrame(failures, columns=["part", "utt_id", "path", "reason"]).astype(
        str
    )
    return manifest, failures_frame
