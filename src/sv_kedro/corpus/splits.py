"""Speaker-disjoint test split, train/validation split, and validation trial pairs.

Test speakers never appear in training. The validation set serves model selection during
training: with ``mode="equal"`` every training speaker also has validation utterances
(closed-set accuracy and EER on held-out utterances of known speakers); with
``mode="different"`` validation speakers are unseen in training (open-set EER, as in the
test condition). Training manifests carry ``speaker_index``: 0..n_train_speakers-1 in
sorted speaker order, the class index of a classification head.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from numbers import Integral, Real

import numpy as np
import pandas as pd

from sv_kedro.corpus.trials import make_trials_frame

logger = logging.getLogger(__name__)

SPLIT_MODES = ("equal", "different")
# Below this many possible pairs, sample by enumerating them all; above it, draw and reject.
_ENUMERATE_LIMIT = 200_000


class SplitError(ValueError):
    """A split that cannot be made as asked; the message says why."""


def _speakers(manifest: pd.DataFrame) -> list[str]:
    for column in ("utt_id", "speaker"):
        if column not in manifest.columns:
            raise SplitError(f"manifest lacks column {column!r}; has {list(manifest.columns)}")
    return sorted(manifest["speaker"].astype(str).unique())


def _count_from(value: float | int, total: int, what: str) -> int:
    """A count given as an integer, or as a fraction of ``total`` (at least 1 when > 0)."""
    if isinstance(value, bool):
        raise SplitError(f"{what} must be a number, got {value!r}")
    if isinstance(value, Integral):
        count = int(value)
    elif isinstance(value, Real):
        if not 0.0 <= float(value) < 1.0:
            raise SplitError(f"{what} as a fraction must be in [0, 1), got {value}")
        count = round(float(value) * total)
        if value > 0:
            count = max(count, 1)
    else:
        raise SplitError(f"{what} must be an int, a fraction or a list, got {value!r}")
    if count < 0:
        raise SplitError(f"{what} must be >= 0, got {value}")
    return count


def split_speakers(
    manifest: pd.DataFrame,
    test_speakers: int | float | Sequence[str] | None,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold speakers out for testing.

    Args:
        manifest: rows with ``utt_id`` and ``speaker``.
        test_speakers: how many speakers to hold out (int), which fraction of them
            (float in (0, 1)), exactly which (a list of names), or none (None / 0).
        seed: picks the held-out speakers when they are given as a count or fraction.

    Returns:
        ``(train_validation, test)`` manifests with disjoint speaker sets, rows in the
        manifest's order.
    """
    speakers = _speakers(manifest)
    if test_speakers is None:
        chosen: list[str] = []
    elif isinstance(test_speakers, (str, bytes)):
        raise SplitError(f"test_speakers must be a list of names, got the string {test_speakers!r}")
    elif isinstance(test_speakers, Sequence):
        chosen = sorted({str(s) for s in test_speakers})
        unknown = sorted(set(chosen) - set(speakers))
        if unknown:
            raise SplitError(
                f"{len(unknown)} test speaker(s) are not in the manifest, e.g. {unknown[:10]}"
            )
    else:
        count = _count_from(test_speakers, len(speakers), "test_speakers")
        if count >= len(speakers):
            raise SplitError(
                f"cannot hold out {count} test speakers: the manifest has only "
                f"{len(speakers)} and training needs at least one"
            )
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(np.array(speakers, dtype=object), size=count, replace=False))
    if len(chosen) == len(speakers) and chosen:
        raise SplitError(f"all {len(speakers)} speakers are test speakers; none left to train on")
    is_test = manifest["speaker"].astype(str).isin(chosen).to_numpy()
    train = manifest.loc[~is_test].reset_index(drop=True)
    test = manifest.loc[is_test].reset_index(drop=True)
    logger.info(
        "Held out %d test speakers (%d utterances); %d speakers (%d utterances) remain",
        len(chosen),
        len(test),
        len(speakers) - len(chosen),
        len(train),
    )
    return train, test


def add_speaker_index(
    manifest: pd.DataFrame, train_speakers: Sequence[str] | None = None
) -> pd.DataFrame:
    """Add ``speaker_index``: the position of the speaker in sorted ``train_speakers``.

    ``train_speakers`` defaults to the manifest's own speakers; speakers not among them
    (validation speakers unseen in training) get -1.
    """
    names = sorted(set(map(str, train_speakers))) if train_speakers is not None else None
    if names is None:
        names = _speakers(manifest)
    index = {name: i for i, name in enumerate(names)}
    out = manifest.copy()
    out["speaker_index"] = (
        out["speaker"].astype(str).map(index).fillna(-1).astype("int64").to_numpy()
    )
    return out


def split_train_validation(
    manifest: pd.DataFrame,
    mode: str = "equal",
    validation_ratio: float = 0.1,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split training data into train and validation parts.

    Args:
        manifest: the train+validation manifest (test speakers already removed).
        mode: ``"equal"``: every speaker with at least 2 utterances puts
            ``round(ratio * n)`` of them (at least 1, at most n-1) into validation, so the
            speaker sets are the same; ``"different"``: ``round(ratio * n_speakers)``
            speakers (at least 1) go to validation whole, so the speaker sets are disjoint.
        validation_ratio: in [0, 1); 0 gives an empty validation set.
        seed: picks the validation utterances or speakers.

    Returns:
        ``(train, validation)``, both with ``speaker_index`` from the train speakers
        (-1 for validation speakers unseen in training).
    """
    if mode not in SPLIT_MODES:
        raise SplitError(f"mode must be one of {SPLIT_MODES}, got {mode!r}")
    if not 0.0 <= float(validation_ratio) < 1.0:
        raise SplitError(f"validation_ratio must be in [0, 1), got {validation_ratio}")
    speakers = _speakers(manifest)
    rng = np.random.default_rng(seed)
    manifest = manifest.reset_index(drop=True)
    # Work in utt_id order so the split does not depend on the row order.
    order = manifest["utt_id"].astype(str).to_numpy(dtype=object).argsort(kind="stable")
    table = manifest.iloc[order]
    is_validation = np.zeros(len(table), dtype=bool)
    if validation_ratio > 0 and mode == "equal":
        single = []
        positions = table.groupby(table["speaker"].astype(str), sort=True).indices
        for speaker in speakers:
            rows = positions[speaker]
            if len(rows) < 2:
                single.append(speaker)
                continue
            n_val = min(max(round(validation_ratio * len(rows)), 1), len(rows) - 1)
            is_validation[rng.choice(rows, size=n_val, replace=False)] = True
        if single:
            logger.warning(
                "%d speaker(s) have a single utterance and are in train only: %s",
                len(single),
                single[:10],
            )
    elif validation_ratio > 0:
        n_val = _count_from(validation_ratio, len(speakers), "validation_ratio")
        if n_val >= len(speakers):
            raise SplitError(
                f"mode 'different' with {len(speakers)} speaker(s) leaves none for training"
            )
        chosen = rng.choice(np.array(speakers, dtype=object), size=n_val, replace=False)
        is_validation = table["speaker"].astype(str).isin(set(chosen)).to_numpy()
    train = table.iloc[np.flatnonzero(~is_validation)]
    validation = table.iloc[np.flatnonzero(is_validation)]
    # Back to the manifest's row order.
    train = train.sort_index().reset_index(drop=True)
    validation = validation.sort_index().reset_index(drop=True)
    train_speakers = sorted(train["speaker"].astype(str).unique())
    logger.info(
        "Split %s: train %d utterances of %d speakers, validation %d utterances of %d speakers",
        mode,
        len(train),
        len(train_speakers),
        len(validation),
        validation["speaker"].nunique(),
    )
    return add_speaker_index(train, train_speakers), add_speaker_index(validation, train_speakers)


def _sample_pairs(
    rng: np.random.Generator,
    count: int,
    possible: int,
    enumerate_all: Callable[[], list[tuple[int, int]]],
    draw: Callable[[int], list[tuple[int, int]]],
) -> list[tuple[int, int]]:
    """``count`` distinct unordered pairs: enumerated when few are possible, else drawn."""
    if count <= 0:
        return []
    if possible <= _ENUMERATE_LIMIT:
        pairs = enumerate_all()
        picked = rng.choice(len(pairs), size=min(count, len(pairs)), replace=False)
        return [pairs[i] for i in sorted(picked)]
    chosen: dict[tuple[int, int], None] = {}
    while len(chosen) < count:
        for a, b in draw(2 * (count - len(chosen)) + 8):
            key = (min(a, b), max(a, b))
            if a != b and key not in chosen:
                chosen[key] = None
                if len(chosen) == count:
                    break
    return list(chosen)


def make_validation_pairs(
    validation_manifest: pd.DataFrame, n_pairs: int, seed: int
) -> pd.DataFrame:
    """Balanced target / non-target trials among validation utterances, for EER in training.

    ``n_pairs // 2`` targets and as many non-targets (``n_pairs - n_pairs // 2`` when
    possible); when the set is too small for that, both halves shrink to the same size so
    the list stays balanced. Pairs are distinct and unordered; no self-pairs.
    """
    _speakers(validation_manifest)
    if n_pairs < 2:
        raise SplitError(f"n_pairs must be >= 2, got {n_pairs}")
    table = validation_manifest.sort_values("utt_id", kind="stable").reset_index(drop=True)
    utt_ids = table["utt_id"].astype(str).to_numpy(dtype=object)
    codes, names = pd.factorize(table["speaker"].astype(str), sort=True)
    if len(names) < 2:
        raise SplitError(
            f"validation pairs need at least 2 speakers; the validation set has {len(names)}"
        )
    counts = np.bincount(codes)
    possible_targets = int((counts * (counts - 1) // 2).sum())
    if possible_targets == 0:
        raise SplitError(
            f"no validation speaker has 2 utterances ({len(table)} utterances of {len(names)} "
            "speakers): no target pair is possible; raise the validation ratio"
        )
    n = len(table)
    possible_nontargets = n * (n - 1) // 2 - possible_targets
    n_targets = min(n_pairs // 2, possible_targets)
    n_nontargets = min(n_pairs - n_pairs // 2, possible_nontargets)
    if n_targets < n_pairs // 2 or n_nontargets < n_pairs - n_pairs // 2:
        n_targets = n_nontargets = min(n_targets, n_nontargets)
        logger.warning(
            "validation set allows only %d balanced pairs of each kind (asked %d pairs)",
            n_targets,
            n_pairs,
        )
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(codes == s) for s in range(len(names))]
    eligible = np.flatnonzero(counts[codes] >= 2)

    def all_targets() -> list[tuple[int, int]]:
        return [(int(a), int(b)) for m in members for i, a in enumerate(m) for b in m[i + 1 :]]

    def draw_targets(size: int) -> list[tuple[int, int]]:
        first = rng.choice(eligible, size=size)
        return [(int(a), int(rng.choice(members[codes[a]]))) for a in first]

    def all_nontargets() -> list[tuple[int, int]]:
        return [(a, b) for a in range(n) for b in range(a + 1, n) if codes[a] != codes[b]]

    def draw_nontargets(size: int) -> list[tuple[int, int]]:
        pairs = rng.integers(0, n, size=(size, 2))
        return [(int(a), int(b)) for a, b in pairs if codes[a] != codes[b]]

    targets = _sample_pairs(rng, n_targets, possible_targets, all_targets, draw_targets)
    nontargets = _sample_pairs(
        rng, n_nontargets, possible_nontargets, all_nontargets, draw_nontargets
    )
    labels = [1] * len(targets) + [0] * len(nontargets)
    pairs = targets + nontargets
    # Shuffle so targets and non-targets are mixed along the list.
    order = rng.permutation(len(pairs))
    return make_trials_frame(
        [labels[i] for i in order],
        [utt_ids[pairs[i][0]] for i in order],
        [utt_ids[pairs[i][1]] for i in order],
    )
