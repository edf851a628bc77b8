"""MLflow tracking through kedro-mlflow: a real tracked ``kedro run --env mlflow`` read back.

The shared tiny run (``tests/tiny_run.py``) runs with ``--env mlflow`` into a local SQLite
store inside its temporary project; these tests open that store with ``MlflowClient``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from tiny_run import FinishedRun, finished_run

from sv_kedro.tracking import (
    flatten_numbers,
    has_mlflow_config,
    metric_key,
    training_metric_history,
    verification_metrics_to_log,
)

EXPERIMENT = "sv-kedro"


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    return finished_run(tmp_path_factory)


@pytest.fixture(scope="module")
def logged_run(tracked: FinishedRun):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracked.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None, f"no experiment {EXPERIMENT!r} in {tracked.tracking_uri}"
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, f"one kedro run should give one MLflow run, got {len(runs)}"
    return client, runs[0]


def evaluated_systems(project: Path) -> dict[str, dict]:
    """``{system: metrics}`` from every ``<system>/metrics.json`` the run wrote."""
    reporting = project / "data" / "08_reporting"
    found = {}
    for path in sorted(reporting.rglob("metrics.json")):
        system = path.parent.relative_to(reporting).as_posix().replace("/", ".")
        found[system] = json.loads(path.read_text())
    return found


def test_run_finished_with_parameters_and_kedro_tags(logged_run):
    _, run = logged_run
    assert run.info.status == "FINISHED"
    params = run.data.params
    # Flattened node parameters, as kedro-mlflow logs them; the --params overrides win.
    assert params["data_engineering.synthetic.corpus.n_speakers"] == "8"
    assert params["data_engineering.split.test_speakers"] == "3"
    assert run.data.tags["env"] == "mlflow"
    assert run.data.tags["kedro_command"].startswith("kedro run")


def test_final_eer_and_min_dcf_of_every_system_are_logged(tracked: FinishedRun, logged_run):
    _, run = logged_run
    systems = evaluated_systems(tracked.project)
    assert systems, "the tiny run evaluated no system"
    metrics = run.data.metrics
    for system, values in systems.items():
        main = values["test"]["fusion"]
        assert metrics[f"{system}.eer"] == pytest.approx(main["eer"])
        assert metrics[f"{system}.min_dcf_0.01"] == pytest.approx(main["min_dcf_0.01"])
        assert 0.0 <= metrics[f"{system}.eer"] <= 1.0
        for backend, backend_values in values["test"].items():
            assert metrics[f"{system}.test.{backend}.eer"] == pytest.approx(backend_values["eer"])


def test_training_curves_are_logged_per_step(logged_run):
    client, run = logged_run
    losses = [key for key in run.data.metrics if key.endswith(".loss")]
    assert losses, f"no training loss logged among {sorted(run.data.metrics)[:40]}"
    longest = 0
    for key in losses:
        history = client.get_metric_history(run.info.run_id, key)
        steps = [point.step for point in history]
        assert steps == sorted(steps) and all(math.isfinite(p.value) for p in history), key
        longest = max(longest, len(set(steps)))
    assert longest >= 2, "no training curve has more than one logged step"


def test_comparison_table_and_plots_are_artifacts(logged_run):
    client, run = logged_run
    tables = {a.path for a in client.list_artifacts(run.info.run_id, "tables")}
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert any(path.endswith("comparison_table.csv") for path in tables), tables
    assert any(path.endswith("_det_plot.png") for path in plots), plots
    assert any(path.endswith("score_histogram.png") for path in plots), plots
    local = client.download_artifacts(run.info.run_id, sorted(tables)[0])
    table = pd.read_csv(local)
    assert {"system", "trial_set", "backend", "eer_percent"} <= set(table.columns)


def test_tracking_is_on_only_where_an_mlflow_yml_is(tracked: FinishedRun):
    bootstrap_project(tracked.project)
    for env, expected in ((None, False), ("mlflow", True)):
        with KedroSession.create(project_path=tracked.project, env=env) as session:
            assert has_mlflow_config(session.load_context()) is expected, env


def test_nested_metrics_flatten_to_dotted_keys_with_headline():
    metrics = {
        "test": {
            "fusion": {"eer": 0.1, "min_dcf_0.01": 0.5, "min_dcf_0.05": 0.3, "n_trials": 40},
            "cosine": {"eer": 0.2, "min_dcf_0.01": float("nan")},
        },
        "hard": {"fusion": {"eer": 0.3, "flag": True}},
    }
    logged = verification_metrics_to_log(metrics, "ssl_pseudo_labeling.iter_1", "fusion")
    assert logged["ssl_pseudo_labeling.iter_1.eer"] == 0.1
    assert logged["ssl_pseudo_labeling.iter_1.min_dcf_0.05"] == 0.3
    assert logged["ssl_pseudo_labeling.iter_1.hard.fusion.eer"] == 0.3
    assert "ssl_pseudo_labeling.iter_1.test.cosine.min_dcf_0.01" not in logged  # NaN
    assert "ssl_pseudo_labeling.iter_1.hard.fusion.flag" not in logged  # booleans
    assert dict(flatten_numbers({"a": {"b": 1}})) == {"a.b": 1.0}
    assert metric_key("x", "eer (%)") == "x.eer ___"


def test_training_table_gives_one_point_per_step_and_column():
    frame = pd.DataFrame(
        {
            "step": [10, 20, 20],
            "epoch": [0, 0, 1],
            "kind": ["train", "train", "epoch"],
            "loss": [2.0, 1.5, float("nan")],
            "gate_threshold_next": [float("nan"), float("nan"), 0.7],
        }
    )
    history = training_metric_history(frame, "ecapa_tdnn")
    by_key: dict[str, list[tuple[int, float]]] = {}
    for metric in history:
        by_key.setdefault(metric.key, []).append((metric.step, metric.value))
    assert by_key["ecapa_tdnn.loss"] == [(10, 2.0), (20, 1.5)]
    assert by_key["ecapa_tdnn.gate_threshold_next"] == [(20, 0.7)]
    assert "ecapa_tdnn.kind" not in by_key
    with pytest.raises(ValueError, match="needs a 'step' column"):
        training_metric_history(frame.drop(columns="step"), "x")
