"""Nodes of the data_engineering pipeline: thin glue from parameters to ``sv_kedro.corpus``.

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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sv_kedro.corpus.manifest import check_manifest, scan_files
from sv_kedro.corpus.splits import make_validation_pairs, split_speakers, split_train_validation
from sv_kedro.corpus.trials import (
    check_trials_against_manifest,
    generate_trials,
    read_voxceleb_trial_lists,
    trial_counts,
)
from sv_kedro.utils.paths import resolve_path, split_roots

logger = logging.getLogger(__name__)

SOURCES = ("synthetic", "folder", "voxceleb")
FAILURE_COLUMNS = ["part", "utt_id", "path", "reason"]
DEFINITION_COLUMNS = ["utt_id", "speaker", "gender", "duration", "num_frames"]
AUDIO_SUFFIX = ".wav"


class DataEngineeringError(ValueError):
    """A parameter or an intermediate result that the pipeline cannot use."""


def _source(params: Mapping[str, Any]) -> str:
    source = params.get("source")
    if source not in SOURCES:
        raise DataEngineeringError(
            f"parameter data_engineering.source must be one of {SOURCES}, got {source!r}"
        )
    return source


def _section(params: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = params.get(key)
    if not isinstance(value, Mapping):
        raise DataEngineeringError(
            f"parameter data_engineering.{key} must be a mapping, got {value!r}"
        )
    return dict(value)


def _folder_roots(value: Any) -> list[str]:
    try:
        return split_roots(value, "data_engineering.folder.roots")
    except ValueError as exc:
        raise DataEngineeringError(str(exc)) from exc


# --------------------------------------------------------------------------- sources


def generate_synthetic_corpus(
    params: dict[str, Any],
) -> tuple[dict[str, Callable[[], tuple[np.ndarray, int]]], pd.DataFrame]:
    """Define the generated corpus and hand its utterances to the catalog, lazily.

    Returns ``({partition_id: render callable}, definition)``: the partitioned dataset
    calls each callable when it writes that file, so one utterance is in memory at a time.
    Partition ids are utt_ids without the ``.wav`` suffix. The definition table
    (utt_id, speaker, gender, duration, num_frames) is what the manifest step reads to
    find and label the files. Rendering is deterministic per utterance, so a re-run
    rewrites byte-identical files. With another source, both are empty.
    """
    if _source(params) != "synthetic":
        logger.info("source is %s: no synthetic corpus generated", params["source"])
        return {}, pd.DataFrame(columns=DEFINITION_COLUMNS)
    from sv_kedro.audio.synthetic import SyntheticCorpus, SyntheticCorpusConfig

    settings = _section(_section(params, "synthetic"), "corpus")
    try:
        config = SyntheticCorpusConfig(**settings)
    except TypeError as exc:
        raise DataEngineeringError(f"parameter data_engineering.synthetic.corpus: {exc}") from exc
    corpus = SyntheticCorpus(config)
    utterances = corpus.utterances()
    rate = int(config.sample_rate)

    def renderer(utt_id: str) -> Callable[[], tuple[np.ndarray, int]]:
        return lambda: (corpus.render(utt_id), rate)

    partitions: dict[str, Callable[[], tuple[np.ndarray, int]]] = {}
    for utt in utterances:
        if not utt.utt_id.endswith(AUDIO_SUFFIX):
            raise DataEngineeringError(f"synthetic utt_id {utt.utt_id!r} must end in .wav")
        partitions[utt.utt_id[: -len(AUDIO_SUFFIX)]] = renderer(utt.utt_id)
    definition = pd.DataFrame(
        {
            "utt_id": [u.utt_id for u in utterances],
            "speaker": [u.speaker for u in utterances],
            "gender": [u.gender for u in utterances],
            "duration": [float(u.duration) for u in utterances],
            "num_frames": [int(u.num_frames) for u in utterances],
        },
        columns=DEFINITION_COLUMNS,
    )
    logger.info(
        "Synthetic corpus: %d speakers x %d utterances, %.1f minutes of audio",
        config.n_speakers,
        config.utterances_per_speaker,
        definition["duration"].sum() / 60,
    )
    return partitions, definition


def _synthetic_manifest(definition: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    if definition.empty:
        raise DataEngineeringError(
            "synthetic_corpus_definition is empty: the generation step ran with another source"
        )
    root = resolve_path(_section(params, "synthetic")["root"])
    manifest = scan_files(
        [str(root / utt) for utt in definition["utt_id"]],
        list(definition["utt_id"]),
        list(definition["speaker"]),
        source="synthetic",
        workers=int(params.get("workers", 0)),
        progress=False,
    )
    manifest["gender"] = list(definition["gender"])
    unreadable = manifest.loc[manifest["num_frames"] < 0, "utt_id"].tolist()
    if unreadable:
        raise DataEngineeringError(
            f"{len(unreadable)} generated file(s) under {root} cannot be read, e.g. "
            f"{unreadable[:10]}; is data_engineering.synthetic.root the folder the "
            "synthetic_corpus catalog entry writes to?"
        )
    expected = definition["num_frames"].to_numpy()
    stale = manifest.loc[(expected > 0) & (manifest["num_frames"].to_numpy() != expected), "utt_id"]
    if len(stale):
        raise DataEngineeringError(
            f"{len(stale)} file(s) under {root} do not match the corpus definition "
            f"(frame counts differ), e.g. {stale.tolist()[:10]}"
        )
    return manifest


def build_raw_manifest(
    synthetic_corpus_definition: pd.DataFrame, params: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scan the chosen source's audio headers into a manifest (no samples are read).

    Returns ``(raw_manifest, conversion_failures)``; the failures table (part, utt_id,
    path, reason) lists VoxCeleb AAC files that could not be converted and is empty for
    the other sources.
    """
    source = _source(params)
    workers = int(params.get("workers", 0))
    failures = pd.DataFrame(columns=FAILURE_COLUMNS)
    if source == "synthetic":
        manifest = _synthetic_manifest(synthetic_corpus_definition, params)
    elif source == "folder":
        from sv_kedro.corpus.folder_source import scan_folder_roots

        folder = _section(params, "folder")
        roots = [resolve_path(root) for root in _folder_roots(folder.get("roots"))]
        suffixes = tuple(folder.get("suffixes", (".wav", ".flac", ".m4a")))
        logger.info("Scanning folder corpora: %s", [str(root) for root in roots])
        manifest = scan_folder_roots(roots, suffixes=suffixes, workers=workers)
    else:
        from sv_kedro.corpus.voxceleb import prepare_voxceleb

        vox = _section(params, "voxceleb")
        manifest, failures = prepare_voxceleb(
            resolve_path(vox["root"]),
            resolve_path(vox["extract_dir"]),
            resolve_path(vox["converted_dir"]),
            parts=tuple(vox.get("parts", ("vox1_dev", "vox1_test", "vox2_dev"))),
            workers=workers,
            audio_format=str(vox.get("audio_format", "flac")),
        )
        failures = failures.reindex(columns=FAILURE_COLUMNS)
    if manifest.empty:
        raise DataEngineeringError(f"source {source!r} gave no audio files")
    logger.info(
        "Raw manifest: %d files of %d speakers from %s",
        len(manifest),
        manifest["speaker"].nunique(),
        source,
    )
    return manifest.reset_index(drop=True), failures.astype(str)


def validate_audio(
    raw_manifest: pd.DataFrame, conversion_failures: pd.DataFrame, params: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Exclude unusable files and fix convertible ones; return ``(manifest, quality report)``.

    The report has one row per excluded or fixed file (utt_id, path, reason, action,
    detail); VoxCeleb files that failed conversion are added as ``unreadable`` exclusions.
    """
    from sv_kedro.corpus.validation import ValidationPolicy, validate_manifest

    settings = _section(params, "validation")
    fixed_dir = resolve_path(settings.pop("fixed_dir", "data/02_intermediate/fixed_audio"))
    settings.setdefault("workers", int(params.get("workers", 0)))
    try:
        policy = ValidationPolicy(**settings)
    except TypeError as exc:
        raise DataEngineeringError(f"parameter data_engineering.validation: {exc}") from exc
    manifest, report = validate_manifest(raw_manifest, policy, fixed_dir)
    if len(conversion_failures):
        converted = pd.DataFrame(
            {
                "utt_id": conversion_failures["utt_id"],
                "path": conversion_failures["path"],
                "reason": "unreadable",
                "action": "excluded",
                "detail": "conversion failed: " + conversion_failures["reason"].astype(str),
            }
        )
        report = pd.concat([report, converted], ignore_index=True)
    if manifest.empty:
        raise DataEngineeringError(
            f"validation excluded all {len(raw_manifest)} files; see audio_quality_report "
            f"(reasons: {report['reason'].value_counts().to_dict()})"
        )
    check_manifest(manifest, "manifest")
    logger.info(
        "Validated: %d of %d files kept; report: %s",
        len(manifest),
        len(raw_manifest),
        report.groupby(["reason", "action"]).size().to_dict() if len(report) else "clean",
    )
    return manifest.reset_index(drop=True), report.reset_index(drop=True)


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
    seed = int(params.get("seed", 0))
    if _source(params) != "voxceleb":
        return split_speakers(manifest, _section(params, "split").get("test_speakers"), seed)
    vox = _section(params, "voxceleb")
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
    split = _section(params, "split")
    return split_train_validation(
        train_validation_manifest,
        mode=str(split.get("mode", "equal")),
        validation_ratio=float(split.get("validation_ratio", 0.1)),
        seed=int(params.get("seed", 0)),
    )


def make_validation_trials(
    validation_manifest: pd.DataFrame, params: dict[str, Any]
) -> pd.DataFrame:
    """Balanced target / non-target pairs of validation utterances, for EER in training."""
    if validation_manifest.empty:
        raise DataEngineeringError(
            "the validation manifest is empty: set data_engineering.split.validation_ratio > 0"
        )
    settings = _section(params, "validation_pairs")
    return make_validation_pairs(
        validation_manifest, int(settings.get("n_pairs", 1000)), int(params.get("seed", 0))
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
    source = _source(params)
    lists: dict[str, pd.DataFrame] = {}
    main = f"{source}_generated"
    if source == "voxceleb":
        vox = _section(params, "voxceleb")
        directories = [resolve_path(d) for d in vox.get("trial_list_dirs", [vox["root"]])]
        lists = read_voxceleb_trial_lists(directories, vox.get("trial_lists", ()))
        main = Path(str(vox.get("main_trial_list", "veri_test2.txt"))).stem
        if main not in lists:
            logger.warning("VoxCeleb list %s not found in %s: generating trials", main, directories)
            main = f"{source}_generated"
    if main not in lists:
        trials = _section(params, "trials")
        lists[main] = generate_trials(
            test_manifest,
            targets_per_utt=int(trials.get("targets_per_utt", 5)),
            nontargets_per_utt=int(trials.get("nontargets_per_utt", 10)),
            seed=int(params.get("seed", 0)),
            gender_matched=bool(trials.get("gender_matched", False)),
            allow_singletons=bool(trials.get("allow_singletons", False)),
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
    settings = _section(params, "shards")
    if not settings.get("enabled", False):
        logger.info("WebDataset shards are off (data_engineering.shards.enabled: false)")
        return {"enabled": False}
    from sv_kedro.corpus.shards import write_webdataset_shards

    out_dir = resolve_path(settings.get("out_dir", "data/04_feature/train_shards"))
    index = write_webdataset_shards(
        train_manifest,
        out_dir,
        utterances_per_shard=int(settings.get("utterances_per_shard", 1000)),
        seed=int(params.get("seed", 0)),
        sample_rate=int(settings.get("sample_rate", 16000)),
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
        "source": _source(params),
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
