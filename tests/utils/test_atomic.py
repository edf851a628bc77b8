"""Atomic writes: all or nothing, with the permissions of an ordinary write."""

from __future__ import annotations

import stat

import pytest

from sv_kedro.utils.atomic import atomic_write_bytes, atomic_write_path


def test_the_written_file_gets_the_mode_an_ordinary_write_gives(tmp_path):
    ordinary = tmp_path / "ordinary.txt"
    ordinary.write_bytes(b"x")
    atomic = tmp_path / "atomic.txt"
    atomic_write_bytes(atomic, b"x")
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(ordinary.stat().st_mode)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_write_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path):
    target = tmp_path / "shard-000000.tar"
    leftover = tmp_path / ".shard-000000.tar.abc123.tmp.tar"  # as mkstemp names it
    leftover.write_bytes(b"half a shard")
    other = tmp_path / ".shard-000001.tar.abc123.tmp.tar"  # another target's: kept
    other.write_bytes(b"x")
    atomic_write_bytes(target, b"whole")
    assert target.read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, target.name]
