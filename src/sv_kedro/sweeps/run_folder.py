"""A sweep run's folder: its bookkeeping files, and whether its work still counts.

- ``run.json``: what to run (pipeline, env, namespace, ``--params`` overrides);
- ``result.json``: written last, on success, with the run's metrics. Its presence marks
  the run as finished: a re-run of the sweep skips it. One that cannot be read is moved
  aside to ``result.json.corrupt`` and the run is done again;
- ``failure.json``: the error of the last failed attempt (a re-run tries again). An
  attempt starts by renaming it to ``failure.json.previous``; a run killed before it can
  write one (out of memory, a time limit) gets one from the sweep, with its exit status;
- ``log.txt``: stdout and stderr of a subprocess run.

A re-run with other settings (pipeline, system, env or any override) than a run folder's
``run.json`` records is refused when that folder holds a result or outputs (a checkpoint
the training would resume from, MLflow's tracking, logs: anything but the files above and
what preparing the folder puts there): skipping it would report the old result as the new
settings', and redoing it would overwrite that result. A change of ``metric`` alone is no
reason to re-run: the value is selected again from the run's ``metrics.json``.

``failure.json`` and ``log.txt`` are of the attempt with the settings ``run.json`` records.
A folder prepared with other settings moves them aside to ``<name>.other-settings`` (kept
for a look), and the results table counts no failure of a folder whose ``run.json``
records other settings than the sweep's (one not prepared again, beyond ``--max-runs``):
that failure says nothing of these settings.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from sv_kedro.sweeps.spec import SweepRun, SweepSpec
from sv_kedro.utils.atomic import atomic_write_path

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
RESULT_FILE = "result.json"
FAILURE_FILE = "failure.json"
PREVIOUS_FAILURE_FILE = "failure.json.previous"
LOG_FILE = "log.txt"
# Input layers a run reads from the project (outputs 06-08 stay inside the run folder).
SHARED_LAYERS = ("01_raw", "02_intermediate", "03_primary", "04_feature", "05_model_input")


class SweepSettingsError(ValueError):
    """Run folders of a sweep hold work done with other settings than the ones asked for."""


def write_json(path: Path, payload: dict[str, Any]) -> None:
    with atomic_write_path(path) as tmp:
        Path(tmp).write_text(json.dumps(payload, indent=2, default=str))


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` when the file is absent.

    A file that holds no JSON object (a truncated copy, a full disk) raises ``ValueError``
    naming it: json's own message gives only a character offset.
    """
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value


def select_metric(metrics: dict[str, Any], metric: dict[str, str], where: str) -> dict[str, float]:
    """EER and minDCFs of ``metric``'s trial set and back-end from an evaluation metrics JSON."""
    trial_set, backend = metric["trial_set"], metric["backend"]
    if trial_set not in metrics:
        raise KeyError(f"{where}: no trial set {trial_set!r}; found {sorted(metrics)}")
    by_backend = metrics[trial_set]
    if backend not in by_backend:
        raise KeyError(
            f"{where}: no back-end {backend!r} in trial set {trial_set!r}; "
            f"found {sorted(by_backend)}"
        )
    values = by_backend[backend]
    return {key: float(values[key]) for key in ("eer", "min_dcf_0.01", "min_dcf_0.05")}


def metrics_file(run_dir: Path, namespace: str) -> Path:
    return run_dir / "data" / "08_reporting" / namespace / "metrics.json"


# What run.json records that decides a run's outcome. Its runtime_params follow from the
# namespace and the overrides; its metric only picks a value out of the run's metrics.json.
SETTINGS = ("pipeline", "namespace", "env")
_UNSET = "<unset>"


def _shown(value: Any) -> str:
    return "unset" if value is _UNSET else repr(value)


def _difference(recorded: dict[str, Any], spec: SweepSpec, run: SweepRun) -> str:
    """The first setting in which ``recorded`` (a run.json) differs from ``run``, as
    ``"<setting> was <old> and is now <new>"``; ``""`` when none does.

    The wanted values are compared as they would read back from run.json (tuples as lists,
    odd types as strings), and as JSON text: ``true`` is not ``1`` here.
    """
    wanted = {
        "pipeline": spec.pipeline,
        "namespace": spec.system,
        "env": spec.env,
        "overrides": run.overrides,
    }
    wanted = json.loads(json.dumps(wanted, default=str))
    pairs = [(name, recorded.get(name, _UNSET), wanted[name]) for name in SETTINGS]
    old, new = recorded.get("overrides", _UNSET), wanted["overrides"]
    if isinstance(old, dict):
        keys = [*new, *(key for key in old if key not in new)]
        pairs += [(key, old.get(key, _UNSET), new.get(key, _UNSET)) for key in keys]
    else:
        pairs.append(("overrides", old, new))
    for name, old_value, new_value in pairs:
        if json.dumps(old_value, sort_keys=True) != json.dumps(new_value, sort_keys=True):
            return f"{name} was {_shown(old_value)} and is now {_shown(new_value)}"
    return ""


def recorded_difference(run_dir: Path, spec: SweepSpec, run: SweepRun) -> str | None:
    """How the settings ``run_dir``'s run.json records differ from ``run``'s (see
    :func:`_difference`): ``""`` when they do not, ``None`` when run.json is missing or
    unreadable."""
    try:
        recorded = read_json(run_dir / RUN_FILE)
    except ValueError:
        return None
    return None if recorded is None else _difference(recorded, spec, run)


# Top-level files of a run folder that are no work of the run: what preparing it puts
# there and the sweep's notes on an attempt (also when moved aside: ``<name>.<why>``).
_NOT_WORK = (RUN_FILE, "pyproject.toml", "conf", FAILURE_FILE, LOG_FILE)
_ASIDE = (
    f"{RESULT_FILE}.corrupt",
    f"{FAILURE_FILE}.other-settings",
    f"{LOG_FILE}.other-settings",
    PREVIOUS_FAILURE_FILE,
)


def _holds_work(run_dir: Path) -> bool:
    """Whether the run wrote anything into its folder: a result, or any file but
    :data:`_NOT_WORK` and the links preparing it makes (conf, the shared input layers).

    What a run writes is whatever its configuration says, so everything else counts: a
    checkpoint under ``data/`` (what a re-run resumes the training from), MLflow's
    ``mlflow.db`` and ``mlruns/`` (relative to the run folder, its working directory),
    Kedro's ``logs/``, Slurm's output under ``data/09_slurm``. Stops at the first file.
    """
    prepared_links = {run_dir / "conf", *(run_dir / "data" / layer for layer in SHARED_LAYERS)}
    # os.walk does not follow folder links: those a run made count, as links.
    for folder, subfolders, files in os.walk(run_dir):
        here = Path(folder)
        for name in files:  # files, links to files, and broken links
            if here == run_dir and (name in _NOT_WORK or name.startswith(_ASIDE)):
                continue
            if here / name in prepared_links:  # a shared layer whose target is gone
                continue
            return True
        for name in subfolders:
            if (here / name).is_symlink() and here / name not in prepared_links:
                return True
    return False


def check_recorded_settings(spec: SweepSpec, sweep_dir: Path) -> None:
    """Refuse (``SweepSettingsError``) when run folders of ``spec`` hold work done with other
    settings; only reads, so that ``--dry-run`` can call it too."""
    runs = spec.runs()
    differing: list[tuple[str, str]] = []
    for run in runs:
        run_dir = sweep_dir / "runs" / run.run_id
        if not _holds_work(run_dir):
            continue  # nothing to pass off or to resume from: prepared anew with these settings
        try:
            recorded = read_json(run_dir / RUN_FILE)
        except ValueError as error:
            differing.append((run.run_id, f"its settings are unknown: {error}"))
            continue
        if recorded is None:
            differing.append((run.run_id, f"its settings are unknown: it has no {RUN_FILE}"))
            continue
        difference = _difference(recorded, spec, run)
        if difference:
            differing.append((run.run_id, difference))
    if differing:
        run_id, difference = differing[0]
        raise SweepSettingsError(
            f"sweep {spec.name}: {len(differing)} of {len(runs)} run folder(s) in "
            f"{sweep_dir / 'runs'} hold results or checkpoints made with other settings "
            f"(first: {run_id}, {difference}). Skipping them would report their results as "
            "made with these settings and redoing them would overwrite them, so nothing was "
            "run. Give the sweep another folder (kedro sweep --output-root, or output_root in "
            "its definition) or another name, or delete those run folders to redo them."
        )


def _move_aside(path: Path, why: str = "corrupt") -> Path:
    """Rename ``path`` to ``<name>.<why>`` (``.<why>-2``... when taken): kept for a look,
    out of the way of the re-run."""
    aside, number = path.with_name(f"{path.name}.{why}"), 2
    while aside.exists():
        aside, number = path.with_name(f"{path.name}.{why}-{number}"), number + 1
    path.rename(aside)
    return aside


def set_aside_other_attempts(run_dir: Path, spec: SweepSpec, run: SweepRun) -> None:
    """Before ``run_dir`` is prepared for ``run``: move failure.json and log.txt aside to
    ``<name>.other-settings`` unless run.json confirms they are of ``run``'s settings.

    Otherwise the new run.json would claim an old attempt's failure for these settings,
    and the results table would report it for a run not done yet with them (one beyond
    ``--max-runs``, an interrupted sweep). An attempt's notes of the same settings stay.
    """
    notes = [run_dir / name for name in (FAILURE_FILE, LOG_FILE) if (run_dir / name).exists()]
    if not notes:
        return
    difference = recorded_difference(run_dir, spec, run)
    if difference == "":
        return
    asides = [_move_aside(note, "other-settings") for note in notes]
    log.info(
        "sweep run %s: prepared for other settings (%s); the last attempt's notes moved to %s",
        run_dir.name,
        difference or f"{RUN_FILE} missing or unreadable",
        ", ".join(aside.name for aside in asides),
    )


def start_attempt(run_dir: Path) -> None:
    """Before a run starts: the last attempt's ``failure.json`` becomes
    ``failure.json.previous``, so that a run killed before it can write its own (out of
    memory, a Slurm time limit) is not reported with the last attempt's error."""
    failure = run_dir / FAILURE_FILE
    if failure.exists():
        os.replace(failure, run_dir / PREVIOUS_FAILURE_FILE)


def record_lost_failure(run_dir: Path, message: str, wall_s: float) -> None:
    """Write ``failure.json`` for a run that ended without writing one (killed)."""
    if not (run_dir / FAILURE_FILE).exists():
        write_json(
            run_dir / FAILURE_FILE,
            {"run_id": run_dir.name, "error": message, "traceback": "", "wall_s": wall_s},
        )


def is_finished(run_dir: Path, metric: dict[str, str]) -> bool:
    """Whether the run has a readable result (its settings are checked already).

    A result for another trial set or back-end is re-selected from the run's metrics.json.
    """
    result_path = run_dir / RESULT_FILE
    try:
        result = read_json(result_path)
    except ValueError as error:
        aside = _move_aside(result_path)
        log.warning(
            "sweep run %s: %s; moved it to %s, the run is done again", run_dir.name, error, aside
        )
        return False
    if result is None:
        return False
    if result.get("metric") != metric:
        recorded = read_json(run_dir / RUN_FILE) or {}
        metrics_path = metrics_file(run_dir, str(recorded.get("namespace")))
        metrics = read_json(metrics_path)
        if metrics is None:
            raise SweepSettingsError(
                f"{result_path} holds the metric {result.get('metric')!r}, the sweep asks for "
                f"{metric!r}, and {metrics_path} to select it from is missing: delete "
                f"{run_dir} to redo the run"
            )
        try:
            selected = select_metric(metrics, metric, str(metrics_path))
        except KeyError as error:
            raise SweepSettingsError(f"metric {metric}: {error.args[0]}") from error
        result.update(metric=metric, **selected)
        write_json(result_path, result)
        write_json(run_dir / RUN_FILE, {**recorded, "metric": metric})
        log.info("sweep run %s: metric re-selected from %s", run_dir.name, metrics_path)
    return True
