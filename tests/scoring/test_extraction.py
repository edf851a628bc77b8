"""Batched, bucketed extraction equals one-by-one extraction, and resumes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sv_kedro.audio.io import write_audio
from sv_kedro.corpus.shards import ShardError, write_webdataset_shards
from sv_kedro.models.factory import build_model
from sv_kedro.scoring.extraction import (
    CPU_BATCH_SECONDS,
    GPU_BATCH_SECONDS,
    ExtractionConfig,
    embed_rank_share,
    extract_embeddings,
    model_fingerprint,
    unique_crop_rows,
)
from sv_kedro.scoring.extraction_launch import split_extraction_options


@pytest.fixture
def manifest(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i, seconds in enumerate([0.6, 1.7, 0.9, 2.3, 1.1, 0.4]):
        path = tmp_path / f"spk{i % 2}" / f"utt{i}.wav"
        path.parent.mkdir(exist_ok=True)
        write_audio(path, 0.1 * rng.standard_normal(int(seconds * 16000)).astype(np.float32), 16000)
        rows.append({"utt_id": f"spk{i % 2}/utt{i}.wav", "path": str(path), "duration": seconds})
    return pd.DataFrame(rows)


@pytest.fixture
def model(tiny_ecapa_config):
    torch.manual_seed(0)
    return build_model(tiny_ecapa_config).eval()


def test_batched_extraction_equals_one_by_one(manifest, model):
    config = ExtractionConfig(n_crops=3, crop_seconds=0.5, max_batch_seconds=10.0, device="cpu")
    batched = extract_embeddings(model, manifest, config, progress=False)
    single_cfg = ExtractionConfig(n_crops=3, crop_seconds=0.5, max_batch_size=1, device="cpu")
    single = extract_embeddings(model, manifest, single_cfg, progress=False)
    assert batched.full.keys_ == manifest["utt_id"].tolist()
    np.testing.assert_allclose(batched.full.vectors, single.full.vectors, atol=1e-4)
    np.testing.assert_allclose(batched.crops.vectors, single.crops.vectors, atol=1e-4)
    # The full-utterance batch really held padded utterances of different lengths.
    assert batched.full.vectors.shape == (6, 16)


def test_crop_vector_is_mean_of_normalised_crop_embeddings(manifest, model):
    from sv_kedro.audio.crops import evaluation_inputs

    config = ExtractionConfig(n_crops=2, crop_seconds=0.5, device="cpu")
    result = extract_embeddings(model, manifest.head(2), config, progress=False)
    inputs = evaluation_inputs(manifest.path[1], n_crops=2, crop_seconds=0.5)
    crops = model.embed(torch.from_numpy(inputs.crops))
    expected = torch.nn.functional.normalize(crops, dim=-1).mean(0).numpy()
    np.testing.assert_allclose(result.crops[manifest.utt_id[1]], expected, atol=1e-5)


def test_interrupted_extraction_resumes_without_recomputing(manifest, model, tmp_path):
    config = ExtractionConfig(n_crops=0, max_batch_size=2, device="cpu")
    calls = {"n": 0}
    original = model.embed

    def failing_embed(waves, lengths=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return original(waves, lengths)

    model.embed = failing_embed
    with pytest.raises(KeyboardInterrupt):
        extract_embeddings(model, manifest, config, cache_dir=tmp_path / "cache", progress=False)
    assert calls["n"] == 3  # two batches of two finished before the interruption
    model.embed = original
    counted = {"n": 0}

    def counting_embed(waves, lengths=None):
        counted["n"] += 1
        return original(waves, lengths)

    model.embed = counting_embed
    resumed = extract_embeddings(
        model, manifest, config, cache_dir=tmp_path / "cache", progress=False
    )
    assert counted["n"] == 1  # only the third batch
    model.embed = original
    fresh = extract_embeddings(model, manifest, config, progress=False)
    np.testing.assert_allclose(resumed.full.vectors, fresh.full.vectors, atol=1e-6)


def test_empty_manifest_is_an_error(model):
    with pytest.raises(ValueError, match="empty"):
        extract_embeddings(model, pd.DataFrame(columns=["utt_id", "path", "duration"]))


def test_cache_fingerprint_sees_a_change_anywhere_in_the_weights(manifest):
    """Two weights swapped deep inside a tensor keep its sum and first bytes, and must
    still give another cache folder: resuming must not reuse another model's vectors."""
    config = ExtractionConfig(n_crops=0, device="cpu")
    bf16 = torch.nn.Linear(64, 64).to(torch.bfloat16)  # a dtype NumPy cannot hold
    weight = bf16.weight.data.view(-1)
    weight[-2:] = torch.tensor([0.5, 0.25])  # past the first 4 KiB of the tensor
    first = model_fingerprint(bf16, manifest, config)
    assert first == model_fingerprint(bf16, manifest, config)
    weight[-2:] = torch.tensor([0.25, 0.5])
    assert model_fingerprint(bf16, manifest, config) != first


def test_cache_fingerprint_ignores_where_batches_run_but_not_how_they_are_cut(manifest, model):
    config = ExtractionConfig(n_crops=2, max_batch_seconds=16.0, device="cpu")
    first = model_fingerprint(model, manifest, config)
    # Workers on other GPUs (or more loader processes) must write to the same cache...
    assert model_fingerprint(model, manifest, replace(config, device="cuda:3")) == first
    assert model_fingerprint(model, manifest, replace(config, num_workers=4)) == first
    # ...but other batches are other cache parts, and other crops other vectors.
    assert model_fingerprint(model, manifest, replace(config, max_batch_seconds=8.0)) != first
    assert model_fingerprint(model, manifest, replace(config, n_crops=3)) != first


def test_batch_budget_left_open_is_fixed_by_the_device_before_fingerprinting(manifest, model):
    """None means small batches on a CPU and large ones on a GPU; the fingerprint sees the
    budget actually used, so a CPU run never resumes from a GPU run's differently cut parts."""
    open_cpu = ExtractionConfig(n_crops=0, device="cpu")
    assert open_cpu.resolved().max_batch_seconds == CPU_BATCH_SECONDS
    assert replace(open_cpu, device="cuda:1").resolved().max_batch_seconds == GPU_BATCH_SECONDS
    assert replace(open_cpu, max_batch_seconds=7.0).resolved().max_batch_seconds == 7.0
    fixed_cpu = replace(open_cpu, max_batch_seconds=CPU_BATCH_SECONDS)
    assert model_fingerprint(model, manifest, open_cpu) == model_fingerprint(
        model, manifest, fixed_cpu
    )
    open_gpu = replace(open_cpu, device="cuda:1")
    assert model_fingerprint(model, manifest, open_gpu) != model_fingerprint(
        model, manifest, open_cpu
    )
    # The pipelines' options are resolved where the device is named, before any worker starts.
    config, _, _ = split_extraction_options({"n_crops": 0, "device": "cuda"})
    assert config.max_batch_seconds == GPU_BATCH_SECONDS


def test_a_rank_share_leaves_the_other_batches_to_the_other_ranks(manifest, model, tmp_path):
    config = ExtractionConfig(n_crops=2, crop_seconds=0.5, max_batch_size=1, device="cpu")
    assert embed_rank_share(model, manifest, config, tmp_path, rank=1, world_size=2) == 3
    with pytest.raises(RuntimeError, match="3 utterance\\(s\\) were not embedded"):
        extract_embeddings(model, manifest, config, tmp_path, rank=1, world_size=2)
    merged = extract_embeddings(model, manifest, config, tmp_path, rank=0, world_size=2)
    alone = extract_embeddings(model, manifest, config, progress=False)
    np.testing.assert_allclose(merged.full.vectors, alone.full.vectors, atol=1e-6)
    with pytest.raises(ValueError, match="give cache_dir"):
        embed_rank_share(model, manifest, config, None, rank=0, world_size=2)


def test_unique_crop_rows_keeps_one_crop_per_utterance_and_offset():
    offsets = torch.tensor([[0, 0, 0], [0, 3, 6], [0, 1, 1]])
    first, inverse = unique_crop_rows(offsets)
    flat = offsets.reshape(-1)
    rows = torch.arange(3).repeat_interleave(3)
    # Every crop reuses a crop of its own utterance with its own offset ...
    assert torch.equal(rows[first][inverse], rows)
    assert torch.equal(flat[first][inverse], flat)
    # ... and the first of them: row 0's three equal crops become one, row 2's two of three.
    assert first.tolist() == [0, 3, 4, 5, 6, 7]


def test_identical_crops_are_embedded_once_with_the_same_result(manifest, model):
    """Utterances no longer than a crop give ``n_crops`` equal wrap-padded crops: embedding
    one of them must give the vector that embedding and averaging all of them gives."""
    from sv_kedro.audio.crops import evaluation_inputs

    config = ExtractionConfig(n_crops=4, crop_seconds=1.0, device="cpu")
    rows_embedded = []
    original = model.embed

    def counting_embed(waves, lengths=None):
        rows_embedded.append(waves.shape[0])
        return original(waves, lengths)

    model.embed = counting_embed
    result = extract_embeddings(model, manifest, config, progress=False)
    model.embed = original
    # 6 full utterances; crops: one each for the 0.6 / 0.9 / 0.4 s clips and 4 each for the
    # 1.7 / 2.3 / 1.1 s clips (0.1 s of slack already spreads 4 distinct offsets).
    assert sum(rows_embedded) == 6 + 3 * 1 + 3 * 4
    for path, utt_id in zip(manifest.path, manifest.utt_id, strict=True):
        inputs = evaluation_inputs(path, n_crops=4, crop_seconds=1.0)
        every_crop = torch.nn.functional.normalize(
            original(torch.from_numpy(inputs.crops)), dim=-1
        ).mean(0)
        np.testing.assert_allclose(result.crops[utt_id], every_crop.numpy(), atol=1e-5)


def test_crop_forwards_stay_within_the_batch_budget(manifest, model):
    """``max_batch_seconds`` bounds crop forwards too: a batch of B utterances must not
    become one forward of B x n_crops crops."""
    roomy = ExtractionConfig(n_crops=4, crop_seconds=0.5, device="cpu")
    tight = ExtractionConfig(n_crops=4, crop_seconds=0.5, max_batch_seconds=1.2, device="cpu")
    crop_rows = []
    original = model.embed

    def recording_embed(waves, lengths=None):
        if lengths is None:  # crops come without lengths, full utterances with them
            crop_rows.append(waves.shape[0])
        return original(waves, lengths)

    expected = extract_embeddings(model, manifest, roomy, progress=False)
    model.embed = recording_embed
    result = extract_embeddings(model, manifest, tight, progress=False)
    model.embed = original
    assert max(crop_rows) == 2  # 1.2 s of budget holds two 0.5-s crops
    assert sum(crop_rows) == 4 * 5 + 1  # the 0.4-s clip's four crops are one
    np.testing.assert_allclose(result.crops.vectors, expected.crops.vectors, atol=1e-5)


def test_extraction_reads_shards_by_utt_id_with_the_files_gone(manifest, model, tmp_path):
    """data_engineering's shards hold the audio: extraction from them gives the files'
    embeddings with the files moved away, caches apart from the files' run, and resumes
    after the shard folder moved (its content, not its place, is fingerprinted)."""
    table = manifest.assign(speaker=[utt_id.split("/")[0] for utt_id in manifest.utt_id])
    write_webdataset_shards(table, tmp_path / "shards", utterances_per_shard=4, seed=0)
    config = ExtractionConfig(n_crops=2, crop_seconds=0.5, max_batch_seconds=4.0, device="cpu")
    cache = tmp_path / "cache"
    from_files = extract_embeddings(model, manifest, config, cache, progress=False)
    moved = [Path(path) for path in manifest.path]
    for path in moved:
        path.rename(path.with_suffix(".away"))
    sharded = replace(config, shard_dir=str(tmp_path / "shards"))
    from_shards = extract_embeddings(model, manifest, sharded, cache, progress=False)
    assert from_shards.full.keys_ == manifest["utt_id"].tolist()
    np.testing.assert_allclose(from_shards.full.vectors, from_files.full.vectors, atol=1e-6)
    np.testing.assert_allclose(from_shards.crops.vectors, from_files.crops.vectors, atol=1e-6)
    assert len(list(cache.iterdir())) == 2  # the files' run and the shards' run
    (tmp_path / "shards").rename(tmp_path / "elsewhere")
    forwards = []
    original = model.embed
    model.embed = lambda waves, lengths=None: forwards.append(1) or original(waves, lengths)
    again = extract_embeddings(
        model, manifest, replace(config, shard_dir=str(tmp_path / "elsewhere")), cache
    )
    model.embed = original
    assert forwards == [] and len(list(cache.iterdir())) == 2
    np.testing.assert_array_equal(again.full.vectors, from_shards.full.vectors)
    # A part of the shards' manifest (an AS-norm cohort) reads its own utterances.
    elsewhere = replace(sharded, shard_dir=str(tmp_path / "elsewhere"))
    part = extract_embeddings(model, manifest.iloc[[4, 1]], elsewhere, progress=False)
    np.testing.assert_allclose(part.full.vectors, from_files.full.vectors[[4, 1]], atol=1e-6)
    stranger = manifest.head(3).assign(utt_id=["a.wav", manifest.utt_id[1], "b.wav"])
    with pytest.raises(ShardError, match=r"do not hold 2 of the 3 .*'a\.wav', 'b\.wav'"):
        extract_embeddings(model, stranger, elsewhere)
    # As many utterances as the shards hold, but not theirs: the fingerprints say so.
    other = manifest.assign(path=[p + ".other" for p in manifest.path])
    with pytest.raises(ShardError, match="holds other utterances than the training manifest"):
        extract_embeddings(model, other, elsewhere)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_batch_size": 0}, r"max_batch_size must be an integer >= 1, got 0"),
        ({"max_batch_size": -4}, r"max_batch_size must be an integer >= 1, got -4"),
        ({"max_batch_size": "8"}, r"max_batch_size must be an integer >= 1, got '8'"),
        ({"n_crops": "abc"}, r"n_crops must be an integer >= 0, got 'abc'"),
        ({"n_crops": -1}, r"n_crops must be an integer >= 0, got -1"),
        ({"n_crops": True}, r"n_crops must be an integer >= 0, got True"),
        ({"num_workers": -1}, r"num_workers must be an integer >= 0, got -1"),
        ({"sample_rate": 0}, r"sample_rate must be an integer >= 1, got 0"),
        ({"sample_rate": 16000.0}, r"sample_rate must be an integer >= 1, got 16000\.0"),
        ({"crop_seconds": 0}, r"crop_seconds must be a number of seconds > 0, got 0"),
        ({"crop_seconds": -2}, r"crop_seconds must be a number of seconds > 0, got -2"),
        ({"max_seconds": 0}, r"max_seconds must be a number of seconds > 0 or null, got 0"),
        ({"max_seconds": 0.01}, r"max_seconds \(0\.01\) is shorter than crop_seconds \(4\.0\)"),
        ({"max_batch_seconds": 0}, r"max_batch_seconds must be .* > 0 or null, got 0"),
        ({"device": "gpu"}, r"extraction\.device 'gpu' is not a torch device"),
        ({"device": 0}, r"device must be a string .*got 0"),
    ],
)
def test_config_refuses_bad_values_naming_the_field(settings, message):
    with pytest.raises(ValueError, match=message):
        ExtractionConfig(**settings)


def test_a_short_cap_is_fine_without_crops():
    assert ExtractionConfig(n_crops=0, max_seconds=0.5).max_seconds == 0.5


def test_a_device_that_is_not_here_is_refused_when_used(manifest, model, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # Naming it is fine (a launcher need not have its workers' GPUs)...
    config = ExtractionConfig(n_crops=0, device="cuda")
    assert config.resolved().max_batch_seconds == GPU_BATCH_SECONDS
    # ...embedding on it here is not.
    with pytest.raises(ValueError, match=r"extraction\.device 'cuda' but CUDA is not available"):
        extract_embeddings(model, manifest, config, progress=False)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("exact_fp32", [True, False], ids=["fp32", "tf32-default"])
def test_batched_extraction_on_cuda_equals_one_by_one_and_cpu(manifest, model, exact_fp32):
    # cuDNN convolutions default to TF32 (10-bit mantissa) on Ampere and later: batched and
    # single forwards then agree only to TF32 precision, not fp32's.
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = not exact_fp32
    try:
        batched_cfg = ExtractionConfig(
            n_crops=3, crop_seconds=0.5, max_batch_seconds=10.0, device="cuda"
        )
        batched = extract_embeddings(model, manifest, batched_cfg, progress=False)
        single_cfg = replace(batched_cfg, max_batch_seconds=None, max_batch_size=1)
        single = extract_embeddings(model, manifest, single_cfg, progress=False)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous
    on_cpu = extract_embeddings(
        model.cpu(), manifest, replace(batched_cfg, device="cpu"), progress=False
    )
    pairs = [
        (batched.full.vectors, single.full.vectors),
        (batched.crops.vectors, single.crops.vectors),
        (batched.full.vectors, on_cpu.full.vectors),
        (batched.crops.vectors, on_cpu.crops.vectors),
    ]
    for got, expected in pairs:
        if exact_fp32:
            np.testing.assert_allclose(got, expected, atol=1e-4)
        else:
            cosines = (got * expected).sum(1) / np.linalg.norm(got, axis=1)
            cosines /= np.linalg.norm(expected, axis=1)
            assert cosines.min() > 0.9999, cosines
