"""Verification trial lists: generated from a manifest, or read from the VoxCeleb files.

A trial is ``(label, enrol, test)``: 1 when both utterances share a speaker (a *target*
trial), 0 otherwise (a *non-target*). Generated lists are deterministic: the same manifest
(in any row order) and seed give the same list. Each enrolment utterance gets up to
``targets_per_utt`` targets and ``nontargets_per_utt`` non-targets; no utterance is paired
with itself, and an unordered pair appears at most once (``(a, b)`` and ``(b, a)`` count as
the same pair).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sv_kedro.scoring.trial_list import TRIAL_COLUMNS, read_trial_list

logger = logging.getLogger(__name__)

VOXCELEB_TRIAL_LISTS = ("veri_test2.txt", "list_test_all2.txt", "list_test_hard2.txt")
GENDERS = ("m", "f")
# Below this many candidates, sample by permuting them all; above it, draw and reject.
_EXHAUSTIVE_LIMIT = 4096


class TrialGenerationError(ValueError):
    """The manifest cannot give the trials that were asked for; the message says why."""


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TrialGenerationError(f"{what} lacks column(s) {missing}; has {list(frame.columns)}")


def make_trials_frame(labels: list[int], enrol: list[str], test: list[str]) -> pd.DataFrame:
    """A trials DataFrame with the contract dtypes (``label`` Int8, string ids)."""
    return pd.DataFrame(
        {
            "label": pd.array(labels, dtype="Int8"),
            "enrol": pd.array(enrol, dtype="string"),
            "test": pd.array(test, dtype="string"),
        },
        columns=TRIAL_COLUMNS,
    )


def _check_genders(manifest: pd.DataFrame) -> np.ndarray:
    if "gender" not in manifest.columns:
        raise TrialGenerationError(
            "gender_matched=True needs a 'gender' column in the manifest, which has "
            f"{list(manifest.columns)}; set gender_matched to false for this corpus"
        )
    genders = manifest["gender"].astype("string").fillna("").str.lower().to_numpy(dtype=object)
    unknown = [u for u, g in zip(manifest["utt_id"], genders, strict=True) if g not in GENDERS]
    if unknown:
        raise TrialGenerationError(
            f"gender_matched=True but {len(unknown)} utterance(s) have no gender "
            f"('m' or 'f'), e.g. {unknown[:10]}"
        )
    return genders


def _sample_other(
    rng: np.random.Generator,
    pool: np.ndarray,
    count: int,
    accept: Callable[[int], bool],
    available: int,
) -> list[int]:
    """Up to ``count`` distinct members of ``pool`` for which ``accept(index)`` holds.

    ``available`` is how many members could be accepted at most; small pools are permuted
    whole, large ones are sampled by drawing and rejecting (pools can hold a million items).
    """
    chosen: list[int] = []
    if count <= 0 or available <= 0:
        return chosen
    if len(pool) <= _EXHAUSTIVE_LIMIT or available <= 4 * count:
        for candidate in rng.permutation(pool):
            if accept(int(candidate)):
                chosen.append(int(candidate))
                if len(chosen) == count:
                    break
        return chosen
    seen: set[int] = set()
    for _ in range(64):
        for drawn in rng.choice(pool, size=2 * count + 8):
            candidate = int(drawn)
            if candidate in seen:
                continue
            seen.add(candidate)
            if accept(candidate):
                chosen.append(candidate)
                if len(chosen) == count:
                    return chosen
    return chosen


def generate_trials(
    manifest: pd.DataFrame,
    targets_per_utt: int,
    nontargets_per_utt: int,
    seed: int,
    gender_matched: bool = False,
    allow_singletons: bool = False,
) -> pd.DataFrame:
    """Generate a trial list with targets and non-targets for every enrolment utterance.

    Args:
        manifest: rows with ``utt_id`` and ``speaker`` (and ``gender`` when gender-matched).
        targets_per_utt: same-speaker trials per enrolment utterance (fewer when the speaker
            has fewer other utterances left that are not already paired with this one).
        nontargets_per_utt: different-speaker trials per enrolment utterance.
        seed: the list is a pure function of (manifest rows, parameters, seed).
        gender_matched: non-target test utterances have the enrolment's gender.
        allow_singletons: accept speakers with a single utterance (they get no target
            trials but still serve as non-targets); otherwise they are an error.

    Returns:
        Trials DataFrame[``label`` Int8, ``enrol``, ``test``], targets first per enrolment.
    """
    _require_columns(manifest, ["utt_id", "speaker"], "manifest")
    if targets_per_utt < 0 or nontargets_per_utt < 0:
        raise TrialGenerationError(
            f"targets_per_utt and nontargets_per_utt must be >= 0, "
            f"got {targets_per_utt} and {nontargets_per_utt}"
        )
    if manifest["utt_id"].duplicated().any():
        duplicated = manifest.loc[manifest["utt_id"].duplicated(), "utt_id"].tolist()
        raise TrialGenerationError(f"manifest has duplicate utt_id(s), e.g. {duplicated[:10]}")
    # Sort so the list depends on the rows, not on their order.
    table = manifest.sort_values("utt_id", kind="stable").reset_index(drop=True)
    utt_ids = table["utt_id"].astype(str).to_numpy(dtype=object)
    speaker_codes, speaker_names = pd.factorize(table["speaker"].astype(str), sort=True)
    if len(speaker_names) < 2:
        raise TrialGenerationError(
            f"trials need at least 2 speakers; the manifest has {len(speaker_names)} "
            f"({list(speaker_names)}) in {len(table)} utterance(s)"
        )
    counts = np.bincount(speaker_codes, minlength=len(speaker_names))
    singletons = [str(speaker_names[i]) for i in np.flatnonzero(counts < 2)]
    if singletons:
        message = (
            f"{len(singletons)} speaker(s) have fewer than 2 utterances, so their utterances "
            f"get no target trials: {singletons[:10]}"
        )
        if not allow_singletons:
            raise TrialGenerationError(
                message + " (drop them from the manifest or pass allow_singletons=True)"
            )
        logger.warning(message)
    if (counts < 2).all():
        raise TrialGenerationError("no speaker has 2 utterances: no target trial is possible")

    genders = _check_genders(table) if gender_matched else None
    n_utts = len(table)
    by_speaker = [np.flatnonzero(speaker_codes == s) for s in range(len(speaker_names))]
    if genders is not None:
        gender_pools = {g: np.flatnonzero(genders == g) for g in GENDERS}
        gender_pool_speaker_counts = {
            g: np.bincount(speaker_codes[pool], minlength=len(speaker_names))
            for g, pool in gender_pools.items()
        }
    all_indices = np.arange(n_utts)

    rng = np.random.default_rng(seed)
    used: set[int] = set()
    labels: list[int] = []
    enrol: list[str] = []
    test: list[str] = []
    no_nontargets: list[str] = []

    def pair_key(a: int, b: int) -> int:
        return min(a, b) * n_utts + max(a, b)

    for e in range(n_utts):
        speaker = speaker_codes[e]

        def accept_target(t: int, e: int = e) -> bool:
            return t != e and pair_key(e, t) not in used

        same = by_speaker[speaker]
        targets = _sample_other(rng, same, targets_per_utt, accept_target, len(same) - 1)
        if genders is None:
            pool = all_indices
            available = n_utts - len(same)
        else:
            gender = genders[e]
            pool = gender_pools[gender]
            available = len(pool) - gender_pool_speaker_counts[gender][speaker]

        def accept_nontarget(t: int, speaker: int = speaker, e: int = e) -> bool:
            return speaker_codes[t] != speaker and pair_key(e, t) not in used

        nontargets = _sample_other(rng, pool, nontargets_per_utt, accept_nontarget, available)
        if nontargets_per_utt and not nontargets:
            no_nontargets.append(str(utt_ids[e]))
        for label, chosen in ((1, targets), (0, nontargets)):
            for t in chosen:
                used.add(pair_key(e, t))
                labels.append(label)
                enrol.append(utt_ids[e])
                test.append(utt_ids[t])
    if no_nontargets:
        logger.warning(
            "%d utterance(s) found no non-target partner%s, e.g. %s",
            len(no_nontargets),
            " of the same gender" if gender_matched else "",
            no_nontargets[:10],
        )
    trials = make_trials_frame(labels, enrol, test)
    logger.info(
        "Generated %d trials (%d target, %d non-target) for %d utterances of %d speakers",
        len(trials),
        int((trials["label"] == 1).sum()),
        int((trials["label"] == 0).sum()),
        n_utts,
        len(speaker_names),
    )
    return trials


def trial_utterances(trials: pd.DataFrame) -> np.ndarray:
    """The distinct utt_ids a trial list names (enrolment and test), as strings, in order
    of first appearance."""
    return pd.unique(pd.concat([trials["enrol"], trials["test"]]).astype(str))


def check_trials_against_manifest(trials: pd.DataFrame, manifest: pd.DataFrame, name: str) -> None:
    """Raise when a trial references an utterance that is not in the manifest.

    The error names the list and up to 10 missing utt_ids.
    """
    _require_columns(trials, ["enrol", "test"], f"trial list {name!r}")
    _require_columns(manifest, ["utt_id"], "manifest")
    referenced = trial_utterances(trials)
    known = set(manifest["utt_id"].astype(str))
    missing = sorted(u for u in referenced if u not in known)
    if missing:
        raise TrialGenerationError(
            f"trial list {name!r}: {len(missing)} of {len(referenced)} utterance(s) are not "
            f"in the manifest ({len(known)} utterances), e.g. {missing[:10]}"
        )


def read_voxceleb_trial_lists(
    directories: Sequence[str | os.PathLike[str]],
    names: Sequence[str] = VOXCELEB_TRIAL_LISTS,
) -> dict[str, pd.DataFrame]:
    """Read the VoxCeleb trial lists that are present, keyed by file stem.

    Each name is looked for in ``directories`` in order (the first hit wins); absent lists
    are skipped with a log line. Parse errors carry ``file:line``.
    """
    lists: dict[str, pd.DataFrame] = {}
    for name in names:
        for directory in directories:
            path = Path(directory) / name
            if path.is_file():
                lists[Path(name).stem] = read_trial_list(path)
                logger.info("Read %d trials from %s", len(lists[Path(name).stem]), path)
                break
        else:
            logger.info("Trial list %s not found in %s; skipped", name, list(map(str, directories)))
    return lists


def trial_counts(trials: pd.DataFrame) -> dict[str, int]:
    """Number of trials, targets, non-targets and distinct utterances of a list."""
    labels = trials["label"]
    return {
        "trials": len(trials),
        "targets": int((labels == 1).sum()),
        "nontargets": int((labels == 0).sum()),
        "utterances": len(trial_utterances(trials)),
    }
