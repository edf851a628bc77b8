"""Project-specific Kedro commands (Kedro picks up the click group ``cli`` in this module).

``kedro sweep <name>`` runs a sweep defined under ``sweeps.<name>`` in the parameters:

    kedro sweep --list
    kedro sweep pooling_study                       # local, one run after another
    kedro sweep lr_seed_grid --env voxceleb --executor slurm
    kedro sweep pooling_study --params training.max_steps=20 --max-runs 2

Re-running a command finishes only the runs that have no result yet.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.group(name="sv_kedro")
def cli() -> None:
    """Commands of the sv-kedro project."""


@cli.command()
@click.argument("name", required=False)
@click.option("--env", "-e", default=None, help="Kedro environment of the runs (e.g. voxceleb).")
@click.option(
    "--params",
    default="",
    help="Overrides for every run, relative to the system: key=value,key2=value2.",
)
@click.option("--executor", type=click.Choice(["local", "slurm"]), default=None)
@click.option("--isolation", type=click.Choice(["subprocess", "in_process"]), default=None)
@click.option("--max-runs", type=int, default=None, help="Run at most this many (the rest later).")
@click.option("--list", "list_only", is_flag=True, help="List the defined sweeps and exit.")
@click.option("--dry-run", is_flag=True, help="Print the runs without running them.")
def sweep(name, env, params, executor, isolation, max_runs, list_only, dry_run) -> None:
    """Run the sweep NAME: a grid of --params overrides x seeds, one kedro run each."""
    from omegaconf import OmegaConf

    from sv_kedro.sweeps.project import list_sweeps, load_sweep_spec, run_project_sweep

    project = Path.cwd()
    if list_only or not name:
        for sweep_name, description in list_sweeps(project, env).items():
            click.echo(f"{sweep_name}: {description}")
        return
    overrides = {}
    if params:
        dotted = OmegaConf.to_container(OmegaConf.from_dotlist(params.split(",")))
        overrides = _flatten(dotted)
    settings = {k: v for k, v in (("executor", executor), ("isolation", isolation)) if v}
    spec = load_sweep_spec(project, name, env, overrides, settings)
    if dry_run:
        for run in spec.runs():
            click.echo(f"{run.run_id}: {run.overrides}")
        return
    report = run_project_sweep(project, spec, max_runs=max_runs)
    counts = {s: sum(o.status == s for o in report.outcomes) for s in ("done", "skipped", "failed")}
    click.echo(report.markdown)
    click.echo(f"runs: {counts}; tables in {report.sweep_dir}")
    if counts["failed"]:
        raise click.ClickException(f"{counts['failed']} run(s) failed; see {report.sweep_dir}")


def _flatten(nested: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in nested.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat
