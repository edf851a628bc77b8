"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# An ECAPA-TDNN small enough for millisecond forwards, embedding-only (no classifier).
TINY_ECAPA = {
    "architecture": "ecapa_tdnn",
    "n_classes": 0,
    "fbank": {"n_mels": 24},
    "ecapa": {
        "channels": 32,
        "embedding_dim": 16,
        "scale": 4,
        "se_bottleneck": 8,
        "mfa_channels": 48,
        "attention_dim": 8,
    },
}
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, split the cores between the workers instead of oversubscribing.

    Each worker (and every kedro process or notebook kernel it starts) gets
    ``cpu_count // workers`` intra-op threads: two workers on two cores that each spin two
    OpenMP threads run several times slower than one thread each.
    """
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers:
        return
    threads = max(1, (os.cpu_count() or 1) // int(workers))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadscope`` (pyproject's addopts) by module, with the tiny run's readers as one.

    Each module then runs on one worker, so its module-scoped fixtures (a Kedro run of a
    whole pipeline) run once, and the tiny run is built once. xdist's own ``loadgroup``
    cannot express this under pytest 9: its ``xdist_group`` marks no longer change node ids.
    """
    if config.getvalue("dist") != "loadscope":
        return None
    from tiny_run import TINY_RUN_READERS
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(TINY_RUN_READERS):
                return "tiny_run"
            return nodeid.split("::", 1)[0]

    return ModuleScheduling(config, log)


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that use it skip where it is absent (a fresh machine)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture()
def kedro_project(project_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A throw-away copy of the project (conf + pyproject) as the working directory.

    The package is the installed ``sv_kedro``; outputs land in the copy's ``data/``, so
    the repository's own ``data/`` is never touched by tests.
    """
    import shutil

    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(project_root / "conf", project / "conf")
    shutil.copy(project_root / "pyproject.toml", project / "pyproject.toml")
    (project / "src").mkdir()
    monkeypatch.chdir(project)
    return project


def _run_kedro(project: Path, pipeline_names: list[str], env: str | None = None, params=None):
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env, runtime_params=params or {}) as session:
        session.run(pipeline_names=pipeline_names)
        return session.load_context().catalog


@pytest.fixture()
def run_kedro():
    """``run_kedro(project, pipeline_names, env=None, params=None) -> catalog``: registered
    pipelines run in a real Kedro session."""
    return _run_kedro


@pytest.fixture()
def tiny_ecapa_config() -> dict:
    """A fresh copy of ``TINY_ECAPA`` (tests may change it)."""
    import copy

    return copy.deepcopy(TINY_ECAPA)
