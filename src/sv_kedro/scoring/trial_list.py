"""The VoxCeleb trial-list format: ``label enrol test`` or ``enrol test`` per line.

``label`` is 1 (same speaker) or 0; utterances are ids relative to the corpus root, e.g.
``id10270/x6uYqmx31kE/00001.wav``. As a DataFrame: columns ``label`` (nullable Int8),
``enrol`` and ``test``.

A list must not pair an utterance with itself nor give one pair two labels. A pair given
again with the same label (in either order) is kept and scored as often as it is listed,
with a warning naming the lines: protocol lists are scored as published, and the official
VoxCeleb1-O list holds 337 pairs a second time, swapped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sv_kedro.utils.atomic import atomic_write_path

log = logging.getLogger(__name__)

TRIAL_COLUMNS = ["label", "enrol", "test"]


class TrialListError(ValueError):
    """A malformed trial list; the message names the source and line number."""


def parse_trial_lines(lines: Iterable[str], source: str = "<trials>") -> pd.DataFrame:
    """Parse trial lines; every line must have the same form (with or without labels)."""
    labels: list[int] = []
    enrol: list[str] = []
    test: list[str] = []
    numbers: list[int] = []
    has_label: bool | None = None
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) == 3:
            if fields[0] not in ("0", "1"):
                raise TrialListError(
                    f"{source}:{number}: label must be 0 or 1, got {fields[0]!r} in {line!r}"
                )
            line_has_label = True
        elif len(fields) == 2:
            line_has_label = False
        else:
            raise TrialListError(
                f"{source}:{number}: expected 'label enrol test' or 'enrol test', "
                f"got {len(fields)} field(s) in {line!r}"
            )
        if has_label is None:
            has_label = line_has_label
        elif has_label != line_has_label:
            raise TrialListError(
                f"{source}:{number}: mixes labelled and unlabelled trials ({line!r})"
            )
        if fields[-2] == fields[-1]:
            raise TrialListError(
                f"{source}:{number}: enrolment and test are the same utterance in {line!r}"
            )
        if line_has_label:
            labels.append(int(fields[0]))
        enrol.append(fields[-2])
        test.append(fields[-1])
        numbers.append(number)
    if not enrol:
        raise TrialListError(f"{source}: no trials")
    _check_repeated_pairs(labels if has_label else None, enrol, test, numbers, source)
    return trials_frame(labels if has_label else None, enrol, test)


def _check_repeated_pairs(
    labels: list[int] | None,
    enrol: list[str],
    test: list[str],
    numbers: list[int],
    source: str,
) -> None:
    """Raise on a pair labelled both ways, naming both lines; warn about pairs listed
    again with the same label, which count more than once in the metrics."""
    first: dict[tuple[str, str], int] = {}
    repeats: list[str] = []
    swapped = 0
    for row, (a, b) in enumerate(zip(enrol, test, strict=True)):
        earlier = first.setdefault((a, b) if a <= b else (b, a), row)
        if earlier == row:
            continue
        here, there = f"{source}:{numbers[row]}", f"{source}:{numbers[earlier]}"
        if labels is not None and labels[row] != labels[earlier]:
            raise TrialListError(
                f"{here}: pair ({a}, {b}) labelled {labels[row]} here and "
                f"{labels[earlier]} at {there}"
            )
        if (enrol[earlier], test[earlier]) == (a, b):
            repeats.append(f"line {numbers[row]} repeats line {numbers[earlier]}")
        else:
            swapped += 1
    if repeats:
        log.warning(
            "%s: %d trial(s) listed again in the same order, each scored every time it "
            "is listed, e.g. %s",
            source,
            len(repeats),
            repeats[:5],
        )
    if swapped:
        log.info(
            "%s: %d pair(s) appear a second time with enrolment and test swapped; "
            "each is scored both ways",
            source,
            swapped,
        )


def trials_frame(
    labels: Sequence[int] | np.ndarray | None,
    enrol: Sequence[str] | np.ndarray,
    test: Sequence[str] | np.ndarray,
) -> pd.DataFrame:
    """A trials DataFrame whose ``enrol`` and ``test`` columns share one category set.

    Categorical: each utterance is stored and hashed once however many trials name it
    (VoxCeleb1-E/H name each utterance dozens of times), and because both columns share
    their categories, scoring resolves every utterance to an embedding row once.
    """
    if len(enrol) != len(test):
        raise TrialListError(f"{len(enrol)} enrolment but {len(test)} test utterances")
    codes, uniques = pd.factorize(np.concatenate([np.asarray(enrol), np.asarray(test)]))
    categories = pd.Index(uniques.astype(str), dtype=object)
    n = len(enrol)
    label_values = [pd.NA] * n if labels is None else labels
    return pd.DataFrame(
        {
            "label": pd.array(label_values, dtype="Int8"),
            "enrol": pd.Categorical.from_codes(codes[:n], categories=categories),
            "test": pd.Categorical.from_codes(codes[n:], categories=categories),
        }
    )


def read_trial_list(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a trial-list file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise TrialListError(f"{path}: trial list not found")
    with path.open(encoding="utf-8-sig") as handle:
        return parse_trial_lines(handle, source=str(path))


def format_trial_lines(trials: pd.DataFrame, target: str = "<trials>") -> list[str]:
    """Lines of a trials DataFrame; the label column is written when it has no gaps.

    Raises :class:`TrialListError` naming ``target`` and up to five ids when an id is
    empty or holds whitespace: its line could not be read back.
    """
    missing = [c for c in ("enrol", "test") if c not in trials.columns]
    if missing:
        raise TrialListError(f"trials DataFrame lacks column(s) {missing}")
    _check_ids_writable(trials, target)
    with_label = "label" in trials.columns and not trials["label"].isna().any()
    if with_label:
        return [
            f"{int(lab)} {e} {t}"
            for lab, e, t in zip(trials["label"], trials["enrol"], trials["test"], strict=True)
        ]
    return [f"{e} {t}" for e, t in zip(trials["enrol"], trials["test"], strict=True)]


def _check_ids_writable(trials: pd.DataFrame, target: str) -> None:
    ids: set[str] = set()
    for column in ("enrol", "test"):
        values = trials[column]
        if isinstance(values.dtype, pd.CategoricalDtype):
            # Look at the categories in use only: a subset keeps its parent's categories.
            codes = values.cat.codes.to_numpy()
            ids.update(map(str, values.cat.categories[np.unique(codes[codes >= 0])]))
        else:
            ids.update(map(str, values.unique()))
    # str.split(), which parses the lines, splits on every character isspace() accepts.
    bad = sorted(i for i in ids if not i or any(character.isspace() for character in i))
    if bad:
        raise TrialListError(
            f"{target}: {len(bad)} utterance id(s) are empty or hold whitespace, e.g. "
            f"{bad[:5]}; trial lists are whitespace-separated, so those lines could not be "
            "read back (rename the files or folders they come from); nothing was written"
        )


def write_trial_list(trials: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write a trials DataFrame atomically in the VoxCeleb format; ids that could not be
    read back (empty, or holding whitespace) raise before anything is written."""
    lines = format_trial_lines(trials, target=os.fspath(path))
    with atomic_write_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
