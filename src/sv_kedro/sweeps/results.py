"""A sweep's results: one row per run, then mean ± std over seeds per grid point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sv_kedro.sweeps.run_folder import FAILURE_FILE, RESULT_FILE, read_json, recorded_difference
from sv_kedro.sweeps.spec import SweepSpec
from sv_kedro.utils.atomic import atomic_write_path

METRICS = ("eer", "min_dcf_0.01", "min_dcf_0.05")


def collect_runs(spec: SweepSpec, sweep_dir: Path) -> pd.DataFrame:
    """One row per run of ``spec``: status (done / failed / pending), metrics, error.

    A failure of a folder whose run.json records other settings than ``spec``'s (not
    prepared again since, e.g. beyond ``--max-runs``) is of those settings: the run is
    pending with these.
    """
    rows: list[dict[str, Any]] = []
    for run in spec.runs():
        run_dir = sweep_dir / "runs" / run.run_id
        result = read_json(run_dir / RESULT_FILE)  # unreadable: an error naming the file
        try:
            failure = read_json(run_dir / FAILURE_FILE)
        except ValueError as error:  # the run failed all the same; the table still gets made
            failure = {"error": str(error)}
        row: dict[str, Any] = {"point": run.point, "seed": run.seed, "run_id": run.run_id}
        if result is not None:
            row.update(status="done", **{m: result[m] for m in METRICS}, wall_s=result["wall_s"])
        elif failure is not None and not recorded_difference(run_dir, spec, run):
            row.update(status="failed", error=failure["error"], wall_s=failure.get("wall_s"))
        else:
            row.update(status="pending")
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in (*METRICS, "wall_s", "error"):
        if column not in frame:
            frame[column] = np.nan
    return frame[["point", "seed", "run_id", "status", *METRICS, "wall_s", "error"]]


def summarise_runs(runs: pd.DataFrame, spec: SweepSpec) -> pd.DataFrame:
    """Per grid point (definition order): runs done/failed, mean and std over seeds.

    EER is in percent. ``std`` is the sample standard deviation (ddof=1); with fewer than
    two finished seeds it is NaN.
    """
    order = [point for point, _ in spec.points()]
    rows = []
    for point in order:
        group = runs[runs["point"] == point]
        done = group[group["status"] == "done"]
        row: dict[str, Any] = {
            "point": point,
            "runs_done": len(done),
            "runs_failed": int((group["status"] == "failed").sum()),
            "seeds": " ".join(str(s) for s in done["seed"]),
        }
        for metric in METRICS:
            values = done[metric].astype(float).to_numpy()
            if metric == "eer":
                values = 100.0 * values
            name = "eer_percent" if metric == "eer" else metric
            row[f"{name}_mean"] = float(values.mean()) if len(values) else np.nan
            row[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_std(mean: float, std: float, digits: int) -> str:
    if np.isnan(mean):
        return "n/a"
    if np.isnan(std):
        return f"{mean:.{digits}f} ± n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def results_markdown(summary: pd.DataFrame, spec: SweepSpec) -> str:
    """The summary as a markdown table a person reads (EER %, minDCF, mean ± std)."""
    metric = spec.metric
    lines = [
        f"# Sweep `{spec.name}` ({spec.system})",
        "",
        spec.description or "",
        "",
        f"Trial set `{metric['trial_set']}`, back-end `{metric['backend']}`; "
        f"mean ± std over seeds {spec.seeds}.",
        "",
        "| grid point | runs | EER (%) | minDCF 0.01 | minDCF 0.05 |",
        "|---|---|---|---|---|",
    ]
    for row in summary.to_dict("records"):
        runs = f"{row['runs_done']}"
        if row["runs_failed"]:
            runs += f" ({row['runs_failed']} failed)"
        cells = [
            _mean_std(row["eer_percent_mean"], row["eer_percent_std"], 2),
            _mean_std(row["min_dcf_0.01_mean"], row["min_dcf_0.01_std"], 4),
            _mean_std(row["min_dcf_0.05_mean"], row["min_dcf_0.05_std"], 4),
        ]
        lines.append(f"| {row['point']} | {runs} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(spec: SweepSpec, sweep_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Collect, summarise and write ``runs.csv``, ``results.csv`` and ``results.md`` (atomic)
    into ``sweep_dir``; returns ``(runs, summary, markdown)``."""
    runs = collect_runs(spec, sweep_dir)
    summary = summarise_runs(runs, spec)
    markdown = results_markdown(summary, spec)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in (("runs.csv", runs), ("results.csv", summary)):
        with atomic_write_path(sweep_dir / name) as tmp:
            frame.to_csv(tmp, index=False)
    with atomic_write_path(sweep_dir / "results.md") as tmp:
        Path(tmp).write_text(markdown)
    return runs, summary, markdown
