"""DINO multi-crop items: from files and from WebDataset shards, and the DINO loader on shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from sv_kedro.corpus.shards import ShardError, write_webdataset_shards
from sv_kedro.systems.dino import build_dino_loader
from sv_kedro.training.multicrop_data import (
    MultiCropDataset,
    MultiCropShardDataset,
    MultiCropViews,
)
from sv_kedro.training.task import LoaderRequest

RATE = 16000


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory) -> tuple[Path, Path, pd.DataFrame]:
    """18 utterances of 0.3-1.2 s as 16-bit wav, their manifest and 6 shards of 3."""
    root = tmp_path_factory.mktemp("unlabeled")
    rng = np.random.default_rng(4)
    rows = []
    for u in range(18):
        frames = int(rng.integers(RATE * 3 // 10, RATE * 12 // 10))
        path = root / "raw" / f"utt{u:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, (0.2 * rng.standard_normal(frames)).clip(-1, 1), RATE, subtype="PCM_16")
        rows.append(
            {
                "utt_id": f"utt{u:02d}",
                "speaker": f"spk{u % 3}",
                "path": str(path),
                "num_frames": frames,
                "sample_rate": RATE,
            }
        )
    manifest = pd.DataFrame(rows)
    write_webdataset_shards(manifest, root / "shards", utterances_per_shard=3, seed=2)
    manifest_path = root / "unlabeled.parquet"
    manifest.drop(columns="speaker").to_parquet(manifest_path, index=False)
    return manifest_path, root / "shards", manifest


def _config(unlabeled, **extra) -> dict:
    manifest_path, shards, _ = unlabeled
    return {
        "manifest_path": str(manifest_path),
        "batch_size": 2,
        "global_seconds": 0.5,
        "local_seconds": 0.2,
        "global_crops": 2,
        "local_crops": 2,
        "max_read_seconds": 0.8,  # shorter than some utterances: a random window is read
        "seed": 7,
        "shard_dir": str(shards),
        "shuffle_buffer": 4,
        **extra,
    }


def test_views_need_two_crops_with_a_global_one():
    with pytest.raises(ValueError, match="2 crops"):
        MultiCropViews(0.5, 0.25, 1, 0)
    with pytest.raises(ValueError, match=">= 1 global"):
        MultiCropViews(0.5, 0.25, 0, 3)


def test_shard_items_are_the_file_items_of_the_same_rows(unlabeled):
    """Draws are seeded by the manifest row, so the stream gives each utterance the crops
    its file gives, only in another order (FLAC holds the wav's 16-bit samples exactly)."""
    manifest_path, shards, _ = unlabeled
    manifest = pd.read_parquet(manifest_path)
    views = MultiCropViews(0.5, 0.2, 2, 3, max_read_seconds=0.8)
    files = MultiCropDataset(manifest, 0.5, 0.2, 2, 3, max_read_seconds=0.8, seed=7)
    files.set_epoch(3)
    stream = MultiCropShardDataset(
        sorted(str(p) for p in shards.glob("shard-*.tar")),
        views,
        {utt: row for row, utt in enumerate(manifest["utt_id"])},
        seed=7,
        num_replicas=1,
        rank=0,
    )
    stream.set_epoch(3)
    items = list(stream)
    assert sorted(item["index"] for item in items) == list(range(len(manifest)))
    for item in items:
        expected = files[item["index"]]
        assert item["global"].shape == (2, 8000) and item["local"].shape == (3, 3200)
        np.testing.assert_array_equal(item["global"], expected["global"])
        np.testing.assert_array_equal(item["local"], expected["local"])
    stream.set_epoch(4)
    moved = {item["index"]: item["global"] for item in stream}
    assert any(not np.array_equal(moved[i["index"]], i["global"]) for i in items)


def test_a_sample_outside_the_manifest_is_named(unlabeled):
    _, shards, manifest = unlabeled
    rows = {utt: row for row, utt in enumerate(manifest["utt_id"]) if utt != "utt05"}
    stream = MultiCropShardDataset(
        sorted(str(p) for p in shards.glob("shard-*.tar")),
        MultiCropViews(0.5, 0.2, 2, 0),
        rows,
        num_replicas=1,
        rank=0,
    )
    with pytest.raises(ShardError, match=r"shard-\d+\.tar: 'utt05' is not in the training"):
        list(stream)


def test_dino_loader_streams_an_epoch_from_shards_and_resumes_it(unlabeled):
    factory = build_dino_loader(_config(unlabeled, num_workers=2))
    request = LoaderRequest(epoch=1, start_batch=0, rank=0, world_size=1, seed=7)
    loader = factory(request)
    batches = list(loader)
    # 6 shards of 3 on 2 workers: 9 items each, 4 full batches of 2 each.
    assert len(batches) == len(loader) == 8
    indices = [int(i) for batch in batches for i in batch["indices"]]
    assert len(set(indices)) == len(indices) == 16
    assert batches[0]["global"].shape == (2, 2, 8000)
    assert batches[0]["local"].shape == (2, 2, 3200)
    for start in (3, 5):
        resumed = factory(LoaderRequest(epoch=1, start_batch=start, rank=0, world_size=1, seed=7))
        assert len(resumed) == 8 - start
        assert [b["indices"].tolist() for b in resumed] == [
            b["indices"].tolist() for b in batches[start:]
        ]


def test_dino_loader_refuses_shards_of_other_audio(unlabeled):
    manifest_path, _, manifest = unlabeled
    other = manifest_path.with_name("other.parquet")
    manifest.drop(columns="speaker").iloc[:-1].to_parquet(other, index=False)
    with pytest.raises(ShardError, match="hold 18 utterances, the training manifest 17"):
        build_dino_loader(_config(unlabeled, manifest_path=str(other)))
    with pytest.raises(ValueError, match=r"shards are 16000 Hz, dino data\.sample_rate is 8000"):
        build_dino_loader(_config(unlabeled, sample_rate=8000))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['shard_folder'\]"):
        build_dino_loader(_config(unlabeled, shard_folder="x"))
