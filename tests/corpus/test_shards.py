"""WebDataset shards: round trip, layout, resume, checks against the training manifest."""

from __future__ import annotations

import json
import logging
import os
import tarfile
import time

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from sv_kedro.corpus.shard_records import iter_shard_records, iter_webdataset_shards
from sv_kedro.corpus.shards import (
    ShardError,
    check_shards_hold,
    read_shard_index,
    shard_paths,
    write_webdataset_shards,
)


@pytest.fixture()
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for s in range(4):
        for u in range(3):
            path = tmp_path / "raw" / f"spk{s}" / f"u{u}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            wave = (0.3 * rng.standard_normal(1600 + 160 * u)).clip(-1, 1).astype(np.float32)
            sf.write(path, wave, 16000, subtype="PCM_16")
            rows.append({"utt_id": f"spk{s}/u{u}.wav", "speaker": f"spk{s}", "path": str(path)})
    manifest = pd.DataFrame(rows)
    manifest["speaker_index"] = manifest["speaker"].str[3:].astype(int)
    return manifest


def test_round_trip_layout_and_index(corpus, tmp_path):
    out = tmp_path / "shards"
    index = write_webdataset_shards(corpus, out, utterances_per_shard=5, seed=1)
    assert index["num_shards"] == 3 and index["complete"]
    assert [e["count"] for e in index["shards"]] == [5, 5, 2]
    assert json.loads((out / "index.json").read_text())["shards"] == index["shards"]
    with tarfile.open(out / "shard-000000.tar") as archive:
        names = archive.getnames()
    assert len(names) == 10 and all(n.count(".") == 1 for n in names)
    assert names[0].endswith(".flac") and names[1] == names[0].replace(".flac", ".json")
    samples = list(iter_webdataset_shards(shard_paths(out)))
    assert sorted(s[0] for s in samples) == sorted(corpus["utt_id"])
    # Shuffled: the order differs from the sorted manifest order.
    assert [s[0] for s in samples] != sorted(corpus["utt_id"])
    by_id = corpus.set_index("utt_id")
    for utt_id, speaker, wave, rate in samples:
        original, original_rate = sf.read(by_id.loc[utt_id, "path"], dtype="float32")
        assert speaker == by_id.loc[utt_id, "speaker"] and rate == original_rate == 16000
        np.testing.assert_allclose(wave, original, atol=1e-4)


def test_resume_skips_complete_shards_and_rewrites_damaged(corpus, tmp_path):
    out = tmp_path / "shards"
    write_webdataset_shards(corpus, out, utterances_per_shard=4, seed=3)
    stats = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("shard-*.tar")}
    (out / "shard-000001.tar").write_bytes(b"truncated")
    write_webdataset_shards(corpus, out, utterances_per_shard=4, seed=3)
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("shard-*.tar")}
    assert after["shard-000000.tar"] == stats["shard-000000.tar"]
    assert after["shard-000002.tar"] == stats["shard-000002.tar"]
    assert after["shard-000001.tar"] != stats["shard-000001.tar"]
    assert len(list(iter_webdataset_shards(shard_paths(out)))) == len(corpus)
    # A smaller re-sharding removes the shard files it no longer lists.
    index = write_webdataset_shards(corpus, out, utterances_per_shard=6, seed=3)
    assert sorted(p.name for p in out.glob("shard-*.tar")) == [e["name"] for e in index["shards"]]


def test_errors_name_the_problem(corpus, tmp_path):
    with pytest.raises(ShardError, match="path"):
        write_webdataset_shards(corpus.drop(columns="path"), tmp_path / "x", 2, seed=0)
    broken = tmp_path / "broken.tar"
    with tarfile.open(broken, "w") as archive:
        info = tarfile.TarInfo("000000001.json")
        data = b'{"utt_id": "a", "speaker": "b", "sample_rate": 16000}'
        info.size = len(data)
        import io

        archive.addfile(info, io.BytesIO(data))
    with pytest.raises(ShardError, match=r"broken\.tar.*000000001.*incomplete"):
        list(iter_webdataset_shards([broken]))


def test_shards_are_checked_against_the_training_manifest(corpus, tmp_path):
    out = tmp_path / "shards"
    write_webdataset_shards(corpus, out, utterances_per_shard=5, seed=1)
    assert check_shards_hold(corpus, out)["num_utterances"] == len(corpus)
    # Row order does not matter: the writer sorts by utt_id before its seeded shuffle.
    assert check_shards_hold(corpus.iloc[::-1], out)["num_shards"] == 3
    with pytest.raises(ShardError, match="hold 12 utterances, the training manifest 11"):
        check_shards_hold(corpus.iloc[1:], out)
    moved = corpus.assign(path=corpus["path"].str.replace("raw", "elsewhere"))
    with pytest.raises(ShardError, match=r"shard-00000\d\.tar: holds other utterances"):
        check_shards_hold(moved, out)
    # Labels are the manifest's business: pseudo-labels of the same utterances pass.
    relabelled = corpus.assign(
        speaker=[f"pseudo{k % 2}" for k in range(len(corpus))],
        speaker_index=[k % 2 for k in range(len(corpus))],
    )
    assert check_shards_hold(relabelled, out)["num_utterances"] == len(corpus)


def test_a_shard_deleted_or_replaced_since_it_was_written_is_refused(corpus, tmp_path):
    out = tmp_path / "shards"
    write_webdataset_shards(corpus, out, utterances_per_shard=5, seed=1)
    first, second = out / "shard-000000.tar", out / "shard-000001.tar"
    # A copy of another shard would pass every later check: its utterances are the
    # manifest's, and its sample count may match.
    second.write_bytes(first.read_bytes())
    with pytest.raises(
        ShardError, match=r"shard-000001\.tar: starts with sample 000000000, but the writer put"
    ):
        check_shards_hold(corpus, out)
    second.write_bytes(first.read_bytes() + b"\0" * 512)
    with pytest.raises(ShardError, match=r"shard-000001\.tar: \d+ bytes, but index.json recorded"):
        check_shards_hold(corpus, out)
    second.unlink()
    with pytest.raises(ShardError, match=r"shard-000001\.tar: missing, but index.json lists it"):
        check_shards_hold(corpus, out)
    write_webdataset_shards(corpus, out, utterances_per_shard=5, seed=1)  # the advice works
    assert check_shards_hold(corpus, out)["num_shards"] == 3


def test_relabelling_rewrites_the_stored_labels_but_not_the_audio_check(corpus, tmp_path):
    out = tmp_path / "shards"
    first = write_webdataset_shards(corpus, out, utterances_per_shard=5, seed=1)
    renamed = corpus.assign(speaker="x" + corpus["speaker"])
    second = write_webdataset_shards(renamed, out, utterances_per_shard=5, seed=1)
    for before, after in zip(first["shards"], second["shards"], strict=True):
        assert before["fingerprint"] == after["fingerprint"]
        assert before["metadata_fingerprint"] != after["metadata_fingerprint"]
    speakers = {speaker for _, speaker, _, _ in iter_webdataset_shards(shard_paths(out))}
    assert speakers == set(renamed["speaker"])


def test_shards_of_an_earlier_format_are_refused_with_the_fix(corpus, tmp_path):
    out = tmp_path / "shards"
    write_webdataset_shards(corpus, out, utterances_per_shard=5, seed=1)
    index = json.loads((out / "index.json").read_text())
    (out / "index.json").write_text(json.dumps({**index, "format": "sv_kedro.webdataset/1"}))
    with pytest.raises(ShardError, match=r"webdataset/1.*kedro run --pipeline data_engineering"):
        check_shards_hold(corpus, out)
    # The suggested fix works: writing again upgrades the index.
    old_entries = [
        {k: v for k, v in e.items() if k != "metadata_fingerprint"} for e in index["shards"]
    ]
    (out / "index.json").write_text(
        json.dumps({**index, "format": "sv_kedro.webdataset/1", "shards": old_entries})
    )
    write_webdataset_shards(corpus, out, utterances_per_shard=5, seed=1)
    assert check_shards_hold(corpus, out)["format"] == "sv_kedro.webdataset/2"


def test_a_shard_index_that_cannot_be_used_is_named(corpus, tmp_path):
    with pytest.raises(ShardError, match=r"nowhere/index\.json: shard index not found"):
        read_shard_index(tmp_path / "nowhere")
    out = tmp_path / "shards"
    write_webdataset_shards(corpus, out, utterances_per_shard=5, seed=1)
    index = json.loads((out / "index.json").read_text())
    (out / "index.json").write_text(json.dumps({**index, "complete": False}))
    with pytest.raises(ShardError, match="incomplete"):
        shard_paths(out)
    (out / "index.json").write_text("{not json")
    with pytest.raises(ShardError, match="not valid JSON"):
        read_shard_index(out)


def test_records_decode_only_when_asked(corpus, tmp_path):
    out = tmp_path / "shards"
    write_webdataset_shards(corpus, out, utterances_per_shard=12, seed=1)
    records = list(iter_shard_records(out / "shard-000000.tar"))
    assert len(records) == 12 and all(set(r.parts) == {"flac", "json"} for r in records)
    utt_id, speaker, wave, rate = records[0].decode()
    assert speaker == utt_id.split("/")[0] and rate == 16000 and wave.dtype == np.float32


def _rewrite_same_size(shard, keep_times=False):
    """Other bytes of the same size, as another tool or a bad copy leaves them; the first
    sample's header stays, so only the bytes tell."""
    before = shard.stat()
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    time.sleep(0.05)  # past the file system's timestamp granularity
    shard.write_bytes(bytes(data))
    if keep_times:  # cp -p, rsync -t: the times come back, but not the status-change time
        os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    else:  # written later than the shard was
        later = before.st_mtime_ns + 1_000_000_000
        os.utime(shard, ns=(later, later))
    assert shard.stat().st_size == before.st_size


@pytest.mark.parametrize("keep_times", [False, True])
def test_a_shard_rewritten_with_other_bytes_of_the_same_size_is_caught(
    corpus, tmp_path, keep_times
):
    out = tmp_path / "shards"
    write_webdataset_shards(corpus, out, utterances_per_shard=5, seed=1)
    shard = out / "shard-000001.tar"
    written = shard.read_bytes()
    others = {n: (out / n).stat().st_ino for n in ("shard-000000.tar", "shard-000002.tar")}
    # Before, a re-run kept it on its size alone: now it is written again, the others kept.
    _rewrite_same_size(shard, keep_times)
    write_webdataset_shards(corpus, out, utterances_per_shard=5, seed=1)
    assert shard.read_bytes() == written
    assert {n: (out / n).stat().st_ino for n in others} == others
    assert check_shards_hold(corpus, out)["num_shards"] == 3
    # Before, training read the other bytes as these utterances: now it is refused.
    _rewrite_same_size(shard, keep_times)
    with pytest.raises(
        ShardError,
        match=r"shard-000001\.tar: its bytes changed since it was written \(CRC-32 [0-9a-f]{8}, "
        r"index.json recorded [0-9a-f]{8}\) though its size did not; write the shards again",
    ):
        check_shards_hold(corpus, out)


def test_a_copied_shard_of_the_same_bytes_is_checked_once_and_kept(corpus, tmp_path, caplog):
    out = tmp_path / "shards"
    first = write_webdataset_shards(corpus, out, utterances_per_shard=5, seed=1)
    assert all(isinstance(e["crc32"], int) and e["mtime_ns"] > 0 for e in first["shards"])
    shard = out / "shard-000002.tar"
    time.sleep(0.05)
    copy = tmp_path / "copy.tar"
    copy.write_bytes(shard.read_bytes())
    copy.replace(shard)  # as cp would leave it: the same bytes, new times
    inode = shard.stat().st_ino
    with caplog.at_level(logging.INFO, logger="sv_kedro.corpus.shards"):
        check_shards_hold(corpus, out)
    assert "1 shard(s) were copied or touched since index.json was written" in caplog.text
    second = write_webdataset_shards(corpus, out, utterances_per_shard=5, seed=1)
    assert shard.stat().st_ino == inode  # kept, not written again
    assert second["shards"][2]["crc32"] == first["shards"][2]["crc32"]
    assert second["shards"][2]["ctime_ns"] == shard.stat().st_ctime_ns  # the new times
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sv_kedro.corpus.shards"):
        check_shards_hold(corpus, out)
    assert "copied or touched" not in caplog.text
