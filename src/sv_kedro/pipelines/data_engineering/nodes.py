"""Nodes of the data_engineering pipeline: thin glue from parameters to ``sv_kedro.corpus``.

This module holds the splits, trial lists and outputs; the source nodes (corpus to
validated manifest) are in ``source_nodes.py``.

Every node takes catalog datasets and the ``params:data_engineering`` section and returns
DataFrames or dicts; the catalog writes them. ``data_engineering.source`` picks the corpus:

- ``synthetic``: the generated corpus, rendered lazily into a ``PartitionedDataset``.
- ``folder``: ``<root>/<speaker>/[<session>/]<utt>.{wav,flac,m4a}`` trees, read in place.
- ``voxceleb``: the released VoxCeleb zips/folders under a root, with the official lists.

Raw corpora are addressed by root paths in the parameters and only ever read. Relative
paths in parameters (corpus roots, the folder for fixed copies, the shard folder) are
resolved against the current working directory, which ``kedro run`` sets to the project
root; ``resolve_path`` does that explicitly so a node never depends on where a library
happens to resolve a path. Two library steps keep files beside the catalog: validation
writes 16 kHz mono copies of files it fixes (``validation.fixed_dir``) and VoxCeleb
preparation extracts and converts audio (``voxceleb.extract_dir``/``converted_dir``);
both are caches that a re-run reuses, and the manifests point at them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from sv_kedro.corpus.splits import make_validation_pairs, split_speakers, split_train_validation
from sv_kedro.corpus.trials import (
    check_trials_against_manifest,
    generate_trials,
    read_voxceleb_trial_lists,
    trial_counts,
)
from sv_kedro.pipelines.data_engineering.params import (
    ROOT,
    DataEngineeringError,
    bool_param,
    float_param,
    int_param,
    section,
    source_of,
)
from sv_kedro.utils.paths import resolve_path

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- splits


def hold_out_test_speakers(
    manifest: pd.DataFrame, params: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off the test speakers; return ``(train_validation_manifest, test_manifest)``.

    For VoxCeleb the parts decide: speakers of ``voxceleb.test_parts`` (VoxCeleb1, whose
    speakers the official lists use) are the test speakers and only rows of
    ``voxceleb.train_parts`` (VoxCeleb2 dev) are kept for training. Otherwise
    ``split.test_speakers`` (a count, a fraction or a list of names) with the seed.
    """
    seed = int_param(params, "seed", 0)
    if source_of(params) != "voxceleb":
        return split_speakers(manifest, section(params, "split").get("test_speakers"), seed)
    vox = section(params, "voxceleb")
    test_parts = list(vox.get("test_parts", ["vox1_dev", "vox1_test"]))
    train_parts = list(vox.get("train_parts", ["vox2_dev"]))
    is_test = manifest["source"].isin(test_parts)
    is_train = manifest["source"].isin(train_parts)
    if not is_test.any():
        raise DataEngineeringError(
            f"no utterance comes from the test parts {test_parts}; the manifest has parts "
            f"{sorted(manifest['source'].unique())}"
        )
    test_speakers = sorted(manifest.loc[is_test, "speaker"].unique())
    clash = sorted(set(test_speakers) & set(manifest.loc[is_train, "speaker"]))
    if clash:
        raise DataEngineeringError(
            f"{len(clash)} speaker(s) are in both test parts {test_parts} and train parts "
            f"{train_parts}, e.g. {clash[:10]}"
        )
    ignored = manifest.loc[~is_test & ~is_train, "source"].value_counts().to_dict()
    if ignored:
        logger.info("Parts in neither train_parts nor test_parts are left out: %s", ignored)
    kept = manifest.loc[is_test | is_train].reset_index(drop=True)
    return split_speakers(kept, test_speakers, seed)


def split_train_and_validation(
    train_validation_manifest: pd.DataFrame, params: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split the training speakers' utterances into train and validation manifests."""
    split = section(params, "split")
    return split_train_validation(
        train_validation_manifest,
        mode=str(split.get("mode", "equal")),
        validation_ratio=float_param(split, "validation_ratio", 0.1, f"{ROOT}.split"),
        seed=int_param(params, "seed", 0),
    )


def make_validation_trials(
    validation_manifest: pd.DataFrame, params: dict[str, Any]
) -> pd.DataFrame:
    """Balanced target / non-target pairs of validation utterances, for EER in training."""
    if validation_manifest.empty:
        raise DataEngineeringError(
            "the validation manifest is empty: set data_engineering.split.validation_ratio > 0"
        )
    settings = section(params, "validation_pairs")
    return make_validation_pairs(
        validation_manifest,
        int_param(settings, "n_pairs", 1000, f"{ROOT}.validation_pairs"),
        int_param(params, "seed", 0),
    )


# --------------------------------------------------------------------------- trials


def build_trial_lists(
    test_manifest: pd.DataFrame, params: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The test trial lists: the official VoxCeleb lists, or lists generated with the seed.

    Returns ``(test_trials, trial_lists)``: the main list, and every list by name (the
    main one included). Every list is checked against the test manifest: a trial whose
    utterance is missing is an error naming it.
    """
    if test_manifest.empty:
        raise DataEngineeringError(
            "the test manifest is empty: set data_engineering.split.test_speakers"
        )
    source = source_of(params)
    lists: dict[str, pd.DataFrame] = {}
    main = f"{source}_generated"
    if source == "voxceleb":
        vox = section(params, "voxceleb")
        directories = [resolve_path(d) for d in vox.get("trial_list_dirs", [vox["root"]])]
        lists = read_voxceleb_trial_lists(directories, vox.get("trial_lists", ()))
        main = Path(str(vox.get("main_trial_list", "veri_test2.txt"))).stem
        if main not in lists:
            logger.warning("VoxCeleb list %s not found in %s: generating trials", main, directories)
            main = f"{source}_generated"
    if main not in lists:
        trials = section(params, "trials")
        where = f"{ROOT}.trials"
        lists[main] = generate_trials(
            test_manifest,
            targets_per_utt=int_param(trials, "targets_per_utt", 5, where),
            nontargets_per_utt=int_param(trials, "nontargets_per_utt", 10, where),
            seed=int_param(params, "seed", 0),
            gender_matched=bool_param(trials, "gender_matched", False, where),
            allow_singletons=bool_param(trials, "allow_singletons", False, where),
        )
    for name, trials_frame in lists.items():
        check_trials_against_manifest(trials_frame, test_manifest, name)
        logger.info("Trial list %s: %s", name, trial_counts(trials_frame))
    return lists[main], lists


# --------------------------------------------------------------------------- outputs


def write_training_shards(train_manifest: pd.DataFrame, params: dict[str, Any]) -> dict[str, Any]:
    """Write the training audio as WebDataset shards when ``shards.enabled``.

    Returns the shard index (also written beside the shards as ``index.json``), or
    ``{"enabled": false}`` when sharding is off.
    """
    settings = section(params, "shards")
    if not bool_param(settings, "enabled", False, f"{ROOT}.shards"):
        logger.info("WebDataset shards are off (data_engineering.shards.enabled: false)")
        return {"enabled": False}
    from sv_kedro.corpus.shards import write_webdataset_shards

    out_dir = resolve_path(settings.get("out_dir", "data/04_feature/train_shards"))
    index = write_webdataset_shards(
        train_manifest,
        out_dir,
        utterances_per_shard=int_param(settings, "utterances_per_shard", 1000, f"{ROOT}.shards"),
        seed=int_param(params, "seed", 0),
        sample_rate=int_param(settings, "sample_rate", 16000, f"{ROOT}.shards"),
    )
    return {"enabled": True, "out_dir": str(out_dir), **index}


def _loaded(value: Any) -> Any:
    """A partitioned dataset loads as ``{id: loader}``; call loaders, pass data through."""
    return value() if callable(value) else value


def _manifest_counts(manifest: pd.DataFrame) -> dict[str, Any]:
    return {
        "utterances": len(manifest),
        "speakers": int(manifest["speaker"].nunique()),
        "hours": round(float(manifest["duration"].sum()) / 3600, 3),
    }


def summarize_data_engineering(
    raw_manifest: pd.DataFrame,
    manifest: pd.DataFrame,
    audio_quality_report: pd.DataFrame,
    train_manifest: pd.DataFrame,
    validation_manifest: pd.DataFrame,
    test_manifest: pd.DataFrame,
    trial_lists: Mapping[str, Any],
    validation_pairs: pd.DataFrame,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Counts a person checks first: speakers, utterances, exclusions by reason, trials."""
    report = audio_quality_report
    excluded = report[report["action"] == "excluded"]
    fixed = report[report["action"] != "excluded"]
    return {
        "source": source_of(params),
        "raw": {
            "utterances": len(raw_manifest),
            "speakers": int(raw_manifest["speaker"].nunique()),
        },
        "manifest": _manifest_counts(manifest),
        "excluded": {
            "total": len(excluded),
            "by_reason": {str(k): int(v) for k, v in excluded["reason"].value_counts().items()},
        },
        "fixed": {str(k): int(v) for k, v in fixed["action"].value_counts().items()},
        "splits": {
            "train": _manifest_counts(train_manifest),
            "validation": _manifest_counts(validation_manifest),
            "test": _manifest_counts(test_manifest),
        },
        "trial_lists": {
            name: trial_counts(_loaded(trial_lists[name])) for name in sorted(trial_lists)
        },
        "validation_pairs": trial_counts(validation_pairs),
    }
