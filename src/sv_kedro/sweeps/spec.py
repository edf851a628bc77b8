"""Sweep definitions: a grid of ``--params`` overrides x seeds for one system.

A sweep lives under ``sweeps.<name>`` in the parameters (``conf/base/parameters_sweeps.yml``)::

    pooling_study:
      system: wav2vec2_sv_aam        # the namespace every key below is relative to
      pipeline: supervised_training
      grid:                          # cartesian product of the axes
        model.pooling: [mean, mean+std, attentive]
      variants:                      # and/or named rows, each a set of overrides
        no_freeze: {model.encoder.completely_freeze_feature_extractor: false}
      seeds: [0, 1, 2]               # every grid point runs once per seed
      seed_key: training.seed
      params: {training.max_steps: 200}   # overrides shared by every run
      metric: {trial_set: test, backend: fusion}
      executor: local                # local | slurm
      isolation: subprocess          # local runs: subprocess | in_process
      output_root: data/09_sweeps
      slurm: {partition: gpu, gpus_per_node: 1, time_min: 600}

With both ``variants`` and ``grid``, every variant is crossed with every grid point. A grid
point is named ``<variant>__<axis>=<value>__...``; a run adds ``__seed=<seed>``.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sv_kedro.training.launcher import SlurmConfig, _from_mapping
from sv_kedro.utils.params import as_int, check_keys

EXECUTORS = ("local", "slurm")
ISOLATIONS = ("subprocess", "in_process")
SPEC_KEYS = (
    "system",
    "pipeline",
    "grid",
    "variants",
    "seeds",
    "seed_key",
    "params",
    "metric",
    "executor",
    "isolation",
    "output_root",
    "env",
    "slurm",
    "description",
)
METRIC_KEYS = ("trial_set", "backend")


@dataclass(frozen=True)
class SweepRun:
    """One ``kedro run`` of a sweep: a grid point at one seed.

    ``overrides`` are the dotted keys relative to the system (``model.pooling``);
    ``runtime_params`` the nested ``--params`` mapping with the system prefix.
    """

    run_id: str
    point: str
    seed: int
    overrides: dict[str, Any]
    runtime_params: dict[str, Any]


@dataclass
class SweepSpec:
    """A parsed sweep definition (see the module docstring)."""

    name: str
    system: str
    pipeline: str = "supervised_training"
    grid: dict[str, list[Any]] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    seed_key: str = "training.seed"
    params: dict[str, Any] = field(default_factory=dict)
    metric: dict[str, str] = field(
        default_factory=lambda: {"trial_set": "test", "backend": "fusion"}
    )
    executor: str = "local"
    isolation: str = "subprocess"
    output_root: str = "data/09_sweeps"
    env: str | None = None
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    description: str = ""

    @classmethod
    def from_params(cls, name: str, values: Mapping[str, Any]) -> SweepSpec:
        """Validate a ``sweeps.<name>`` mapping; errors name the sweep and the key."""
        where = f"sweeps.{name}"
        if not isinstance(values, Mapping):
            raise ValueError(f"{where} must be a mapping, got {type(values).__name__}")
        check_keys(values, SPEC_KEYS, where)
        if not values.get("system"):
            raise ValueError(f"{where}.system is required (the namespace to sweep)")
        grid = dict(values.get("grid") or {})
        for axis, axis_values in grid.items():
            if not isinstance(axis_values, Sequence) or isinstance(axis_values, str):
                raise ValueError(f"{where}.grid.{axis} must be a list of values")
            if not axis_values:
                raise ValueError(f"{where}.grid.{axis} is empty")
        variants = {str(k): dict(v or {}) for k, v in (values.get("variants") or {}).items()}
        raw_seeds = values.get("seeds", [0])
        if isinstance(raw_seeds, str) or not isinstance(raw_seeds, Sequence):
            raise ValueError(f"{where}.seeds must be a list of integers, got {raw_seeds!r}")
        # An empty list would otherwise run nothing, or silently fall back to seed 0.
        if not raw_seeds:
            raise ValueError(f"{where}.seeds is empty: give at least one seed")
        seeds = [as_int(seed, f"{where}.seeds[{i}]") for i, seed in enumerate(raw_seeds)]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{where}.seeds has duplicates: {seeds}")
        spec = cls(
            name=name,
            system=str(values["system"]),
            pipeline=str(values.get("pipeline", "supervised_training")),
            grid={str(k): list(v) for k, v in grid.items()},
            variants=variants,
            seeds=seeds,
            seed_key=str(values.get("seed_key", "training.seed")),
            params=dict(values.get("params") or {}),
            metric=_metric(values.get("metric"), f"{where}.metric"),
            executor=str(values.get("executor", "local")),
            isolation=str(values.get("isolation", "subprocess")),
            output_root=str(values.get("output_root", "data/09_sweeps")),
            env=values.get("env"),
            slurm=_from_mapping(SlurmConfig, values.get("slurm") or {}, f"{where}.slurm"),
            description=str(values.get("description", "")),
        )
        if spec.executor not in EXECUTORS:
            raise ValueError(f"{where}.executor: {spec.executor!r} is not one of {EXECUTORS}")
        if spec.isolation not in ISOLATIONS:
            raise ValueError(f"{where}.isolation: {spec.isolation!r} is not one of {ISOLATIONS}")
        _check_pipeline_and_system(spec.pipeline, spec.system, where)
        return spec

    def points(self) -> list[tuple[str, dict[str, Any]]]:
        """``(point name, overrides)`` of every grid point, in definition order."""
        variants = list(self.variants.items()) or [("", {})]
        axes = list(self.grid)
        combos = list(itertools.product(*(self.grid[a] for a in axes))) if axes else [()]
        points = []
        for (variant, variant_overrides), combo in itertools.product(variants, combos):
            overrides = {**self.params, **variant_overrides, **dict(zip(axes, combo, strict=True))}
            parts = ([variant] if variant else []) + [
                f"{axis}={_label(value)}" for axis, value in zip(axes, combo, strict=True)
            ]
            points.append(("__".join(parts) or "default", overrides))
        return points

    def runs(self) -> list[SweepRun]:
        """Every grid point at every seed."""
        runs = []
        for point, overrides in self.points():
            for seed in self.seeds:
                with_seed = {**overrides, self.seed_key: seed}
                runs.append(
                    SweepRun(
                        run_id=_slug(f"{point}__seed={seed}"),
                        point=point,
                        seed=seed,
                        overrides=with_seed,
                        runtime_params=nest_overrides(self.system, with_seed),
                    )
                )
        ids = [run.run_id for run in runs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"sweeps.{self.name}: two grid points map to the same run folder")
        return runs


def _metric(values: Any, where: str) -> dict[str, str]:
    """``metric`` checked: a misspelt ``backnd`` would select the default back-end.

    The back-end is checked against evaluation's; the trial set is not: the names of the
    extra trial lists are file names in ``trial_lists``, known only when a run loads them.
    """
    from sv_kedro.pipelines.evaluation.nodes import BACKENDS, PAIR_BACKEND

    values = values or {}
    if not isinstance(values, Mapping):
        raise ValueError(f"{where} must be a mapping, got {values!r}")
    check_keys(values, METRIC_KEYS, where)
    metric = {"trial_set": "test", "backend": "fusion", **values}
    known = (*BACKENDS, PAIR_BACKEND)
    if metric["backend"] not in known:
        raise ValueError(f"{where}.backend: unknown {metric['backend']!r}; choose from {known}")
    if not isinstance(metric["trial_set"], str) or not metric["trial_set"]:
        raise ValueError(f"{where}.trial_set must be a trial set name, got {metric['trial_set']!r}")
    return {key: str(value) for key, value in metric.items()}


def _check_pipeline_and_system(pipeline_name: str, system: str, where: str) -> None:
    """Refuse a pipeline the project does not register, or a system that is no namespace
    of it: ``--dry-run`` would accept either and then every run would fail.

    The registry is called directly (building the pipelines takes a fraction of a second),
    as ``kedro.framework.project.pipelines`` is empty until a project is bootstrapped.
    """
    from sv_kedro.pipeline_registry import register_pipelines

    registered = register_pipelines()
    if pipeline_name not in registered:
        raise ValueError(
            f"{where}.pipeline: unknown {pipeline_name!r}; registered {sorted(registered)}"
        )
    # A run is `kedro run --namespaces <system>`: nodes under that namespace must exist.
    namespaces = {node.namespace for node in registered[pipeline_name].nodes if node.namespace}
    if not any(ns == system or ns.startswith(f"{system}.") for ns in namespaces):
        known = sorted({ns.split(".")[0] for ns in namespaces})
        raise ValueError(
            f"{where}.system: {system!r} is not a system of pipeline {pipeline_name!r}; "
            f"known {known}"
        )


def _label(value: Any) -> str:
    if isinstance(value, Mapping):
        return "-".join(f"{k}:{_label(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "-".join(_label(v) for v in value)
    return str(value)


def _slug(text: str) -> str:
    """A folder-safe version of a run name (``+`` and ``=`` kept: ``mean+std``)."""
    return re.sub(r"[^A-Za-z0-9_.+=-]", "_", text)


def nest_overrides(prefix: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"model.pooling": "max"}`` -> ``{prefix: {"model": {"pooling": "max"}}}``."""
    nested: dict[str, Any] = {}
    for dotted, value in overrides.items():
        keys = [prefix, *str(dotted).split(".")] if prefix else str(dotted).split(".")
        cursor = nested
        for key in keys[:-1]:
            child = cursor.setdefault(key, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {dotted!r} conflicts with a value set above it")
            cursor = child
        cursor[keys[-1]] = copy.deepcopy(value)
    return nested
