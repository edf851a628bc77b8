"""Checked DINO settings (``ssl_pseudo_labeling.dino.task`` / ``.data``), naming the key.

The training task and the loader read them in the training workers; the pipeline's
session-start check (``pipelines.ssl_pseudo_labeling.settings``) runs the same functions
first, with no data, so that a wrong value stops the run before anything trains.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sv_kedro.audio.augmentation import AugmentationConfig
from sv_kedro.systems.loaders import AUGMENTATION_SOURCES
from sv_kedro.utils.params import as_float, as_int

TASK_DEFAULTS: dict[str, float] = {
    "student_temperature": 0.1,
    "teacher_temperature": 0.04,
    "teacher_temperature_start": 0.04,
    "warmup_teacher_steps": 0,
    "center_momentum": 0.9,
    "ema_momentum": 0.996,
    "ema_momentum_end": 1.0,
}
LOADER_DEFAULTS: dict[str, Any] = {
    "batch_size": 32,
    "global_crops": 2,
    "global_seconds": 3.0,
    "local_crops": 4,
    "local_seconds": 1.5,
    "max_read_seconds": 12.0,
    "sample_rate": 16000,
    "num_workers": 0,
    "augmentation": None,
    "shard_dir": None,  # read data_engineering's WebDataset shards instead of the files
    "shuffle_buffer": 1000,  # with shard_dir: items shuffled within each worker's stream
}


def checked_data_config(
    config: Mapping[str, Any], where: str = "dino.data", extra_keys: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The DINO loader's settings with defaults filled in and numbers converted; a wrong
    one raises ``ValueError`` naming ``<where>.<key>``. Reads no data, so the session-start
    check runs it too. ``extra_keys``: keys the caller adds (the manifest path, the seed)."""
    if not isinstance(config, Mapping):
        raise ValueError(f"{where} must be a mapping, got {config!r}")
    unknown = sorted(set(config) - set(LOADER_DEFAULTS) - set(extra_keys))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(LOADER_DEFAULTS)}")
    checked = {**LOADER_DEFAULTS, **dict(config)}
    for key, default in LOADER_DEFAULTS.items():  # the defaults' types are the keys' types
        if isinstance(default, float):
            checked[key] = as_float(checked[key], f"{where}.{key}")
            _check_positive_finite(checked[key], f"{where}.{key}")
        elif isinstance(default, int):
            checked[key] = as_int(checked[key], f"{where}.{key}")
            lowest = 0 if key in ("local_crops", "num_workers") else 1
            if checked[key] < lowest:
                raise ValueError(f"{where}.{key} must be >= {lowest}, got {checked[key]}")
    _check_crops(checked, where)
    _check_augmentation(checked["augmentation"], checked["sample_rate"], f"{where}.augmentation")
    return checked


def _check_augmentation(augmentation: Any, sample_rate: int, where: str) -> None:
    """The options ``build_augmenter`` reads in the workers, checked here with the key path
    (there a misspelt weight stopped DINO with no key named); folders are looked at there."""
    if not augmentation:
        return  # null or {}: no augmentation
    if not isinstance(augmentation, Mapping):
        raise ValueError(f"{where} must be a mapping or null, got {augmentation!r}")
    options = {k: v for k, v in augmentation.items() if k not in AUGMENTATION_SOURCES}
    try:
        AugmentationConfig.from_dict({**options, "sample_rate": sample_rate}).probabilities()
        as_int(augmentation.get("simulated_rirs", 50), "simulated_rirs")
    except (ValueError, TypeError, ZeroDivisionError) as exc:
        raise ValueError(f"{where}: {exc}") from exc


def _check_positive_finite(value: float, key: str) -> None:
    if not value > 0:  # NaN included
        raise ValueError(f"{key} must be > 0, got {value}")
    if value == math.inf:
        # inf passes "> 0": an infinite temperature makes every distribution uniform (nothing
        # to learn), an infinite crop or read window cannot be cut.
        raise ValueError(f"{key} must be a finite number, got {value}")


def _check_crops(data: Mapping[str, Any], where: str) -> None:
    """Crop counts and lengths that DINO cannot learn from, refused before any audio is read."""
    if data["global_crops"] + data["local_crops"] < 2:
        # The loss pairs each teacher (global) view with every *other* student view.
        raise ValueError(
            f"{where}: DINO needs at least two views, got global_crops={data['global_crops']} "
            f"and local_crops={data['local_crops']}; raise {where}.global_crops or "
            f"{where}.local_crops"
        )
    if data["local_crops"] > 0 and data["local_seconds"] > data["global_seconds"]:
        # Local-to-global is what DINO learns: "local" crops longer than the global ones
        # (a swapped pair of values) turn the task around without an error.
        raise ValueError(
            f"{where}.local_seconds={data['local_seconds']} is longer than "
            f"{where}.global_seconds={data['global_seconds']}; local crops must not be longer "
            "than global ones"
        )
    longest = max(data["global_seconds"], data["local_seconds"] if data["local_crops"] else 0.0)
    if longest > data["max_read_seconds"]:
        # Crops are cut from a read window of at most max_read_seconds: a longer crop is that
        # window repeated (wrap-padded), at the cost of decoding and encoding the repeats.
        raise ValueError(
            f"{where}: crops of {longest} s are longer than the "
            f"{where}.max_read_seconds={data['max_read_seconds']} s they are cut from (they "
            f"would repeat the window); shorten the crops or raise {where}.max_read_seconds"
        )


def checked_task_config(config: Mapping[str, Any], where: str = "dino.task") -> dict[str, float]:
    """The DINO task's settings (see the module docstring) with defaults filled in; a wrong
    one raises ``ValueError`` naming ``<where>.<key>``."""
    if not isinstance(config, Mapping):
        raise ValueError(f"{where} must be a mapping, got {config!r}")
    unknown = sorted(set(config) - set(TASK_DEFAULTS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed {sorted(TASK_DEFAULTS)}")
    merged = {**TASK_DEFAULTS, **dict(config)}
    checked = {k: as_float(v, f"{where}.{k}") for k, v in merged.items()}
    for key in ("student_temperature", "teacher_temperature", "teacher_temperature_start"):
        _check_positive_finite(checked[key], f"{where}.{key}")
    for key in ("center_momentum", "ema_momentum", "ema_momentum_end"):
        if not 0 <= checked[key] <= 1:
            raise ValueError(f"{where}.{key} must be within [0, 1], got {checked[key]}")
    if checked["ema_momentum_end"] < checked["ema_momentum"]:
        # The teacher should settle as training ends; a falling ramp makes it follow the
        # student ever more closely instead (and collapse), with no error.
        raise ValueError(
            f"{where}.ema_momentum_end={checked['ema_momentum_end']} is below "
            f"{where}.ema_momentum={checked['ema_momentum']}: the EMA ramp runs from "
            "ema_momentum up to ema_momentum_end; swap them or set them equal"
        )
    # A step count: a negative one was taken for 0, a fraction is no step count.
    warmup = as_int(merged["warmup_teacher_steps"], f"{where}.warmup_teacher_steps")
    if warmup < 0:
        raise ValueError(f"{where}.warmup_teacher_steps must be >= 0, got {warmup}")
    checked["warmup_teacher_steps"] = warmup
    return checked


__all__ = ["LOADER_DEFAULTS", "TASK_DEFAULTS", "checked_data_config", "checked_task_config"]
