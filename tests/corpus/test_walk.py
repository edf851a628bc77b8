"""Walking pooled roots: one recording reached from two roots is listed once."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sv_kedro.corpus.folder_source import scan_folder_roots
from sv_kedro.corpus.walk import walk_files, walk_roots


def _tone(path: Path, hz: float = 220.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(3200) / 16000
    sf.write(path, 0.1 * np.sin(2 * np.pi * hz * t), 16000)


def _warnings(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_a_file_hard_linked_into_two_roots_is_listed_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _tone(a / "spkA" / "u1.wav")
    _tone(b / "spkB" / "u1.wav", hz=330.0)
    (b / "spkC").mkdir()
    os.link(a / "spkA" / "u1.wav", b / "spkC" / "same.wav")
    with caplog.at_level(logging.WARNING):
        manifest = scan_folder_roots([a, b], progress=False)
    # Before, each root was walked alone and the recording came back as spkA/u1.wav and
    # spkC/same.wav: a trial could compare it with itself.
    assert manifest["utt_id"].tolist() == ["spkA/u1.wav", "spkB/u1.wav"]
    warnings = _warnings(caplog)
    assert f"{b}: skipped 1 file(s) that are hard links" in warnings
    assert f"spkC/same.wav = {a / 'spkA' / 'u1.wav'}" in warnings
    # The path that sorts first is kept, whichever order the roots are given in.
    assert (
        scan_folder_roots([b, a], progress=False)["utt_id"].tolist() == manifest["utt_id"].tolist()
    )
    assert walk_roots([b, a], (".wav",)) == [["spkB/u1.wav"], ["spkA/u1.wav"]]


def test_links_from_two_roots_to_one_recording_keep_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Within one root a second link to a listed file or folder is skipped; across roots
    # both were kept, so the recording came back under two utt_ids.
    a, b, outside = tmp_path / "a", tmp_path / "b", tmp_path / "outside"
    _tone(outside / "lone.wav")
    _tone(outside / "spkX" / "x1.wav")
    _tone(a / "spkA" / "u1.wav")
    _tone(b / "spkB" / "u1.wav")
    os.symlink(outside / "lone.wav", a / "spkA" / "lone.wav")
    os.symlink(outside / "lone.wav", b / "spkB" / "lone.wav")
    os.symlink(outside / "spkX", a / "spkX")
    os.symlink(outside / "spkX", b / "spkY")
    with caplog.at_level(logging.WARNING):
        found = walk_roots([a, b], (".wav",))
    assert found == [["spkA/lone.wav", "spkA/u1.wav", "spkX/x1.wav"], ["spkB/u1.wav"]]
    warnings = _warnings(caplog)
    assert f"spkB/lone.wav -> {a / 'spkA' / 'lone.wav'}" in warnings
    assert f"{b / 'spkY'}: skipped folder symlink" in warnings
    assert f"already scanned as {a / 'spkX'}/" in warnings
    # A link into another root is still dropped for the real file, as before.
    os.symlink(b / "spkB" / "u1.wav", a / "spkA" / "into_b.wav")
    assert walk_roots([a, b], (".wav",))[0] == ["spkA/lone.wav", "spkA/u1.wav", "spkX/x1.wav"]


def test_a_link_to_a_dropped_hard_link_copy_is_dropped_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    _tone(root / "spkA" / "u1.wav")
    (root / "spkB").mkdir()
    os.link(root / "spkA" / "u1.wav", root / "spkB" / "copy.wav")
    os.symlink("../spkB/copy.wav", root / "spkA" / "via_copy.wav")
    with caplog.at_level(logging.WARNING):
        assert walk_files(root, (".wav",)) == ["spkA/u1.wav"]
    assert "spkA/via_copy.wav -> spkA/u1.wav" in _warnings(caplog)


def test_roots_on_two_devices_stat_no_file_for_overlapping_inode_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two disks number their inodes alike; inode numbers alone would stat every file of
    # both. Here b stands for a second disk, and every file reports inode 7.
    a, b = tmp_path / "a", tmp_path / "b"
    _tone(a / "spkA" / "u1.wav")
    _tone(b / "spkB" / "u1.wav")
    real_stat = os.stat
    stat_calls: list[str] = []

    def stat(path: str | os.PathLike[str], *args: object, **kwargs: object) -> os.stat_result:
        result = real_stat(path, *args, **kwargs)
        stat_calls.append(os.fspath(path))
        if os.fspath(path).startswith(str(b)):
            fields = list(result[:10])
            fields[2] = result.st_dev + 1  # st_dev
            return os.stat_result(fields)
        return result

    monkeypatch.setattr(os.DirEntry, "inode", lambda self: 7, raising=False)
    monkeypatch.setattr(os, "stat", stat)
    assert walk_roots([a, b], (".wav",)) == [["spkA/u1.wav"], ["spkB/u1.wav"]]
    assert stat_calls == [str(a), str(b)]  # one per root, none per file
    # On one device the same inode numbers are stat-ed and, being other files, all kept.
    monkeypatch.setattr(os, "stat", real_stat)
    assert walk_roots([a, b], (".wav",)) == [["spkA/u1.wav"], ["spkB/u1.wav"]]
