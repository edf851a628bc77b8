"""Header-only scanning: folder roots, pooled roots with clashing speakers, bad headers."""

from __future__ import annotations

import logging
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
    walk_files,
)


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


def test_walk_files_survives_a_symlink_cycle(tmp_path: Path) -> None:
    _tone(tmp_path / "root" / "spk" / "u.wav")
    (tmp_path / "root" / "spk" / "back").symlink_to(tmp_path / "root", target_is_directory=True)
    found = walk_files(tmp_path / "root", (".wav",))
    assert found == ["spk/back/spk/u.wav", "spk/u.wav"]
