"""One tiny, real, MLflow-tracked ``kedro run`` shared by the viz, notebook and tracking tests.

The project's ``conf/``, ``pyproject.toml`` and ``.telemetry`` are copied into a temporary
project folder (the package is the installed ``sv_kedro``), so the repository's ``data/``
is never touched. The run goes through the real CLI (``python -m kedro run --env mlflow``)
with ``--params`` that shrink every registered pipeline to seconds; the MLflow store
(``sqlite:///mlflow.db`` + ``mlruns/``) lands in the temporary project too.

Test modules get it with ``finished_run(tmp_path_factory)``; the first call runs it and
every later call in the same pytest process reuses the result.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sv_kedro.pipelines.supervised_training.settings import SYSTEMS

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Shrinks each pipeline; keys of pipelines that are not registered are harmless extras.
TINY_PARAMS: dict[str, Any] = {
    "data_engineering.synthetic.corpus.n_speakers": 8,
    "data_engineering.synthetic.corpus.utterances_per_speaker": 6,
    "data_engineering.synthetic.corpus.min_duration_s": 1.0,
    "data_engineering.synthetic.corpus.max_duration_s": 1.4,
    "data_engineering.split.test_speakers": 3,
    "data_engineering.split.validation_ratio": 0.34,
    "data_engineering.trials.targets_per_utt": 3,
    "data_engineering.trials.nontargets_per_utt": 4,
    "data_engineering.validation_pairs.n_pairs": 8,
    "evaluation.extraction.n_crops": 2,
    "evaluation.extraction.crop_seconds": 0.5,
    "evaluation.scoring.cohort_utts_per_speaker": 3,
    "evaluation.scoring.top_n": 3,
    "evaluation.scoring.lda_dim": 4,
    "ssl_pseudo_labeling.dino.training.epochs": 1,
    "ssl_pseudo_labeling.dino.data.batch_size": 8,
    "ssl_pseudo_labeling.dino.data.augmentation.simulated_rirs": 2,
    "ssl_pseudo_labeling.clustering.k1": 8,
    "ssl_pseudo_labeling.clustering.k2": 5,
    "ssl_pseudo_labeling.finetune.training.epochs": 2,
    "ssl_pseudo_labeling.finetune.data.batch_size": 4,
    "ssl_pseudo_labeling.finetune.data.crop_seconds": 1.0,
    "ssl_pseudo_labeling.finetune.data.augmentation.simulated_rirs": 2,
    "ssl_pseudo_labeling.lmft.training.epochs": 1,
    "ssl_pseudo_labeling.lmft.data.crop_seconds": 1.0,
}
# Every supervised system: a handful of steps on half-second crops, batches no larger than
# the 5 training speakers; the LR range test runs for one system so its plot exists.
for _system in SYSTEMS:
    TINY_PARAMS.update(
        {
            f"{_system}.training.max_steps": 4,
            f"{_system}.training.validate_every_steps": 2,
            f"{_system}.training.log_every": 1,
            f"{_system}.data.batch_size": 4,
            f"{_system}.data.crop_seconds": 0.5,
        }
    )
TINY_PARAMS.update(
    {
        "ecapa_tdnn.lr_finder.enabled": True,
        "ecapa_tdnn.lr_finder.num_steps": 6,
    }
)

# Tests that read the run (conftest.py keeps them on one pytest-xdist worker, so it is built
# once); tests/test_conftest.py checks that the list is complete.
TINY_RUN_READERS = (
    "tests/notebooks/test_notebooks.py::test_explore_run",
    "tests/tracking/",
    "tests/viz/",
)

# Environment of every kedro process the tests start: offline, no telemetry.
OFFLINE_ENV = {
    "KEDRO_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MPLBACKEND": "Agg",
}


@dataclass(frozen=True)
class FinishedRun:
    """A temporary project after the tiny tracked run."""

    project: Path
    pipelines: tuple[str, ...]  # registered pipeline names (without __default__)
    seconds: float

    @property
    def data(self) -> Path:
        return self.project / "data"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.project / 'mlflow.db'}"


_CACHE: dict[str, FinishedRun | BaseException] = {}


def kedro_env() -> dict[str, str]:
    """``os.environ`` plus the offline settings, without an outside MLflow server."""
    environment = {**os.environ, **OFFLINE_ENV}
    environment.pop("MLFLOW_TRACKING_URI", None)
    return environment


def copy_project(target: Path) -> Path:
    """A throw-away project folder with this project's configuration."""
    target.mkdir(parents=True)
    shutil.copytree(PROJECT_ROOT / "conf", target / "conf", ignore=_ignore_local)
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(PROJECT_ROOT / name, target / name)
    (target / "src").mkdir()  # kedro checks it exists; the package is the installed one
    # One pseudo-labelling round (+ large-margin) is enough here. In the conf files, not in
    # --params, so that `kedro viz` (which takes no --params) draws the same pipelines.
    ssl = target / "conf" / "base" / "parameters_ssl_pseudo_labeling.yml"
    text = ssl.read_text()
    assert "n_iterations: 2 " in text, f"{ssl} no longer sets n_iterations: 2"
    ssl.write_text(text.replace("n_iterations: 2 ", "n_iterations: 1 ", 1))
    return target


def _ignore_local(folder: str, names: list[str]) -> list[str]:
    # The developer's conf/local must not leak into the tests.
    return [n for n in names if n != ".gitkeep"] if Path(folder).name == "local" else []


def registered_pipelines() -> tuple[str, ...]:
    from sv_kedro.pipeline_registry import register_pipelines

    return tuple(sorted(name for name in register_pipelines() if name != "__default__"))


def params_argument(params: dict[str, Any]) -> str:
    return ",".join(f"{key}={value}" for key, value in params.items())


def run_kedro(project: Path, *arguments: str, timeout: float = 600) -> str:
    """``python -m kedro <arguments>`` in ``project``; fails the test with the log tail."""
    completed = subprocess.run(
        [sys.executable, "-m", "kedro", *arguments],
        check=False,
        cwd=project,
        capture_output=True,
        text=True,
        env=kedro_env(),
        timeout=timeout,
    )
    if completed.returncode != 0:
        pytest.fail(
            f"kedro {' '.join(arguments)} failed ({completed.returncode}):\n"
            f"{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}"
        )
    return completed.stdout + completed.stderr


def finished_run(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """Run (once per pytest process) ``kedro run --env mlflow`` of ``__default__``."""
    cached = _CACHE.get("run")
    if isinstance(cached, BaseException):
        pytest.fail(f"the shared tiny kedro run failed earlier: {cached}")
    if cached is not None:
        return cached
    project = copy_project(tmp_path_factory.mktemp("tiny_run") / "project")
    started = time.perf_counter()
    try:
        run_kedro(project, "run", "--env", "mlflow", "--params", params_argument(TINY_PARAMS))
    except BaseException as exc:
        _CACHE["run"] = exc
        raise
    result = FinishedRun(project, registered_pipelines(), time.perf_counter() - started)
    _CACHE["run"] = result
    return result


def built_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``kedro viz build --include-previews`` of the finished run (once per process)."""
    cached = _CACHE.get("site")
    if isinstance(cached, BaseException):
        pytest.fail(f"the shared kedro viz build failed earlier: {cached}")
    if cached is not None:
        return cached.project / "build"
    run = finished_run(tmp_path_factory)
    try:
        log = run_kedro(run.project, "viz", "build", "--include-previews", "--include-hooks")
        site = run.project / "build"
        if not (site / "api" / "main").is_file() or not (site / "index.html").is_file():
            pytest.fail(f"kedro viz build left no site in {site}:\n{log[-3000:]}")
    except BaseException as exc:
        _CACHE["site"] = exc
        raise
    _CACHE["site"] = run
    return site
