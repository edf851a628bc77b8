"""Data-quality validation: each defect handled as the policy says; raw files untouched."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sv_kedro.corpus.audio_levels import rms_dbfs
from sv_kedro.corpus.folder_source import scan_folder_roots
from sv_kedro.corpus.validation import ValidationPolicy, validate_manifest


def _write(path: Path, wave: np.ndarray, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, rate)


def _noise(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    shape = (round(seconds * rate), channels) if channels > 1 else (round(seconds * rate),)
    return 0.1 * np.random.default_rng(seed).standard_normal(shape)


def _sha256_tree(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def defect_corpus(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    _write(root / "good" / "a.wav", _noise(1.0, 16000, seed=1), 16000)
    _write(root / "good" / "b.flac", _noise(1.2, 16000, seed=2), 16000)
    # Long file: the silence check reads a few blocks, not all of it.
    _write(root / "good" / "long.flac", _noise(12.0, 16000, seed=3), 16000)
    (root / "bad").mkdir(parents=True)
    (root / "bad" / "corrupt.wav").write_bytes(np.random.default_rng(4).bytes(4096))
    _write(root / "bad" / "empty.wav", np.zeros(0), 16000)
    _write(root / "bad" / "short.wav", _noise(0.1, 16000, seed=5), 16000)
    _write(root / "bad" / "silent.wav", np.zeros(16000), 16000)
    _write(root / "fix" / "stereo.wav", _noise(1.0, 16000, channels=2, seed=6), 16000)
    _write(root / "fix" / "cd.wav", _noise(1.0, 44100, seed=7), 44100)
    _write(root / "fix" / "both.wav", _noise(0.8, 22050, channels=2, seed=8), 22050)
    return root


def test_each_defect_is_excluded_or_fixed_and_raw_files_are_untouched(
    defect_corpus: Path, tmp_path: Path
) -> None:
    before = _sha256_tree(defect_corpus)
    manifest = scan_folder_roots([defect_corpus], progress=False)
    assert len(manifest) == 10
    policy = ValidationPolicy(min_duration=0.5, silence_rms_db=-60.0)
    fixed_dir = tmp_path / "fixed"
    clean, report = validate_manifest(manifest, policy, fixed_dir, progress=False)

    by_utt = report.set_index("utt_id")
    assert by_utt.loc["bad/corrupt.wav", ["reason", "action"]].tolist() == [
        "unreadable",
        "excluded",
    ]
    assert by_utt.loc["bad/empty.wav", ["reason", "action"]].tolist() == ["empty", "excluded"]
    assert by_utt.loc["bad/short.wav", ["reason", "action"]].tolist() == ["too_short", "excluded"]
    assert by_utt.loc["bad/silent.wav", ["reason", "action"]].tolist() == ["silent", "excluded"]
    assert "-inf dBFS" in by_utt.loc["bad/silent.wav", "detail"]
    assert by_utt.loc["fix/stereo.wav", ["reason", "action"]].tolist() == [
        "multichannel",
        "downmixed",
    ]
    assert by_utt.loc["fix/cd.wav", ["reason", "action"]].tolist() == ["sample_rate", "resampled"]
    assert by_utt.loc["fix/both.wav", "action"] == "downmixed+resampled"
    assert len(report) == 7
    assert list(report.columns) == ["utt_id", "path", "reason", "action", "detail"]

    assert clean["utt_id"].tolist() == [
        "fix/both.wav",
        "fix/cd.wav",
        "fix/stereo.wav",
        "good/a.wav",
        "good/b.flac",
        "good/long.flac",
    ]
    assert "error" not in clean.columns
    assert (clean["sample_rate"] == 16000).all() and (clean["channels"] == 1).all()
    fixed = clean.set_index("utt_id")
    for utt_id, seconds in (("fix/both.wav", 0.8), ("fix/cd.wav", 1.0), ("fix/stereo.wav", 1.0)):
        copy = Path(fixed.loc[utt_id, "path"])
        assert copy == fixed_dir / Path(utt_id).with_suffix(".flac")
        info = sf.info(copy)
        assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
        assert info.frames == fixed.loc[utt_id, "num_frames"] == round(seconds * 16000)
        assert fixed.loc[utt_id, "duration"] == pytest.approx(seconds)
    assert fixed.loc["good/a.wav", "path"] == str(defect_corpus / "good" / "a.wav")

    assert _sha256_tree(defect_corpus) == before

    # Resume: a second run reuses the fixed copies instead of rewriting them, except one
    # that is not in the target format (left by a run with another policy).
    stale = fixed_dir / "fix" / "cd.flac"
    sf.write(stale, np.zeros(800), 8000)
    stamps = {path: os.stat(path).st_mtime_ns for path in fixed_dir.rglob("*.flac")}
    clean_again, report_again = validate_manifest(manifest, policy, fixed_dir, progress=False)
    after = {path: os.stat(path).st_mtime_ns for path in fixed_dir.rglob("*.flac")}
    assert after.pop(stale) != stamps.pop(stale)
    assert after == stamps
    assert sf.info(stale).samplerate == 16000
    assert clean_again.equals(clean)
    assert report_again["detail"].str.contains("reused").sum() == 2


def test_exclude_policies_and_bounds(defect_corpus: Path, tmp_path: Path) -> None:
    manifest = scan_folder_roots([defect_corpus], progress=False)
    policy = ValidationPolicy(
        min_duration=0.05, max_duration=5.0, multichannel="exclude", wrong_rate="exclude", workers=1
    )
    clean, report = validate_manifest(manifest, policy, tmp_path / "fixed", progress=False)
    reasons = dict(zip(report["utt_id"], report["reason"], strict=True))
    assert reasons == {
        "bad/corrupt.wav": "unreadable",
        "bad/empty.wav": "empty",
        "bad/silent.wav": "silent",
        "fix/both.wav": "multichannel",
        "fix/cd.wav": "sample_rate",
        "fix/stereo.wav": "multichannel",
        "good/long.flac": "too_long",
    }
    assert (report["action"] == "excluded").all()
    assert sorted(clean["utt_id"]) == ["bad/short.wav", "good/a.wav", "good/b.flac"]
    assert not (tmp_path / "fixed").exists()


def test_policy_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="multichannel must be 'downmix' or 'exclude'"):
        ValidationPolicy(multichannel="average")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_duration"):
        ValidationPolicy(min_duration=2.0, max_duration=1.0)


def test_policy_from_parameters_names_the_key_at_fault() -> None:
    policy = ValidationPolicy.from_dict({"min_duration": "0.25", "workers": 2, "max_duration": 9})
    assert policy == ValidationPolicy(min_duration=0.25, workers=2, max_duration=9.0)
    with pytest.raises(ValueError, match=r"judge.validation: unknown key\(s\) \['min_duraton'\]"):
        ValidationPolicy.from_dict({"min_duraton": 5}, "judge.validation")
    with pytest.raises(ValueError, match=r"judge.validation.min_duration must be a number"):
        ValidationPolicy.from_dict({"min_duration": "abc"}, "judge.validation")
    with pytest.raises(ValueError, match=r"v.silence_blocks must be an integer, got 'x'"):
        ValidationPolicy.from_dict({"silence_blocks": "x"}, "v")
    with pytest.raises(KeyError, match=r"v: ValidationPolicy.min_duration must be >= 0"):
        ValidationPolicy.from_dict({"min_duration": -1}, "v", KeyError)


def test_rms_of_long_file_from_blocks_matches_full_read(tmp_path: Path) -> None:
    path = tmp_path / "ramp.flac"
    rate = 8000
    # Loudness grows over the file, so blocks taken only from the start would be wrong.
    wave = _noise(30.0, rate, seed=9) * np.linspace(0.05, 1.0, 30 * rate)
    _write(path, wave, rate)
    written, _ = sf.read(path)
    full = 10 * np.log10(np.mean(np.square(written)))
    estimate = rms_dbfs(str(path), len(written), rate, blocks=8, block_seconds=0.5)
    assert abs(estimate - full) < 1.0


def test_shared_corpora_counts(shared_data: Path, tmp_path: Path) -> None:
    roots = [
        shared_data / name
        for name in ("speechocean762_train", "arabic_speech_commands", "free_spoken_digits")
    ]
    manifest = scan_folder_roots(roots, workers=2, progress=False)
    assert manifest["speaker"].nunique() == 161
    assert len(manifest) == 3650
    assert (manifest["error"] == "").all()
    policy = ValidationPolicy(min_duration=0.25, workers=2)
    fixed_dir = tmp_path / "fixed"
    clean, report = validate_manifest(manifest, policy, fixed_dir, progress=False)
    excluded = report[report["action"] == "excluded"]
    assert len(excluded) == 83
    assert set(excluded["reason"]) == {"too_short"}
    assert excluded["path"].str.contains("/free_spoken_digits/").all()
    resampled = report[report["action"] == "resampled"]
    assert len(resampled) == 1200 - 83
    assert resampled["path"].str.contains("/free_spoken_digits/").all()
    assert len(clean) == 3567
    assert (clean["sample_rate"] == 16000).all()
    digits = clean[clean["source"] == "folder:free_spoken_digits"]
    assert digits["path"].map(lambda path: path.startswith(str(fixed_dir))).all()
    assert sum(1 for _ in fixed_dir.rglob("*.flac")) == 1117


def test_nan_and_inf_samples_are_excluded_as_non_finite(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    wave = _noise(1.0, 16000, seed=10).astype(np.float32)
    nan, inf = wave.copy(), wave.copy()
    nan[100:103] = np.nan
    nan[200] = np.inf
    inf[1000:1100] = np.inf
    for name, samples, rate in (("nan.wav", nan, 16000), ("inf.wav", inf, 16000)):
        (root / "spk").mkdir(parents=True, exist_ok=True)
        sf.write(root / "spk" / name, samples, rate, subtype="FLOAT")
    # A file that needs a fix is read whole for its copy: checked on that read.
    sf.write(root / "spk" / "nan_8k.wav", nan[:8000], 8000, subtype="FLOAT")
    _write(root / "spk" / "ok.wav", wave, 16000)
    manifest = scan_folder_roots([root], progress=False)
    clean, report = validate_manifest(
        manifest, ValidationPolicy(), tmp_path / "fixed", progress=False
    )
    by_utt = report.set_index("utt_id")
    assert by_utt.loc["spk/nan.wav", ["reason", "action", "detail"]].tolist() == [
        "non_finite",
        "excluded",
        "3 NaN / 1 inf sample(s)",
    ]
    assert by_utt.loc["spk/inf.wav", "detail"] == "0 NaN / 100 inf sample(s)"
    assert by_utt.loc["spk/nan_8k.wav", "reason"] == "non_finite"
    assert clean["utt_id"].tolist() == ["spk/ok.wav"]
    assert not (tmp_path / "fixed").exists()


@pytest.mark.parametrize("inside", ["", "fixed"])
def test_fixed_dir_in_a_corpus_root_is_refused_before_writing(
    defect_corpus: Path, tmp_path: Path, inside: str
) -> None:
    other = tmp_path / "other"
    _write(other / "spk9" / "a.wav", _noise(1.0, 16000, seed=11), 16000)
    before = _sha256_tree(defect_corpus)
    manifest = scan_folder_roots([other, defect_corpus], progress=False)
    fixed_dir = defect_corpus / inside
    root = defect_corpus.resolve()
    message = f"fixed_dir {fixed_dir.resolve()} is inside the corpus root {root}:"
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_manifest(manifest, ValidationPolicy(), fixed_dir, progress=False)
    assert _sha256_tree(defect_corpus) == before


def test_fixed_dir_check_finds_the_roots_of_root_prefixed_ids(tmp_path: Path) -> None:
    # Both roots hold speaker "spk", so ids get the root's name as a prefix; the root is
    # still the folder scanned, not its parent (where a fixed_dir is fine).
    for name in ("a", "b"):
        _write(tmp_path / name / "spk" / "x.wav", _noise(1.0, 16000, seed=12), 16000)
    manifest = scan_folder_roots([tmp_path / "a", tmp_path / "b"], progress=False)
    assert manifest["utt_id"].tolist() == ["a/spk/x.wav", "b/spk/x.wav"]
    clean, _ = validate_manifest(manifest, ValidationPolicy(), tmp_path / "fixed", progress=False)
    assert len(clean) == 2
    with pytest.raises(ValueError, match=r"inside the corpus root .*/b: "):
        validate_manifest(manifest, ValidationPolicy(), tmp_path / "b" / "fx", progress=False)
