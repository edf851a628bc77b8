"""Checked reading of parameter mappings: a typo or a bad value raises naming its key path.

``kedro run --params key=abc`` hands the string ``'abc'`` to a node; a bare ``int(...)``
then fails with ``invalid literal for int()`` and no key named, and a misspelt key read
with ``.get(key, default)`` is silently ignored. These helpers give the message instead.
"""

from __future__ import annotations

import difflib
import numbers
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any


def check_keys(
    given: Iterable[str],
    allowed: Iterable[str],
    where: str,
    error: type[Exception] = ValueError,
) -> None:
    """Raise ``error`` naming ``where`` and the keys of ``given`` that are not ``allowed``."""
    allowed = list(allowed)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise error(f"{where}: unknown key(s) {unknown}; allowed {allowed}")


def as_int(value: Any, key: str, error: type[Exception] = ValueError) -> int:
    """``value`` as an int: integers, integral floats and integer strings; else ``error``.

    ``key`` is the full key path for the message, e.g. ``data_engineering.trials.seed``.
    """
    # bool is an Integral, but ``batch_size: true`` is a mistake rather than 1.
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    # int(2.5) would truncate silently.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise error(f"{key} must be an integer, got {value!r}")


def check_sizes(owner: str, sizes: Mapping[str, Any]) -> None:
    """Refuse, naming ``owner`` and the size, any of ``sizes`` that is not an integer >= 1
    (a float or string fails deep inside ``nn.Linear``; a zero width can train silently)."""
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{owner}: {name} must be an integer >= 1, got {size!r}")


def as_float(value: Any, key: str, error: type[Exception] = ValueError) -> float:
    """``value`` as a float: numbers and numeric strings; anything else raises ``error``."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise error(f"{key} must be a number, got {value!r}")


def as_bool(value: Any, key: str, error: type[Exception] = ValueError) -> bool:
    """``value`` if it is a boolean; anything else raises ``error`` naming ``key``, as the
    string ``"no"`` would otherwise count as true."""
    if not isinstance(value, bool):
        raise error(f"{key} must be true or false, got {value!r}")
    return value


def misspelt_keys(
    overrides: Mapping[str, Any], known: Mapping[str, Any], prefix: str = ""
) -> list[tuple[str, str]]:
    """``(given, meant)`` key paths of ``overrides`` that ``known`` lacks but nearly has.

    A key the configuration lacks may be a new setting (``training.max_steps`` where only
    ``epochs`` is written down), so only one that resembles a key at the same level
    (``n_iteration`` next to ``n_iterations``) is taken for a typo.
    """
    found: list[tuple[str, str]] = []
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        if key in known:
            if isinstance(value, Mapping) and isinstance(known[key], Mapping):
                found += misspelt_keys(value, known[key], f"{path}.")
            continue
        close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1, cutoff=0.8)
        if close:
            found.append((path, f"{prefix}{close[0]}"))
    return found


def coerce_scalars(
    target: Any, values: Mapping[str, Any], where: str, error: type[Exception] = ValueError
) -> dict[str, Any]:
    """``values`` for ``target`` (a dataclass, or a function taking them as keywords), with
    each one annotated ``int`` or ``float`` (or either ``| None``) converted by
    :func:`as_int` / :func:`as_float`, and each one annotated ``bool`` required to be a
    boolean: a wrong value raises ``error`` naming ``<where>.<key>``, not a bare TypeError
    deep inside (or, for a bool, nothing: the string ``"no"`` is true). Other keys, unknown
    keys and ``None`` pass unchanged."""
    hints = typing.get_type_hints(target)
    converted = dict(values)
    for key, value in values.items():
        hint = hints.get(key)
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        kinds = set(typing.get_args(hint)) if union else {hint}
        if value is None:
            continue
        if kinds <= {bool, type(None)} and bool in kinds:
            as_bool(value, f"{where}.{key}", error)
            continue
        if not kinds <= {int, float, type(None)}:
            continue
        if float in kinds:
            converted[key] = as_float(value, f"{where}.{key}", error)
        elif int in kinds:
            converted[key] = as_int(value, f"{where}.{key}", error)
    return converted
