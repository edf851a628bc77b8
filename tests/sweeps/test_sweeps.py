"""Sweep definitions, run folders and the mean ± std table (no training here: a fake
stands in for the kedro run of a sweep run; the real sweep runs in
tests/pipelines/test_supervised_training.py)."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sv_kedro.sweeps import execution, run_folder
from sv_kedro.sweeps.execution import prepare_run_dir, run_sweep
from sv_kedro.sweeps.results import collect_runs, write_results
from sv_kedro.sweeps.run_folder import RESULT_FILE, SweepSettingsError, read_json, select_metric
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


@pytest.fixture
def kedro_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stands in for the ``kedro run`` of each sweep run (``in_process`` isolation): writes
    the metrics.json evaluation would, with an EER from the run's max_steps and seed (the
    cosine back-end's half the fusion's), and lists the run folders it ran in."""
    ran: list[str] = []

    def fake_kedro_run(run_dir: Path, recorded: dict) -> None:
        ran.append(run_dir.name)
        overrides = recorded["overrides"]
        eer = overrides["training.max_steps"] / 100 + overrides["training.seed"] / 1000
        fusion = {"eer": eer, "min_dcf_0.01": 2 * eer, "min_dcf_0.05": eer}
        cosine = {key: value / 2 for key, value in fusion.items()}
        path = run_dir / "data" / "08_reporting" / recorded["namespace"] / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"test": {"fusion": fusion, "cosine": cosine}}))

    monkeypatch.setattr(execution, "_kedro_run", fake_kedro_run)
    return ran


def faked_spec(tmp_path: Path, **extra) -> SweepSpec:
    return pooling_spec(isolation="in_process", output_root=str(tmp_path / "sweeps"), **extra)


def results_of(sweep_dir: Path) -> dict[str, str]:
    return {path.parent.name: path.read_text() for path in sweep_dir.glob(f"runs/*/{RESULT_FILE}")}


def test_run_folders_share_inputs_and_finished_runs_are_skipped(
    tmp_path: Path, kedro_runs: list[str]
):
    project = fake_project(tmp_path)
    spec = faked_spec(tmp_path)
    run = spec.runs()[0]
    run_dir = prepare_run_dir(project, tmp_path / "sweeps" / spec.name, spec, run)
    assert (run_dir / "conf").resolve() == (project / "conf").resolve()
    assert (run_dir / "data" / "05_model_input").resolve() == project / "data" / "05_model_input"
    assert not (run_dir / "data" / "06_models").exists()  # outputs stay per run
    written = json.loads((run_dir / "run.json").read_text())
    assert written["namespace"] == "wav2vec2_sv_aam" and written["seed"] == 0
    # Every run finished: a re-run executes nothing and reports all skipped.
    _, outcomes = run_sweep(spec, project)
    assert [o.status for o in outcomes] == ["done"] * 4
    _, outcomes = run_sweep(spec, project)
    assert [o.status for o in outcomes] == ["skipped"] * 4
    assert len(kedro_runs) == 4


def test_a_resumed_sweep_redoes_only_unfinished_runs(tmp_path: Path, kedro_runs: list[str]):
    project = fake_project(tmp_path)
    spec = faked_spec(tmp_path)
    runs = spec.runs()
    sweep_dir, outcomes = run_sweep(spec, project, max_runs=2)
    assert [o.status for o in outcomes] == ["done", "done"]
    finished = results_of(sweep_dir)
    # The third run was interrupted: it left a checkpoint and no result.
    interrupted = prepare_run_dir(project, sweep_dir, spec, runs[2])
    (interrupted / "data" / "06_models" / spec.system).mkdir(parents=True)
    (interrupted / "data" / "06_models" / spec.system / "last.pt").write_bytes(b"state")
    _, outcomes = run_sweep(spec, project)
    assert [o.status for o in outcomes] == ["skipped", "skipped", "done", "done"]
    assert kedro_runs == [run.run_id for run in runs]  # each ran once
    assert {k: v for k, v in results_of(sweep_dir).items() if k in finished} == finished
    runs_table, _, _ = write_results(spec, sweep_dir)
    assert list(runs_table["status"]) == ["done"] * 4


def test_other_settings_are_refused_before_anything_runs(tmp_path: Path, kedro_runs: list[str]):
    project = fake_project(tmp_path)
    sweep_dir, _ = run_sweep(faked_spec(tmp_path), project)  # training.max_steps: 5
    finished = results_of(sweep_dir)
    # --params training.max_steps=6: the shared params, so every run's settings change.
    steps_6 = faked_spec(tmp_path, params={"training.max_steps": 6})
    with pytest.raises(SweepSettingsError) as refused:
        run_sweep(steps_6, project)
    message = str(refused.value)
    assert message.startswith(
        f"sweep pooling: 4 of 4 run folder(s) in {sweep_dir / 'runs'} hold results or "
        "checkpoints made with other settings (first: model.pooling=mean__seed=0, "
        "training.max_steps was 5 and is now 6)."
    )
    assert "--output-root" in message and "delete those run folders" in message
    with pytest.raises(SweepSettingsError, match=r"env was None and is now 'folder'"):
        run_sweep(faked_spec(tmp_path, env="folder"), project)
    with pytest.raises(SweepSettingsError, match=r"data\.batch_size was unset and is now 8"):
        run_sweep(
            faked_spec(tmp_path, params={"training.max_steps": 5, "data.batch_size": 8}), project
        )
    # Nothing ran and the old results are as they were.
    assert len(kedro_runs) == 4
    assert results_of(sweep_dir) == finished
    # Another folder is the way out.
    elsewhere = pooling_spec(isolation="in_process", output_root=str(tmp_path / "elsewhere"))
    elsewhere.params["training.max_steps"] = 6
    _, outcomes = run_sweep(elsewhere, project)
    assert [o.status for o in outcomes] == ["done"] * 4


def test_a_checkpoint_of_other_settings_is_refused_a_bare_failure_is_redone(
    tmp_path: Path, kedro_runs: list[str]
):
    project = fake_project(tmp_path)
    old, new = faked_spec(tmp_path), faked_spec(tmp_path, params={"training.max_steps": 6})
    sweep_dir = tmp_path / "sweeps" / "pooling"
    runs = old.runs()
    # Run 0 was interrupted with a checkpoint the training would resume from; run 1 failed
    # before writing anything.
    checkpoint = prepare_run_dir(project, sweep_dir, old, runs[0]) / "data" / "06_models" / "x"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"state")
    failed = prepare_run_dir(project, sweep_dir, old, runs[1])
    (failed / "failure.json").write_text(json.dumps({"error": "ValueError: boom"}))
    with pytest.raises(SweepSettingsError, match=r"1 of 4 run folder\(s\).*first: "):
        run_sweep(new, project)
    assert kedro_runs == []
    checkpoint.unlink()  # what the message says to do (here, the folder's only output)
    _, outcomes = run_sweep(new, project)
    assert [o.status for o in outcomes] == ["done"] * 4
    assert read_json(failed / "run.json")["overrides"]["training.max_steps"] == 6
    assert not (failed / "failure.json").exists()


def test_a_new_metric_is_selected_again_without_rerunning(tmp_path: Path, kedro_runs: list[str]):
    project = fake_project(tmp_path)
    sweep_dir, _ = run_sweep(faked_spec(tmp_path), project)
    cosine = faked_spec(tmp_path, metric={"backend": "cosine"})
    _, outcomes = run_sweep(cosine, project)
    assert [o.status for o in outcomes] == ["skipped"] * 4
    assert len(kedro_runs) == 4
    result = read_json(sweep_dir / "runs" / "model.pooling=mean__seed=1" / RESULT_FILE)
    assert result["metric"] == {"trial_set": "test", "backend": "cosine"}
    assert result["eer"] == pytest.approx((5 / 100 + 1 / 1000) / 2)
    with pytest.raises(SweepSettingsError, match=r"no back-end 'plda'.*\['cosine', 'fusion'\]"):
        run_sweep(faked_spec(tmp_path, metric={"backend": "plda"}), project)


def test_an_unreadable_result_is_named_moved_aside_and_redone(
    tmp_path: Path, kedro_runs: list[str], caplog: pytest.LogCaptureFixture
):
    project = fake_project(tmp_path)
    spec = faked_spec(tmp_path)
    sweep_dir, _ = run_sweep(spec, project)
    path = sweep_dir / "runs" / "model.pooling=mean__seed=1" / RESULT_FILE
    text = path.read_text()
    truncated = text[: text.index('"point"') + 4]  # cut inside a string
    path.write_text(truncated)
    with pytest.raises(ValueError, match=re.escape(f"{path} is not valid JSON: Unterminated")):
        read_json(path)
    with caplog.at_level(logging.WARNING, logger=run_folder.__name__):
        _, outcomes = run_sweep(spec, project)
    assert {o.run_id: o.status for o in outcomes} == {
        "model.pooling=mean__seed=0": "skipped",
        "model.pooling=mean__seed=1": "done",
        "model.pooling=first+cls__seed=0": "skipped",
        "model.pooling=first+cls__seed=1": "skipped",
    }
    assert kedro_runs[-1] == "model.pooling=mean__seed=1" and len(kedro_runs) == 5
    aside = path.with_name("result.json.corrupt")
    assert aside.read_text() == truncated
    assert str(aside) in caplog.text and str(path) in caplog.text
    assert read_json(path)["eer"] == pytest.approx(0.051)
    # A second bad copy does not replace the first.
    path.write_text("[]")
    run_sweep(spec, project)
    assert aside.read_text() == truncated and path.with_name("result.json.corrupt-2").is_file()


def test_an_unreadable_failure_still_counts_as_failed(tmp_path: Path):
    spec = pooling_spec()
    folder = tmp_path / "runs" / spec.runs()[0].run_id
    folder.mkdir(parents=True)
    (folder / "failure.json").write_text('{"error": "Val')
    runs = collect_runs(spec, tmp_path)
    assert runs["status"].iloc[0] == "failed"
    assert f"{folder / 'failure.json'} is not valid JSON" in runs["error"].iloc[0]


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


def test_misspelt_sweep_keys_are_refused_when_the_spec_loads(kedro_project: Path):
    from sv_kedro.sweeps.project import load_sweep_spec

    typo = {"variants": {"b8": {"data.batch_sise": 8}}}
    with pytest.raises(ValueError) as refused:
        load_sweep_spec(kedro_project, "loss_seeds", None, {"training.max_step": 2}, typo)
    assert str(refused.value) == (
        "sweeps.loss_seeds: key(s) not in the base configuration of wav2vec2_sv_ce: "
        "training.max_step in --params (did you mean training.max_steps?); "
        "data.batch_sise in sweeps.loss_seeds.variants.b8 (did you mean data.batch_size?)"
    )
    fine = {"variants": {"b8": {"data.batch_size": 8}}}
    spec = load_sweep_spec(kedro_project, "loss_seeds", None, {"training.max_steps": 2}, fine)
    assert spec.params["training.max_steps"] == 2


def test_sweep_dry_run_refuses_typos_and_other_settings(kedro_project: Path):
    from click.testing import CliRunner

    from sv_kedro.cli import cli
    from sv_kedro.sweeps.project import load_sweep_spec

    def sweep(*args: str):
        return CliRunner().invoke(cli, ["sweep", "loss_seeds", "--dry-run", *args])

    typo = sweep("--params", "training.max_step=2")
    assert typo.exit_code == 1, typo.output
    assert "training.max_step in --params (did you mean training.max_steps?)" in typo.output
    assert "Traceback" not in typo.output
    # A finished run of max_steps=2 in the default folder...
    spec = load_sweep_spec(kedro_project, "loss_seeds", None, {"training.max_steps": 2})
    run_dir = prepare_run_dir(
        kedro_project, kedro_project / "data/09_sweeps/loss_seeds", spec, spec.runs()[0]
    )
    (run_dir / RESULT_FILE).write_text(json.dumps({"metric": spec.metric, "eer": 0.1}))
    other = sweep("--params", "training.max_steps=3")
    assert other.exit_code == 1, other.output
    assert "training.max_steps was 2 and is now 3" in other.output
    # ...is no obstacle in another folder.
    elsewhere = sweep("--params", "training.max_steps=3", "--output-root", "data/09_other")
    assert elsewhere.exit_code == 0, elsewhere.output
    assert "default__seed=0: {'training.max_steps': 3, 'training.seed': 0}" in elsewhere.output


def test_only_the_configured_folder_feeds_the_catalog_tables(
    kedro_project: Path, kedro_runs: list[str]
):
    from sv_kedro.sweeps.project import load_sweep_spec, run_project_sweep

    catalogued = kedro_project / "data/08_reporting/sweeps/loss_seeds/results.csv"
    settings = {"isolation": "in_process"}
    home = load_sweep_spec(kedro_project, "loss_seeds", None, {"training.max_steps": 2}, settings)
    run_project_sweep(kedro_project, home)
    assert (
        catalogued.read_text()
        == (kedro_project / "data/09_sweeps/loss_seeds/results.csv").read_text()
    )
    home_table = catalogued.read_text()
    assert "0.02" in home_table
    # The same sweep with other settings in another folder leaves the catalog's table alone.
    settings["output_root"] = "data/09_other"
    other = load_sweep_spec(kedro_project, "loss_seeds", None, {"training.max_steps": 7}, settings)
    report = run_project_sweep(kedro_project, other)
    assert report.sweep_dir == kedro_project / "data/09_other/loss_seeds"
    assert "0.07" in (report.sweep_dir / "results.csv").read_text()
    assert catalogued.read_text() == home_table


@pytest.mark.parametrize(
    "output",
    ["mlflow.db", "mlruns/1/abc/artifacts/plots/det.png", "logs/info.log", "data/09_slurm/1.out"],
)
def test_outputs_anywhere_in_a_run_folder_are_work_of_its_settings(
    tmp_path: Path, kedro_runs: list[str], output: str
):
    # A run writes where its configuration says: MLflow's database and artifacts beside
    # its conf (its working directory), logs, Slurm output. Before, only data/ outside
    # the shared layers counted, and a re-run with other settings appended to them.
    project = fake_project(tmp_path)
    old, new = faked_spec(tmp_path), faked_spec(tmp_path, params={"training.max_steps": 6})
    run_dir = prepare_run_dir(project, tmp_path / "sweeps" / "pooling", old, old.runs()[0])
    (run_dir / output).parent.mkdir(parents=True, exist_ok=True)
    (run_dir / output).write_bytes(b"tracked")
    with pytest.raises(SweepSettingsError, match=r"1 of 4 run folder\(s\).*training.max_steps"):
        run_sweep(new, project)
    assert kedro_runs == []


def test_notes_and_prepared_files_are_no_work(tmp_path: Path, kedro_runs: list[str]):
    project = fake_project(tmp_path)
    (project / "data" / "01_raw").mkdir()
    old, new = faked_spec(tmp_path), faked_spec(tmp_path, params={"training.max_steps": 6})
    run_dir = prepare_run_dir(project, tmp_path / "sweeps" / "pooling", old, old.runs()[0])
    for name in ("failure.json", "log.txt", "result.json.corrupt", "log.txt.other-settings-2"):
        (run_dir / name).write_text("{}")
    (project / "data" / "01_raw").rmdir()  # a shared layer link left dangling
    _, outcomes = run_sweep(new, project)
    assert [o.status for o in outcomes] == ["done"] * 4


def test_a_failure_of_other_settings_is_not_reported_for_these(
    tmp_path: Path, kedro_runs: list[str], caplog: pytest.LogCaptureFixture
):
    project = fake_project(tmp_path)
    old, new = faked_spec(tmp_path), faked_spec(tmp_path, params={"training.max_steps": 6})
    sweep_dir = tmp_path / "sweeps" / "pooling"
    runs = old.runs()
    failure = {"error": "ValueError: boom", "traceback": "Traceback ...: boom"}
    for run in runs[1:]:
        failed = prepare_run_dir(project, sweep_dir, old, run)
        (failed / "failure.json").write_text(json.dumps(failure))
        (failed / "log.txt").write_text("boom\n")
    # Prepared again with the same settings (a retry): its failure is still its own.
    same = prepare_run_dir(project, sweep_dir, old, runs[1])
    assert read_json(same / "failure.json") == failure
    assert collect_runs(old, sweep_dir)["status"].tolist() == ["pending", *["failed"] * 3]
    # --max-runs 1 with other settings: runs[1:] are neither prepared nor run.
    _, outcomes = run_sweep(new, project, max_runs=1)
    assert [o.status for o in outcomes] == ["done"]
    table = collect_runs(new, sweep_dir)
    # Before, runs[1:] were reported failed, with the error of the other settings.
    assert table["status"].tolist() == ["done", "pending", "pending", "pending"]
    assert table["error"].isna().all()
    # An interrupted sweep prepared runs[2] for the new settings but never ran it: its old
    # notes go aside, kept whole.
    with caplog.at_level(logging.INFO, logger=run_folder.__name__):
        interrupted = prepare_run_dir(project, sweep_dir, new, new.runs()[2])
    assert not (interrupted / "failure.json").exists()
    assert read_json(interrupted / "failure.json.other-settings") == failure
    assert (interrupted / "log.txt.other-settings").read_text() == "boom\n"
    assert "training.max_steps was 5 and is now 6" in caplog.text
    assert collect_runs(new, sweep_dir)["status"].tolist()[2] == "pending"
    _, outcomes = run_sweep(new, project)
    assert [o.status for o in outcomes] == ["skipped", "done", "done", "done"]
    assert collect_runs(new, sweep_dir)["status"].tolist() == ["done"] * 4


def test_a_killed_run_is_reported_with_its_signal_not_the_last_attempts_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    project = fake_project(tmp_path)
    spec = pooling_spec(isolation="subprocess", output_root=str(tmp_path / "sweeps"))
    sweep_dir = tmp_path / "sweeps" / "pooling"
    run_dir = prepare_run_dir(project, sweep_dir, spec, spec.runs()[0])
    old = {"run_id": run_dir.name, "error": "ValueError: boom", "traceback": "..."}
    (run_dir / "failure.json").write_text(json.dumps(old))

    def killed(command, **kwargs):  # the OOM killer ends the run before it writes anything
        return subprocess.CompletedProcess(command, -signal.SIGKILL)

    monkeypatch.setattr(execution.subprocess, "run", killed)
    [outcome] = execution.execute_local([run_dir], "subprocess")
    expected = f"killed by SIGKILL; see {run_dir / 'log.txt'}"
    assert (outcome.status, outcome.error) == ("failed", expected)
    assert read_json(run_dir / "failure.json")["error"] == expected
    assert read_json(run_dir / "failure.json.previous") == old
    table = collect_runs(spec, sweep_dir)
    assert (table["status"].iloc[0], table["error"].iloc[0]) == ("failed", expected)
    assert not run_folder._holds_work(run_dir)  # notes only: new settings may still run


def test_the_slurm_executor_runs_each_point_as_a_submitit_job(
    tmp_path: Path, kedro_runs: list[str]
):
    # submitit's debug cluster runs the array's jobs in this process, through run_point.
    project = fake_project(tmp_path)
    spec = faked_spec(tmp_path, executor="slurm", slurm={"cluster": "debug", "mem_gb": 4})
    sweep_dir, outcomes = run_sweep(spec, project)
    assert [o.status for o in outcomes] == ["done"] * 4
    assert sorted(kedro_runs) == sorted(run.run_id for run in spec.runs())
    assert collect_runs(spec, sweep_dir)["status"].tolist() == ["done"] * 4
    assert (sweep_dir / "slurm").is_dir()  # submitit's logs and pickles
