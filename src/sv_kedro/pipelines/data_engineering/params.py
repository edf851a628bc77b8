"""What every data_engineering node shares: its error type and checked parameter access."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sv_kedro.utils.params import as_bool, as_float, as_int, check_keys

SOURCES = ("synthetic", "folder", "voxceleb")
ROOT = "data_engineering"

# Every key a node reads, by key path: sections are read with ``.get(key, default)``, so a
# misspelt key would otherwise be ignored without a word. ``synthetic.corpus`` is left to
# ``SyntheticCorpusConfig.from_dict``, which names its own unknown keys.
KEYS: dict[str, tuple[str, ...]] = {
    ROOT: (
        "source",
        "seed",
        "workers",
        "synthetic",
        "folder",
        "voxceleb",
        "validation",
        "split",
        "trials",
        "validation_pairs",
        "shards",
    ),
    f"{ROOT}.synthetic": ("root", "corpus"),
    f"{ROOT}.folder": ("roots", "suffixes"),
    f"{ROOT}.voxceleb": (
        "root",
        "extract_dir",
        "converted_dir",
        "parts",
        "audio_format",
        "test_parts",
        "train_parts",
        "trial_list_dirs",
        "trial_lists",
        "main_trial_list",
    ),
    # ValidationPolicy's fields, and where the fixed copies go.
    f"{ROOT}.validation": (
        "min_duration",
        "max_duration",
        "silence_rms_db",
        "target_sample_rate",
        "multichannel",
        "wrong_rate",
        "workers",
        "silence_blocks",
        "silence_block_seconds",
        "fixed_dir",
    ),
    f"{ROOT}.split": ("test_speakers", "mode", "validation_ratio"),
    f"{ROOT}.trials": (
        "targets_per_utt",
        "nontargets_per_utt",
        "gender_matched",
        "allow_singletons",
    ),
    f"{ROOT}.validation_pairs": ("n_pairs",),
    f"{ROOT}.shards": ("enabled", "out_dir", "utterances_per_shard", "sample_rate"),
}


class DataEngineeringError(ValueError):
    """A parameter or an intermediate result that the pipeline cannot use."""


def check_section_keys(params: Mapping[str, Any], where: str = ROOT) -> None:
    """Raise naming ``where.<key>`` for a key of ``params`` that no node reads."""
    if where in KEYS:
        check_keys(params, KEYS[where], where, DataEngineeringError)


def source_of(params: Mapping[str, Any]) -> str:
    """``data_engineering.source``, checked against ``SOURCES``."""
    check_section_keys(params)
    source = params.get("source")
    if source not in SOURCES:
        raise DataEngineeringError(
            f"parameter data_engineering.source must be one of {SOURCES}, got {source!r}"
        )
    return source


def section(params: Mapping[str, Any], key: str, where: str = ROOT) -> dict[str, Any]:
    """A copy of the mapping ``<where>.<key>``, its keys and its parent's checked.

    ``params`` is the mapping at ``where`` (``data_engineering`` itself by default); a
    missing or non-mapping value, or an unknown key, is an error naming its key path.
    """
    check_section_keys(params, where)
    path = f"{where}.{key}"
    value = params.get(key)
    if not isinstance(value, Mapping):
        raise DataEngineeringError(f"parameter {path} must be a mapping, got {value!r}")
    check_section_keys(value, path)
    return dict(value)


def int_param(settings: Mapping[str, Any], key: str, default: int, where: str = ROOT) -> int:
    """``<where>.<key>`` as an int (``default`` when absent), naming the key when it is not."""
    return as_int(settings.get(key, default), f"{where}.{key}", DataEngineeringError)


def float_param(settings: Mapping[str, Any], key: str, default: float, where: str = ROOT) -> float:
    """``<where>.<key>`` as a float (``default`` when absent), naming the key when it is not."""
    return as_float(settings.get(key, default), f"{where}.{key}", DataEngineeringError)


def bool_param(settings: Mapping[str, Any], key: str, default: bool, where: str = ROOT) -> bool:
    """``<where>.<key>`` as a boolean (``default`` when absent); the string ``"no"`` and any
    other non-boolean are errors naming the key, not a silent ``True``."""
    return as_bool(settings.get(key, default), f"{where}.{key}", DataEngineeringError)
