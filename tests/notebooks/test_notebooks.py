"""The notebooks in ``notebooks/`` execute cleanly (nbclient, a real ipykernel).

``01_quickstart`` runs in a fresh copy of the project (it builds its own data and trains);
``02_explore_run`` runs in the shared tiny run's project, i.e. on a finished run, with the
base environment. A failing cell raises ``CellExecutionError`` and fails the test; the
executed notebooks are saved next to the browser screenshots for inspection.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from tiny_run import OFFLINE_ENV, PROJECT_ROOT, copy_project, finished_run

NOTEBOOKS = PROJECT_ROOT / "notebooks"
CELL_TIMEOUT_S = 300


def execute(name: str, project: Path, artifacts: Path) -> nbformat.NotebookNode:
    """Run every cell of ``notebooks/<name>`` with ``project`` as the working directory."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(project)}},
    )
    try:
        client.execute()
    finally:
        artifacts.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, artifacts / name)
    return notebook


def outputs_of(notebook: nbformat.NotebookNode, kind: str) -> list[str]:
    """Every output of the given MIME type (``text/plain``, ``image/png``) or stream text."""
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and kind == "stream":
                found.append(output["text"])
            elif kind in output.get("data", {}):
                found.append(output["data"][kind])
    return found


@pytest.fixture()
def kernel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel inherits this process's environment: offline, no telemetry."""
    for key, value in OFFLINE_ENV.items():
        if key != "MPLBACKEND":  # notebooks draw inline
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture()
def artifacts(tmp_path: Path) -> Path:
    import os

    root = Path(os.environ.get("SV_KEDRO_ARTIFACTS", PROJECT_ROOT / "tests" / "artifacts"))
    return root / "notebooks"


@pytest.mark.usefixtures("kernel_env")
def test_quickstart_trains_and_evaluates_a_tiny_system(tmp_path: Path, artifacts: Path):
    project = copy_project(tmp_path / "project")
    notebook = execute("01_quickstart.ipynb", project, artifacts)
    metrics = json.loads((project / "data/08_reporting/quickstart/metrics.json").read_text())
    assert 0.0 <= metrics["test"]["fusion"]["eer"] <= 1.0
    assert (project / "data/06_models/quickstart/checkpoint.pt").is_file()
    assert len(outputs_of(notebook, "image/png")) >= 3  # loss curve, histogram, DET


@pytest.mark.usefixtures("kernel_env")
def test_explore_run_reads_a_finished_run(
    tmp_path_factory: pytest.TempPathFactory, artifacts: Path
):
    run = finished_run(tmp_path_factory)
    notebook = execute("02_explore_run.ipynb", run.project, artifacts)
    text = "\n".join(outputs_of(notebook, "text/plain") + outputs_of(notebook, "stream"))
    assert "evaluated systems" in text
    # Embeddings, pseudo-label quality, score histograms and the DET figure.
    assert len(outputs_of(notebook, "image/png")) >= 4
    pseudo_label_rounds = sorted(run.data.glob("05_model_input/ssl_pseudo_labeling.*"))
    if pseudo_label_rounds:
        assert "purity" in text and "No pseudo-label tables" not in text
