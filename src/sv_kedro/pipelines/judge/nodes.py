"""judge: score any checkpoint (or embeddings file) on any audio folder and trial list.

Everything comes from ``--params`` (no config files to write)::

    kedro run --pipeline judge --params \\
        "judge.checkpoint=data/06_models/ecapa_tdnn/checkpoint.pt,judge.audio_root=/data/corpus"

The checkpoint, embeddings file, audio root and trial list are raw inputs named by path,
like the corpus roots of data_engineering; the results go through the catalog.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import pandas as pd

from sv_kedro.corpus.folder_source import scan_folder_roots
from sv_kedro.corpus.trials import (
    check_trials_against_manifest,
    generate_trials,
    trial_utterances,
)
from sv_kedro.corpus.validation import ValidationPolicy, validate_manifest
from sv_kedro.scoring.cosine import cosine_scores, fuse_scores, paired_dot, trial_rows
from sv_kedro.scoring.embedding_table import EmbeddingError, EmbeddingTable
from sv_kedro.scoring.extraction_launch import extract_from_checkpoint
from sv_kedro.scoring.metrics import verification_metrics
from sv_kedro.scoring.trial_list import read_trial_list
from sv_kedro.training.checkpoint import load_checkpoint
from sv_kedro.utils.params import as_int, check_keys
from sv_kedro.utils.paths import resolve_path, split_roots

log = logging.getLogger(__name__)


class JudgeError(ValueError):
    """A judge parameter that cannot be used."""


JUDGE_KEYS = frozenset(
    {
        "checkpoint",
        "embeddings",
        "audio_root",
        "trial_list",
        "generated_trials",
        "workers",
        "fixed_dir",
        "validation",
        "extraction",
    }
)
GENERATED_TRIALS_KEYS = frozenset({"targets_per_utt", "nontargets_per_utt", "seed"})


def check_judge_params(judge: dict[str, Any]) -> None:
    """Refuse misspelt keys: a typo such as ``judge.trial_lst`` would otherwise be ignored
    and the metrics reported on a generated list instead of the user's."""
    check_keys(judge, sorted(JUDGE_KEYS), "judge", JudgeError)
    generated = judge.get("generated_trials") or {}
    check_keys(generated, sorted(GENERATED_TRIALS_KEYS), "judge.generated_trials", JudgeError)


def _int_param(judge: dict[str, Any], path: str, default: int) -> int:
    section, _, key = path.rpartition(".")
    settings = (judge.get(section) or {}) if section else judge
    return as_int(settings.get(key, default), f"judge.{path}", JudgeError)


def scan_judged_audio(judge: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Manifest of ``judge.audio_root`` (``<speaker>/[<session>/]<utt>``), validated."""
    check_judge_params(judge)
    if not judge.get("audio_root"):
        raise JudgeError('set the audio to judge: --params "judge.audio_root=/path/to/corpus"')
    roots = [resolve_path(root) for root in split_roots(judge["audio_root"], "judge.audio_root")]
    workers = _int_param(judge, "workers", 0)
    if workers < 0:
        raise JudgeError(f"judge.workers must be >= 0, got {workers}")
    raw = scan_folder_roots(roots, workers=workers)
    settings = judge.get("validation") or {}
    policy = ValidationPolicy.from_dict(settings, "judge.validation", JudgeError)
    manifest, report = validate_manifest(raw, policy, resolve_path(judge["fixed_dir"]))
    if manifest.empty:
        raise JudgeError(f"{roots}: no usable audio ({report['reason'].value_counts().to_dict()})")
    return manifest, report


def judged_trials(
    manifest: pd.DataFrame, quality_report: pd.DataFrame, judge: dict[str, Any]
) -> pd.DataFrame:
    """``judge.trial_list`` (checked against the audio), or a list generated from it.

    A given list is checked here, before anything is embedded: it needs labels and both
    target and non-target trials, and every utterance it names must have passed
    validation (one excluded by it is named with the reason).
    """
    check_judge_params(judge)
    if judge.get("trial_list"):
        name = str(judge["trial_list"])
        trials = read_trial_list(resolve_path(name))
        _check_labels(trials, name)
        _check_trial_utterances(trials, manifest, quality_report, name)
        return trials
    return generate_trials(
        manifest,
        _int_param(judge, "generated_trials.targets_per_utt", 4),
        _int_param(judge, "generated_trials.nontargets_per_utt", 8),
        _int_param(judge, "generated_trials.seed", 0),
        allow_singletons=True,
    )


def _check_labels(trials: pd.DataFrame, name: str) -> None:
    if "label" not in trials or trials["label"].isna().any():
        raise JudgeError(
            f"judge.trial_list {name!r}: judging needs labelled trials, one "
            "'<1|0> <enrol> <test>' per line; this list has unlabelled lines"
        )
    kinds = set(trials["label"].astype(int))
    if kinds != {0, 1}:
        present = "target" if kinds == {1} else "non-target"
        raise JudgeError(
            f"judge.trial_list {name!r}: all {len(trials)} trials are {present} trials; EER "
            "and minDCF need both target (1) and non-target (0) trials"
        )


def _check_trial_utterances(
    trials: pd.DataFrame, manifest: pd.DataFrame, quality_report: pd.DataFrame, name: str
) -> None:
    named = trial_utterances(trials)
    excluded = quality_report[quality_report["action"].astype(str) == "excluded"]
    reasons = {
        str(row.utt_id): f"{row.reason}: {row.detail}" for row in excluded.itertuples(index=False)
    }
    hit = [f"{utt} ({reasons[utt]})" for utt in named if utt in reasons]
    if hit:
        raise JudgeError(
            f"judge.trial_list {name!r}: {len(hit)} utterance(s) it names were excluded by "
            f"audio validation, e.g. {hit[:5]}; see judge_quality_report for the details"
        )
    check_trials_against_manifest(trials, manifest, name)


def judged_embeddings(
    manifest: pd.DataFrame, trials: pd.DataFrame, judge: dict[str, Any]
) -> tuple[EmbeddingTable, EmbeddingTable | None]:
    """Full and crop embeddings from ``judge.checkpoint``, or ``judge.embeddings`` as given.

    Takes the checked ``trials`` so that they are read (and refused) before anything is
    embedded; an embeddings file must hold every utterance they name.
    """
    checkpoint, embeddings = judge.get("checkpoint"), judge.get("embeddings")
    if bool(checkpoint) == bool(embeddings):
        raise JudgeError(
            "set exactly one of judge.checkpoint (a model) and judge.embeddings (a .pt or "
            f"compact embeddings file); got checkpoint={checkpoint!r}, embeddings={embeddings!r}"
        )
    if embeddings:
        from sv_kedro.datasets.embeddings_dataset import EmbeddingsDataset

        table = EmbeddingsDataset(filepath=str(resolve_path(embeddings))).load()
        _check_covers_trials(table, trials, str(embeddings))
        return table, None
    options = dict(judge.get("extraction") or {})
    payload = load_checkpoint(resolve_path(checkpoint))
    result = extract_from_checkpoint(payload, manifest, options, "judge.extraction")
    return result.full, result.crops


def _check_covers_trials(table: EmbeddingTable, trials: pd.DataFrame, name: str) -> None:
    named = trial_utterances(trials)
    missing = named[table.positions(named) < 0]
    if len(missing):
        raise JudgeError(
            f"judge.embeddings {name!r}: {len(missing)} of the {len(named)} utterances the "
            f"trials name have no embedding, e.g. {missing[:3].tolist()}; the file's keys "
            f"look like {table.keys_[:3]} (keys must be utt_ids: paths below the audio root)"
            + table.near_misses(missing[:100].tolist())
        )


def score_judged_trials(
    trials: pd.DataFrame,
    embeddings: tuple[EmbeddingTable, EmbeddingTable | None],
    judge: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Cosine (and, with crops, crop and fused) scores; EER and both minDCFs for each.

    The metrics also hold ``judged``: what was judged (the model or embeddings file, the
    audio roots, the trial list and a digest of its trials). judge's outputs are not
    versioned, so a run that fails after writing its manifest and trials leaves the
    previous metrics in place; ``judged`` tells them apart from the ones asked for.
    """
    full, crops = embeddings
    named = sorted(trial_utterances(trials))
    full.subset(named).check_usable()
    if crops is not None:
        # A NaN crop vector would only surface as a NaN crop score, without its utterance.
        try:
            crops.subset(named).check_usable()
        except EmbeddingError as exc:
            raise EmbeddingError(f"crop embeddings: {exc}") from exc
    labels = trials["label"].to_numpy(dtype=int)
    scores = {"cosine": cosine_scores(full, trials)}
    if crops is not None:
        enrol, test = trial_rows(crops, trials)
        scores["cosine_crops"] = paired_dot(crops.vectors, crops.vectors, enrol, test)
        scores["fusion"] = fuse_scores([scores["cosine"], scores["cosine_crops"]])
    frame = trials.assign(**scores)
    metrics: dict[str, Any] = {
        name: verification_metrics(values, labels) for name, values in scores.items()
    }
    log.info("judge: %s", {k: f"EER {v['eer']:.2%}" for k, v in metrics.items()})
    metrics["judged"] = _what_was_judged(trials, judge)
    return frame, metrics


def _what_was_judged(trials: pd.DataFrame, judge: dict[str, Any]) -> dict[str, Any]:
    model_key = "checkpoint" if judge.get("checkpoint") else "embeddings"
    columns = zip(trials["label"].astype(int), trials["enrol"], trials["test"], strict=True)
    lines = "\n".join(f"{label} {enrol} {test}" for label, enrol, test in columns)
    digest = hashlib.sha256(lines.encode()).hexdigest()[:16]
    return {
        model_key: str(resolve_path(judge[model_key])),
        "audio_root": [
            str(resolve_path(root)) for root in split_roots(judge["audio_root"], "judge.audio_root")
        ],
        "trial_list": (
            str(resolve_path(judge["trial_list"])) if judge.get("trial_list") else "generated"
        ),
        "trials": len(trials),
        "utterances": len(trial_utterances(trials)),
        "trials_sha256": digest,
    }
