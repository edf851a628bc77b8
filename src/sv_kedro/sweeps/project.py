"""Sweeps from a Kedro project: read ``sweeps.<name>`` from its parameters, run, report.

``run_project_sweep`` is what ``kedro sweep <name>`` calls; the tables end up in the sweep
folder (``results.csv``, ``results.md``, ``runs.csv``) and as the catalog datasets
``<name>.sweep_results``, ``<name>.sweep_results_markdown`` and ``<name>.sweep_runs``.
Only the sweep's configured folder feeds those datasets: a sweep run elsewhere
(``kedro sweep --output-root``) keeps its tables in its own folder, so that it does not
replace the configured settings' tables in ``08_reporting``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from sv_kedro.sweeps.execution import RunOutcome, run_sweep, sweep_folder, working_directory
from sv_kedro.sweeps.results import write_results
from sv_kedro.sweeps.spec import SweepSpec, nest_overrides
from sv_kedro.utils.params import misspelt_keys

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    """A finished invocation: where, what ran now, and the tables."""

    sweep_dir: Path
    outcomes: list[RunOutcome]
    runs: pd.DataFrame
    summary: pd.DataFrame
    markdown: str


def _project_context(project: Path, env: str | None) -> Any:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    session = KedroSession.create(project_path=project, env=env)
    return session.load_context()


def load_sweep_spec(
    project: str | os.PathLike[str],
    name: str,
    env: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> SweepSpec:
    """The sweep ``name`` from the project's parameters (env applied).

    ``overrides``: extra dotted ``--params`` keys relative to the system added to every run
    (e.g. ``{"training.max_steps": 20}``); ``settings``: spec keys replaced (``executor``,
    ``isolation``, ``seeds``...).
    """
    context = _project_context(Path(project).resolve(), env)
    sweeps = context.params.get("sweeps") or {}
    if name not in sweeps:
        raise KeyError(
            f"no sweep {name!r} under 'sweeps' in the parameters; defined: {sorted(sweeps)}"
        )
    values = dict(sweeps[name])
    values.update(settings or {})
    if env is not None:
        values["env"] = env
    values["params"] = {**(values.get("params") or {}), **dict(overrides or {})}
    spec = SweepSpec.from_params(name, values)
    _refuse_misspelt_keys(spec, dict(overrides or {}), context)
    return spec


def _refuse_misspelt_keys(spec: SweepSpec, cli_overrides: dict[str, Any], context: Any) -> None:
    """What ``ParameterCheckHook`` does for ``kedro run --params``, for every key the sweep
    sets, before its first run (and in ``--dry-run``): otherwise a typo fails each run, or
    passes unnoticed where a node reads that key with a default."""
    where = f"sweeps.{spec.name}"
    keys = [("--params", key, value) for key, value in cli_overrides.items()]
    keys += [(f"{where}.params", k, v) for k, v in spec.params.items() if k not in cli_overrides]
    keys += [(f"{where}.grid", axis, v) for axis, values in spec.grid.items() for v in values]
    keys += [
        (f"{where}.variants.{variant}", key, value)
        for variant, overrides in spec.variants.items()
        for key, value in overrides.items()
    ]
    keys.append((f"{where}.seed_key", spec.seed_key, 0))
    configured = context.params.get(spec.system) or {}
    typos: dict[tuple[str, str], str] = {}  # (given, meant) -> where it was given first
    for source, key, value in keys:
        for given, meant in misspelt_keys(nest_overrides("", {key: value}), configured):
            typos.setdefault((given, meant), source)
    if typos:
        listed = "; ".join(
            f"{given} in {source} (did you mean {meant}?)"
            for (given, meant), source in typos.items()
        )
        raise ValueError(
            f"{where}: key(s) not in the {context.config_loader.env or 'base'} configuration "
            f"of {spec.system}: {listed}"
        )


def list_sweeps(project: str | os.PathLike[str], env: str | None = None) -> dict[str, str]:
    """Sweep names and their descriptions."""
    context = _project_context(Path(project).resolve(), env)
    sweeps = context.params.get("sweeps") or {}
    return {name: str((values or {}).get("description", "")) for name, values in sweeps.items()}


def run_project_sweep(
    project: str | os.PathLike[str], spec: SweepSpec, max_runs: int | None = None
) -> SweepReport:
    """Run the unfinished runs of ``spec``, then write and catalog the result tables."""
    project = Path(project).resolve()
    sweep_dir, outcomes = run_sweep(spec, project, max_runs=max_runs)
    runs, summary, markdown = write_results(spec, sweep_dir)
    with working_directory(project):  # catalog paths are relative to the project root
        context = _project_context(project, spec.env)
        configured = (context.params.get("sweeps") or {}).get(spec.name) or {}
        home = sweep_folder(
            replace(spec, output_root=str(configured.get("output_root", SweepSpec.output_root))),
            project,
        )
        if sweep_dir.resolve() != home.resolve():
            log.info(
                "sweep %s ran in %s, not in its configured folder %s: its tables are there "
                "only, the catalog's %s.sweep_results keep the configured folder's",
                spec.name,
                sweep_dir,
                home,
                spec.name,
            )
            return SweepReport(sweep_dir, outcomes, runs, summary, markdown)
        catalog = context.catalog
        for suffix, data in (
            ("sweep_results", summary),
            ("sweep_results_markdown", markdown),
            ("sweep_runs", runs),
        ):
            dataset = f"{spec.name}.{suffix}"
            if dataset in catalog:
                catalog.save(dataset, data)
            else:
                log.warning("catalog has no %s; the table is in %s only", dataset, sweep_dir)
    return SweepReport(sweep_dir, outcomes, runs, summary, markdown)
