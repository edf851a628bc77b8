"""Shared fixtures."""

from __future__ import annotations

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
