"""Source nodes of the data_engineering pipeline: the chosen corpus to a validated manifest.

``data_engineering.source`` picks the corpus (see ``nodes.py`` for the whole pipeline):
the generated corpus, rendered lazily into a ``PartitionedDataset``; folder trees read in
place; or the released VoxCeleb archives with their official lists. Validation then
excludes unusable files and keeps 16 kHz mono copies of the ones it can fix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from sv_kedro.corpus.manifest import check_manifest, scan_files
from sv_kedro.pipelines.data_engineering.params import (
    ROOT,
    DataEngineeringError,
    int_param,
    section,
    source_of,
)
from sv_kedro.utils.paths import resolve_path, split_roots

logger = logging.getLogger(__name__)

FAILURE_COLUMNS = ["part", "utt_id", "path", "reason"]
DEFINITION_COLUMNS = ["utt_id", "speaker", "gender", "duration", "num_frames"]
AUDIO_SUFFIX = ".wav"


def _folder_roots(value: Any) -> list[str]:
    try:
        return split_roots(value, "data_engineering.folder.roots")
    except ValueError as exc:
        raise DataEngineeringError(str(exc)) from exc


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
    if source_of(params) != "synthetic":
        logger.info("source is %s: no synthetic corpus generated", params["source"])
        return {}, pd.DataFrame(columns=DEFINITION_COLUMNS)
    from sv_kedro.audio.synthetic import SyntheticCorpus, SyntheticCorpusConfig

    settings = section(section(params, "synthetic"), "corpus", f"{ROOT}.synthetic")
    try:
        config = SyntheticCorpusConfig.from_dict(settings)
    except (TypeError, ValueError) as exc:
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
    root = resolve_path(section(params, "synthetic")["root"])
    manifest = scan_files(
        [str(root / utt) for utt in definition["utt_id"]],
        list(definition["utt_id"]),
        list(definition["speaker"]),
        source="synthetic",
        workers=int_param(params, "workers", 0),
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
    source = source_of(params)
    workers = int_param(params, "workers", 0)
    failures = pd.DataFrame(columns=FAILURE_COLUMNS)
    if source == "synthetic":
        manifest = _synthetic_manifest(synthetic_corpus_definition, params)
        scanned = "from the corpus definition"
    elif source == "folder":
        from sv_kedro.corpus.folder_source import scan_folder_roots

        folder = section(params, "folder")
        roots = [resolve_path(root) for root in _folder_roots(folder.get("roots"))]
        suffixes = tuple(folder.get("suffixes", (".wav", ".flac", ".m4a")))
        logger.info("Scanning folder corpora: %s", [str(root) for root in roots])
        manifest = scan_folder_roots(roots, suffixes=suffixes, workers=workers)
        scanned = f"({list(suffixes)}) under {[str(root) for root in roots]}"
    else:
        from sv_kedro.corpus.voxceleb import prepare_voxceleb

        vox = section(params, "voxceleb")
        parts = tuple(vox.get("parts", ("vox1_dev", "vox1_test", "vox2_dev")))
        manifest, failures = prepare_voxceleb(
            resolve_path(vox["root"]),
            resolve_path(vox["extract_dir"]),
            resolve_path(vox["converted_dir"]),
            parts=parts,
            workers=workers,
            audio_format=str(vox.get("audio_format", "flac")),
        )
        failures = failures.reindex(columns=FAILURE_COLUMNS)
        scanned = f"(parts {list(parts)}) under {resolve_path(vox['root'])}"
    if manifest.empty:
        raise DataEngineeringError(f"source {source!r} gave no audio files {scanned}")
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

    settings = section(params, "validation")
    fixed_dir = resolve_path(settings.pop("fixed_dir", "data/02_intermediate/fixed_audio"))
    settings.setdefault("workers", int_param(params, "workers", 0))
    policy = ValidationPolicy.from_dict(
        settings, "data_engineering.validation", DataEngineeringError
    )
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
