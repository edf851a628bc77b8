"""Checked parameter reading: the key path is named for an unknown key or a bad number."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from sv_kedro.utils.params import as_bool, as_float, as_int, check_keys, coerce_scalars


@dataclass
class _Settings:
    rate: float = 1.0
    steps: int | None = None
    shuffle: bool = True
    betas: tuple[float, float] = (0.9, 0.99)
    name: str = "x"


def test_unknown_keys_are_named_with_the_allowed_ones():
    check_keys({"a": 1}, ("a", "b"), "section")
    with pytest.raises(KeyError, match=r"section: unknown key\(s\) \['c'\]; allowed \['a', 'b'\]"):
        check_keys({"a": 1, "c": 2}, ("a", "b"), "section", KeyError)


def test_integers_and_numbers_are_converted_or_named():
    assert [as_int(v, "k") for v in (3, np.int64(3), 3.0, " 3 ")] == [3, 3, 3, 3]
    for bad in ("abc", 2.5, True, None, "2.5"):
        with pytest.raises(ValueError, match=rf"^a\.b must be an integer, got {bad!r}$"):
            as_int(bad, "a.b")
    assert [as_float(v, "k") for v in (1, 0.5, np.float32(0.5), "1e-3")] == [1.0, 0.5, 0.5, 1e-3]
    for bad in ("abc", False, None, [1]):
        with pytest.raises(ValueError, match=r"^a\.b must be a number, got "):
            as_float(bad, "a.b")
    assert (as_bool(True, "k"), as_bool(False, "k")) == (True, False)
    for bad in ("no", "false", 0, 1, None):  # "no" and "false" are truthy strings
        with pytest.raises(KeyError, match=r"a\.b must be true or false, got "):
            as_bool(bad, "a.b", KeyError)


def test_scalars_are_converted_by_their_annotation_or_named():
    given = {"rate": "0.5", "steps": "3", "shuffle": False, "betas": [0.8, 0.9], "name": "7"}
    assert coerce_scalars(_Settings, given, "s") == {**given, "rate": 0.5, "steps": 3}
    assert coerce_scalars(_Settings, {"steps": None, "other": "?"}, "s") == {
        "steps": None,
        "other": "?",
    }
    with pytest.raises(ValueError, match=r"^s.rate must be a number, got 'fast'$"):
        coerce_scalars(_Settings, {"rate": "fast"}, "s")
    with pytest.raises(KeyError, match=r"s.steps must be an integer, got 2.5"):
        coerce_scalars(_Settings, {"steps": 2.5}, "s", KeyError)
    with pytest.raises(ValueError, match=r"s.shuffle must be true or false, got 'no'"):
        coerce_scalars(_Settings, {"shuffle": "no"}, "s")
