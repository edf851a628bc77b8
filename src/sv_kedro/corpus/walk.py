"""Finding a corpus's audio files: ``os.scandir`` walking, every folder listed once.

:func:`walk_files` is what the folder and VoxCeleb sources scan. It costs one ``getdents``
per folder rather than one ``stat`` per file, and it makes sure no recording comes back
under two utt_ids through symlinks, nor vanishes without a word (a broken link, a folder
it may not list), nor twice through hard links.
"""

from __future__ import annotations

import heapq
import logging
import os
from collections.abc import Iterable

logger = logging.getLogger(__name__)


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
    top = os.fspath(root)
    top_real = os.path.realpath(top)
    avoided = [os.path.realpath(os.fspath(path)) for path in avoid]
    avoided_set = set(avoided)
    # Real path -> prefix under which it is listed. A real sub-folder's real path is its
    # parent's plus its name, so only symlinks cost a realpath().
    listed: dict[str, str] = {top_real: ""}
    found: list[str] = []
    inodes: dict[int, list[str]] = {}  # d_ino from getdents -> files listed with it
    file_links: list[tuple[str, str]] = []  # (relative path, link path)
    pending: list[tuple[str, str, str]] = [(top, "", top_real)]
    # Folder links wait until every real folder is listed, then go in sorted order: a
    # folder is listed under its own name rather than a link's, whatever scandir's order.
    links: list[tuple[str, str, str]] = []  # (prefix, link path, real path of its folder)
    while pending or links:
        if pending:
            folder, prefix, real = pending.pop()
        else:
            prefix, folder, parent_real = heapq.heappop(links)
            real = os.path.realpath(folder)
            reason = _link_conflict(real, parent_real, top_real, listed, avoided)
            if reason:
                logger.warning("%s: skipped folder symlink to %s: %s", folder, real, reason)
                continue
            listed[real] = prefix
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
                if sub_real in avoided_set or sub_real in listed:
                    # Only reachable inside a followed link's tree: a real folder cannot
                    # be its own descendant, and links are followed last.
                    where = listed.get(sub_real, "another corpus root")
                    logger.warning("%s: skipped folder, already scanned as %s", entry.path, where)
                    continue
                listed[sub_real] = f"{prefix}{name}/"
                pending.append((entry.path, f"{prefix}{name}/", sub_real))
            elif audio and is_link:
                file_links.append((prefix + name, entry.path))
            elif audio and is_file:
                found.append(prefix + name)
                inodes.setdefault(entry.inode(), []).append(prefix + name)
            elif failure or (is_link and not is_file and not os.path.exists(entry.path)):
                # A dangling link may be a speaker folder on a disk that is not mounted.
                failure = failure or f"broken symbolic link to {os.readlink(entry.path)}"
                logger.warning("%s: skipped, cannot follow it (%s)", entry.path, failure)
    hard_linked = _hard_link_copies(top, inodes)
    if hard_linked:
        found = [relative for relative in found if relative not in hard_linked]
    found.extend(_unique_file_links(top, found, file_links, listed, avoided))
    found.sort()
    return found


def _hard_link_copies(top: str, inodes: dict[int, list[str]]) -> set[str]:
    """Files that are hard links to a file listed under an earlier name (the same
    recording under a second utt_id); a warning names them.

    ``inodes`` groups the files by the inode ``getdents`` reported, free of a ``stat``;
    only files sharing one are stat-ed, as some file systems (overlayfs) report directory
    inodes that are not unique across their layers.
    """
    dropped: list[tuple[str, str]] = []  # (copy, the name it is listed under)
    for names in inodes.values():
        if len(names) < 2:
            continue
        first_of: dict[tuple[int, int], str] = {}
        for relative in sorted(names):
            try:
                stat = os.stat(os.path.join(top, relative))
            except OSError:
                continue  # gone since it was listed: validation reports it
            key = (stat.st_dev, stat.st_ino)
            if key in first_of:
                dropped.append((relative, first_of[key]))
            else:
                first_of[key] = relative
    if dropped:
        dropped.sort()
        logger.warning(
            "%s: skipped %d file(s) that are hard links to a file already in the scan (the "
            "same recording under a second utt_id), e.g. %s",
            top,
            len(dropped),
            [f"{copy} = {original}" for copy, original in dropped[:5]],
        )
    return {copy for copy, _ in dropped}


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _link_conflict(
    real: str, parent_real: str, top_real: str, listed: dict[str, str], avoided: list[str]
) -> str:
    """Why the folder link with real path ``real`` must not be followed, or ``""``."""
    if _is_within(parent_real, real) or _is_within(top_real, real):
        return "it points back to an ancestor (a symlink cycle)"
    if real in listed:
        return f"that folder is already scanned as {listed[real] or 'the root'}"
    for other in avoided:
        if _is_within(real, other):
            return f"that folder lies inside another corpus root, {other}"
    return ""


def _unique_file_links(
    top: str,
    found: list[str],
    file_links: list[tuple[str, str]],
    listed: dict[str, str],
    avoided: list[str],
) -> list[str]:
    """The file links to keep: not one whose target is a listed file, the target of an
    earlier link or inside another corpus root (the same recording under a second
    utt_id); those are named in a warning. A broken link is kept, for validation to
    report it as unreadable."""
    if not file_links:
        return []
    targets = {
        relative: os.path.realpath(path) if os.path.exists(path) else ""
        for relative, path in file_links
    }
    wanted_reals = set(targets.values())
    folder_reals = {prefix: real for real, prefix in listed.items()}
    owner: dict[str, str] = {}  # real path -> the listed name it is scanned under
    for relative in found:
        folder, _, name = relative.rpartition("/")
        real = os.path.join(folder_reals[f"{folder}/" if folder else ""], name)
        if real in wanted_reals:
            owner[real] = relative
    kept: list[str] = []
    dropped: list[str] = []
    for relative in sorted(targets):
        real = targets[relative]
        if not real:
            kept.append(relative)
        elif real in owner:
            dropped.append(f"{relative} -> {owner[real]}")
        elif any(_is_within(real, other) for other in avoided):
            dropped.append(f"{relative} -> {real}")
        else:
            owner[real] = relative
            kept.append(relative)
    if dropped:
        logger.warning(
            "%s: skipped %d file symlink(s) to a file already in the scan or in another "
            "corpus root (the same recording under a second utt_id), e.g. %s",
            top,
            len(dropped),
            dropped[:5],
        )
    return kept
