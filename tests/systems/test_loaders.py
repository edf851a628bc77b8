"""Training loader factories: the manifest's balanced batches and the WebDataset shard stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from sv_kedro.corpus.shards import ShardError, write_webdataset_shards
from sv_kedro.systems.loaders import build_loader, checked_loader_config
from sv_kedro.training.task import LoaderRequest

RATE = 16000


@pytest.fixture(scope="module")
def training_set(tmp_path_factory) -> tuple[Path, Path, pd.DataFrame]:
    """24 utterances of 6 speakers, their manifest (parquet) and 6 shards of 4."""
    root = tmp_path_factory.mktemp("training_set")
    rng = np.random.default_rng(1)
    rows = []
    for u in range(24):
        speaker = f"spk{u % 6}"
        path = root / "raw" / speaker / f"utt{u:02d}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        frames = int(rng.integers(4000, 8000))
        sf.write(path, (0.2 * rng.standard_normal(frames)).clip(-1, 1), RATE)
        rows.append(
            {
                "utt_id": f"{speaker}/utt{u:02d}.flac",
                "speaker": speaker,
                "path": str(path),
                "num_frames": frames,
                "sample_rate": RATE,
                "speaker_index": u % 6,
            }
        )
    manifest = pd.DataFrame(rows)
    manifest_path = root / "train.parquet"
    manifest.to_parquet(manifest_path, index=False)
    write_webdataset_shards(manifest, root / "shards", utterances_per_shard=4, seed=0)
    return manifest_path, root / "shards", manifest


def _config(training_set, **extra) -> dict:
    manifest_path, shards, _ = training_set
    config = {
        "manifest_path": str(manifest_path),
        "batch_size": 3,
        "crop_seconds": 0.2,
        "seed": 5,
        "shard_dir": str(shards),
        "shuffle_buffer": 4,
    }
    return {**config, **extra}


def test_shard_batches_carry_the_manifests_labels_and_rows(training_set):
    manifest = training_set[2]
    factory = build_loader(_config(training_set))
    assert factory.num_classes == 6
    loader = factory(LoaderRequest(epoch=2, start_batch=0, rank=0, world_size=1, seed=5))
    batches = list(loader)
    assert len(batches) == len(loader) == 8  # 24 utterances in full batches of 3
    rows = manifest.set_index("utt_id")
    seen = [u for b in batches for u in b["utt_ids"]]
    assert sorted(seen) == sorted(manifest["utt_id"])
    for batch in batches:
        assert batch["waves"].shape == (3, int(0.2 * RATE))
        assert batch["labels"].tolist() == rows.loc[batch["utt_ids"], "speaker_index"].tolist()
        row_numbers = [manifest.index[manifest.utt_id == u][0] for u in batch["utt_ids"]]
        assert batch["indices"].tolist() == row_numbers


def test_ranks_share_an_epoch_and_a_resumed_call_continues_it(training_set):
    factory = build_loader(_config(training_set, num_workers=2))
    epochs = []
    for rank in range(2):
        request = LoaderRequest(epoch=1, start_batch=0, rank=rank, world_size=2, seed=5)
        loader = factory(request)
        epochs.append([b["utt_ids"] for b in loader])
        assert len(epochs[-1]) == len(loader)
    assert not {u for b in epochs[0] for u in b} & {u for b in epochs[1] for u in b}
    # 3 shards of 4 per rank; its workers read 2 and 1 of them: 2 + 1 full batches.
    assert len(epochs[0]) == len(epochs[1]) == 3
    for start in (1, 2, 3):
        resumed = factory(LoaderRequest(epoch=1, start_batch=start, rank=0, world_size=2, seed=5))
        assert len(resumed) == 3 - start
        assert [b["utt_ids"] for b in resumed] == epochs[0][start:]


def test_shard_settings_that_cannot_work_are_refused(training_set):
    for key in ("pairs", "utts_per_speaker_cap"):
        with pytest.raises(ValueError, match=rf"data\.{key} .* needs the manifest's random access"):
            build_loader(_config(training_set, **{key: 2}))
    with pytest.raises(ValueError, match=r"shards are 16000 Hz, data\.sample_rate is 8000"):
        build_loader(_config(training_set, sample_rate=8000))
    manifest_path, _, manifest = training_set
    fewer = manifest_path.with_name("fewer.parquet")
    manifest.iloc[:20].to_parquet(fewer, index=False)
    with pytest.raises(ShardError, match="hold 24 utterances, the training manifest 20"):
        build_loader(_config(training_set, manifest_path=str(fewer)))


def test_pseudo_labels_of_the_same_utterances_read_the_same_shards(training_set):
    """ssl_pseudo_labeling relabels the manifest each round; the shards written from the
    corpus's speakers serve every round, and batches carry the round's labels."""
    manifest_path, _, manifest = training_set
    pseudo = manifest.assign(
        speaker_index=[(3 * k) % 4 for k in range(len(manifest))],
        speaker=[f"pseudo{(3 * k) % 4:05d}" for k in range(len(manifest))],
    )
    pseudo_path = manifest_path.with_name("pseudo.parquet")
    pseudo.to_parquet(pseudo_path, index=False)
    factory = build_loader(_config(training_set, manifest_path=str(pseudo_path)))
    assert factory.num_classes == 4
    labels = pseudo.set_index("utt_id")["speaker_index"]
    batches = list(factory(LoaderRequest(epoch=0, start_batch=0, rank=0, world_size=1, seed=5)))
    assert len(batches) == 8
    for batch in batches:
        assert batch["labels"].tolist() == labels.loc[batch["utt_ids"]].tolist()
    # The true speakers would have given other labels for most items.
    truth = manifest.set_index("utt_id")["speaker_index"]
    seen = [u for b in batches for u in b["utt_ids"]]
    assert (labels.loc[seen].to_numpy() != truth.loc[seen].to_numpy()).sum() > len(seen) // 2


def test_data_typos_and_values_that_are_no_numbers_are_named(training_set):
    with pytest.raises(
        ValueError, match=r"data: unknown key\(s\) \['batchsize'\]; allowed \['batch_size'"
    ):
        build_loader(_config(training_set, batchsize=8))
    with pytest.raises(ValueError, match=r"data\.batch_size must be an integer, got 'abc'"):
        build_loader(_config(training_set, batch_size="abc"))
    with pytest.raises(ValueError, match=r"data\.crop_seconds must be a number, got 'long'"):
        build_loader(_config(training_set, crop_seconds="long"))
    with pytest.raises(ValueError, match=r"data: missing key\(s\) \['crop_seconds'\]"):
        build_loader(_config(training_set, crop_seconds=None))
    augmentation = {"weights": {"reverb": 1}, "simulated_rirs": "many"}
    with pytest.raises(ValueError, match=r"data\.augmentation\.simulated_rirs must be an integer"):
        build_loader(_config(training_set, augmentation=augmentation))
    # Out of range: named here rather than as CropSpec.seconds or a sampler's error.
    with pytest.raises(ValueError, match=r"data\.crop_seconds must be > 0, got -1.0"):
        build_loader(_config(training_set, crop_seconds=-1))
    with pytest.raises(ValueError, match=r"data\.batch_size must be >= 1, got 0"):
        build_loader(_config(training_set, batch_size=0))
    with pytest.raises(ValueError, match=r"data\.num_workers must be >= 0, got -2"):
        build_loader(_config(training_set, num_workers=-2))


def test_shipped_data_sections_pass_the_key_check(kedro_project: Path):
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from sv_kedro.pipelines.ssl_pseudo_labeling.nodes import deep_merge
    from sv_kedro.pipelines.supervised_training import SYSTEMS

    bootstrap_project(kedro_project)
    for env in (None, "voxceleb"):
        with KedroSession.create(project_path=kedro_project, env=env) as session:
            params = session.load_context().params
        ssl = params["ssl_pseudo_labeling"]
        sections = [params[system]["data"] for system in SYSTEMS] + [
            ssl["finetune"]["data"],
            deep_merge(ssl["finetune"], ssl["lmft"])["data"],
        ]
        for data in sections:
            checked = checked_loader_config(data)
            assert isinstance(checked["batch_size"], int) and checked["crop_seconds"] > 0


def test_a_dominant_speaker_left_out_of_batches_is_reported_once(tmp_path, caplog):
    """Pseudo-labels with one large cluster: the epoch leaves most of it out; say so."""
    rng = np.random.default_rng(0)
    rows = []
    for u, speaker in enumerate(["big"] * 12 + [f"spk{k}" for k in range(4) for _ in range(2)]):
        path = tmp_path / f"utt{u:02d}.wav"
        sf.write(path, 0.1 * rng.standard_normal(4000), RATE)
        rows.append({"utt_id": path.name, "speaker": speaker, "path": str(path)})
    manifest = pd.DataFrame(rows)
    manifest["num_frames"], manifest["sample_rate"] = 4000, RATE
    manifest["speaker_index"] = manifest["speaker"].astype("category").cat.codes
    manifest.to_parquet(tmp_path / "train.parquet", index=False)
    config = {"manifest_path": str(tmp_path / "train.parquet"), "batch_size": 2}
    factory = build_loader({**config, "crop_seconds": 0.1})
    used = []
    with caplog.at_level("WARNING", logger="sv_kedro.systems.loaders"):
        for epoch in range(2):
            loader = factory(
                LoaderRequest(epoch=epoch, start_batch=0, rank=0, world_size=1, seed=0)
            )
            used.append(sum(len(batch["utt_ids"]) for batch in loader))
    warnings = [r.getMessage() for r in caplog.records if "leave out" in r.getMessage()]
    assert len(warnings) == 1
    assert f"leave out {20 - used[0]} of 20 utterances" in warnings[0]
    assert "big (12)" in warnings[0] and "data.utts_per_speaker_cap" in warnings[0]

    caplog.clear()
    capped = build_loader({**config, "crop_seconds": 0.1, "utts_per_speaker_cap": 2})
    with caplog.at_level("WARNING", logger="sv_kedro.systems.loaders"):
        capped(LoaderRequest(epoch=0, start_batch=0, rank=0, world_size=1, seed=0))
    assert not [r for r in caplog.records if "leave out" in r.getMessage()]
