"""Shard streaming: rank/worker split, the shuffle buffer, and resuming an epoch mid-way."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from torch.utils.data import DataLoader

from sv_kedro.audio.augmentation import AugmentationConfig, Augmenter
from sv_kedro.audio.crops import CropSpec
from sv_kedro.corpus.shard_records import iter_shard_records
from sv_kedro.corpus.shards import (
    ShardError,
    read_shard_index,
    shard_counts,
    shard_paths,
    write_webdataset_shards,
)
from sv_kedro.training.data import collate_padded
from sv_kedro.training.shard_data import (
    ShardDataset,
    resume_skips,
    shard_epoch_loader,
    shuffle_buffered,
    worker_batches,
)

RATE = 16000


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> tuple[pd.DataFrame, dict[str, int]]:
    """20 utterances of 5 speakers in 7 shards of 3 (the last of 2); returns the manifest
    and ``{shard path: samples}``."""
    root = tmp_path_factory.mktemp("sharded")
    rng = np.random.default_rng(0)
    rows = []
    for u in range(20):
        path = root / "raw" / f"spk{u % 5}" / f"utt{u:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        frames = int(rng.integers(3000, 6000))
        sf.write(path, (0.2 * rng.standard_normal(frames)).clip(-1, 1), RATE, subtype="PCM_16")
        rows.append(
            {
                "utt_id": f"spk{u % 5}/utt{u:02d}.wav",
                "speaker": f"spk{u % 5}",
                "path": str(path),
                "speaker_index": u % 5,
            }
        )
    manifest = pd.DataFrame(rows)
    out = root / "shards"
    write_webdataset_shards(manifest, out, utterances_per_shard=3, seed=2)
    index = read_shard_index(out)
    return manifest, shard_counts(out, index)


def _dataset(counts, rank=0, replicas=1, buffer=4, **kwargs) -> ShardDataset:
    dataset = ShardDataset(
        list(counts),
        CropSpec("random", 0.25),
        speaker_to_index={f"spk{k}": k for k in range(5)},
        seed=3,
        num_replicas=replicas,
        rank=rank,
        shuffle_buffer=buffer,
        shard_counts=counts,
        **kwargs,
    )
    dataset.set_epoch(1)
    return dataset


def _epoch(dataset, workers, batch_size, start_batch=0) -> list[tuple[list[str], np.ndarray]]:
    """The batches one rank's loader yields from ``start_batch`` on: (utt_ids, waves)."""
    loader = shard_epoch_loader(dataset, batch_size, workers, start_batch, collate_padded)
    batches = [(b["utt_ids"], b["waves"].numpy()) for b in loader]
    assert len(batches) == len(loader)
    return batches


class WrappedRecord:
    """A shard record that logs its decodes into ``decoded`` and, with ``whole``, decodes
    the whole utterance and cuts the window in NumPy (the reference for partial decoding)."""

    def __init__(self, record, decoded: list[str], whole: bool = False):
        self.record, self.decoded, self.whole = record, decoded, whole

    def metadata(self):
        return self.record.metadata()

    def decode(self, window=None):
        self.decoded.append(self.record.key)
        if not self.whole or window is None:
            return self.record.decode(window)
        utt_id, speaker, wave, rate = self.record.decode()
        offset, frames = window(len(wave))
        return utt_id, speaker, wave[offset : offset + frames], rate


def test_shards_split_across_ranks_and_workers(sharded):
    manifest, counts = sharded
    seen: list[list[str]] = []
    for rank in range(2):
        dataset = _dataset(counts, rank=rank, replicas=2, buffer=2)
        loader = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=collate_padded)
        batches = list(loader)
        seen.append([u for b in batches for u in b["utt_ids"]])
        for b in batches:
            assert b["waves"].shape[1] == RATE // 4
            assert b["labels"].tolist() == [int(u[3]) for u in b["utt_ids"]]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(manifest["utt_id"])
    with pytest.raises(ValueError, match="7 shards cannot feed 8 ranks"):
        ShardDataset(list(counts), None, num_replicas=8, rank=0)


def test_shuffle_buffer_permutes_positions_the_same_whatever_the_items():
    def order(items):
        return list(shuffle_buffered(items, 4, np.random.default_rng(7)))

    positions = order(range(11))
    assert sorted(positions) == list(range(11)) and positions != list(range(11))
    letters = order([chr(97 + k) for k in range(11)])
    assert letters == [chr(97 + k) for k in positions]
    assert list(shuffle_buffered(range(5), 0, np.random.default_rng(7))) == list(range(5))


def test_resume_skips_follow_the_loaders_round_robin():
    # Workers with 3, 1 and 2 batches yield w0 w1 w2 w0 w2 w0.
    assert resume_skips([3, 1, 2], 0) == ({0: 0, 1: 0, 2: 0}, 0)
    assert resume_skips([3, 1, 2], 1) == ({0: 1, 1: 0, 2: 0}, 1)
    assert resume_skips([3, 1, 2], 4) == ({0: 2, 1: 1, 2: 1}, 1)
    assert resume_skips([3, 1, 2], 5) == ({0: 2, 1: 1, 2: 2}, 0)
    assert resume_skips([3, 1, 2], 6) == ({0: 3, 1: 1, 2: 2}, 1)
    with pytest.raises(ValueError, match="start_batch 7 outside an epoch of 6 batches"):
        resume_skips([3, 1, 2], 7)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_epoch_yields_the_rest_of_the_same_batches(sharded, workers):
    _, counts = sharded
    full = _epoch(_dataset(counts), workers, batch_size=2)
    assert len(full) == sum(worker_batches(_dataset(counts), workers, 2))
    for start in range(1, len(full) + 1):
        resumed = _epoch(_dataset(counts), workers, batch_size=2, start_batch=start)
        assert [ids for ids, _ in resumed] == [ids for ids, _ in full[start:]]
        for (_, waves), (_, expected) in zip(resumed, full[start:], strict=True):
            np.testing.assert_array_equal(waves, expected)


def test_resuming_opens_no_finished_shard_and_decodes_no_skipped_sample(sharded):
    _, counts = sharded
    opened: list[str] = []
    decoded: list[str] = []

    def reader(path):
        opened.append(path)
        return (WrappedRecord(r, decoded) for r in iter_shard_records(path))

    dataset = _dataset(counts, buffer=0, reader=reader)
    ends = np.cumsum([counts[shard] for shard in dataset.shards_for(0)])
    _epoch(dataset, 0, batch_size=2, start_batch=4)  # the first 8 items are skipped
    assert opened == [s for s, end in zip(dataset.shards_for(0), ends, strict=True) if end > 8]
    assert len(opened) < len(counts) - 1
    assert len(decoded) == sum(counts.values()) - 8


def test_a_shard_shorter_than_its_index_entry_is_named(sharded):
    _, counts = sharded
    first = sorted(counts)[0]
    dataset = _dataset({**counts, first: counts[first] + 1}, buffer=0)
    message = r"shard-000000.tar: holds 3 samples but index.json says 4"
    with pytest.raises(ShardError, match=message):
        list(dataset)


def test_skipping_needs_the_shard_sizes(sharded):
    _, counts = sharded
    folder = str(next(iter(counts)).rsplit("/", 1)[0])
    dataset = ShardDataset(shard_paths(folder), None)
    with pytest.raises(ValueError, match="needs shard_counts"):
        dataset.set_skip({0: 2})


@pytest.mark.parametrize("mode", ["random", "random_contiguous", "start"])
def test_decoding_only_the_crop_equals_cropping_the_whole_utterance(sharded, mode):
    """The crop's frames alone are decoded; items equal those cut from the whole decode."""
    _, counts = sharded

    speed = Augmenter(AugmentationConfig(weights={"none": 1.0}, speed_factors=(0.9, 1.0, 1.1)))
    options = {"buffer": 0, "augmenter": speed, "return_clean": True}
    partial = _dataset(counts, **options)
    whole = _dataset(
        counts,
        **options,
        reader=lambda p: (WrappedRecord(r, [], whole=True) for r in iter_shard_records(p)),
    )
    for dataset in (partial, whole):
        dataset.crop = CropSpec(mode, 0.25)
    items = list(partial)
    reference = list(whole)
    assert len(items) == len(reference) == 20
    assert {item["speed"] for item in items} == {0.9, 1.0, 1.1}
    for item, expected in zip(items, reference, strict=True):
        assert item["utt_id"] == expected["utt_id"] and item["label"] == expected["label"]
        np.testing.assert_array_equal(item["clean"], expected["clean"])
        assert item["clean"].shape == (RATE // 4,)


def test_labels_follow_the_given_manifest_and_strangers_are_named(sharded):
    """With ``utt_to_speaker`` the shard's stored speaker is ignored; a sample the manifest
    lacks stops the stream naming its shard."""
    manifest, counts = sharded
    relabelled = {utt: f"spk{(k + 1) % 5}" for k, utt in enumerate(manifest["utt_id"])}
    items = list(_dataset(counts, utt_to_speaker=relabelled))
    assert len(items) == 20
    for item in items:
        assert item["label"] == int(relabelled[item["utt_id"]][3:])
    missing = dict(list(relabelled.items())[1:])
    with pytest.raises(ShardError, match=r"shard-\d+\.tar: 'spk0/utt00\.wav' is not in"):
        list(_dataset(counts, utt_to_speaker=missing))
