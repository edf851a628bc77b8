"""kedro-viz as a view of the project: the static site built from a finished tiny run.

Reads ``build/api/main``, ``build/api/pipelines/*`` and ``build/api/nodes/*`` written by
``kedro viz build --include-previews`` and checks layers, namespaces, node names and a
preview for every kind of dataset a person looks at. One test also serves the live app
(``kedro viz run``) offline.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tiny_run import built_site, kedro_env

REQUIRED_PIPELINES = (
    "data_engineering",
    "supervised_training",
    "ssl_pseudo_labeling",
    "evaluation",
)
LAYER_ORDER = (
    "raw",
    "intermediate",
    "primary",
    "feature",
    "model_input",
    "models",
    "model_output",
    "reporting",
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_site(tmp_path_factory)


def read_api(site: Path, *parts: str) -> Any:
    return json.loads((site / "api").joinpath(*parts).read_text(encoding="utf-8"))


def data_nodes(site: Path, pipeline: str = "__default__") -> list[dict[str, Any]]:
    return [n for n in read_api(site, "pipelines", pipeline)["nodes"] if n["type"] == "data"]


def all_data_nodes(site: Path) -> dict[str, dict[str, Any]]:
    """Data nodes of the four main pipelines (``main`` only holds ``__default__``'s, and
    on-demand pipelines such as ``judge`` did not run)."""
    nodes: dict[str, dict[str, Any]] = {}
    for name in REQUIRED_PIPELINES:
        path = site / "api" / "pipelines" / name
        if not path.is_file():
            continue
        for node in json.loads(path.read_text(encoding="utf-8"))["nodes"]:
            if node["type"] == "data":
                nodes[node["id"]] = node
    return nodes


def node_details(site: Path, node: dict[str, Any]) -> dict[str, Any]:
    return read_api(site, "nodes", node["id"])


def is_persisted(node: dict[str, Any]) -> bool:
    return bool(node.get("dataset_type")) and not node["dataset_type"].endswith("MemoryDataset")


# -- what kind of dataset a node is, and what its preview must look like ---------------


def _type(node: dict[str, Any]) -> str:
    return node.get("dataset_type") or ""


def _is_table(node: dict[str, Any]) -> bool:
    return _type(node).endswith(("ParquetDataset", "CSVDataset"))


def _png(preview: Any) -> bool:
    return isinstance(preview, str) and base64.b64decode(preview)[:8] == PNG_MAGIC


def _table(columns: set[str]) -> Callable[[Any], bool]:
    def check(preview: Any) -> bool:
        return (
            isinstance(preview, dict)
            and columns <= set(preview.get("columns", []))
            and len(preview.get("data", [])) > 0
        )

    return check


def _json_with(keys: set[str]) -> Callable[[Any], bool]:
    def check(preview: Any) -> bool:
        return isinstance(preview, str) and keys <= set(json.loads(preview))

    return check


def _metrics_json(preview: Any) -> bool:
    """``{trial_set: {backend: {eer, min_dcf_0.01, ...}}}``."""
    metrics = json.loads(preview) if isinstance(preview, str) else None
    return bool(metrics) and all(
        "eer" in values for backends in metrics.values() for values in backends.values()
    )


# kind -> (which nodes, expected preview_type, check of the preview payload)
DATASET_KINDS: dict[str, tuple[Callable[[dict[str, Any]], bool], str, Callable[[Any], bool]]] = {
    "audio": (
        lambda n: _type(n).endswith(("AudioDataset", "AudioFolderDataset")),
        "ImagePreview",
        _png,
    ),
    "manifest": (
        lambda n: n["name"].split(".")[-1].endswith("manifest") and _is_table(n),
        "TablePreview",
        _table({"utt_id", "speaker", "duration"}),
    ),
    "pseudo_label_table": (
        lambda n: n["name"].split(".")[-1] == "pseudo_labels" and _is_table(n),
        "TablePreview",
        _table({"utt_id"}),
    ),
    "embeddings": (
        lambda n: _type(n).endswith("EmbeddingsDataset") and "test_embeddings" in n["name"],
        "ImagePreview",
        _png,
    ),
    "checkpoint": (
        lambda n: _type(n).endswith("CheckpointDataset"),
        "JSONPreview",
        _json_with({"architecture", "epoch", "step"}),
    ),
    "metrics": (
        lambda n: n["name"].endswith(".metrics") and _type(n).endswith("JSONDataset"),
        "JSONPreview",
        _metrics_json,
    ),
    "comparison_table": (
        lambda n: n["name"].endswith("comparison_table"),
        "TablePreview",
        _table({"system", "trial_set", "backend", "eer_percent"}),
    ),
    "det_curve": (lambda n: n["name"].endswith("_det_plot"), "ImagePreview", _png),
    "score_histogram": (lambda n: n["name"].endswith("score_histogram"), "ImagePreview", _png),
    "gate_threshold_plot": (
        lambda n: "gate" in n["name"] and "matplotlib" in _type(n),
        "ImagePreview",
        _png,
    ),
    "lr_finder_plot": (
        lambda n: "lr_finder" in n["name"] and "matplotlib" in _type(n),
        "ImagePreview",
        _png,
    ),
}


@pytest.mark.parametrize("kind", sorted(DATASET_KINDS))
def test_every_dataset_kind_has_a_preview(site: Path, kind: str):
    selects, preview_type, looks_right = DATASET_KINDS[kind]
    nodes = all_data_nodes(site)
    chosen = [n for n in nodes.values() if selects(n)]
    assert chosen, f"no {kind} dataset among the {len(nodes)} in the four pipelines"
    for node in chosen:
        details = node_details(site, node)
        assert details.get("preview_type") == preview_type, (
            node["name"],
            details.get("preview_type"),
        )
        assert looks_right(details.get("preview")), (
            f"{node['name']}: preview {str(details.get('preview'))[:300]}"
        )


def test_site_lists_the_four_pipelines(site: Path):
    pipeline_ids = {p["id"] for p in read_api(site, "main")["pipelines"]}
    missing = sorted(set(REQUIRED_PIPELINES) - pipeline_ids)
    assert not missing, f"pipelines missing from the site: {missing} (has {sorted(pipeline_ids)})"
    for name in REQUIRED_PIPELINES:
        assert read_api(site, "pipelines", name)["nodes"], name


def test_layers_are_in_data_order_and_every_stored_dataset_has_one(site: Path):
    default = read_api(site, "pipelines", "__default__")
    # An empty list means kedro-viz found the layers circular and switched them off.
    layers = default["layers"]
    assert layers, "kedro-viz disabled layers (a circular layer dependency)"
    used = [layer for layer in layers if any(n.get("layer") == layer for n in default["nodes"])]
    assert set(used) <= set(LAYER_ORDER), used
    assert used == sorted(used, key=LAYER_ORDER.index), used
    nodes = [n for n in all_data_nodes(site).values() if is_persisted(n)]
    unlayered = sorted(n["name"] for n in nodes if n.get("layer") not in LAYER_ORDER)
    assert not unlayered, f"stored datasets without a known layer: {unlayered}"


def test_namespaces_collapse_per_experiment_and_round(site: Path):
    main = read_api(site, "main")
    tree = main["modular_pipelines"]
    namespaces = {
        namespace
        for node in main["nodes"]
        if node["type"] == "task"
        for namespace in node.get("modular_pipelines") or []
    }
    assert namespaces, "no namespaced nodes: systems and rounds would not collapse"
    assert namespaces <= set(tree), sorted(namespaces - set(tree))
    for namespace in namespaces:
        children = tree[namespace]["children"]
        assert children, namespace
        if "." in namespace:  # a nested namespace (an SSL round) hangs under its parent
            parent = namespace.rsplit(".", 1)[0]
            assert {"id": namespace, "type": "modularPipeline"} in tree[parent]["children"]
    rounds = [ns for ns in namespaces if ns.startswith("ssl_pseudo_labeling.")]
    assert rounds, f"no SSL round namespaces under ssl_pseudo_labeling: {sorted(namespaces)}"
    systems = {ns for ns in namespaces if "." not in ns} - {"ssl_pseudo_labeling"}
    assert systems, f"no per-system namespaces: {sorted(namespaces)}"


def test_node_names_read_as_sentences(site: Path):
    tasks = [n for n in read_api(site, "main")["nodes"] if n["type"] == "task"]
    assert tasks
    for task in tasks:
        words = task["name"].split(".")[-1].split("_")
        # Kedro's default name is "func([inputs]) -> [outputs]": every node is named.
        assert "(" not in task["name"] and len(words) >= 2, task["name"]


def test_no_telemetry_in_the_built_page(site: Path):
    page = (site / "index.html").read_text(encoding="utf-8")
    assert "heap" not in page.lower()  # .telemetry consent: false


def _free_port() -> int:
    """A free port below 49152: kedro viz run refuses the ephemeral range the OS hands out."""
    for port in range(41410, 41610):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free TCP port in 41410-41609 for kedro viz run")


# --include-hooks: the pipelines take their shape (rounds) from the project's own hook.
VIZ_OPTIONS = ("--include-hooks", "--port")


@pytest.mark.slow
def test_kedro_viz_run_serves_the_project_offline(site: Path, tmp_path: Path):
    project = site.parent
    port = _free_port()
    log_path = tmp_path / "kedro_viz_run.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "kedro", "viz", "run", "--no-browser", *VIZ_OPTIONS, str(port)],
            cwd=project,
            env=kedro_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            # kedro viz run serves from a child process: stop the whole group afterwards.
            start_new_session=True,
        )
    try:
        main = _wait_for_api(f"http://127.0.0.1:{port}/api/main", server, timeout_s=120)
        assert main is not None, (
            f"kedro viz run did not answer (exit code {server.poll()}):\n"
            f"{log_path.read_text()[-3000:]}"
        )
        assert {p["id"] for p in main["pipelines"]} >= set(REQUIRED_PIPELINES)
        assert "manifest" in {n["name"] for n in main["nodes"]}
    finally:
        _stop_group(server)


def _wait_for_api(url: str, server: subprocess.Popen, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(1)
    return None


def _stop_group(server: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:  # the group has already gone
            return
        try:
            server.wait(timeout=20)
            return
        except subprocess.TimeoutExpired:
            continue


def test_viz_with_hooks_shows_the_configured_round_count(
    kedro_project: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
):
    # kedro-viz builds the pipelines without project hooks unless --include-hooks; the
    # round count is set by one, so only with it does the flowchart follow n_iterations.
    from kedro_viz.integrations.kedro.data_loader import load_data

    from sv_kedro.hooks import _forget_built_pipelines
    from sv_kedro.pipelines.ssl_pseudo_labeling import pipeline as ssl_pipeline

    # The count is module state, and Kedro caches the pipelines built with it: leave both
    # as found for the tests after this one.
    monkeypatch.setattr(ssl_pipeline, "_configured_iterations", None)
    request.addfinalizer(_forget_built_pipelines)
    params = {"ssl_pseudo_labeling": {"n_iterations": 4}}
    shown = {}
    for hooks in (False, True):
        pipelines = next(
            part
            for part in load_data(kedro_project, include_hooks=hooks, extra_params=params)
            if isinstance(part, dict) and "ssl_pseudo_labeling" in part
        )
        shown[hooks] = sorted(
            {
                node.namespace.split(".")[1]
                for node in pipelines["ssl_pseudo_labeling"].nodes
                if node.namespace and node.namespace.startswith("ssl_pseudo_labeling.iter_")
            }
        )
    assert shown[True] == ["iter_1", "iter_2", "iter_3", "iter_4"]
    assert shown[False] == ["iter_1", "iter_2"]  # the default, whatever --params says
