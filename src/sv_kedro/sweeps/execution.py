"""Run a sweep: one ``kedro run`` per (grid point, seed), each in its own folder.

Every run gets ``<output_root>/<sweep>/runs/<run_id>/``, a throw-away Kedro project that
shares the real project's ``conf`` and input data layers (``data/01_raw`` ..
``data/05_model_input``, symlinked) but writes its own checkpoints, embeddings and
metrics under its own ``data/06_models`` .. ``data/08_reporting``. So runs never overwrite
each other, and a finished run's outputs stay for inspection.

Its bookkeeping files, and when a finished run still counts, are ``run_folder``'s.

Executors: ``local`` runs one after another (``isolation: subprocess``, the default, starts
a fresh Python per run so a crash or a leak cannot touch the others; ``in_process`` saves
the start-up time); ``slurm`` submits one array task per run through ``submitit`` and
waits. A failed run is recorded and the others go on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sv_kedro.sweeps.run_folder import (
    FAILURE_FILE,
    LOG_FILE,
    RESULT_FILE,
    RUN_FILE,
    SHARED_LAYERS,
    check_recorded_settings,
    is_finished,
    metrics_file,
    read_json,
    record_lost_failure,
    select_metric,
    set_aside_other_attempts,
    start_attempt,
    write_json,
)
from sv_kedro.sweeps.spec import SweepRun, SweepSpec

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    """What happened to one run in this invocation: ``done``, ``skipped`` or ``failed``."""

    run_id: str
    status: str
    wall_s: float = 0.0
    error: str = ""


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        if link.is_symlink() and link.resolve() == target.resolve():
            return
        if link.is_symlink() or link.is_file():
            link.unlink()
        else:
            raise FileExistsError(f"{link} exists and is not a link to {target}")
    link.symlink_to(target, target_is_directory=target.is_dir())


def prepare_run_dir(project: Path, sweep_dir: Path, spec: SweepSpec, run: SweepRun) -> Path:
    """Create (or refresh) the run's project folder and its ``run.json`` (the notes of an
    attempt with other settings are moved aside: see ``run_folder``)."""
    project = project.resolve()
    run_dir = sweep_dir / "runs" / run.run_id
    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    (run_dir / "src").mkdir(exist_ok=True)  # kedro checks the source folder exists
    _link(project / "conf", run_dir / "conf")
    shutil.copyfile(project / "pyproject.toml", run_dir / "pyproject.toml")
    for layer in SHARED_LAYERS:
        if (project / "data" / layer).exists():
            _link(project / "data" / layer, run_dir / "data" / layer)
    set_aside_other_attempts(run_dir, spec, run)
    write_json(
        run_dir / RUN_FILE,
        {
            "sweep": spec.name,
            "run_id": run.run_id,
            "point": run.point,
            "seed": run.seed,
            "pipeline": spec.pipeline,
            "namespace": spec.system,
            "env": spec.env,
            "overrides": run.overrides,
            "runtime_params": run.runtime_params,
            "metric": spec.metric,
        },
    )
    return run_dir


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """Run the block with ``path`` as the working directory; restored afterwards."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _kedro_run(run_dir: Path, recorded: dict[str, Any]) -> None:
    """``kedro run --pipelines <pipeline> --namespaces <namespace>`` in the run folder."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    with working_directory(run_dir):
        bootstrap_project(run_dir)
        with KedroSession.create(
            project_path=run_dir, env=recorded["env"], runtime_params=recorded["runtime_params"]
        ) as session:
            session.run(pipeline_names=[recorded["pipeline"]], namespaces=[recorded["namespace"]])


def run_point(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Run one sweep run in its folder (what a subprocess or a Slurm task executes).

    Writes ``result.json`` on success and ``failure.json`` (then re-raises) on error.
    """
    run_dir = Path(run_dir).resolve()
    spec = read_json(run_dir / RUN_FILE)
    if spec is None:
        raise FileNotFoundError(f"{run_dir / RUN_FILE} is missing: prepare the run folder first")
    start = time.perf_counter()
    try:
        _kedro_run(run_dir, spec)
        metrics_path = metrics_file(run_dir, spec["namespace"])
        metrics = read_json(metrics_path)
        if metrics is None:
            raise FileNotFoundError(f"{metrics_path}: the run wrote no evaluation metrics")
        result = {
            "run_id": spec["run_id"],
            "point": spec["point"],
            "seed": spec["seed"],
            "overrides": spec["overrides"],
            "metric": spec["metric"],
            **select_metric(metrics, spec["metric"], str(metrics_path)),
            "wall_s": time.perf_counter() - start,
        }
    except BaseException as error:
        write_json(
            run_dir / FAILURE_FILE,
            {
                "run_id": spec["run_id"],
                "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(),
                "wall_s": time.perf_counter() - start,
            },
        )
        raise
    write_json(run_dir / RESULT_FILE, result)
    (run_dir / FAILURE_FILE).unlink(missing_ok=True)
    return result


def _failure_message(run_dir: Path, fallback: str) -> str:
    try:
        failure = read_json(run_dir / FAILURE_FILE)
    except ValueError as error:  # the failure is still reported; the sweep goes on
        return f"{fallback} ({error})"
    return str(failure.get("error", fallback)) if failure else fallback


def execute_local(run_dirs: Sequence[Path], isolation: str) -> list[RunOutcome]:
    """Run each folder one after another; a failure is recorded and the next run starts."""
    outcomes = []
    for index, run_dir in enumerate(run_dirs, 1):
        log.info("sweep run %d/%d: %s", index, len(run_dirs), run_dir.name)
        start = time.perf_counter()
        start_attempt(run_dir)
        if isolation == "in_process":
            try:
                run_point(run_dir)
                outcome = RunOutcome(run_dir.name, "done")
            except Exception as error:  # one bad grid point must not stop the sweep
                log.error("sweep run %s failed: %s", run_dir.name, error)
                outcome = RunOutcome(
                    run_dir.name, "failed", error=f"{type(error).__name__}: {error}"
                )
        else:
            with open(run_dir / LOG_FILE, "w") as log_file:
                completed = subprocess.run(
                    [sys.executable, "-m", "sv_kedro.sweeps.execution", str(run_dir)],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    check=False,
                )
            if completed.returncode == 0:
                outcome = RunOutcome(run_dir.name, "done")
            else:
                code = completed.returncode
                ended = (
                    f"killed by {signal.Signals(-code).name}"
                    if code < 0 and -code in signal.valid_signals()
                    else f"exit code {code}"
                )
                lost = f"{ended}; see {run_dir / LOG_FILE}"
                record_lost_failure(run_dir, lost, time.perf_counter() - start)
                message = _failure_message(run_dir, lost)
                log.error("sweep run %s failed: %s", run_dir.name, message)
                outcome = RunOutcome(run_dir.name, "failed", error=message)
        outcome.wall_s = time.perf_counter() - start
        outcomes.append(outcome)
    return outcomes


def execute_slurm(run_dirs: Sequence[Path], spec: SweepSpec, sweep_dir: Path) -> list[RunOutcome]:
    """One Slurm array task per run (``submitit``); waits for all of them."""
    import submitit

    slurm = spec.slurm
    executor = submitit.AutoExecutor(folder=str(sweep_dir / "slurm"), cluster=slurm.cluster)
    executor.update_parameters(**slurm.submitit_parameters(f"{slurm.job_name}-{spec.name}", 1))
    for run_dir in run_dirs:
        start_attempt(run_dir)
    jobs = executor.map_array(run_point, [str(path) for path in run_dirs])
    log.info("submitted %d sweep run(s) to Slurm; logs in %s", len(jobs), sweep_dir / "slurm")
    outcomes = []
    for run_dir, job in zip(run_dirs, jobs, strict=True):
        start = time.perf_counter()
        try:
            job.result()
            outcome = RunOutcome(run_dir.name, "done")
        except Exception as error:  # submitit raises FailedJobError / UncompletedJobError
            lost = f"Slurm job {job.job_id}: {error}"
            record_lost_failure(run_dir, lost, time.perf_counter() - start)
            message = _failure_message(run_dir, lost)
            log.error("sweep run %s failed: %s", run_dir.name, message)
            outcome = RunOutcome(run_dir.name, "failed", error=message)
        outcome.wall_s = time.perf_counter() - start
        outcomes.append(outcome)
    return outcomes


def sweep_folder(spec: SweepSpec, project: str | os.PathLike[str]) -> Path:
    """``<output_root>/<name>``, a relative ``output_root`` taken from the project root."""
    output_root = Path(spec.output_root)
    return (output_root if output_root.is_absolute() else Path(project) / output_root) / spec.name


def run_sweep(
    spec: SweepSpec, project: str | os.PathLike[str], max_runs: int | None = None
) -> tuple[Path, list[RunOutcome]]:
    """Run every unfinished run of ``spec`` (at most ``max_runs`` of them).

    Returns the sweep folder and this invocation's outcomes (finished runs: ``skipped``).
    Raises ``SweepSettingsError``, before anything runs, when run folders hold work done
    with other settings (see the module docstring).
    """
    # Below 1 no run would start, and the sweep would report success having done nothing.
    if max_runs is not None and max_runs < 1:
        raise ValueError(f"max_runs must be >= 1 (or None for all), got {max_runs}")
    project = Path(project).resolve()
    sweep_dir = sweep_folder(spec, project)
    check_recorded_settings(spec, sweep_dir)
    outcomes: list[RunOutcome] = []
    pending: list[Path] = []
    for run in spec.runs():
        run_dir = sweep_dir / "runs" / run.run_id
        if is_finished(run_dir, spec.metric):
            outcomes.append(RunOutcome(run.run_id, "skipped"))
            continue
        if max_runs is not None and len(pending) >= max_runs:
            continue
        pending.append(prepare_run_dir(project, sweep_dir, spec, run))
    log.info(
        "sweep %s: %d run(s) to do, %d already finished", spec.name, len(pending), len(outcomes)
    )
    if pending:
        if spec.executor == "slurm":
            outcomes += execute_slurm(pending, spec, sweep_dir)
        else:
            outcomes += execute_local(pending, spec.isolation)
    return sweep_dir, outcomes


if __name__ == "__main__":
    # ``python -m sv_kedro.sweeps.execution <run_dir>``: the subprocess of a local sweep.
    if len(sys.argv) != 2:
        sys.exit("usage: python -m sv_kedro.sweeps.execution <run folder>")
    try:
        run_point(sys.argv[1])
    except Exception:
        traceback.print_exc()
        sys.exit(1)
