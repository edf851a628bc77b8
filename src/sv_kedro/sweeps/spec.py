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
        unknown = sorted(set(values) - set(SPEC_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {list(SPEC_KEYS)}")
        if not values.get("system"):
            raise ValueError(f"{where}.system is required (the namespace to sweep)")
        grid = dict(values.get("grid") or {})
        for axis, axis_values in grid.items():
            if not isinstance(axis_values, Sequence) or isinstance(axis_values, str):
                raise ValueError(f"{where}.grid.{axis} must be a list of values")
            if not axis_values:
                raise ValueError(f"{where}.grid.{axis} is empty")
        variants = {str(k): dict(v or {}) for k, v in (values.get("variants") or {}).items()}
        seeds = [int(s) for s in (values.get("seeds") or [0])]
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
            metric={"trial_set": "test", "backend": "fusion", **(values.get("metric") or {})},
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
