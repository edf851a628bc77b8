"""Sweeps: the papers' grid searches and seed repeats as one ``kedro run`` per grid point.

``spec`` parses a definition from ``sweeps.<name>`` in the parameters, ``execution`` runs
each (grid point, seed) in its own folder locally or on Slurm and skips finished runs (or
refuses, when they were made with other settings), ``results`` turns the runs into a
mean ± std table. ``kedro sweep <name>`` (``sv_kedro.cli``) ties them together.
"""

from sv_kedro.sweeps.execution import run_point, run_sweep
from sv_kedro.sweeps.results import collect_runs, summarise_runs, write_results
from sv_kedro.sweeps.run_folder import SweepSettingsError
from sv_kedro.sweeps.spec import SweepRun, SweepSpec

__all__ = [
    "SweepRun",
    "SweepSettingsError",
    "SweepSpec",
    "collect_runs",
    "run_point",
    "run_sweep",
    "summarise_runs",
    "write_results",
]
