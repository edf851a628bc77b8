"""supervised_training: every system trains for real in one Kedro session on a tiny corpus.

The session runs ``data_engineering`` (a tiny generated corpus) and then the whole
``supervised_training`` pipeline (seven systems, their evaluation and the comparison) with
small ``--params`` overrides. Each system must lower its loss and beat the same model
untrained on the validation pairs by a clear margin.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from sv_kedro.api import model_from_checkpoint
from sv_kedro.models.factory import build_model
from sv_kedro.pipelines.supervised_training import SYSTEMS, create_pipeline
from sv_kedro.pipelines.supervised_training.nodes import (
    find_learning_rate,
    resolve_model_config,
    resolve_training_config,
)
from sv_kedro.systems.fingerprint import run_fingerprint
from sv_kedro.systems.validation import validation_metrics
from sv_kedro.training.checkpoint import load_checkpoint

TINY_CORPUS: dict[str, Any] = {
    "data_engineering": {
        "synthetic": {
            "corpus": {
                "n_speakers": 10,
                "utterances_per_speaker": 10,
                "min_duration_s": 1.2,
                "max_duration_s": 1.8,
            }
        },
        "split": {"test_speakers": 2, "validation_ratio": 0.4},
        "trials": {"targets_per_utt": 3, "nontargets_per_utt": 6},
        "validation_pairs": {"n_pairs": 48},
    }
}
TINY_EVALUATION: dict[str, Any] = {
    "evaluation": {
        "extraction": {"n_crops": 2, "crop_seconds": 1.0, "cache_dir": None},
        "scoring": {"cohort_utts_per_speaker": 4, "lda_dim": 6},
    }
}
# Steps per system on 8 speakers (batches of 8 utterances, 1 s crops).
TINY_STEPS = {
    "wav2vec2_sv_ce": 60,
    "wav2vec2_sv_aam": 80,
    "wav2vec2_sv_bce": 80,
    "wav2vec2_sv_ctc": 80,
    "xvector": 60,
    "ecapa_tdnn": 100,
    "wavlm_mhfa_sv": 80,
}
CLEAR_MARGIN = 0.1  # absolute EER


def tiny_system_params(system: str) -> dict[str, Any]:
    steps = TINY_STEPS[system]
    return {
        "training": {"max_steps": steps, "validate_every_steps": steps, "log_every": 10},
        "data": {"batch_size": 8, "crop_seconds": 1.0},
    }


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models on a shared 2-core box: one intra-op thread is several times faster.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_project(project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy whose data_engineering outputs (a tiny corpus) are ready."""
    project = tmp_path_factory.mktemp("supervised") / "project"
    project.mkdir()
    shutil.copytree(project_root / "conf", project / "conf")
    shutil.copy(project_root / "pyproject.toml", project / "pyproject.toml")
    (project / "src").mkdir()
    run_session(project, ["data_engineering"], TINY_CORPUS)
    return project


def run_session(project: Path, pipelines: list[str], params: dict[str, Any], **kwargs: Any) -> Any:
    previous = Path.cwd()
    try:
        os.chdir(project)
        bootstrap_project(project)
        with KedroSession.create(project_path=project, runtime_params=params) as session:
            session.run(pipeline_names=pipelines, **kwargs)
    finally:
        os.chdir(previous)


def all_pairs(manifest: pd.DataFrame) -> pd.DataFrame:
    """Every pair of ``manifest``'s utterances as a trial list."""
    ids = manifest["utt_id"].to_numpy()
    speakers = manifest["speaker"].to_numpy()
    first, second = np.triu_indices(len(ids), k=1)
    labels = pd.array((speakers[first] == speakers[second]).astype(np.int8), dtype="Int8")
    return pd.DataFrame({"label": labels, "enrol": ids[first], "test": ids[second]})


def test_pipeline_structure_reads_as_sentences():
    pipe = create_pipeline()
    names = {n.name for n in pipe.nodes}
    for system in SYSTEMS:
        assert f"{system}.train_speaker_model" in names
        assert f"{system}.find_learning_rate" in names
        assert f"{system}.score_trial_sets" in names
    assert "compare_systems_in_supervised_comparison" in names
    outputs = pipe.all_outputs()
    assert {"ecapa_tdnn.checkpoint", "ecapa_tdnn.training_metrics"} <= outputs
    assert "supervised_comparison_table" in outputs
    one = pipe.only_nodes_with_namespaces(["ecapa_tdnn"])
    assert {n.namespace.split(".")[0] for n in one.nodes} == {"ecapa_tdnn"}


def test_paper_override_spellings_are_understood():
    model = resolve_model_config(
        {
            "architecture": "ssl",
            "encoder": {"kind": "wav2vec2"},
            "layerdrop": 0.0,
            "completely_freeze_feature_extractor": False,
            "pooling": "first+cls",
        }
    )
    assert model["encoder"] == {
        "kind": "wav2vec2",
        "layerdrop": 0.0,
        "completely_freeze_feature_extractor": False,
    }
    assert model["pooling"] == "first+cls" and "layerdrop" not in model
    training = resolve_training_config({"max_steps": 5, "schedule": "tri_stage"})
    assert training["schedule"] == {"kind": "tri_stage"}
    assert training["encoder_prefix"] == "frontend."
    with pytest.raises(ValueError, match="unknown key"):
        resolve_training_config({"max_steps": 5, "learning_rate": 1.0})
    manifest = pd.DataFrame({"utt_id": ["a", "b"], "speaker_index": [0, 1]})
    settings = {"model": model, "loss": {"name": "ce"}, "training": training}
    first = run_fingerprint(manifest, {**settings, "data": {"batch_size": 2}})
    again = run_fingerprint(manifest, {**settings, "data": {"batch_size": 2}})
    other = run_fingerprint(manifest, {**settings, "data": {"batch_size": 4}})
    assert first == again != other


def test_model_run_and_lr_finder_values_fail_naming_the_key_before_training():
    with pytest.raises(ValueError, match=r"model\.ecapa\.channels must be an integer, got 'abc'"):
        resolve_model_config({"architecture": "ecapa_tdnn", "ecapa": {"channels": "abc"}})
    with pytest.raises(ValueError, match=r"model\.encoder"):
        resolve_model_config({"architecture": "ssl", "encoder": {"kind": "wav2vec2", "x": 1}})
    run = {"work_dir": "unused", "resume": "nope"}
    lr_finder = {"enabled": True}
    with pytest.raises(ValueError, match=r"run\.resume must be true or false, got 'nope'"):
        find_learning_rate(pd.DataFrame(), {}, {}, {}, {}, run, lr_finder)
    lr_finder = {"enabled": True, "num_steps": "abc"}
    with pytest.raises(ValueError, match=r"lr_finder\.num_steps must be an integer, got 'abc'"):
        find_learning_rate(pd.DataFrame(), {}, {}, {}, {}, {"work_dir": "unused"}, lr_finder)
    with pytest.raises(ValueError, match=r"lr_finder\.enabled must be true or false"):
        find_learning_rate(
            pd.DataFrame(), {}, {}, {}, {}, {"work_dir": "unused"}, {"enabled": "no"}
        )


@pytest.fixture(scope="module")
def trained_project(tiny_project: Path) -> Path:
    """``tiny_project`` after the whole supervised_training pipeline (all seven systems)."""
    params: dict[str, Any] = {system: tiny_system_params(system) for system in SYSTEMS}
    # Two overrides a user would give, for real: paper spellings on the command line.
    params["wav2vec2_sv_ce"]["model"] = {"layerdrop": 0.0}
    params["wav2vec2_sv_ce"]["training"]["schedule"] = {"kind": "tri_stage"}
    # The LR range test, switched on by its parameter for one system.
    params["xvector"]["lr_finder"] = {"enabled": True, "num_steps": 12, "max_lr": 0.1}
    params.update(TINY_EVALUATION)
    run_session(tiny_project, ["supervised_training"], params)
    return tiny_project


@pytest.mark.slow
def test_every_system_is_trained_evaluated_and_compared(trained_project: Path):
    data = trained_project / "data"
    comparison = pd.read_csv(data / "08_reporting/supervised_comparison.csv")
    assert set(comparison["system"]) == set(SYSTEMS)
    assert np.isfinite(comparison["eer_percent"]).all()
    assert (data / "08_reporting/supervised_comparison.md").read_text().count("|") > 20
    bce_backends = set(comparison[comparison.system == "wav2vec2_sv_bce"]["backend"])
    assert "pair" in bce_backends
    finder = json.loads((data / "08_reporting/xvector/lr_finder.json").read_text())
    assert finder["enabled"] and 1e-6 <= finder["suggested_lr"] <= 0.1
    assert len(finder["curve"]["lr"]) == finder["steps"] >= 3
    assert (data / "08_reporting/xvector/lr_finder.png").stat().st_size > 1000
    assert not json.loads((data / "08_reporting/ecapa_tdnn/lr_finder.json").read_text())["enabled"]
    # The overrides reached the model.
    ce = load_checkpoint(data / "06_models/wav2vec2_sv_ce/checkpoint.pt")
    assert ce["model_config"]["encoder"]["hf_config"]["layerdrop"] == 0.0


def untrained_and_trained_eer(project: Path, system: str) -> tuple[float, float]:
    """Validation EER over every pair of validation utterances: fresh weights, then trained."""
    data = project / "data"
    validation = pd.read_parquet(data / "05_model_input/validation_manifest.parquet")
    pairs = all_pairs(validation)  # 32 utterances of 8 training speakers: 496 trials
    checkpoint = load_checkpoint(data / f"06_models/{system}/checkpoint.pt")
    trained = validation_metrics(model_from_checkpoint(checkpoint), validation, pairs)["eer"]
    torch.manual_seed(0)
    untrained_model = build_model(checkpoint["model_config"]).eval()
    untrained = validation_metrics(untrained_model, validation, pairs)["eer"]
    return untrained, trained


@pytest.mark.slow
@pytest.mark.parametrize("system", SYSTEMS)
def test_system_loss_falls_and_it_beats_its_untrained_self(trained_project: Path, system: str):
    metrics = pd.read_csv(trained_project / f"data/08_reporting/{system}/training_metrics.csv")
    train_rows = metrics[metrics["kind"] == "train"]
    assert train_rows["loss"].iloc[-1] < train_rows["loss"].iloc[0]
    untrained, trained = untrained_and_trained_eer(trained_project, system)
    assert trained <= untrained - CLEAR_MARGIN, (untrained, trained)


@pytest.mark.slow
def test_bce_learns_from_a_pretrained_encoder(
    trained_project: Path, tmp_path: Path, project_root: Path
):
    """The paper fine-tunes the paired model from pre-trained wav2vec2: here a local
    ``save_pretrained`` folder (the CE system's encoder stands in for wav2vec2-base)."""
    from kedro.config import OmegaConfigLoader

    from sv_kedro.pipelines.supervised_training.nodes import train_speaker_model
    from sv_kedro.settings import CONFIG_LOADER_ARGS

    data = trained_project / "data"
    ce = model_from_checkpoint(load_checkpoint(data / "06_models/wav2vec2_sv_ce/checkpoint.pt"))
    ce.frontend.model.save_pretrained(tmp_path / "pretrained_wav2vec2")
    loader = OmegaConfigLoader(str(project_root / "conf"), **CONFIG_LOADER_ARGS)
    bce = loader["parameters"]["wav2vec2_sv_bce"]
    bce["model"]["encoder"]["pretrained"] = str(tmp_path / "pretrained_wav2vec2")
    bce["model"]["paired"] = {"head": "cls"}  # the paper's head, which base swaps out
    bce["training"].update(max_steps=120, validate_every_steps=120, lr=5.0e-4, head_lr=5.0e-3)
    bce["data"].update(batch_size=16, crop_seconds=1.0)
    bce["run"]["work_dir"] = str(tmp_path / "runs")
    manifests = {
        name: pd.read_parquet(data / f"05_model_input/{name}_manifest.parquet")
        for name in ("train", "validation")
    }
    pairs = all_pairs(manifests["validation"])
    checkpoint, _ = train_speaker_model(
        manifests["train"],
        manifests["validation"],
        pairs,
        bce["model"],
        bce["loss"],
        bce["training"],
        bce["data"],
        bce["run"],
        bce["distributed"],
        {"enabled": False},
    )
    trained = validation_metrics(model_from_checkpoint(checkpoint), manifests["validation"], pairs)
    torch.manual_seed(0)
    untrained = validation_metrics(
        build_model(checkpoint["model_config"]).eval(), manifests["validation"], pairs
    )
    # A smaller margin than the other systems': 120 steps from an encoder that itself saw
    # only 60 (measured 0.50 -> 0.39 here; 0.51 -> 0.34 on the base corpus).
    assert trained["eer"] <= untrained["eer"] - 0.05, (untrained, trained)


TINY_HF = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [16, 32],
    "conv_kernel": [10, 8],
    "conv_stride": [5, 64],
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
    "feat_extract_norm": "group",
}


def voxceleb_shaped_manifest(root: Path, speakers: int = 70) -> pd.DataFrame:
    """``vox1_dev/idNNNNN/<video>/0000k.wav`` (3.2 s of noise each), scanned like VoxCeleb."""
    import soundfile as sf

    from sv_kedro.corpus.voxceleb import prepare_voxceleb

    rng = np.random.default_rng(0)
    for speaker in range(speakers):
        for utt in range(2):
            path = root / "vox1_dev" / f"id1{speaker:04d}" / f"video{utt % 2}" / f"0000{utt}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, (0.1 * rng.standard_normal(51200)).astype(np.float32), 16000)
    manifest, _ = prepare_voxceleb(
        root, root / "extract", root / "converted", parts=["vox1_dev"], workers=0, progress=False
    )
    codes = {spk: i for i, spk in enumerate(sorted(manifest["speaker"].unique()))}
    return manifest.assign(speaker_index=manifest["speaker"].map(codes))


def test_voxceleb_conf_builds_every_system_offline(
    project_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from kedro.config import OmegaConfigLoader
    from transformers import Wav2Vec2Config, Wav2Vec2Model, WavLMConfig, WavLMModel

    from sv_kedro.pipelines.supervised_training.nodes import check_training_setup
    from sv_kedro.settings import CONFIG_LOADER_ARGS

    def voxceleb_params() -> dict[str, Any]:
        loader = OmegaConfigLoader(str(project_root / "conf"), env="voxceleb", **CONFIG_LOADER_ARGS)
        return loader["parameters"]

    monkeypatch.delenv("WAV2VEC2_BASE", raising=False)
    monkeypatch.delenv("WAVLM_BASE_PLUS", raising=False)
    paper = voxceleb_params()
    aam = paper["wav2vec2_sv_aam"]
    assert aam["model"]["encoder"]["pretrained"] == "facebook/wav2vec2-base"
    assert paper["wavlm_mhfa_sv"]["model"]["encoder"]["pretrained"] == "microsoft/wavlm-base-plus"
    assert aam["model"]["encoder"]["config_overrides"] is None  # no tiny shape left
    assert (aam["training"]["max_steps"], aam["training"]["precision"]) == (100000, "fp16")
    assert aam["training"]["validate_every_steps"] == 5000
    assert (aam["data"]["batch_size"], aam["data"]["crop_seconds"]) == (66, 3.0)
    assert paper["wav2vec2_sv_bce"]["data"]["batch_size"] == 32
    lrs = {system: paper[system]["training"]["lr"] for system in SYSTEMS}
    assert lrs == {
        "wav2vec2_sv_ce": 9e-5,
        "wav2vec2_sv_aam": 5e-5,
        "wav2vec2_sv_bce": 3e-5,
        "wav2vec2_sv_ctc": 1e-5,
        "xvector": 4e-4,
        "ecapa_tdnn": 1e-3,
        "wavlm_mhfa_sv": 5e-5,
    }
    # No downloads: local tiny save_pretrained folders stand in for the hub models.
    for kind, config_class, model_class, extra in (
        ("wav2vec2", Wav2Vec2Config, Wav2Vec2Model, {}),
        ("wavlm", WavLMConfig, WavLMModel, {"num_buckets": 32, "max_bucket_distance": 64}),
    ):
        model_class(config_class(**TINY_HF, **extra)).save_pretrained(tmp_path / kind)
    monkeypatch.setenv("WAV2VEC2_BASE", str(tmp_path / "wav2vec2"))
    monkeypatch.setenv("WAVLM_BASE_PLUS", str(tmp_path / "wavlm"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params = voxceleb_params()
    manifest = voxceleb_shaped_manifest(tmp_path / "voxceleb")
    for system in SYSTEMS:
        p = params[system]
        report = check_training_setup(
            manifest, p["model"], p["loss"], p["training"], p["data"], tmp_path / system, 2
        )
        expected_batch = 32 if system == "wav2vec2_sv_bce" else 66
        assert report["batch_size"] == expected_batch, (system, report)
        assert report["trainable_parameters"] > 0 and np.isfinite(report["first_loss"])
        if system.startswith("wav2vec2") or system == "wavlm_mhfa_sv":
            # the frozen CNN of the paper: encoder CNN parameters are not trainable
            assert report["trainable_parameters"] < report["parameters"], system


@pytest.mark.slow
def test_pooling_sweep_finishes_only_missing_runs(tiny_project: Path):
    from sv_kedro.sweeps.project import load_sweep_spec, run_project_sweep

    settings = {
        "system": "wav2vec2_sv_ce",
        "grid": {"model.pooling": ["mean", "max"]},
        "seeds": [0, 1],
        "isolation": "in_process",
        "output_root": str(tiny_project / "data" / "09_sweeps"),
    }
    tiny = {"training.max_steps": 4, "training.validate_every_steps": 4, "data.batch_size": 8}
    spec = load_sweep_spec(tiny_project, "pooling_study", None, tiny, settings)
    # "Interrupted" after three runs...
    first = run_project_sweep(tiny_project, spec, max_runs=3)
    assert sorted(o.status for o in first.outcomes) == ["done", "done", "done"]
    assert list(first.summary["runs_done"]) == [2, 1]
    # ...the re-run does only the missing one.
    second = run_project_sweep(tiny_project, spec)
    assert sorted(o.status for o in second.outcomes) == ["done", "skipped", "skipped", "skipped"]
    summary = second.summary
    assert list(summary["point"]) == ["model.pooling=mean", "model.pooling=max"]
    assert (summary["runs_done"] == 2).all()
    assert summary["eer_percent_std"].notna().all() and summary["min_dcf_0.05_std"].notna().all()
    assert "±" in second.markdown
    # Tables on disk (sweep folder and catalog location), checkpoints per run.
    assert (second.sweep_dir / "results.md").read_text() == second.markdown
    catalogued = tiny_project / "data/08_reporting/sweeps/pooling_study/results.csv"
    assert pd.read_csv(catalogued).shape[0] == 2
    run_dir = second.sweep_dir / "runs" / "model.pooling=max__seed=1"
    checkpoint = load_checkpoint(run_dir / "data/06_models/wav2vec2_sv_ce/checkpoint.pt")
    assert checkpoint["model_config"]["pooling"]["name"] == "max"


@pytest.mark.slow
def test_a_failed_sweep_run_does_not_stop_the_others(tiny_project: Path):
    from sv_kedro.sweeps.project import load_sweep_spec, run_project_sweep

    settings = {
        "system": "xvector",
        "variants": {"broken": {"model.xvector.channels": "many"}},
        "grid": {},
        "seeds": [0, 1],
        "isolation": "subprocess",
        "output_root": str(tiny_project / "data" / "09_failing"),
    }
    spec = load_sweep_spec(tiny_project, "pooling_study", None, {}, settings)
    report = run_project_sweep(tiny_project, spec)
    assert [o.status for o in report.outcomes] == ["failed", "failed"]  # the second still ran
    assert all("channels" in o.error or "many" in o.error for o in report.outcomes)
    assert (report.runs["status"] == "failed").all()
    assert report.summary["runs_failed"].tolist() == [2]


def test_batched_pair_scoring_equals_one_pair_at_a_time(tmp_path: Path):
    import soundfile as sf

    from sv_kedro.scoring.pair_scoring import score_pairs_batched, score_pairs_jointly

    rng = np.random.default_rng(1)
    rows = []
    for index, seconds in enumerate([0.6, 1.1, 0.8, 1.4, 0.5]):
        path = tmp_path / f"u{index}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000)
        rows.append({"utt_id": f"u{index}", "path": str(path), "speaker": f"s{index % 2}"})
    manifest = pd.DataFrame(rows)
    trials = all_pairs(manifest)
    torch.manual_seed(0)
    encoder = {"kind": "wav2vec2", "config_overrides": TINY_HF}
    model = build_model({"architecture": "ssl_paired", "encoder": encoder}).eval()
    one_by_one = score_pairs_jointly(model, manifest, trials, None)
    batched = score_pairs_batched(model, manifest, trials, None, batch_size=4)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-4)
    with pytest.raises(ValueError, match="u9"):
        score_pairs_batched(model, manifest, trials.assign(test="u9"), None)


@pytest.mark.slow
def test_a_system_trains_from_webdataset_shards_alone(project_root: Path, tmp_path: Path):
    """data_engineering writes the shards; ECAPA-TDNN then trains with ``data.shard_dir``
    while its training audio files are moved away, so every item came from the shards."""
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    shutil.copytree(project_root / "conf", project / "conf")
    shutil.copy(project_root / "pyproject.toml", project / "pyproject.toml")
    corpus = {
        "data_engineering": {
            **TINY_CORPUS["data_engineering"],
            "shards": {"enabled": True, "utterances_per_shard": 10},
        }
    }
    run_session(project, ["data_engineering"], corpus)
    data = project / "data"
    index = json.loads((data / "04_feature/train_shard_index.json").read_text())
    assert index["enabled"] and index["num_shards"] >= 4
    train = pd.read_parquet(data / "05_model_input/train_manifest.parquet")
    moved = [Path(path) for path in train["path"]]
    for path in moved:
        path.rename(path.with_name(path.name + ".away"))
    steps = 24
    system = {
        "training": {"max_steps": steps, "validate_every_steps": steps, "log_every": 4},
        "data": {"batch_size": 8, "crop_seconds": 1.0, "shard_dir": index["out_dir"]},
    }
    try:
        run_session(
            project,
            ["supervised_training"],
            {"ecapa_tdnn": system},
            node_names=["ecapa_tdnn.find_learning_rate", "ecapa_tdnn.train_speaker_model"],
        )
    finally:
        for path in moved:
            path.with_name(path.name + ".away").rename(path)
    metrics = pd.read_csv(data / "08_reporting/ecapa_tdnn/training_metrics.csv")
    losses = metrics["loss"].dropna().to_numpy()
    assert metrics["step"].max() == steps and np.isfinite(losses).all()
    assert losses[-1] < losses[0]
    checkpoint = load_checkpoint(data / "06_models/ecapa_tdnn/checkpoint.pt")
    assert checkpoint["model_config"]["n_classes"] == train["speaker_index"].max() + 1


def test_check_setup_command_dry_runs_systems_and_names_the_broken_one(
    tiny_project: Path, monkeypatch: pytest.MonkeyPatch
):
    from click.testing import CliRunner

    from sv_kedro.cli import cli

    monkeypatch.chdir(tiny_project)
    runner = CliRunner()
    systems = ["check-setup", "--systems", "ecapa_tdnn,xvector", "--params"]
    result = runner.invoke(
        cli, [*systems, "ecapa_tdnn.data.batch_size=8,xvector.data.batch_size=4"]
    )
    assert result.exit_code == 0, result.output
    # Kedro's own log lines share the output: pick the report lines.
    lines = [line for line in result.output.splitlines() if line.startswith(("ecapa", "xvector"))]
    assert len(lines) == 2, result.output
    assert lines[0].startswith("ecapa_tdnn: ok, ecapa_tdnn,") and "batch 8," in lines[0]
    assert lines[1].startswith("xvector: ok, xvector,") and "batch 4," in lines[1]
    # The shipped batch of 32 distinct speakers cannot be filled from 8 training speakers.
    broken = runner.invoke(cli, [*systems, "xvector.data.batch_size=4"])
    assert broken.exit_code == 1
    assert "ecapa_tdnn: FAILED ValueError: batch_size 32 exceeds the 8 speakers" in broken.output
    assert "xvector: ok" in broken.output  # still checked after the failure
    assert "1 system(s) failed: ['ecapa_tdnn']" in broken.output
    unknown = runner.invoke(cli, ["check-setup", "--systems", "resnet"])
    assert unknown.exit_code == 2 and "unknown system(s) ['resnet']" in unknown.output
