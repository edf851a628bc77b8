"""Header-only scanning: folder roots, pooled roots with clashing speakers, bad headers."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from sv_kedro.corpus.folder_source import scan_folder_roots
from sv_kedro.corpus.manifest import (
    MANIFEST_COLUMNS,
    ManifestError,
    check_manifest,
    empty_manifest,
    scan_files,
)
from sv_kedro.corpus.validation import ValidationPolicy, validate_manifest
from sv_kedro.corpus.walk import walk_files


def _tone(path: Path, seconds: float = 0.2, rate: int = 16000, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(seconds * rate)) / rate
    wave = 0.1 * np.sin(2 * np.pi * 220 * t)
    if channels > 1:
        wave = np.stack([wave] * channels, axis=1)
    sf.write(path, wave, rate)


@pytest.fixture
def two_roots(tmp_path: Path) -> tuple[Path, Path]:
    corpus_a = tmp_path / "corpus_a"
    corpus_b = tmp_path / "corpus_b"
    _tone(corpus_a / "alice" / "u1.wav")
    _tone(corpus_a / "alice" / "u2.flac", seconds=0.5, rate=8000)
    _tone(corpus_a / "bob" / "sessA" / "u1.wav", channels=2)
    _tone(corpus_b / "alice" / "x1.wav")  # same speaker name as in corpus_a: a clash
    _tone(corpus_b / "carol" / "x1.wav")
    _tone(corpus_b / "stray.wav")  # at the root: wrong depth
    _tone(corpus_b / "carol" / "s" / "deep" / "x2.wav")  # too deep
    (corpus_b / "carol" / "notes.txt").write_text("not audio")
    (corpus_b / "carol" / ".x3.wav.abc.tmp.wav").write_bytes(b"half-written")  # hidden temp
    return corpus_a, corpus_b


def test_pooled_roots_with_clashing_speakers_get_prefixed_ids(
    two_roots: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    corpus_a, corpus_b = two_roots
    with caplog.at_level(logging.WARNING):
        manifest = scan_folder_roots([corpus_a, corpus_b], progress=False)
    assert manifest["utt_id"].tolist() == [
        "corpus_a/alice/u1.wav",
        "corpus_a/alice/u2.flac",
        "corpus_a/bob/sessA/u1.wav",
        "corpus_b/alice/x1.wav",
        "corpus_b/carol/x1.wav",
    ]
    assert manifest["speaker"].tolist() == [
        "corpus_a/alice",
        "corpus_a/alice",
        "corpus_a/bob",
        "corpus_b/alice",
        "corpus_b/carol",
    ]
    assert manifest["session"].tolist() == ["", "", "sessA", "", ""]
    assert manifest["source"].tolist() == ["folder:corpus_a"] * 3 + ["folder:corpus_b"] * 2
    row = manifest.set_index("utt_id").loc["corpus_a/alice/u2.flac"]
    assert (row["num_frames"], row["sample_rate"], row["channels"]) == (4000, 8000, 1)
    assert row["duration"] == pytest.approx(0.5)
    assert manifest.set_index("utt_id").loc["corpus_a/bob/sessA/u1.wav", "channels"] == 2
    assert Path(row["path"]).is_absolute() and Path(row["path"]).is_file()
    assert (manifest["error"] == "").all()
    check_manifest(manifest)
    warning = " ".join(record.getMessage() for record in caplog.records)
    assert "skipped 2 audio file(s)" in warning and "stray.wav" in warning


def test_roots_without_clash_keep_plain_ids(two_roots: tuple[Path, Path], tmp_path: Path) -> None:
    corpus_a, _ = two_roots
    corpus_c = tmp_path / "corpus_c"
    _tone(corpus_c / "dave" / "d1.flac")
    manifest = scan_folder_roots([corpus_c, corpus_a], progress=False)
    assert manifest["utt_id"].tolist() == [
        "alice/u1.wav",
        "alice/u2.flac",
        "bob/sessA/u1.wav",
        "dave/d1.flac",
    ]
    assert set(manifest["speaker"]) == {"alice", "bob", "dave"}
    # Deterministic: the order of the roots does not change the result.
    again = scan_folder_roots([corpus_a, corpus_c], progress=False)
    pd.testing.assert_frame_equal(manifest, again)


def test_a_wav_cut_short_becomes_a_row_with_error(tmp_path: Path) -> None:
    whole = tmp_path / "spk" / "whole.wav"
    _tone(whole, seconds=1.0)
    cut = tmp_path / "spk" / "cut.wav"
    cut.write_bytes(whole.read_bytes()[: 44 + 16000])
    scanned = scan_folder_roots([tmp_path], progress=False)
    rows = scanned.set_index("utt_id")
    assert "truncated: its header declares 16000 frames" in rows.loc["spk/cut.wav", "error"]
    assert rows.loc["spk/whole.wav", "error"] == ""


def test_missing_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere.*does not exist"):
        scan_folder_roots([tmp_path / "nowhere"], progress=False)


def test_unreadable_header_becomes_a_row_with_error(tmp_path: Path) -> None:
    good = tmp_path / "spk" / "good.wav"
    _tone(good)
    corrupt = tmp_path / "spk" / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).bytes(3000))
    paths = [str(good), str(corrupt)]
    serial = scan_files(
        paths, ["spk/good.wav", "spk/corrupt.wav"], ["spk", "spk"], "t", progress=False
    )
    assert serial["num_frames"].tolist() == [3200, -1]
    assert serial.loc[0, "error"] == ""
    assert "corrupt.wav" in serial.loc[1, "error"]
    assert np.isnan(serial.loc[1, "duration"])
    pooled = scan_files(
        paths, ["spk/good.wav", "spk/corrupt.wav"], ["spk", "spk"], "t", workers=1, progress=False
    )
    pd.testing.assert_frame_equal(serial, pooled)


def test_check_manifest_rejects_duplicates_and_missing_columns(tmp_path: Path) -> None:
    check_manifest(empty_manifest())
    assert list(empty_manifest().columns) == list(MANIFEST_COLUMNS)
    wav = tmp_path / "a.wav"
    _tone(wav)
    manifest = scan_files([str(wav), str(wav)], ["a", "a"], ["s", "s"], "t", progress=False)
    with pytest.raises(ManifestError, match=r"1 duplicated utt_id.*\['a'\]"):
        check_manifest(manifest)
    with pytest.raises(ManifestError, match=r"missing column.*'speaker'"):
        check_manifest(manifest.drop(columns=["speaker"]).iloc[:1])
    with pytest.raises(ManifestError, match="'num_frames' must be integer"):
        check_manifest(manifest.iloc[:1].assign(num_frames=1.5))


def test_walk_files_skips_hidden_and_other_suffixes(two_roots: tuple[Path, Path]) -> None:
    _, corpus_b = two_roots
    assert walk_files(corpus_b, (".WAV",)) == [
        "alice/x1.wav",
        "carol/s/deep/x2.wav",
        "carol/x1.wav",
        "stray.wav",
    ]


def _warnings(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_folder_link_back_to_an_ancestor_is_not_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Following root/spkA/self_loop once listed spkA's files again as session "self_loop",
    # and trial generation then paired a file with itself.
    root = tmp_path / "root"
    _tone(root / "spkA" / "u1.wav")
    _tone(root / "spkB" / "u1.wav")
    os.symlink("../spkA", root / "spkA" / "self_loop")
    os.symlink(root, root / "spkB" / "back")
    with caplog.at_level(logging.WARNING):
        found = walk_files(root, (".wav",))
    assert found == ["spkA/u1.wav", "spkB/u1.wav"]
    warnings = _warnings(caplog)
    assert f"{root / 'spkA' / 'self_loop'}: skipped folder symlink" in warnings
    assert f"{root / 'spkB' / 'back'}: skipped folder symlink" in warnings
    assert "symlink cycle" in warnings
    manifest = scan_folder_roots([root], progress=False)
    assert manifest["utt_id"].tolist() == ["spkA/u1.wav", "spkB/u1.wav"]
    assert manifest["session"].tolist() == ["", ""]


def test_links_to_listed_folders_and_files_are_skipped_links_outside_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    _tone(root / "spkA" / "u1.wav")
    _tone(outside / "spkC" / "c1.wav")
    _tone(outside / "lone.wav")
    # "alias" sorts before "spkA": the real folder still keeps its own name.
    os.symlink("spkA", root / "alias")
    os.symlink(outside / "spkC", root / "spkC")
    (root / "spkB").mkdir()
    os.symlink("../spkA/u1.wav", root / "spkB" / "copy.wav")
    os.symlink(outside / "lone.wav", root / "spkB" / "lone.wav")
    with caplog.at_level(logging.WARNING):
        found = walk_files(root, (".wav",))
    assert found == ["spkA/u1.wav", "spkB/lone.wav", "spkC/c1.wav"]
    warnings = _warnings(caplog)
    assert f"{root / 'alias'}: skipped folder symlink" in warnings
    assert "already scanned as spkA/" in warnings
    assert "skipped 1 file symlink(s)" in warnings and "spkB/copy.wav -> spkA/u1.wav" in warnings


def test_unlistable_folder_and_link_loop_are_skipped_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    _tone(root / "spkA" / "u1.wav")
    _tone(root / "locked" / "u1.wav")
    os.symlink("loop_b", root / "loop_a")
    os.symlink("loop_a", root / "loop_b")
    # Tests run as root, where chmod 000 does not stop scandir: refuse it here instead.
    refused: set[str] = set()
    scandir = os.scandir

    def refusing_scandir(path: str) -> object:
        if os.fspath(path) in refused:
            raise PermissionError(13, "Permission denied", path)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing_scandir)
    assert walk_files(root, (".wav",)) == ["locked/u1.wav", "spkA/u1.wav"]
    refused.add(str(root / "locked"))
    with caplog.at_level(logging.WARNING):
        assert walk_files(root, (".wav",)) == ["spkA/u1.wav"]
    warnings = _warnings(caplog)
    assert f"{root / 'loop_a'}: skipped, cannot follow it (Too many levels" in warnings
    assert f"{root / 'loop_b'}: skipped, cannot follow it" in warnings
    assert f"{root / 'locked'}: skipped folder, cannot list it (Permission denied)" in warnings
    refused.add(str(root))
    with pytest.raises(PermissionError, match=rf"cannot list the corpus root.*'{root}'"):
        walk_files(root, (".wav",))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their mode")
def test_unreadable_folder_is_skipped_for_a_normal_user(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    _tone(root / "spkA" / "u1.wav")
    _tone(root / "locked" / "u1.wav")
    (root / "locked").chmod(0)
    try:
        with caplog.at_level(logging.WARNING):
            assert walk_files(root, (".wav",)) == ["spkA/u1.wav"]
    finally:
        (root / "locked").chmod(0o755)
    assert "locked: skipped folder, cannot list it" in _warnings(caplog)


def test_broken_file_link_is_scanned_and_reported_unreadable(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _tone(root / "spk" / "u1.wav", seconds=1.0)
    os.symlink("missing.wav", root / "spk" / "broken_link.wav")
    manifest = scan_folder_roots([root], progress=False)
    assert manifest["utt_id"].tolist() == ["spk/broken_link.wav", "spk/u1.wav"]
    clean, report = validate_manifest(
        manifest, ValidationPolicy(), tmp_path / "fixed", progress=False
    )
    assert clean["utt_id"].tolist() == ["spk/u1.wav"]
    row = report.set_index("utt_id").loc["spk/broken_link.wav"]
    assert (row["reason"], row["action"]) == ("unreadable", "excluded")
    assert row["path"] == str(root / "spk" / "broken_link.wav")
    assert row["detail"] == (
        f"{root / 'spk' / 'broken_link.wav'}: broken symbolic link "
        "(its target missing.wav does not exist)"
    )


def test_names_with_whitespace_are_left_out_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    _tone(root / "speaker with space" / "utt0.flac")
    _tone(root / "spk" / "utt 1.wav")
    _tone(root / "spk" / "tab\tname.wav")
    _tone(root / "spk" / "ok.wav")
    with caplog.at_level(logging.WARNING):
        manifest = scan_folder_roots([root], progress=False)
    assert manifest["utt_id"].tolist() == ["spk/ok.wav"]
    warnings = _warnings(caplog)
    assert "skipped 3 audio file(s) whose file or folder name holds whitespace" in warnings
    assert "'speaker with space/utt0.flac'" in warnings and "'spk/utt 1.wav'" in warnings
    assert "trial lists are whitespace-separated" in warnings
    assert sorted(p.name for p in (root / "spk").iterdir()) == [
        "ok.wav",
        "tab\tname.wav",
        "utt 1.wav",
    ]


def test_root_names_with_whitespace_cannot_prefix_clashing_ids(tmp_path: Path) -> None:
    for name in ("corpus one", "corpus_two"):
        _tone(tmp_path / name / "spk" / "u.wav")
    with pytest.raises(ValueError, match=r"\['corpus one'\] hold whitespace"):
        scan_folder_roots([tmp_path / "corpus one", tmp_path / "corpus_two"], progress=False)


def test_a_root_inside_another_or_given_twice_is_refused(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    _tone(pool / "spkA" / "u.wav")
    _tone(pool / "corpus1" / "spkB" / "u.wav")
    inside = rf"corpus root {pool / 'corpus1'} \({pool / 'corpus1'}\) lies inside corpus root "
    for roots in ([pool, pool / "corpus1"], [pool / "corpus1", pool]):
        with pytest.raises(ValueError, match=inside + re.escape(f"{pool} ({pool})")):
            scan_folder_roots(roots, progress=False)
    os.symlink(pool, tmp_path / "alias")
    with pytest.raises(ValueError, match=r"alias and .*/pool are the same folder"):
        scan_folder_roots([tmp_path / "alias", pool], progress=False)
    with pytest.raises(ValueError, match=r"lies inside corpus root .*/alias"):
        scan_folder_roots([tmp_path / "alias", pool / "corpus1"], progress=False)


def test_link_from_one_root_into_another_is_not_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _tone(tmp_path / "a" / "spkA" / "u.wav")
    _tone(tmp_path / "b" / "spkB" / "u.wav")
    os.symlink(tmp_path / "b" / "spkB", tmp_path / "a" / "spkB_link")
    os.symlink(tmp_path / "b" / "spkB" / "u.wav", tmp_path / "a" / "spkA" / "v.wav")
    with caplog.at_level(logging.WARNING):
        manifest = scan_folder_roots([tmp_path / "a", tmp_path / "b"], progress=False)
    assert manifest["utt_id"].tolist() == ["spkA/u.wav", "spkB/u.wav"]
    assert manifest["source"].tolist() == ["folder:a", "folder:b"]
    warnings = _warnings(caplog)
    assert f"{tmp_path / 'a' / 'spkB_link'}: skipped folder symlink" in warnings
    assert "lies inside another corpus root" in warnings
    assert "skipped 1 file symlink(s)" in warnings and "spkA/v.wav -> " in warnings


def test_hard_links_to_a_listed_file_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    _tone(root / "spkA" / "u1.wav")
    _tone(root / "spkA" / "u2.wav")
    _tone(root / "spkB" / "u1.wav")
    (root / "spkC").mkdir()
    os.link(root / "spkA" / "u1.wav", root / "spkC" / "again.wav")
    os.link(root / "spkA" / "u1.wav", root / "spkB" / "same.wav")
    with caplog.at_level(logging.WARNING):
        found = walk_files(root, (".wav",))
    assert found == ["spkA/u1.wav", "spkA/u2.wav", "spkB/u1.wav"]
    warnings = _warnings(caplog)
    assert "skipped 2 file(s) that are hard links" in warnings
    assert "spkB/same.wav = spkA/u1.wav" in warnings and "spkC/again.wav = spkA/u1.wav" in warnings
    assert scan_folder_roots([root], progress=False)["utt_id"].tolist() == found


def test_files_sharing_a_reported_inode_but_not_a_file_are_all_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # overlayfs may report one directory inode for files of different layers.
    root = tmp_path / "root"
    _tone(root / "spkA" / "u1.wav")
    _tone(root / "spkB" / "u1.wav")
    monkeypatch.setattr(os.DirEntry, "inode", lambda self: 7, raising=False)
    assert walk_files(root, (".wav",)) == ["spkA/u1.wav", "spkB/u1.wav"]
