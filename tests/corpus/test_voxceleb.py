"""VoxCeleb as released: zips with varying prefixes, m4a conversion, both meta formats."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from sv_kedro.corpus.voxceleb import (
    VoxCelebError,
    prepare_voxceleb,
    read_vox1_meta,
    read_vox2_meta,
)

VOX1_META = (
    "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"
    "id10001\tA.J._Buckley\tm\tIreland\tdev\n"
    "id10002\tA.R._Rahman\tm\tIndia\tdev\n"
    "id10270\tSome_One\tf\tUSA\ttest\n"
)
# As released: UTF-8 BOM, CRLF line ends, every field padded with a space.
VOX2_META = (
    "\ufeffVoxCeleb2 ID ,VGGFace2 ID ,Gender ,Set \r\n"
    "id00012 ,n000012 ,m ,dev \r\n"
    "id00015 ,n000015 ,f ,dev \r\n"
    "id00017 ,n000017 ,f ,test \r\n"
)


def _wav_bytes(seconds: float, seed: int) -> bytes:
    buffer = io.BytesIO()
    wave = 0.1 * np.random.default_rng(seed).standard_normal(round(seconds * 16000))
    sf.write(buffer, wave, 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _m4a_bytes(path: Path, seconds: float, seed: int) -> bytes:
    t = np.arange(round(seconds * 16000)) / 16000
    tone = (0.3 * np.sin(2 * np.pi * (150 + 40 * seed) * t)).astype(np.float32)[None, :]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path.read_bytes()


@pytest.fixture
def vox_root(tmp_path: Path) -> Path:
    root = tmp_path / "voxceleb"
    root.mkdir()
    with zipfile.ZipFile(root / "vox1_dev_wav.zip", "w") as archive:
        archive.writestr("wav/", b"")
        archive.writestr("wav/id10001/1zcIwhmdeo4/00001.wav", _wav_bytes(0.3, 1))
        archive.writestr("wav/id10001/1zcIwhmdeo4/00002.wav", _wav_bytes(0.4, 2))
        archive.writestr("wav/id10002/C7k7C-PDvAA/00001.wav", _wav_bytes(0.3, 3))
        archive.writestr("wav/readme.txt", b"not audio")
    with zipfile.ZipFile(root / "vox1_test_wav.zip", "w") as archive:
        archive.writestr("wav/id10270/5r0dWxy17C8/00001.wav", _wav_bytes(0.5, 4))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with zipfile.ZipFile(root / "vox2_dev_aac.zip", "w") as archive:
        archive.writestr(
            "dev/aac/id00012/21Uxsk56VDQ/00001.m4a", _m4a_bytes(scratch / "a.m4a", 0.5, 1)
        )
        archive.writestr(
            "dev/aac/id00015/0fijmz4vTVU/00001.m4a", _m4a_bytes(scratch / "b.m4a", 0.4, 2)
        )
        archive.writestr("dev/aac/id00015/0fijmz4vTVU/00002.m4a", b"\x00not an m4a at all" * 40)
    # vox2 test given already extracted, with the shorter "aac/" prefix.
    _m4a_bytes(scratch / "c.m4a", 0.3, 3)
    extracted = root / "vox2_test_aac" / "aac" / "id00017" / "9mQ11vBs1wc"
    extracted.mkdir(parents=True)
    (scratch / "c.m4a").rename(extracted / "00003.m4a")
    (root / "vox1_meta.csv").write_text(VOX1_META)
    (root / "vox2_meta.csv").write_bytes(VOX2_META.encode("utf-8"))
    return root


def test_prepare_voxceleb_builds_the_manifest(vox_root: Path, tmp_path: Path) -> None:
    zip_hashes = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in vox_root.glob("*.zip")
    }
    extract_dir, converted_dir = tmp_path / "extracted", tmp_path / "converted"
    manifest, failures = prepare_voxceleb(
        vox_root, extract_dir, converted_dir, workers=0, progress=False
    )
    assert manifest["utt_id"].tolist() == [
        "id10001/1zcIwhmdeo4/00001.wav",
        "id10001/1zcIwhmdeo4/00002.wav",
        "id10002/C7k7C-PDvAA/00001.wav",
        "id10270/5r0dWxy17C8/00001.wav",
        "id00012/21Uxsk56VDQ/00001.wav",
        "id00015/0fijmz4vTVU/00001.wav",
        "id00017/9mQ11vBs1wc/00003.wav",
    ]
    assert manifest["source"].tolist() == ["vox1_dev"] * 3 + [
        "vox1_test",
        "vox2_dev",
        "vox2_dev",
        "vox2_test",
    ]
    assert manifest["gender"].tolist() == ["m", "m", "m", "f", "m", "f", "f"]
    assert manifest["speaker"].tolist()[4:] == ["id00012", "id00015", "id00017"]
    assert manifest["session"].tolist()[0] == "1zcIwhmdeo4"
    assert manifest["num_frames"].tolist()[:4] == [4800, 6400, 4800, 8000]
    assert (manifest["sample_rate"] == 16000).all() and (manifest["channels"] == 1).all()
    assert (manifest["error"] == "").all()

    vox1_path = Path(manifest.loc[0, "path"])
    assert vox1_path == extract_dir / "vox1_dev" / "id10001" / "1zcIwhmdeo4" / "00001.wav"
    for path in manifest["path"].tolist()[4:]:
        assert path.startswith(str(converted_dir)) and path.endswith(".flac")
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
    assert manifest.loc[4, "duration"] == pytest.approx(0.5, abs=0.1)

    assert failures["utt_id"].tolist() == ["id00015/0fijmz4vTVU/00002.wav"]
    assert failures.loc[0, "part"] == "vox2_dev" and "00002.m4a" in failures.loc[0, "reason"]
    extracted = sorted(
        str(p.relative_to(extract_dir)) for p in extract_dir.rglob("*") if p.is_file()
    )
    assert extracted == [  # only audio, re-rooted at the idN/<video>/<n> tail; no readme.txt
        "vox1_dev/id10001/1zcIwhmdeo4/00001.wav",
        "vox1_dev/id10001/1zcIwhmdeo4/00002.wav",
        "vox1_dev/id10002/C7k7C-PDvAA/00001.wav",
        "vox1_test/id10270/5r0dWxy17C8/00001.wav",
        "vox2_dev/id00012/21Uxsk56VDQ/00001.m4a",
        "vox2_dev/id00015/0fijmz4vTVU/00001.m4a",
        "vox2_dev/id00015/0fijmz4vTVU/00002.m4a",
    ]
    assert {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in vox_root.glob("*.zip")
    } == zip_hashes

    # Resume: nothing is extracted or converted again.
    outputs = sorted([*extract_dir.rglob("*.*"), *converted_dir.rglob("*.flac")])
    stamps = {path: os.stat(path).st_mtime_ns for path in outputs}
    again, _ = prepare_voxceleb(vox_root, extract_dir, converted_dir, workers=0, progress=False)
    assert {path: os.stat(path).st_mtime_ns for path in outputs} == stamps
    assert again.equals(manifest)


def test_missing_parts_are_skipped_and_none_is_an_error(
    vox_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (vox_root / "vox1_dev_wav.zip").unlink()
    with caplog.at_level(logging.INFO):
        manifest, _ = prepare_voxceleb(
            vox_root,
            tmp_path / "x",
            tmp_path / "c",
            parts=("vox1_dev", "vox1_test"),
            workers=0,
            progress=False,
        )
    assert manifest["utt_id"].tolist() == ["id10270/5r0dWxy17C8/00001.wav"]
    assert "vox1_dev: not found" in caplog.text and "vox1_dev_wav.zip" in caplog.text
    with pytest.raises(FileNotFoundError, match=r"no VoxCeleb part.*vox1_dev_wav\.zip"):
        prepare_voxceleb(
            vox_root, tmp_path / "y", tmp_path / "c", parts=("vox1_dev",), progress=False
        )
    with pytest.raises(ValueError, match="unknown VoxCeleb part"):
        prepare_voxceleb(vox_root, tmp_path / "y", tmp_path / "c", parts=("vox3",), progress=False)


def test_meta_readers_parse_both_formats_and_report_bad_lines(tmp_path: Path) -> None:
    vox1 = tmp_path / "vox1_meta.csv"
    vox1.write_text(VOX1_META)
    vox2 = tmp_path / "vox2_meta.csv"
    vox2.write_bytes(VOX2_META.encode("utf-8"))
    assert read_vox1_meta(vox1).values.tolist() == [
        ["id10001", "m", "dev"],
        ["id10002", "m", "dev"],
        ["id10270", "f", "test"],
    ]
    assert read_vox2_meta(vox2).values.tolist() == [
        ["id00012", "m", "dev"],
        ["id00015", "f", "dev"],
        ["id00017", "f", "test"],
    ]
    vox1.write_text(VOX1_META + "id10003\tX\tunknown\tUSA\tdev\n")
    with pytest.raises(VoxCelebError, match=r"vox1_meta\.csv:5: gender 'unknown'"):
        read_vox1_meta(vox1)
    with pytest.raises(
        VoxCelebError, match=r"vox2_meta\.csv:1: header .* lacks column 'VoxCeleb1 ID'"
    ):
        read_vox1_meta(vox2)


def test_real_meta_files(shared_data: Path) -> None:
    vox1 = read_vox1_meta(shared_data / "voxceleb_meta" / "vox1_meta.csv")
    vox2 = read_vox2_meta(shared_data / "voxceleb_meta" / "vox2_meta.csv")
    assert len(vox1) == 1251 and vox1["set"].value_counts().to_dict() == {"dev": 1211, "test": 40}
    assert len(vox2) == 6114 and vox2["set"].value_counts().to_dict() == {"dev": 5994, "test": 120}
    assert vox2.loc[0].tolist() == ["id00012", "m", "dev"]
    assert set(vox1["gender"]) == set(vox2["gender"]) == {"m", "f"}
