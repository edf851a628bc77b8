"""WebDataset shards: round trip, layout, resume."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from sv_kedro.corpus.shards import (
    ShardError,
    iter_webdataset_shards,
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
