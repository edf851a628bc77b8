"""The pytest-xdist grouping in ``conftest.py`` covers every reader of the shared tiny run.

A test module that reads ``tiny_run.finished_run`` / ``built_site`` but is missing from
``tiny_run.TINY_RUN_READERS`` lands in a group of its own, on whichever worker is free,
and builds the whole tiny run a second time there: the suite still passes, only slower.
This test names it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tiny_run import TINY_RUN_READERS

TESTS = Path(__file__).parent
SHARED_RUN = {"finished_run", "built_site"}


def _names_used(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def test_every_reader_of_the_tiny_run_is_in_its_group() -> None:
    uncovered = []
    readers = 0
    for path in sorted(TESTS.rglob("test_*.py")):
        module = path.relative_to(TESTS.parent).as_posix()
        tree = ast.parse(path.read_text())
        if not SHARED_RUN & _names_used(tree):
            continue
        readers += 1
        if not any(
            prefix.startswith(module) or module.startswith(prefix) for prefix in TINY_RUN_READERS
        ):
            uncovered.append(module)
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                nodeid = f"{module}::{node.name}"
                if SHARED_RUN & _names_used(node) and not nodeid.startswith(TINY_RUN_READERS):
                    uncovered.append(nodeid)
    assert readers >= 4  # notebooks, tracking, viz build, browser
    assert not uncovered, f"add these to tiny_run.TINY_RUN_READERS: {uncovered}"
