"""Sweep definitions, run folders and the mean ± std table (no training here; the real
sweep runs in tests/pipelines/test_supervised_training.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sv_kedro.sweeps.execution import RESULT_FILE, prepare_run_dir, run_sweep, select_metric
from sv_kedro.sweeps.results import write_results
from sv_kedro.sweeps.spec import SweepSpec, nest_overrides


def pooling_spec(**extra) -> SweepSpec:
    return SweepSpec.from_params(
        "pooling",
        {
            "system": "wav2vec2_sv_aam",
            "grid": {"model.pooling": ["mean", "first+cls"]},
            "seeds": [0, 1],
            "params": {"training.max_steps": 5},
            **extra,
        },
    )


def test_grid_variants_and_seeds_expand_to_runs():
    spec = pooling_spec(variants={"base": {}, "no_mask": {"model.encoder.mask_time_prob": 0.0}})
    runs = spec.runs()
    assert len(runs) == 2 * 2 * 2
    assert [p for p, _ in spec.points()][:2] == [
        "base__model.pooling=mean",
        "base__model.pooling=first+cls",
    ]
    run = next(r for r in runs if r.point == "no_mask__model.pooling=first+cls" and r.seed == 1)
    assert run.run_id == "no_mask__model.pooling=first+cls__seed=1"
    assert run.runtime_params == {
        "wav2vec2_sv_aam": {
            "model": {"pooling": "first+cls", "encoder": {"mask_time_prob": 0.0}},
            "training": {"max_steps": 5, "seed": 1},
        }
    }


def test_bad_definitions_fail_naming_the_key():
    with pytest.raises(ValueError, match=r"sweeps.pooling: unknown key\(s\) \['grids'\]"):
        SweepSpec.from_params("pooling", {"system": "x", "grids": {}})
    with pytest.raises(ValueError, match=r"sweeps\.pooling\.system is required"):
        SweepSpec.from_params("pooling", {"grid": {}})
    with pytest.raises(ValueError, match=r"sweeps.pooling.grid.model.pooling must be a list"):
        SweepSpec.from_params("pooling", {"system": "x", "grid": {"model.pooling": "mean"}})
    with pytest.raises(ValueError, match="executor"):
        pooling_spec(executor="cloud")
    with pytest.raises(ValueError, match="conflicts"):
        nest_overrides("s", {"model": "x", "model.pooling": "mean"})


def fake_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "conf" / "base").mkdir(parents=True)
    (project / "data" / "05_model_input").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[tool.kedro]\npackage_name = 'sv_kedro'\n")
    return project


def test_run_folders_share_inputs_and_finished_runs_are_skipped(tmp_path: Path):
    project = fake_project(tmp_path)
    spec = pooling_spec(output_root=str(tmp_path / "sweeps"))
    run = spec.runs()[0]
    run_dir = prepare_run_dir(project, tmp_path / "sweeps" / spec.name, spec, run)
    assert (run_dir / "conf").resolve() == (project / "conf").resolve()
    assert (run_dir / "data" / "05_model_input").resolve() == project / "data" / "05_model_input"
    assert not (run_dir / "data" / "06_models").exists()  # outputs stay per run
    written = json.loads((run_dir / "run.json").read_text())
    assert written["namespace"] == "wav2vec2_sv_aam" and written["seed"] == 0
    # Every run marked finished: nothing is executed and all are reported skipped.
    for other in spec.runs():
        folder = tmp_path / "sweeps" / spec.name / "runs" / other.run_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / RESULT_FILE).write_text(json.dumps({"eer": 0.1}))
    _, outcomes = run_sweep(spec, project)
    assert [o.status for o in outcomes] == ["skipped"] * 4


def test_results_table_has_mean_and_std_over_seeds(tmp_path: Path):
    spec = pooling_spec()
    sweep_dir = tmp_path / "sweep"
    values = {("model.pooling=mean", 0): 0.10, ("model.pooling=mean", 1): 0.20}
    values[("model.pooling=first+cls", 0)] = 0.30
    for run in spec.runs():
        folder = sweep_dir / "runs" / run.run_id
        folder.mkdir(parents=True)
        if (run.point, run.seed) in values:
            eer = values[(run.point, run.seed)]
            result = {"eer": eer, "min_dcf_0.01": 2 * eer, "min_dcf_0.05": eer, "wall_s": 1.0}
            (folder / RESULT_FILE).write_text(json.dumps(result))
        else:
            (folder / "failure.json").write_text(json.dumps({"error": "ValueError: boom"}))
    runs, summary, markdown = write_results(spec, sweep_dir)
    assert list(runs["status"]) == ["done", "done", "done", "failed"]
    assert len(summary) == 2
    mean = summary.set_index("point").loc["model.pooling=mean"]
    assert mean["eer_percent_mean"] == pytest.approx(15.0)
    assert mean["eer_percent_std"] == pytest.approx(np.std([10.0, 20.0], ddof=1))
    assert mean["min_dcf_0.01_mean"] == pytest.approx(0.3)
    cls = summary.set_index("point").loc["model.pooling=first+cls"]
    assert cls["runs_failed"] == 1 and np.isnan(cls["eer_percent_std"])
    assert "| model.pooling=mean | 2 | 15.00 ± 7.07 |" in markdown
    assert "1 (1 failed)" in markdown
    assert (sweep_dir / "results.csv").is_file() and (sweep_dir / "results.md").is_file()


def test_metric_selection_names_what_exists():
    metrics = {"test": {"fusion": {"eer": 0.1, "min_dcf_0.01": 0.5, "min_dcf_0.05": 0.3}}}
    assert select_metric(metrics, {"trial_set": "test", "backend": "fusion"}, "m")["eer"] == 0.1
    with pytest.raises(KeyError, match=r"no back-end 'pair'.*\['fusion'\]"):
        select_metric(metrics, {"trial_set": "test", "backend": "pair"}, "m")


def test_max_runs_below_one_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match=r"max_runs must be >= 1 .*got 0"):
        run_sweep(pooling_spec(output_root=str(tmp_path)), fake_project(tmp_path), max_runs=0)


def test_shipped_sweeps_are_valid():
    import yaml

    conf = Path(__file__).resolve().parents[2] / "conf" / "base" / "parameters_sweeps.yml"
    sweeps = yaml.safe_load(conf.read_text())["sweeps"]
    specs = [SweepSpec.from_params(name, values) for name, values in sweeps.items()]
    assert {spec.metric["backend"] for spec in specs} == {"fusion"}
    assert all(spec.runs() for spec in specs)


def test_metric_seeds_pipeline_and_system_are_checked_up_front():
    with pytest.raises(ValueError, match=r"sweeps\.pooling\.metric: unknown key\(s\) \['backnd'\]"):
        pooling_spec(metric={"trial_set": "test", "backnd": "cosine"})
    with pytest.raises(ValueError, match=r"sweeps\.pooling\.metric\.backend: unknown 'cosin'"):
        pooling_spec(metric={"trial_set": "test", "backend": "cosin"})
    assert pooling_spec(metric={"backend": "pair"}).metric == {
        "trial_set": "test",
        "backend": "pair",
    }
    with pytest.raises(ValueError, match=r"sweeps\.pooling\.seeds is empty"):
        pooling_spec(seeds=[])
    with pytest.raises(
        ValueError, match=r"sweeps\.pooling\.seeds\[1\] must be an integer, got 'abc'"
    ):
        pooling_spec(seeds=[0, "abc"])
    assert pooling_spec(seeds=["3"]).seeds == [3]
    with pytest.raises(ValueError, match=r"sweeps\.pooling\.system: 'xvectr' is not a system"):
        pooling_spec(system="xvectr")
    with pytest.raises(
        ValueError, match=r"sweeps\.pooling\.pipeline: unknown 'supervised_trainin'"
    ):
        pooling_spec(pipeline="supervised_trainin")
    # Another pipeline's namespaces are systems too (a stage of the self-supervised study).
    ssl = pooling_spec(pipeline="ssl_pseudo_labeling", system="ssl_pseudo_labeling")
    assert ssl.system == "ssl_pseudo_labeling"
