"""What every data_engineering node shares: its error type and checked parameter access."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SOURCES = ("synthetic", "folder", "voxceleb")


class DataEngineeringError(ValueError):
    """A parameter or an intermediate result that the pipeline cannot use."""


def source_of(params: Mapping[str, Any]) -> str:
    """``data_engineering.source``, checked against ``SOURCES``."""
    source = params.get("source")
    if source not in SOURCES:
        raise DataEngineeringError(
            f"parameter data_engineering.source must be one of {SOURCES}, got {source!r}"
        )
    return source


def section(params: Mapping[str, Any], key: str) -> dict[str, Any]:
    """A copy of the mapping ``data_engineering.<key>``; anything else is an error naming it."""
    value = params.get(key)
    if not isinstance(value, Mapping):
        raise DataEngineeringError(
            f"parameter data_engineering.{key} must be a mapping, got {value!r}"
        )
    return dict(value)
