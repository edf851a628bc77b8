"""Project-specific Kedro commands (Kedro picks up the click group ``cli`` in this module).

``kedro sweep <name>`` runs a sweep defined under ``sweeps.<name>`` in the parameters:

    kedro sweep --list
    kedro sweep pooling_study                       # local, one run after another
    kedro sweep lr_seed_grid --env voxceleb --executor slurm
    kedro sweep pooling_study --params training.max_steps=20 --max-runs 2

Re-running a command finishes only the runs that have no result yet. Re-running it with
other settings (``--params``, ``--env``) is refused while run folders hold results or
checkpoints of the old ones, which would pass for the new settings' (give it another
``--output-root``, or delete those run folders).

``kedro check-setup`` dry-runs supervised systems before a long job: for each it builds the
model, optimiser and data loader from the environment's parameters, loads one batch of the
training manifest and back-propagates its loss, and prints one line per system:

    kedro check-setup --env voxceleb
    kedro check-setup --systems ecapa_tdnn,xvector --params ecapa_tdnn.data.batch_size=8
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
@click.option(
    "--output-root",
    default=None,
    help="Write the sweep under OUTPUT_ROOT/<name>/ (default: the sweep's output_root).",
)
@click.option(
    "--max-runs",
    type=click.IntRange(min=1),
    default=None,
    help="Run at most this many (the rest later).",
)
@click.option("--list", "list_only", is_flag=True, help="List the defined sweeps and exit.")
@click.option("--dry-run", is_flag=True, help="Print the runs without running them.")
def sweep(
    name, env, params, executor, isolation, output_root, max_runs, list_only, dry_run
) -> None:
    """Run the sweep NAME: a grid of --params overrides x seeds, one kedro run each."""
    from sv_kedro.sweeps.execution import sweep_folder
    from sv_kedro.sweeps.project import list_sweeps, load_sweep_spec, run_project_sweep
    from sv_kedro.sweeps.run_folder import SweepSettingsError, check_recorded_settings

    project = Path.cwd()
    if list_only or not name:
        for sweep_name, description in list_sweeps(project, env).items():
            click.echo(f"{sweep_name}: {description}")
        return
    overrides = _flatten(_parse_params(params))
    chosen = (("executor", executor), ("isolation", isolation), ("output_root", output_root))
    settings = {k: v for k, v in chosen if v}
    try:
        spec = load_sweep_spec(project, name, env, overrides, settings)
    except KeyError as exc:  # an unknown NAME: its message lists the defined sweeps
        raise click.ClickException(str(exc.args[0])) from exc
    except ValueError as exc:  # a bad definition or a misspelt key: the message names it
        raise click.ClickException(str(exc)) from exc
    try:
        if dry_run:
            check_recorded_settings(spec, sweep_folder(spec, project))
            for run in spec.runs():
                click.echo(f"{run.run_id}: {run.overrides}")
            return
        report = run_project_sweep(project, spec, max_runs=max_runs)
    except SweepSettingsError as exc:
        raise click.ClickException(str(exc)) from exc
    counts = {s: sum(o.status == s for o in report.outcomes) for s in ("done", "skipped", "failed")}
    click.echo(report.markdown)
    click.echo(f"runs: {counts}; tables in {report.sweep_dir}")
    if counts["failed"]:
        raise click.ClickException(f"{counts['failed']} run(s) failed; see {report.sweep_dir}")


@cli.command(name="check-setup")
@click.option("--env", "-e", default=None, help="Kedro environment (e.g. voxceleb).")
@click.option("--systems", default="", help="Comma-separated systems; all when omitted.")
@click.option("--params", default="", help="Overrides as for kedro run: key=value,key2=value2.")
@click.option("--probe-items", type=int, default=2, help="Items of the batch to back-propagate.")
def check_setup(env, systems, params, probe_items) -> None:
    """Dry-run supervised systems: model, optimiser, loader, one batch, loss and gradients."""
    import tempfile

    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from sv_kedro.pipelines.supervised_training import SYSTEMS
    from sv_kedro.pipelines.supervised_training.nodes import check_training_setup

    chosen = [name.strip() for name in systems.split(",") if name.strip()] or list(SYSTEMS)
    unknown = sorted(set(chosen) - set(SYSTEMS))
    if unknown:
        raise click.BadParameter(f"unknown system(s) {unknown}; known: {list(SYSTEMS)}")
    runtime = _parse_params(params)
    project = Path.cwd()
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env, runtime_params=runtime) as session:
        context = session.load_context()
        if not context.catalog.exists("train_manifest"):
            raise click.ClickException(
                "train_manifest does not exist yet: run `kedro run --pipeline data_engineering`"
                + (f" --env {env}" if env else "")
            )
        manifest = context.catalog.load("train_manifest")
        parameters = context.params
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as work:
        for system in chosen:
            p = parameters[system]
            try:
                report = check_training_setup(
                    manifest,
                    p["model"],
                    p["loss"],
                    p["training"],
                    p["data"],
                    Path(work) / system,
                    probe_items,
                )
            except Exception as exc:  # reported per system; the others are still checked
                failed[system] = f"{type(exc).__name__}: {exc}"
                click.echo(f"{system}: FAILED {failed[system]}")
                continue
            click.echo(
                f"{system}: ok, {report['architecture']}, "
                f"{report['trainable_parameters']:,} of {report['parameters']:,} parameters "
                f"trainable, {report['optimizer']}, batch {report['batch_size']}, "
                f"{report['batches_per_epoch']} batches per epoch, "
                f"first loss {report['first_loss']:.3f}"
            )
    if failed:
        raise click.ClickException(f"{len(failed)} system(s) failed: {sorted(failed)}")


def _parse_params(params: str) -> dict:
    """``key=value,key2=value2`` as a nested dict, as ``kedro run --params`` reads it.

    OmegaConf would take an item without ``=`` as the key of a ``None`` value and pass it
    to every run, so such an item is refused here.
    """
    from omegaconf import OmegaConf

    if not params:
        return {}
    items = params.split(",")
    for item in items:
        key, equals, _ = item.partition("=")
        if not equals or not key.strip():
            raise click.BadParameter(
                f"{item!r} is not of the form key=value (e.g. training.max_steps=20)",
                param_hint="'--params'",
            )
    return OmegaConf.to_container(OmegaConf.from_dotlist(items))


def _flatten(nested: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in nested.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat
