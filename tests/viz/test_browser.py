"""The kedro-viz site in a real browser: headless Debian Chromium driven by Playwright.

The static site built from the shared tiny run (``kedro viz build --include-previews``)
is served from a thread on localhost; every request to anywhere else is aborted, so the
test proves the site works offline. Screenshots go to ``$SV_KEDRO_ARTIFACTS`` (default
``tests/artifacts/``). Without Chromium the test skips, except in CI (``CI`` set), where
it fails: ``.ci/install_browser.sh`` installs it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from tiny_run import PROJECT_ROOT, built_site

CHROMIUM = Path(os.environ.get("SV_KEDRO_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWER_SETTINGS = json.dumps(
    {"showFeatureHints": False, "orientation": "horizontal", "theme": "light"}
)
FOUR_PIPELINES = ("data_engineering", "supervised_training", "ssl_pseudo_labeling", "evaluation")
TIMEOUT_MS = 60_000


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("SV_KEDRO_ARTIFACTS", PROJECT_ROOT / "tests" / "artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the browser test (.ci/install_browser.sh)")
    pytest.skip(f"{reason} (not in CI: skipped)")


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


@pytest.fixture(scope="module")
def playwright_api() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    if not CHROMIUM.is_file() and shutil.which(str(CHROMIUM)) is None:
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    return sync_playwright


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not worth a line each in the test log."""


@pytest.fixture(scope="module")
def site_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    site = built_site(tmp_path_factory)
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass
class Viewer:
    """The browser page on the site and the JavaScript errors it has raised so far."""

    page: Any
    js_errors: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def viewer(playwright_api: Any, site_url: str) -> Iterator[Viewer]:
    with playwright_api() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 2400, "height": 1300})
        # kedro-viz keeps its settings here: no tour of new features over the flowchart, and
        # layers as columns (raw ... reporting, left to right) for a readable screenshot.
        context.add_init_script(f"window.localStorage.setItem('KedroViz', '{VIEWER_SETTINGS}')")
        # Offline on purpose: Google fonts and anything else outside localhost are refused.
        context.route(
            "**/*",
            lambda route: (
                route.continue_() if route.request.url.startswith(site_url) else route.abort()
            ),
        )
        viewer = Viewer(context.new_page())
        viewer.page.on("pageerror", lambda error: viewer.js_errors.append(str(error)))
        viewer.page.goto(site_url)
        viewer.page.wait_for_selector(".pipeline-node", timeout=TIMEOUT_MS)
        try:
            yield viewer
        finally:
            browser.close()


def _data_node(page: Any, name: str) -> Any:
    return page.locator(".pipeline-node--data", has_text=re.compile(rf"^{re.escape(name)}$"))


def _open_metadata(page: Any, name: str, via_node_list: bool = False) -> Any:
    """Click the dataset (its flowchart node, or its row in the sidebar's node list, which
    also reaches nodes the flowchart has placed under an overlay) and return the panel."""
    close = page.locator(".pipeline-metadata--visible .pipeline-metadata__close-button")
    if close.count():  # with a panel open, a node-list click only highlights the row
        close.first.click()
    if via_node_list:
        target = page.locator(f'[data-test="node-list-tree-item--row--{name}"]')
    else:
        target = _data_node(page, name)
    target.first.wait_for(timeout=TIMEOUT_MS)
    target.first.click()
    panel = page.locator(".pipeline-metadata--visible")
    # The panel may still show the previous dataset for a moment: wait for this one.
    expect(panel.locator(".pipeline-metadata__title")).to_have_text(name, timeout=TIMEOUT_MS)
    return panel


def _image_preview_dataset(site: Path) -> str:
    """A top-level dataset of ``__default__`` whose preview is an image (e.g. a DET plot)."""
    default = json.loads((site / "api/pipelines/__default__").read_text(encoding="utf-8"))
    for node in default["nodes"]:
        if node["type"] != "data" or node.get("modular_pipelines"):
            continue
        details = json.loads((site / "api/nodes" / node["id"]).read_text(encoding="utf-8"))
        if details.get("preview_type") == "ImagePreview" and details.get("preview"):
            return node["name"]
    pytest.fail("no top-level dataset with an image preview in __default__")


def test_flowchart_shows_the_four_pipelines(viewer: Viewer):
    page = viewer.page
    selector = page.locator('[data-test="kedro-pipeline-selector"]')
    options = selector.locator(".menu-option__content")
    listed = {options.nth(i).get_attribute("title") for i in range(options.count())}
    missing = sorted(set(FOUR_PIPELINES) - listed)
    assert not missing, f"pipeline selector lacks {missing}; lists {sorted(listed)}"
    for name in FOUR_PIPELINES:
        selector.locator(".dropdown__label").click()
        options.filter(has_text=re.compile(rf"^{name}$")).first.click()
        page.wait_for_selector(".pipeline-node", timeout=TIMEOUT_MS)
        assert name in selector.locator(".dropdown__label").inner_text()
        assert page.locator(".pipeline-node").count() > 0, name
    selector.locator(".dropdown__label").click()
    options.filter(has_text=re.compile(r"^__default__$")).first.click()
    page.wait_for_selector(".pipeline-node", timeout=TIMEOUT_MS)
    page.locator('[data-test="sidebar-reset-zoom-btn"]').click()
    page.wait_for_timeout(2000)  # the layout animates into place
    # The lineage of everything (__default__), namespaces collapsed per system and round.
    page.screenshot(path=str(artifacts_dir() / "kedro_viz_flowchart.png"))
    assert not viewer.js_errors, viewer.js_errors


def test_a_dataset_preview_opens(viewer: Viewer, tmp_path_factory: pytest.TempPathFactory):
    page = viewer.page
    table_panel = _open_metadata(page, "manifest")
    rows = table_panel.locator(".preview-table__row")
    rows.first.wait_for(timeout=TIMEOUT_MS)
    assert rows.count() > 0
    assert "utt_id" in table_panel.locator(".preview-table__header").all_inner_texts()

    image_name = _image_preview_dataset(built_site(tmp_path_factory))
    image_panel = _open_metadata(page, image_name, via_node_list=True)
    image = image_panel.locator("img.pipeline-metadata__plot-image")
    image.first.wait_for(timeout=TIMEOUT_MS)
    width = image.first.evaluate("img => img.complete ? img.naturalWidth : 0")
    assert width > 100, f"{image_name}: preview image did not render"
    page.screenshot(path=str(artifacts_dir() / "kedro_viz_preview.png"))
    assert not viewer.js_errors, viewer.js_errors
