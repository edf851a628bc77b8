"""Project hooks: a misspelt --params key stops the session before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from sv_kedro.hooks import MissingInputsError, ParamsError
from sv_kedro.utils.params import misspelt_keys


def test_misspelt_keys_are_those_that_resemble_a_configured_one():
    known = {"n_iterations": 2, "dino": {"export": "student", "training": {"epochs": 2}}}
    overrides = {
        "n_iteration": 3,  # typo
        "dino": {"exprt": "teacher", "training": {"max_steps": 5, "epochs": 1}},
        "new_section": {"anything": 1},  # resembles nothing: a new setting
    }
    assert misspelt_keys(overrides, known) == [
        ("n_iteration", "n_iterations"),
        ("dino.exprt", "dino.export"),
    ]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"ssl_pseudo_labeling": {"n_iteration": 3}},
            r"ssl_pseudo_labeling.n_iteration \(did you mean ssl_pseudo_labeling.n_iterations\?\)",
        ),
        (
            {"ssl_pseudo_labeling": {"finetune": {"init_from_prev": False}}},
            r"finetune.init_from_prev \(did you mean ssl_pseudo_labeling.finetune.init_from_prev",
        ),
    ],
)
def test_a_session_with_a_misspelt_override_stops_naming_it(kedro_project: Path, params, message):
    bootstrap_project(kedro_project)
    with pytest.raises(ParamsError, match=message):
        with KedroSession.create(project_path=kedro_project, runtime_params=params) as session:
            session.load_context()


def test_a_supervised_systems_wrong_value_stops_the_session_naming_the_system(
    kedro_project: Path,
):
    bootstrap_project(kedro_project)
    params = {"wavlm_mhfa_sv": {"loss": {"name": "ce"}}}  # the last system trained
    message = r"wavlm_mhfa_sv\.loss\.name 'ce' needs model\.head\.classifier 'linear'"
    with pytest.raises(ParamsError, match=message):
        with KedroSession.create(project_path=kedro_project, runtime_params=params) as session:
            session.load_context()


def test_new_and_existing_keys_pass(kedro_project: Path):
    bootstrap_project(kedro_project)
    params = {"xvector": {"training": {"max_steps": 2, "epochs": 1}}}
    with KedroSession.create(project_path=kedro_project, runtime_params=params) as session:
        context = session.load_context()
    assert context.params["xvector"]["training"]["max_steps"] == 2


def test_a_pipeline_whose_inputs_were_never_written_names_the_pipeline_that_writes_them(
    kedro_project: Path, run_kedro
):
    with pytest.raises(MissingInputsError) as raised:
        run_kedro(kedro_project, ["evaluation"])
    message = str(raised.value)
    assert message.startswith("pipeline evaluation reads ")
    lines = message.splitlines()[1:]
    # Grouped by the pipeline to run, in the order the workflow runs them.
    assert lines[0].startswith("  - test_manifest, test_trials, train_manifest, trial_lists: ")
    assert lines[0].endswith("run `kedro run --pipeline data_engineering` first")
    assert "xvector.checkpoint" in lines[1] and lines[1].endswith("supervised_training` first")
    assert "ssl_pseudo_labeling.dino.checkpoint" in lines[2]
    assert lines[2].endswith("run `kedro run --pipeline ssl_pseudo_labeling` first")
    # Nothing was written on the way.
    assert not any(path.is_file() for path in (kedro_project / "data").rglob("*"))


def test_a_file_the_user_provides_is_named_with_its_path(kedro_project: Path, run_kedro):
    with pytest.raises(MissingInputsError, match=r"ssl_initial_embeddings\.pt\): no pipeline"):
        run_kedro(kedro_project, ["ssl_pseudo_labeling_external"])


def test_kedro_run_prints_the_refusal_itself_not_a_traceback(kedro_project: Path):
    # Kedro's CLI prints an uncaught error as some 150 lines of traceback, the message last.
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "kedro", "run", "--pipelines", "ssl_pseudo_labeling"]
    completed = subprocess.run(
        [*command, "--params", "ssl_pseudo_labeling.n_iteration=3"],
        check=False,
        cwd=kedro_project,
        capture_output=True,
        text=True,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"},
        timeout=300,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 1, output[-3000:]
    assert "Error: --params: key(s) not in the base configuration: " in output
    assert "(did you mean ssl_pseudo_labeling.n_iterations?)" in output
    assert "Traceback" not in output and "ParamsError" not in output


def test_the_hooks_read_the_parameters_once_per_session(kedro_project: Path, monkeypatch):
    # Each read of the configuration takes a noticeable fraction of a second.
    from kedro.config import OmegaConfigLoader

    from sv_kedro.pipelines import ssl_pseudo_labeling

    reads = []
    read = OmegaConfigLoader.__getitem__

    def counted(loader, key):
        reads.append(key)
        return read(loader, key)

    monkeypatch.setattr(OmegaConfigLoader, "__getitem__", counted)
    bootstrap_project(kedro_project)
    with KedroSession.create(project_path=kedro_project) as session:
        session.load_context()
    assert reads.count("parameters") == 1
    assert ssl_pseudo_labeling.n_iterations() == 2  # PipelineShapeHook read it too


def test_the_rounds_model_must_fit_dino_only_where_a_round_starts_from_it(kedro_project: Path):
    from kedro.framework.project import pipelines

    from sv_kedro.hooks import ParameterCheckHook, rounds_start_from_dino

    bootstrap_project(kedro_project)
    params = {"ssl_pseudo_labeling": {"dino": {"model": {"encoder": {"ecapa": {"channels": 32}}}}}}
    with KedroSession.create(project_path=kedro_project, runtime_params=params) as session:
        context = session.load_context()  # starts: which pipeline runs is not known yet
    hook = ParameterCheckHook()
    hook.after_context_created(context)
    with_dino = pipelines["ssl_pseudo_labeling"]
    external = pipelines["ssl_pseudo_labeling_external"]
    assert rounds_start_from_dino(with_dino) and not rounds_start_from_dino(external)
    hook.before_pipeline_run({}, external, None)  # round 1 trains from scratch there
    with pytest.raises(ParamsError, match=r"\(ecapa\.channels: 64 vs 32\), but round 1 starts"):
        hook.before_pipeline_run({}, with_dino, None)
