"""The data_engineering pipeline, run through real Kedro sessions on tiny generated data.

Each test runs in ``kedro_project`` (conftest): a temporary copy of the project's ``conf/``
and ``pyproject.toml``, so the repository's ``data/`` is never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import av
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from sv_kedro.corpus.shard_records import iter_webdataset_shards
from sv_kedro.corpus.shards import shard_paths
from sv_kedro.corpus.trials import TrialGenerationError
from sv_kedro.corpus.validation import ValidationPolicy
from sv_kedro.pipelines.data_engineering import nodes, source_nodes
from sv_kedro.pipelines.data_engineering.params import (
    KEYS,
    DataEngineeringError,
    check_section_keys,
    section,
    source_of,
)
from sv_kedro.scoring.trial_list import read_trial_list

TINY_SYNTHETIC = {
    "data_engineering": {
        "synthetic": {
            "corpus": {
                "n_speakers": 6,
                "utterances_per_speaker": 6,
                "min_duration_s": 1.2,
                "max_duration_s": 1.6,
            }
        },
        "split": {"test_speakers": 2, "validation_ratio": 0.34},
        "trials": {"targets_per_utt": 3, "nontargets_per_utt": 4, "gender_matched": True},
        "validation_pairs": {"n_pairs": 8},
    }
}


def run_pipeline(project: Path, env: str | None, runtime_params: dict[str, Any]) -> Any:
    """Run data_engineering in a real session; return the session's catalog."""
    bootstrap_project(project)
    with KedroSession.create(
        project_path=project, env=env, runtime_params=runtime_params
    ) as session:
        session.run(pipeline_names=["data_engineering"])
        return session.load_context().catalog


def read_outputs(project: Path) -> dict[str, Any]:
    data = project / "data"
    return {
        "raw": pd.read_parquet(data / "02_intermediate/raw_manifest.parquet"),
        "manifest": pd.read_parquet(data / "03_primary/manifest.parquet"),
        "report": pd.read_csv(data / "08_reporting/audio_quality_report.csv"),
        "train": pd.read_parquet(data / "05_model_input/train_manifest.parquet"),
        "validation": pd.read_parquet(data / "05_model_input/validation_manifest.parquet"),
        "test": pd.read_parquet(data / "05_model_input/test_manifest.parquet"),
        "trials": read_trial_list(data / "05_model_input/test_trials.txt"),
        "pairs": read_trial_list(data / "05_model_input/validation_pairs.txt"),
        "summary": json.loads((data / "08_reporting/data_engineering_summary.json").read_text()),
    }


def assert_consistent(out: dict[str, Any]) -> None:
    """Splits partition the manifest by speaker; trials reference the right utterances."""
    train, validation, test = out["train"], out["validation"], out["test"]
    assert set(test["speaker"]).isdisjoint(train["speaker"])
    assert set(test["speaker"]).isdisjoint(validation["speaker"])
    assert len(train) + len(validation) + len(test) == len(out["manifest"])
    assert sorted(train["speaker_index"].unique()) == list(range(train["speaker"].nunique()))
    speaker = dict(zip(out["manifest"]["utt_id"], out["manifest"]["speaker"], strict=True))
    for trials, pool in ((out["trials"], test), (out["pairs"], validation)):
        assert set(trials["enrol"]) | set(trials["test"]) <= set(pool["utt_id"])
        same = [
            speaker[e] == speaker[t] for e, t in zip(trials["enrol"], trials["test"], strict=True)
        ]
        assert trials["label"].astype(int).tolist() == [int(s) for s in same]
        assert (trials["label"] == 1).any() and (trials["label"] == 0).any()
    assert (out["pairs"]["label"] == 1).sum() == (out["pairs"]["label"] == 0).sum()


def test_synthetic_source_end_to_end(kedro_project: Path):
    catalog = run_pipeline(kedro_project, env=None, runtime_params=TINY_SYNTHETIC)
    out = read_outputs(kedro_project)
    # What kedro-viz shows: every table a person looks at renders a preview.
    for name in ("raw_manifest", "manifest", "audio_quality_report", "test_trials"):
        preview = catalog.get(name).preview()
        assert preview and "columns" in preview and "data" in preview, name
    manifest = out["manifest"]
    assert len(manifest) == 36 and manifest["speaker"].nunique() == 6
    assert (manifest["sample_rate"] == 16000).all() and set(manifest["gender"]) <= {"m", "f"}
    wavs = sorted((kedro_project / "data/01_raw/synthetic").rglob("*.wav"))
    assert len(wavs) == 36
    assert set(manifest["path"]) == {str(p.resolve()) for p in wavs}
    assert manifest["duration"].between(1.2, 1.6).all()
    assert out["test"]["speaker"].nunique() == 2
    assert (out["validation"].groupby("speaker").size() == 2).all()
    assert_consistent(out)
    gender = dict(zip(manifest["utt_id"], manifest["gender"], strict=True))
    nontargets = out["trials"][out["trials"]["label"] == 0]
    assert all(
        gender[e] == gender[t] for e, t in zip(nontargets["enrol"], nontargets["test"], strict=True)
    )
    summary = out["summary"]
    assert summary["manifest"]["utterances"] == 36
    assert summary["trial_lists"]["synthetic_generated"]["trials"] == len(out["trials"])
    assert summary["splits"]["test"]["speakers"] == 2
    assert json.loads((kedro_project / "data/04_feature/train_shard_index.json").read_text()) == {
        "enabled": False
    }


def _write_m4a(path: Path, seconds: float, frequency: float) -> None:
    t = np.arange(round(seconds * 16000)) / 16000
    tone = (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)[None, :]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


@pytest.fixture()
def voxceleb_root(tmp_path: Path) -> Path:
    """Extracted VoxCeleb1 test (wav) and VoxCeleb2 dev (m4a) folders and a veri_test2."""
    root = tmp_path / "voxceleb"
    rng = np.random.default_rng(0)
    for s, speaker in enumerate(("id10270", "id10271", "id10272")):
        for u in range(3):
            path = root / "vox1_test" / "wav" / speaker / f"vid{s}" / f"{u + 1:05d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, 0.1 * rng.standard_normal(19200), 16000, subtype="PCM_16")
    for s, speaker in enumerate(("id00012", "id00013", "id00014")):
        for u in range(4):
            _write_m4a(
                root / "vox2_dev" / "aac" / speaker / f"v{u % 2}" / f"{u + 1:05d}.m4a",
                1.3,
                120 + 40 * s + 7 * u,
            )
    (root / "veri_test2.txt").write_text(
        "1 id10270/vid0/00001.wav id10270/vid0/00002.wav\n"
        "0 id10270/vid0/00001.wav id10271/vid1/00001.wav\n"
        "1 id10272/vid2/00003.wav id10272/vid2/00001.wav\n"
        "0 id10271/vid1/00002.wav id10272/vid2/00002.wav\n"
    )
    return root


def test_voxceleb_environment_uses_official_list_and_parts(
    kedro_project: Path, voxceleb_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("VOXCELEB_ROOT", str(voxceleb_root))
    monkeypatch.setenv("VOXCELEB_WORK", str(tmp_path / "vox_work"))
    params = {
        "data_engineering": {
            "workers": 0,
            "split": {"mode": "equal", "validation_ratio": 0.5},
            "validation_pairs": {"n_pairs": 6},
            "shards": {"utterances_per_shard": 4},
        }
    }
    run_pipeline(kedro_project, env="voxceleb", runtime_params=params)
    out = read_outputs(kedro_project)
    assert set(out["test"]["source"]) == {"vox1_test"}
    assert set(out["train"]["source"]) == {"vox2_dev"} == set(out["validation"]["source"])
    assert out["trials"]["label"].tolist() == [1, 0, 1, 0]  # veri_test2, as given
    assert_consistent(out)
    # VoxCeleb2 rows point at converted copies under VOXCELEB_WORK, never at the m4a files.
    assert all(p.startswith(str(tmp_path / "vox_work")) for p in out["train"]["path"])
    index = json.loads((kedro_project / "data/04_feature/train_shard_index.json").read_text())
    assert index["enabled"] and index["num_utterances"] == len(out["train"]) == 6
    samples = list(iter_webdataset_shards(shard_paths(index["out_dir"])))
    assert sorted(s[0] for s in samples) == sorted(out["train"]["utt_id"])
    assert sorted(p.name for p in voxceleb_root.rglob("*.m4a"))  # raw files are still there


def test_voxceleb_trial_list_with_unknown_utterance_is_named(tmp_path: Path):
    (tmp_path / "veri_test2.txt").write_text(
        "1 id1/a/1.wav id1/a/2.wav\n0 id1/a/1.wav id9/z/9.wav\n"
    )
    test_manifest = pd.DataFrame(
        {"utt_id": ["id1/a/1.wav", "id1/a/2.wav", "id2/b/1.wav"], "speaker": ["id1", "id1", "id2"]}
    )
    params = {
        "source": "voxceleb",
        "seed": 0,
        "voxceleb": {"root": str(tmp_path), "trial_lists": ["veri_test2.txt"]},
    }
    with pytest.raises(TrialGenerationError, match=r"veri_test2.*id9/z/9\.wav"):
        nodes.build_trial_lists(test_manifest, params)


def test_folder_roots_from_list_or_path_separated_string():
    assert source_nodes._folder_roots(["/a", "/b"]) == ["/a", "/b"]
    assert source_nodes._folder_roots(f"/a{os.pathsep}/b") == ["/a", "/b"]
    with pytest.raises(DataEngineeringError, match=r"folder\.roots is empty"):
        source_nodes._folder_roots([])
    with pytest.raises(DataEngineeringError, match="source must be one of"):
        source_nodes.build_raw_manifest(pd.DataFrame(), {"source": "tape"})


def test_config_resolves_environment_variables_and_soft_merges(
    kedro_project: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("VOXCELEB_ROOT", "/mnt/vox")
    bootstrap_project(kedro_project)
    with KedroSession.create(project_path=kedro_project, env="voxceleb") as session:
        params = session.load_context().params["data_engineering"]
        catalog = session.load_context().config_loader["catalog"]
    assert params["voxceleb"]["root"] == "/mnt/vox"
    assert params["source"] == "voxceleb"
    # Soft merge: keys the environment does not name keep their base values.
    assert params["validation"]["silence_rms_db"] == -60.0
    assert params["trials"]["targets_per_utt"] == 6
    outputs = set().union(*(n.outputs for n in nodes_of_pipeline()))
    assert outputs <= set(catalog)
    assert all(catalog[name]["metadata"]["kedro-viz"]["layer"] for name in outputs)


def nodes_of_pipeline() -> list:
    from sv_kedro.pipelines.data_engineering import create_pipeline

    return list(create_pipeline().nodes)


@pytest.mark.slow
@pytest.mark.shared_data
def test_folder_environment_on_shared_speech(kedro_project: Path, shared_data: Path):
    roots = [
        str(shared_data / name)
        for name in ("speechocean762_train", "arabic_speech_commands", "free_spoken_digits")
    ]
    params = {"data_engineering": {"workers": 2, "folder": {"roots": roots}}}
    run_pipeline(kedro_project, env="folder", runtime_params=params)
    out = read_outputs(kedro_project)
    assert len(out["raw"]) == 3650 and out["raw"]["speaker"].nunique() == 161
    excluded = out["report"][out["report"]["action"] == "excluded"]
    assert len(excluded) == 83 and set(excluded["reason"]) == {"too_short"}
    assert excluded["path"].str.contains("free_spoken_digits").all()
    assert len(out["manifest"]) == 3567 and (out["manifest"]["sample_rate"] == 16000).all()
    assert_consistent(out)
    summary = out["summary"]
    assert summary["excluded"] == {"total": 83, "by_reason": {"too_short": 83}}
    assert summary["raw"] == {"utterances": 3650, "speakers": 161}


@pytest.mark.slow
def test_cli_runs_the_pipeline_by_name(kedro_project: Path):
    tiny = [
        "data_engineering.synthetic.corpus.n_speakers=4",
        "data_engineering.synthetic.corpus.utterances_per_speaker=4",
        "data_engineering.synthetic.corpus.min_duration_s=1.2",
        "data_engineering.synthetic.corpus.max_duration_s=1.4",
        "data_engineering.split.test_speakers=2",
        "data_engineering.split.validation_ratio=0.5",
        "data_engineering.validation_pairs.n_pairs=4",
    ]
    kedro = [sys.executable, "-m", "kedro", "run", "--params", ",".join(tiny)]
    environment = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    first = subprocess.run(
        [*kedro, "--pipelines", "data_engineering"],
        check=False,
        cwd=kedro_project,
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    summary = kedro_project / "data/08_reporting/data_engineering_summary.json"
    assert json.loads(summary.read_text())["manifest"]["utterances"] == 16
    summary.unlink()
    second = subprocess.run(
        [*kedro, "--pipeline", "data_engineering", "--nodes", "summarize_data_engineering"],
        check=False,
        cwd=kedro_project,
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(summary.read_text())["splits"]["test"]["speakers"] == 2


def test_misspelt_keys_are_refused_naming_the_key_path():
    with pytest.raises(DataEngineeringError, match=r"data_engineering: unknown key\(s\) \['sed'\]"):
        source_of({"source": "synthetic", "sed": 1})
    with pytest.raises(
        DataEngineeringError,
        match=r"data_engineering\.split: unknown key\(s\) \['test_speaker'\]; "
        r"allowed \[.*'test_speakers'",
    ):
        nodes.hold_out_test_speakers(
            pd.DataFrame(), {"source": "synthetic", "split": {"test_speaker": 4}}
        )
    with pytest.raises(DataEngineeringError, match=r"data_engineering\.shards: .*\['enable'\]"):
        nodes.write_training_shards(
            pd.DataFrame(), {"source": "synthetic", "shards": {"enable": True}}
        )
    # A nested section names its whole path.
    synthetic = {"synthetic": {"root": "x", "corpus": {}, "corpsu": {}}}
    with pytest.raises(DataEngineeringError, match=r"data_engineering\.synthetic: .*\['corpsu'\]"):
        section(synthetic, "synthetic")


def test_shipped_environments_use_only_known_keys(kedro_project: Path):
    bootstrap_project(kedro_project)
    for env in (None, "folder", "voxceleb"):
        with KedroSession.create(project_path=kedro_project, env=env) as session:
            settings = session.load_context().params["data_engineering"]
        check_section_keys(settings)
        for key in settings:
            if isinstance(settings[key], dict):
                section(settings, key)
    validation = {f.name for f in fields(ValidationPolicy)} | {"fixed_dir"}
    assert set(KEYS["data_engineering.validation"]) == validation


def test_a_value_that_is_no_number_is_named():
    test_manifest = pd.DataFrame({"utt_id": ["a/1.wav", "b/1.wav"], "speaker": ["a", "b"]})
    settings = {"source": "synthetic", "trials": {"targets_per_utt": "abc"}}
    with pytest.raises(
        DataEngineeringError,
        match=r"data_engineering\.trials\.targets_per_utt must be an integer, got 'abc'",
    ):
        nodes.build_trial_lists(test_manifest, settings)
    settings = {"source": "synthetic", "split": {"validation_ratio": "a tenth"}}
    with pytest.raises(DataEngineeringError, match=r"split\.validation_ratio must be a number"):
        nodes.split_train_and_validation(test_manifest, settings)


def test_a_switch_that_is_no_boolean_is_named():
    # The string "no" is truthy: read as a switch it would turn gender matching on.
    test_manifest = pd.DataFrame({"utt_id": ["a/1.wav", "b/1.wav"], "speaker": ["a", "b"]})
    settings = {"source": "synthetic", "trials": {"gender_matched": "no"}}
    with pytest.raises(
        DataEngineeringError,
        match=r"data_engineering\.trials\.gender_matched must be true or false, got 'no'",
    ):
        nodes.build_trial_lists(test_manifest, settings)
    settings = {"source": "synthetic", "shards": {"enabled": "false"}}
    with pytest.raises(DataEngineeringError, match=r"shards\.enabled must be true or false"):
        nodes.write_training_shards(test_manifest, settings)


def test_an_empty_folder_source_names_the_roots(tmp_path: Path):
    settings = {"source": "folder", "folder": {"roots": [str(tmp_path)]}}
    with pytest.raises(DataEngineeringError, match=f"gave no audio files .* under .*{tmp_path}"):
        source_nodes.build_raw_manifest(pd.DataFrame(), settings)
