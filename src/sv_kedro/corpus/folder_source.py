"""A corpus that is a folder tree: ``<root>/<speaker>/[<session>/]<utterance>.<ext>``.

Several roots can be pooled into one manifest. ``utt_id`` is the path relative to its
root; when two roots share a speaker name, every id and speaker of the pool is prefixed
with its root's folder name (``<rootname>/<speaker>/...``) so that nothing clashes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from sv_kedro.corpus.manifest import check_manifest, empty_manifest, scan_files
from sv_kedro.corpus.walk import walk_roots

logger = logging.getLogger(__name__)

DEFAULT_SUFFIXES = (".wav", ".flac", ".m4a")


def _split_root(root: Path, relative: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Keep files at depth 2 or 3 whose names hold no whitespace; return (utt_ids,
    speakers, sessions) and warn about the rest."""
    utt_ids: list[str] = []
    speakers: list[str] = []
    sessions: list[str] = []
    misplaced: list[str] = []
    spaced: list[str] = []
    for rel in relative:
        if _has_whitespace(rel):
            spaced.append(rel)
            continue
        parts = rel.split("/")
        if len(parts) == 2:
            session = ""
        elif len(parts) == 3:
            session = parts[1]
        else:
            misplaced.append(rel)
            continue
        utt_ids.append(rel)
        speakers.append(parts[0])
        sessions.append(session)
    if misplaced:
        logger.warning(
            "%s: skipped %d audio file(s) not laid out as <speaker>/[<session>/]<utt>, e.g. %s",
            root,
            len(misplaced),
            misplaced[:5],
        )
    if spaced:
        # The raw data is never renamed here: the user has to.
        logger.warning(
            "%s: skipped %d audio file(s) whose file or folder name holds whitespace, e.g. "
            "%s: trial lists are whitespace-separated, so their ids could not be written to "
            "one and read back; rename those files or folders",
            root,
            len(spaced),
            spaced[:5],
        )
    return utt_ids, speakers, sessions


def _has_whitespace(text: str) -> bool:
    # str.split(), which reads trial lists, splits on every character isspace() accepts.
    return any(character.isspace() for character in text)


def _check_roots_apart(roots: Sequence[str | os.PathLike[str]], resolved: list[Path]) -> None:
    """Refuse a root given twice or lying inside another: its files would be scanned twice,
    once with the inner root's folder taken for a speaker of the outer root."""
    for i, (outer, outer_given) in enumerate(zip(resolved, roots, strict=True)):
        for inner, inner_given in zip(resolved[i + 1 :], roots[i + 1 :], strict=True):
            if inner == outer:
                raise ValueError(
                    f"corpus roots {outer_given!s} and {inner_given!s} are the same folder "
                    f"({outer}); give each root once"
                )
            for a, a_given, b, b_given in (
                (inner, inner_given, outer, outer_given),
                (outer, outer_given, inner, inner_given),
            ):
                if a.is_relative_to(b):
                    raise ValueError(
                        f"corpus root {a_given!s} ({a}) lies inside corpus root {b_given!s} "
                        f"({b}): its files would be scanned a second time as part of "
                        f"{b_given!s}, under {a.relative_to(b).as_posix()}/ and with a wrong "
                        "speaker; give only one of them"
                    )


def scan_folder_roots(
    roots: Sequence[str | os.PathLike[str]],
    suffixes: Sequence[str] = DEFAULT_SUFFIXES,
    workers: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Scan one or more folder corpora into one manifest (headers only), sorted by utt_id.

    Columns: the manifest columns plus ``session`` (``""`` without a session level) and
    ``error`` (``""`` unless the header was unreadable). ``source`` is
    ``folder:<rootname>``. A missing root raises ``FileNotFoundError``, a root given twice
    or inside another ``ValueError``; files at the wrong depth or with whitespace in their
    path below the root are skipped with a warning (see :func:`walk_roots` for links).
    """
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    root_paths = [Path(root).expanduser().resolve() for root in roots]
    for root, given in zip(root_paths, roots, strict=True):
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "does not exist"
            raise FileNotFoundError(f"corpus root {given!s} ({root}) {what}")
    _check_roots_apart(list(roots), root_paths)

    listings = []
    # One walk of all roots, so that a recording hard-linked or symlinked into two of them
    # is listed once, as within one root.
    for root, relative in zip(root_paths, walk_roots(root_paths, suffixes), strict=True):
        utt_ids, speakers, sessions = _split_root(root, relative)
        if not utt_ids:
            logger.warning("%s: no audio files with suffixes %s", root, list(suffixes))
        listings.append((root, utt_ids, speakers, sessions))

    owners: dict[str, set[str]] = {}
    for root, _, speakers, _ in listings:
        for speaker in set(speakers):
            owners.setdefault(speaker, set()).add(str(root))
    clashing = sorted(speaker for speaker, holders in owners.items() if len(holders) > 1)
    prefix_ids = bool(clashing)
    if prefix_ids:
        names = [root.name for root in root_paths]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(
                f"speaker names clash between roots (e.g. {clashing[:5]}) and root folder "
                f"names {repeated} repeat, so root-prefixed ids would still clash; give the "
                "roots distinct folder names"
            )
        spaced = sorted({name for name in names if _has_whitespace(name)})
        if spaced:
            raise ValueError(
                f"speaker names clash between roots (e.g. {clashing[:5]}), so ids get their "
                f"root folder's name as a prefix, but {spaced} hold whitespace and trial "
                "lists are whitespace-separated; rename those root folders"
            )
        logger.info(
            "speaker names clash between roots (e.g. %s): prefixing ids with root names",
            clashing[:5],
        )

    frames = []
    for root, utt_ids, speakers, sessions in listings:
        if not utt_ids:
            continue
        if prefix_ids:
            ids = [f"{root.name}/{utt}" for utt in utt_ids]
            spk = [f"{root.name}/{speaker}" for speaker in speakers]
        else:
            ids, spk = utt_ids, speakers
        root_text = str(root)
        paths = [os.path.join(root_text, utt) for utt in utt_ids]
        frames.append(
            scan_files(
                paths,
                ids,
                spk,
                source=f"folder:{root.name}",
                sessions=sessions,
                workers=workers,
                progress=progress,
            )
        )
    if not frames:
        manifest = empty_manifest()
        manifest["session"] = pd.Series([], dtype=str)
        manifest["error"] = pd.Series([], dtype=str)
        return manifest
    manifest = pd.concat(frames, ignore_index=True)
    manifest = manifest.sort_values("utt_id", kind="stable", ignore_index=True)
    return check_manifest(manifest, name="folder scan of " + ", ".join(map(str, root_paths)))
