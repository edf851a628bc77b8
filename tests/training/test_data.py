"""Training and evaluation datasets, collate functions and length buckets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from sv_kedro.audio.augmentation import AugmentationConfig, Augmenter
from sv_kedro.audio.crops import CropSpec, evaluation_inputs
from sv_kedro.audio.rir import RirBank
from sv_kedro.training.data import (
    EvaluationDataset,
    PairDataset,
    SpeakerDataset,
    _pad,
    bucket_by_length,
    collate_evaluation,
    collate_padded,
    collate_pairs,
)
from sv_kedro.training.samplers import PairBatchSampler

RATE = 16000


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> pd.DataFrame:
    """4 speakers x 3 utterances of 0.5-4.5 s; the first is 8 kHz, the second stereo.

    Sample ``t`` of utterance ``u`` is ``u + t / 1e6``: a crop shows where it came from."""
    root = tmp_path_factory.mktemp("corpus")
    rows = []
    for u in range(12):
        speaker = f"spk{u // 3}"
        rate = 8000 if u == 0 else RATE
        frames = int((0.5 + 0.35 * u) * rate)
        wave = (u + np.arange(frames) / 1e6).astype(np.float32) / 16
        if u == 1:
            wave = np.stack([wave, wave], axis=1)
        path = root / speaker / f"utt{u:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave, rate, subtype="FLOAT")
        rows.append(
            {
                "utt_id": f"{speaker}/utt{u:02d}.wav",
                "speaker": speaker,
                "path": str(path),
                "duration": frames / rate,
                "num_frames": frames,
                "sample_rate": rate,
                "channels": 2 if u == 1 else 1,
                "source": "test",
                "speaker_index": u // 3,
            }
        )
    return pd.DataFrame(rows)


def _reverb_augmenter(**config) -> Augmenter:
    weights = {"none": 1.0, "reverb": 1.0}
    return Augmenter(
        AugmentationConfig(weights=weights, **config), rir_bank=RirBank.simulated(3, RATE, seed=0)
    )


def test_items_and_collate_shapes(manifest):
    dataset = SpeakerDataset(
        manifest, CropSpec("random", 1.0), _reverb_augmenter(), return_clean=True, seed=1
    )
    item = dataset[4]
    assert item["wave"].shape == item["clean"].shape == (RATE,)
    assert (
        item["wave"].dtype == np.float32
        and item["label"] == 1
        and item["utt_id"].endswith("04.wav")
    )
    assert set(np.unique(np.floor(item["clean"] * 16 + 1e-3))) == {4.0}  # read from utterance 4
    batch = collate_padded([dataset[i] for i in (0, 1, 2)])
    assert batch["waves"].shape == batch["clean"].shape == (3, RATE)
    assert batch["labels"].tolist() == [0, 0, 0] and batch["indices"].tolist() == [0, 1, 2]
    assert batch["lengths"].tolist() == [RATE] * 3 and batch["waves"].dtype == torch.float32
    # the 8 kHz and stereo files came out mono at 16 kHz, wrap-padded to the crop
    assert np.isfinite(batch["clean"].numpy()).all()


def test_whole_utterances_padded_to_longest(manifest):
    dataset = SpeakerDataset(manifest.drop(columns="speaker_index"), crop=None)
    items = [dataset[i] for i in (2, 5, 3)]
    batch = collate_padded(items)
    lengths = [manifest.num_frames[i] for i in (2, 5, 3)]
    assert batch["lengths"].tolist() == lengths
    assert batch["waves"].shape == (3, max(lengths))
    assert batch["labels"].tolist() == [-1, -1, -1]
    assert torch.all(batch["waves"][0, lengths[0] :] == 0)
    assert "clean" not in batch


def test_equal_length_crops_stack_to_the_batch_that_padding_gives():
    rng = np.random.default_rng(0)
    crops = [rng.standard_normal(50).astype(np.float32) for _ in range(3)]
    stacked, lengths = _pad(crops)
    padded, _ = _pad([torch.from_numpy(crop) for crop in crops])  # tensors: row by row
    assert stacked.dtype == torch.float32 and torch.equal(stacked, padded)
    assert lengths.tolist() == [50, 50, 50]
    # Other lengths or dtypes take the row-by-row path: zero-padded, cast to float32.
    mixed, lengths = _pad([crops[0], crops[1][:40], crops[2].astype(np.float64)])
    assert lengths.tolist() == [50, 40, 50] and mixed.dtype == torch.float32
    assert torch.all(mixed[1, 40:] == 0) and torch.equal(mixed[1, :40], padded[1, :40])
    assert torch.equal(mixed[2], padded[2])


def test_items_deterministic_across_workers_and_epochs(manifest):
    dataset = SpeakerDataset(manifest, CropSpec("random", 0.5), _reverb_augmenter(), seed=3)

    def epoch_batches(workers: int, epoch: int) -> list[torch.Tensor]:
        dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=4, num_workers=workers, collate_fn=collate_padded)
        return [b["waves"] for b in loader]

    serial = epoch_batches(0, 0)
    parallel = epoch_batches(2, 0)
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))
    later = epoch_batches(0, 1)
    assert not all(torch.equal(a, b) for a, b in zip(serial, later, strict=True))


def test_random_contiguous_crops_do_not_overlap_across_epochs(manifest):
    dataset = SpeakerDataset(manifest, CropSpec("random_contiguous", 1.0), seed=0)
    starts = []
    for epoch in range(4):
        dataset.set_epoch(epoch)
        crop = dataset[11]["wave"]  # 4.35 s: 4 chunks of 1 s
        starts.append(round((crop[0] * 16 - 11) * 1e6))
    base = starts[0]
    assert 0 <= base <= int(0.35 * RATE)
    assert starts == [base, base + RATE, base + 2 * RATE, base + 3 * RATE]


def test_speed_factors_remap_labels(manifest):
    dataset = SpeakerDataset(
        manifest, CropSpec("start", 0.5), _reverb_augmenter(speed_factors=(0.9, 1.0, 1.1)), seed=0
    )
    assert dataset.num_classes == 12
    seen = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        item = dataset[7]
        assert item["wave"].shape == (RATE // 2,)
        expected = {0.9: 2 + 4, 1.0: 2, 1.1: 2 + 8}[item["speed"]]
        assert item["label"] == expected
        seen.add(item["speed"])
    assert len(seen) >= 2


def test_pairs_through_a_dataloader(manifest):
    pairs = PairDataset(SpeakerDataset(manifest, CropSpec("random", 0.5), seed=0))
    sampler = PairBatchSampler(manifest["speaker"].tolist(), 4, seed=0, pairs_per_epoch=8)
    loader = DataLoader(pairs, batch_sampler=sampler, collate_fn=collate_pairs)
    batches = list(loader)
    assert len(batches) == 2
    for batch in batches:
        assert batch["a"]["waves"].shape == batch["b"]["waves"].shape == (4, RATE // 2)
        same = (batch["a"]["labels"] == batch["b"]["labels"]).float()
        assert torch.equal(batch["same"], same) and batch["same"].sum() == 2


def test_evaluation_dataset_and_length_buckets(manifest):
    dataset = EvaluationDataset(manifest, n_crops=3, crop_seconds=1.0, max_seconds=3.0)
    assert dataset.durations.max() == 3.0
    batches = bucket_by_length(dataset.durations, max_batch_seconds=6.0)
    assert sorted(i for b in batches for i in b) == list(range(len(manifest)))
    for batch in batches:
        assert len(batch) * max(dataset.durations[batch]) <= 6.0
    # neighbours in length share a batch: the longest utterances come first, together
    assert set(batches[0]) == {8, 9}
    batch = collate_evaluation([dataset[i] for i in batches[0]])
    assert batch["crops"].shape == (2, 3, RATE) and batch["waves"].shape == (2, 3 * RATE)
    reference = evaluation_inputs(manifest.path[8], 3, 1.0, 3.0)
    np.testing.assert_array_equal(batch["crops"][0].numpy(), reference.crops)
    assert batch["offsets"][0].tolist() == reference.offsets.tolist()
    assert bucket_by_length([10.0, 1.0], 5.0) == [[0], [1]]
    assert bucket_by_length([1.0] * 5, 100.0, max_batch_size=2) == [[0, 1], [2, 3], [4]]


def test_manifest_errors_name_the_problem(manifest):
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['num_frames'\]"):
        SpeakerDataset(manifest.drop(columns="num_frames"), CropSpec("start", 1.0))
    with pytest.raises(IndexError, match="outside dataset of 12"):
        SpeakerDataset(manifest, CropSpec("start", 1.0))[12]
