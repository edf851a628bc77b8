"""Random access to shard audio by utt_id: exact samples, any order, clear errors."""

from __future__ import annotations

import io
import os
import pickle
import re
import tarfile
import time

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from sv_kedro.corpus.shard_access import ShardAudioReader
from sv_kedro.corpus.shards import ShardError, write_webdataset_shards


@pytest.fixture()
def corpus(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for s in range(3):
        for u in range(4):
            path = tmp_path / "raw" / f"spk{s}" / f"u{u}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            wave = (0.3 * rng.standard_normal(800 + 400 * u + 50 * s)).clip(-1, 1)
            sf.write(path, wave.astype(np.float32), 16000, subtype="PCM_16")
            rows.append({"utt_id": f"spk{s}/u{u}.wav", "speaker": f"spk{s}", "path": str(path)})
    return pd.DataFrame(rows)


@pytest.fixture()
def shards(corpus, tmp_path):
    out = tmp_path / "shards"
    write_webdataset_shards(corpus, out, utterances_per_shard=5, seed=2)
    return out


def test_reads_every_utterance_bit_exact_in_any_order(corpus, shards):
    reader = ShardAudioReader(shards)
    assert len(reader) == len(corpus) and reader.sample_rate == 16000
    assert len({number for number, _, _ in reader.locations.values()}) == 3
    # Reverse manifest order jumps back and forth between the three shards.
    for utt_id, path in reversed(list(zip(corpus["utt_id"], corpus["path"], strict=True))):
        wave, rate = reader.read(utt_id)
        original, _ = sf.read(path, dtype="float32")
        assert rate == 16000 and wave.dtype == np.float32
        np.testing.assert_array_equal(wave, original)  # 16-bit PCM in, 16-bit FLAC stored
    assert "spk0/u0.wav" in reader and "spk9/u0.wav" not in reader
    with pytest.raises(ShardError, match=r"no shard holds 'spk9/u0\.wav'"):
        reader.read("spk9/u0.wav")
    reader.close()


def test_a_window_decodes_only_the_frames_it_picks(corpus, shards):
    reader = ShardAudioReader(shards)
    utt_id, path = corpus["utt_id"][7], corpus["path"][7]
    original, _ = sf.read(path, dtype="float32")
    seen = []

    def window(num_frames):
        seen.append(num_frames)
        return 300, 250

    wave, rate = reader.read(utt_id, window)
    assert seen == [len(original)] and rate == 16000
    np.testing.assert_array_equal(wave, original[300:550])
    start, _ = reader.read(utt_id, lambda n: (0, 100))
    np.testing.assert_array_equal(start, original[:100])


def test_a_pickled_reader_opens_its_own_files(corpus, shards):
    """DataLoader workers get a copy of the reader: open handles must not travel."""
    reader = ShardAudioReader(shards)
    first = corpus["utt_id"][0]
    before, _ = reader.read(first)
    copy = pickle.loads(pickle.dumps(reader))
    assert copy._handles == {}
    np.testing.assert_array_equal(copy.read(first)[0], before)


def test_damaged_shards_are_named(corpus, shards):
    reader = ShardAudioReader(shards)
    utt_id = corpus["utt_id"][3]
    number, offset, _ = reader.locations[utt_id]
    shard = reader.shards[number]
    reader.close()
    data = bytearray(shard.read_bytes())
    data[offset : offset + 4] = b"JUNK"  # the FLAC stream marker
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=re.escape(f"{shard.name}: '{utt_id}' cannot be decoded")):
        ShardAudioReader(shards).read(utt_id)
    # Cut a shard short: it can no longer be indexed whole, and the error names it.
    other = reader.shards[(number + 1) % 3]
    other.write_bytes(other.read_bytes()[:3000])
    with pytest.raises(ShardError, match=re.escape(other.name)):
        ShardAudioReader(shards)


def test_a_sample_without_metadata_is_named(shards, tmp_path):
    shard = shards / "shard-000000.tar"
    with tarfile.open(shard) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as archive:
        for member, data in members:
            if member.name != members[1][0].name:  # drop the first sample's JSON
                archive.addfile(member, io.BytesIO(data))
    key = members[0][0].name.split(".")[0]
    with pytest.raises(ShardError, match=f"sample '{key}' lacks its audio or its metadata"):
        ShardAudioReader(shards)


def test_locations_are_kept_beside_the_shards_and_rescanned_when_stale(corpus, shards):
    first = ShardAudioReader(shards)
    kept = sorted(path.name for path in shards.glob("*.locations.json"))
    assert first.scanned == 3 and kept == [f"shard-00000{n}.tar.locations.json" for n in range(3)]
    second = ShardAudioReader(shards)
    assert second.scanned == 0 and second.locations == first.locations
    utt_id = corpus["utt_id"][5]
    np.testing.assert_array_equal(second.read(utt_id)[0], first.read(utt_id)[0])
    # Unreadable kept locations, or a shard written again (a new mtime), are scanned again.
    (shards / "shard-000001.tar.locations.json").write_text("{not json")
    shard = shards / "shard-000002.tar"
    shard.write_bytes(shard.read_bytes())
    third = ShardAudioReader(shards)
    assert third.scanned == 2 and third.locations == first.locations
    assert ShardAudioReader(shards).scanned == 0
    assert ShardAudioReader(shards, keep_locations=False).scanned == 3
    # Writing fewer shards removes the shards and the kept locations it no longer has.
    write_webdataset_shards(corpus, shards, utterances_per_shard=12, seed=2)
    assert sorted(path.name for path in shards.iterdir()) == ["index.json", "shard-000000.tar"]
    assert ShardAudioReader(shards).scanned == 1


def test_kept_locations_of_a_shard_rewritten_with_its_times_set_back_are_not_used(corpus, shards):
    first = ShardAudioReader(shards)
    assert first.scanned == 3
    first.close()
    # The same samples in another order: the same size, every sample elsewhere. A copy
    # tool that keeps times (cp -p, rsync -t) sets the modification time back.
    shard = shards / "shard-000002.tar"
    before = shard.stat()
    with tarfile.open(shard) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    pairs = [members[i : i + 2] for i in range(0, len(members), 2)][::-1]
    time.sleep(0.05)  # past the file system's timestamp granularity
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as archive:
        for member, data in (item for pair in pairs for item in pair):
            archive.addfile(member, io.BytesIO(data))
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (shard.stat().st_size, shard.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    # Before, the kept locations were used: reads returned other utterances' audio.
    second = ShardAudioReader(shards)
    assert second.scanned == 1
    assert second.locations != first.locations
    for utt_id, path in zip(corpus["utt_id"], corpus["path"], strict=True):
        np.testing.assert_array_equal(second.read(utt_id)[0], sf.read(path, dtype="float32")[0])
