"""Finding a corpus's audio files: ``os.scandir`` walking, every folder listed once.

:func:`walk_files` is what the folder and VoxCeleb sources scan, :func:`walk_roots` what a
folder source pooling several roots scans. It costs one ``getdents`` per folder rather
than one ``stat`` per file, and it makes sure no recording comes back under two utt_ids
through symlinks, nor vanishes without a word (a broken link, a folder it may not list),
nor twice through hard links, within one root or across the roots of a pooled scan.
"""

from __future__ import annotations

import heapq
import logging
import os
from collections.abc import Iterable, Sequence
from typing import NamedTuple

logger = logging.getLogger(__name__)


class _Scan(NamedTuple):
    """One root's walk, before its hard links and file links are sorted out."""

    top: str
    found: list[str]  # relative paths of the regular files listed
    # device of the tree a file was found in -> d_ino from getdents -> files listed with it
    inodes: dict[int, dict[int, list[str]]]
    file_links: list[tuple[str, str]]  # (relative path, link path)
    listed: dict[str, str]  # real path of each folder listed -> its prefix
    avoided: list[str]  # real paths of the other roots of a pooled scan


def walk_files(
    root: str | os.PathLike[str],
    suffixes: Iterable[str],
    avoid: Iterable[str | os.PathLike[str]] = (),
) -> list[str]:
    """Relative paths (``/``-separated, sorted) of files under ``root`` with these suffixes.

    Uses ``os.scandir``, whose directory entries already know whether they are files or
    folders, so a million-file tree costs one ``getdents`` per folder rather than one
    ``stat`` per file. Hidden entries (leading ``.``, e.g. temporary files of an
    interrupted atomic write) are skipped; suffixes match case-insensitively.

    Every folder is listed once, so no recording comes back under two utt_ids: folder
    symlinks are followed after the real tree is walked, in sorted order, and skipped with
    a warning when they point at a folder already listed, at an ancestor (a cycle), or
    into a folder of ``avoid`` (the other roots of a pooled scan); a file symlink whose
    target is listed too is dropped with a warning, as is a hard link to a listed file
    (only files sharing an inode number are stat-ed). A sub-folder that cannot be listed
    (permission denied) and a link that cannot be followed (a loop) are skipped with a
    warning naming them; ``root`` itself failing raises ``OSError`` naming it. A broken
    file symlink with a wanted suffix is listed, so its header read fails and validation
    reports it as unreadable instead of it vanishing.
    """
    wanted = tuple(suffix.lower() for suffix in suffixes)
    scan = _scan(os.fspath(root), wanted, [os.fspath(path) for path in avoid], {})
    return _finish([scan])[0]


def walk_roots(roots: Sequence[str | os.PathLike[str]], suffixes: Iterable[str]) -> list[list[str]]:
    """:func:`walk_files` of each of ``roots`` (the roots of one pooled scan, in order), each
    avoiding the others, with its duplicate checks spanning the roots.

    One recording is listed once in the pool, as it is in one root: a file hard-linked
    into two roots is kept under the first of its paths in sorted order and dropped from
    the other root with a warning naming both paths (files are grouped by the inode
    getdents reported and the device of the root or followed folder link they were found
    under, and only files sharing such a key are stat-ed, so roots on different disks
    whose inode numbers overlap cost nothing more). A file symlink into another root is
    dropped, as is one whose target another root lists or links to first; a folder symlink
    into another root, or to a folder another root already lists through a link, is
    skipped. A hard link across a file system mounted inside a root, onto a file another
    root holds on that file system, can go unnoticed: its files are grouped with the root's
    device, which only a ``stat`` per folder would tell apart.
    """
    wanted = tuple(suffix.lower() for suffix in suffixes)
    tops = [os.fspath(root) for root in roots]
    claimed: dict[str, str] = {}  # real path -> where an earlier root lists that folder
    scans = [
        _scan(top, wanted, tops[:number] + tops[number + 1 :], claimed)
        for number, top in enumerate(tops)
    ]
    return _finish(scans)


def _scan(top: str, wanted: tuple[str, ...], avoid: list[str], claimed: dict[str, str]) -> _Scan:
    """Walk ``top``; ``claimed`` holds the folders earlier roots listed, and gets this one's."""
    top_real = os.path.realpath(top)
    avoided = [os.path.realpath(path) for path in avoid]
    avoided_set = set(avoided)
    # Real path -> prefix under which it is listed. A real sub-folder's real path is its
    # parent's plus its name, so only symlinks cost a realpath().
    listed: dict[str, str] = {top_real: ""}
    found: list[str] = []
    inodes: dict[int, dict[int, list[str]]] = {}
    file_links: list[tuple[str, str]] = []  # (relative path, link path)
    # d_ino is unique per file system only: a tree's files are keyed with its device, one
    # stat per root and per followed folder link rather than one per folder.
    try:
        device = os.stat(top).st_dev
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot list the corpus root ({exc.strerror})", top) from exc
    pending: list[tuple[str, str, str, int]] = [(top, "", top_real, device)]
    # Folder links wait until every real folder is listed, then go in sorted order: a
    # folder is listed under its own name rather than a link's, whatever scandir's order.
    links: list[tuple[str, str, str]] = []  # (prefix, link path, real path of its folder)
    while pending or links:
        if pending:
            folder, prefix, real, device = pending.pop()
        else:
            prefix, folder, parent_real = heapq.heappop(links)
            real = os.path.realpath(folder)
            reason = _link_conflict(real, parent_real, top_real, listed, avoided, claimed)
            if not reason:
                try:
                    device = os.stat(folder).st_dev
                except OSError as exc:  # gone since it was listed
                    reason = f"cannot follow it ({exc.strerror or exc})"
            if reason:
                logger.warning("%s: skipped folder symlink to %s: %s", folder, real, reason)
                continue
            listed[real] = prefix
        by_inode = inodes.setdefault(device, {})
        try:
            with os.scandir(folder) as iterator:
                entries = list(iterator)
        except OSError as exc:
            if not prefix:
                raise type(exc)(
                    exc.errno, f"cannot list the corpus root ({exc.strerror})", folder
                ) from exc
            logger.warning(
                "%s: skipped folder, cannot list it (%s); its files are not in the scan",
                folder,
                exc.strerror or exc,
            )
            continue
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            is_link = is_dir = is_file = False
            failure = ""
            try:
                is_link = entry.is_symlink()
                is_dir = entry.is_dir()
                is_file = not is_dir and entry.is_file()
            except OSError as exc:  # a symlink loop, or a target in a folder we may not read
                failure = exc.strerror or str(exc)
            audio = name.lower().endswith(wanted)
            if is_dir and is_link:
                heapq.heappush(links, (f"{prefix}{name}/", entry.path, real))
            elif is_dir:
                sub_real = os.path.join(real, name)
                if sub_real in avoided_set or sub_real in listed or sub_real in claimed:
                    # Only reachable inside a followed link's tree: a real folder cannot
                    # be its own descendant, and links are followed last.
                    where = listed.get(sub_real, claimed.get(sub_real, "another corpus root"))
                    logger.warning("%s: skipped folder, already scanned as %s", entry.path, where)
                    continue
                listed[sub_real] = f"{prefix}{name}/"
                pending.append((entry.path, f"{prefix}{name}/", sub_real, device))
            elif audio and is_link:
                file_links.append((prefix + name, entry.path))
            elif audio and is_file:
                found.append(prefix + name)
                by_inode.setdefault(entry.inode(), []).append(prefix + name)
            elif failure or (is_link and not is_file and not os.path.exists(entry.path)):
                # A dangling link may be a speaker folder on a disk that is not mounted.
                failure = failure or f"broken symbolic link to {os.readlink(entry.path)}"
                logger.warning("%s: skipped, cannot follow it (%s)", entry.path, failure)
    claimed.update((real, os.path.join(top, prefix)) for real, prefix in listed.items())
    return _Scan(top, found, inodes, file_links, listed, avoided)


def _finish(scans: list[_Scan]) -> list[list[str]]:
    """Each scan's sorted relative paths, less hard-link copies and duplicate file links."""
    copies = _hard_link_copies(scans)
    kept_links = _unique_file_links(scans, copies)
    listings = []
    for number, (scan, links) in enumerate(zip(scans, kept_links, strict=True)):
        dropped = {relative for owner, relative in copies if owner == number}
        found = [r for r in scan.found if r not in dropped] if dropped else list(scan.found)
        found.extend(links)
        found.sort()
        listings.append(found)
    return listings


def _shown(scans: list[_Scan], number: int, where: tuple[int, str]) -> str:
    """A listed file as scan ``number`` names it: relative in its own root, else whole."""
    owner, relative = where
    return relative if owner == number else os.path.join(scans[owner].top, relative)


def _hard_link_copies(scans: list[_Scan]) -> dict[tuple[int, str], tuple[int, str]]:
    """Files that are hard links to a file listed under an earlier path, in any of the
    scans (the same recording under a second utt_id), each mapped to that file as
    ``(scan number, relative path)``; a warning per root names them.

    The scans group their files by the inode ``getdents`` reported (and the device of the
    tree, as inode numbers are per file system), free of a ``stat``; only files sharing
    one are stat-ed and compared by ``(st_dev, st_ino)``, as some file systems (overlayfs)
    report directory inodes that are not unique across their layers.
    """
    # Files sharing a device and an inode number, within a root or across roots. Most
    # inode numbers are unique: roots are matched by set intersections, not file by file.
    candidates: list[list[tuple[int, str]]] = []
    for device in {device for scan in scans for device in scan.inodes}:
        tables = [(n, scan.inodes[device]) for n, scan in enumerate(scans) if device in scan.inodes]
        shared: set[int] = set()
        for place, (_, table) in enumerate(tables):
            for _, other in tables[place + 1 :]:
                shared |= table.keys() & other.keys()
        groups: dict[int, list[tuple[int, str]]] = {}
        for number, table in tables:
            for inode, names in table.items():
                if len(names) > 1 or inode in shared:
                    groups.setdefault(inode, []).extend((number, name) for name in names)
        candidates.extend(groups.values())
    copies: dict[tuple[int, str], tuple[int, str]] = {}
    for members in candidates:
        paths = sorted(
            (os.path.join(scans[number].top, rel), number, rel) for number, rel in members
        )
        first_of: dict[tuple[int, int], tuple[int, str]] = {}
        for path, number, relative in paths:
            try:
                stat = os.stat(path)
            except OSError:
                continue  # gone since it was listed: validation reports it
            key = (stat.st_dev, stat.st_ino)
            if key in first_of:
                copies[(number, relative)] = first_of[key]
            else:
                first_of[key] = (number, relative)
    for number, scan in enumerate(scans):
        dropped = sorted(
            (copy, _shown(scans, number, original))
            for (owner, copy), original in copies.items()
            if owner == number
        )
        if dropped:
            logger.warning(
                "%s: skipped %d file(s) that are hard links to a file already in the scan "
                "(the same recording under a second utt_id), e.g. %s",
                scan.top,
                len(dropped),
                [f"{copy} = {original}" for copy, original in dropped[:5]],
            )
    return copies


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _link_conflict(
    real: str,
    parent_real: str,
    top_real: str,
    listed: dict[str, str],
    avoided: list[str],
    claimed: dict[str, str],
) -> str:
    """Why the folder link with real path ``real`` must not be followed, or ``""``."""
    if _is_within(parent_real, real) or _is_within(top_real, real):
        return "it points back to an ancestor (a symlink cycle)"
    if real in listed:
        return f"that folder is already scanned as {listed[real] or 'the root'}"
    for other in avoided:
        if _is_within(real, other):
            return f"that folder lies inside another corpus root, {other}"
    if real in claimed:
        return f"that folder is already scanned as {claimed[real]}"
    return ""


def _unique_file_links(
    scans: list[_Scan], copies: dict[tuple[int, str], tuple[int, str]]
) -> list[list[str]]:
    """The file links each scan keeps: not one whose target is a listed file (of any
    root), the target of an earlier link (of any root) or inside another corpus root (the
    same recording under a second utt_id); those are named in a warning. A broken link is
    kept, for validation to report it as unreadable."""
    kept: list[list[str]] = [[] for _ in scans]
    if not any(scan.file_links for scan in scans):
        return kept
    targets = sorted(
        (path, number, relative, os.path.realpath(path) if os.path.exists(path) else "")
        for number, scan in enumerate(scans)
        for relative, path in scan.file_links
    )
    wanted_reals = {real for *_, real in targets}
    owner: dict[str, tuple[int, str]] = {}  # real path -> the listed file it is scanned as
    for number, scan in enumerate(scans):
        folder_reals = {prefix: real for real, prefix in scan.listed.items()}
        for relative in scan.found:
            folder, _, name = relative.rpartition("/")
            real = os.path.join(folder_reals[f"{folder}/" if folder else ""], name)
            if real in wanted_reals:
                # A hard-link copy is dropped: a link to it is a link to the file kept.
                owner[real] = copies.get((number, relative), (number, relative))
    dropped: list[list[str]] = [[] for _ in scans]
    for _, number, relative, real in targets:
        if not real:
            kept[number].append(relative)
        elif real in owner:
            dropped[number].append(f"{relative} -> {_shown(scans, number, owner[real])}")
        elif any(_is_within(real, other) for other in scans[number].avoided):
            dropped[number].append(f"{relative} -> {real}")
        else:
            owner[real] = (number, relative)
            kept[number].append(relative)
    for scan, names in zip(scans, dropped, strict=True):
        if names:
            logger.warning(
                "%s: skipped %d file symlink(s) to a file already in the scan or in another "
                "corpus root (the same recording under a second utt_id), e.g. %s",
                scan.top,
                len(names),
                names[:5],
            )
    return kept
