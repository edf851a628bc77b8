"""Nodes of the self-supervised pipeline: DINO -> embeddings -> pseudo-labels -> fine-tuning.

Thin glue: each node adapts catalog inputs and parameters to library calls
(``systems.dino``, ``clustering``, ``systems.runner``, ``scoring.extraction``). True speaker
labels are read in one place only, :func:`cluster_training_embeddings`, for the health
report; every training input is built from ``utt_id``/``path``/``duration`` and
pseudo-labels (:func:`pseudo_labeled_manifest`).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from sv_kedro.clustering.health import cluster_health, cluster_size_histogram_figure
from sv_kedro.clustering.prototypes import restart_classifier
from sv_kedro.clustering.pseudo_labels import cluster_pseudo_labels, pseudo_label_frame
from sv_kedro.clustering.settings import (
    check_speakers_fill_a_batch,
    checked_clustering,
    resolve_counts,
)
from sv_kedro.losses.gate_plot import gate_figure
from sv_kedro.models.dino import encoder_checkpoint_payload
from sv_kedro.models.factory import ARCHITECTURE_SECTIONS
from sv_kedro.scoring.embedding_table import EmbeddingError, EmbeddingTable
from sv_kedro.scoring.extraction_launch import extract_from_checkpoint
from sv_kedro.systems.dino import train_dino
from sv_kedro.systems.fingerprint import run_fingerprint
from sv_kedro.systems.runner import train_speaker_system
from sv_kedro.utils.params import as_int

log = logging.getLogger(__name__)

# What of the training manifest may reach training: audio, never the speaker.
AUDIO_COLUMNS = ("utt_id", "path", "duration", "num_frames", "sample_rate", "channels", "source")
CLASSIFIER_STARTS = ("fresh", "prototypes")
ROUND_STARTS = ("previous", "initial")


def _set_threads(run: Mapping[str, Any]) -> None:
    threads = run.get("torch_threads")
    if threads:
        torch.set_num_threads(as_int(threads, "ssl_pseudo_labeling.run.torch_threads"))


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``base`` with ``overrides`` applied key by key (nested mappings merged, not replaced)."""
    merged = copy.deepcopy(dict(base))
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def architecture_sections(model: Mapping[str, Any]) -> dict[str, Any]:
    """``model`` without the sections that belong to *other* architectures.

    Environments merge parameters key by key, so ``conf/voxceleb`` switching the base's
    ``ecapa_tdnn`` to ``ssl_mhfa`` still carries ``ecapa``/``fbank``; those are dropped
    here. Keys that belong to no architecture stay, so ``build_model`` still names typos.
    """
    architecture = model.get("architecture")
    used = set(ARCHITECTURE_SECTIONS.get(architecture, ()))
    foreign = set().union(*ARCHITECTURE_SECTIONS.values()) - used
    return {k: copy.deepcopy(v) for k, v in model.items() if k not in foreign}


# ------------------------------------------------------------------------------ stage 0


def train_dino_encoder(
    train_manifest: pd.DataFrame, dino: dict[str, Any], run: dict[str, Any]
) -> tuple[dict[str, Any], pd.DataFrame]:
    """DINO on the unlabeled training audio; returns the exported encoder checkpoint (the
    ``dino.export`` network, teacher by default, as an ordinary embedding model) and the
    training metrics."""
    _set_threads(run)
    model = dict(dino["model"])
    model["encoder"] = architecture_sections(model["encoder"])
    audio = train_manifest[[c for c in AUDIO_COLUMNS if c in train_manifest]]
    settings = {**dino, "model": model}
    work_dir = Path(run["work_dir"]) / "dino" / run_fingerprint(audio, settings)
    payload, metrics = train_dino(
        audio,
        model,
        dino.get("task") or {},
        dino["training"],
        dino.get("data") or {},
        {"work_dir": str(work_dir), "resume": run.get("resume", True)},
        run.get("distributed"),
        where="ssl_pseudo_labeling.dino",  # errors of the workers name the full key
    )
    encoder = encoder_checkpoint_payload(payload, dino.get("export", "teacher"))
    return encoder, metrics


def embed_training_utterances(
    checkpoint: dict[str, Any],
    train_manifest: pd.DataFrame,
    extraction: dict[str, Any],
    run: dict[str, Any],
) -> EmbeddingTable:
    """Full-utterance embeddings of every training utterance (the clustering input)."""
    _set_threads(run)
    audio = train_manifest[[c for c in AUDIO_COLUMNS if c in train_manifest]]
    return extract_from_checkpoint(
        checkpoint, audio, extraction, "ssl_pseudo_labeling.extraction"
    ).full


def validate_embeddings(
    embeddings: EmbeddingTable, train_manifest: pd.DataFrame, source: str = "initial embeddings"
) -> EmbeddingTable:
    """The embeddings of exactly the manifest's utterances, in manifest order.

    Raises ``EmbeddingError`` naming the keys at fault: manifest utterances without an
    embedding, NaN/inf or zero vectors, or every vector the same. Embeddings of other
    utterances are left out with a warning: a published file covers a whole corpus, of
    which the training manifest is a part (the validation speakers are split off).
    (Duplicate keys cannot reach here: ``EmbeddingTable`` refuses them, naming them.)
    """
    utt_ids = train_manifest["utt_id"].astype(str)
    repeated = utt_ids[utt_ids.duplicated()].unique().tolist()
    if repeated:
        raise EmbeddingError(f"train_manifest repeats utt_id(s) {repeated[:5]}")
    wanted = set(utt_ids)
    extra = [key for key in embeddings.keys_ if key not in wanted]
    missing = [key for key in utt_ids if key not in embeddings]
    if missing:
        hint = (
            f"; {len(extra)} of its keys are not utterances of train_manifest either, e.g. "
            f"{extra[:3]} (keys must be utt_ids: paths relative to the corpus root)"
            if extra
            else ""
        )
        raise EmbeddingError(
            f"{source}: {len(missing)} train_manifest utterance(s) have no embedding, e.g. "
            f"{missing[:5]}{hint}"
        )
    if extra:
        log.warning(
            "%s: %d embedding(s) of utterances outside train_manifest are left out, e.g. %s",
            source,
            len(extra),
            extra[:3],
        )
    aligned = embeddings.subset(utt_ids.tolist())
    try:
        aligned.check_usable()
    except EmbeddingError as error:
        raise EmbeddingError(f"{source}: {error}") from error
    vectors = np.asarray(aligned.vectors, dtype=np.float32)
    if len(vectors) > 1 and not np.ptp(vectors, axis=0).any():
        raise EmbeddingError(
            f"{source}: all {len(vectors)} embeddings are the same vector, so they cannot "
            "tell speakers apart (a model that did not learn, or a broken export)"
        )
    return EmbeddingTable(list(aligned.keys_), vectors)


def check_external_embeddings(
    external_embeddings: EmbeddingTable, train_manifest: pd.DataFrame
) -> EmbeddingTable:
    """Stage 0 from a published ``.pt`` file: validated and stored in the compact format."""
    return validate_embeddings(external_embeddings, train_manifest, "external embeddings")


# ------------------------------------------------------------------------------ stage 1


def cluster_training_embeddings(
    embeddings: EmbeddingTable, train_manifest: pd.DataFrame, clustering: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, float], Figure]:
    """k-means to ``k1`` then AHC to ``k2``: the pseudo-label table, its health report and a
    cluster-size histogram.

    The table (``utt_id, pseudo_label, kmeans_label, speaker_index``) follows the manifest's
    row order. The true ``speaker`` column is read here for the report only (NMI, purity).
    """
    settings = checked_clustering(clustering)
    vectors = validate_embeddings(embeddings, train_manifest, "embeddings").vectors
    k1, k2 = resolve_counts(settings, len(vectors))
    result = cluster_pseudo_labels(vectors, k1, k2, k2_search=settings.search, **settings.options)
    table = pseudo_label_frame(train_manifest["utt_id"].astype(str), result)
    truth = train_manifest["speaker"] if "speaker" in train_manifest else None
    report = cluster_health(table["pseudo_label"], truth)
    report.update({"k1": float(k1), "k2": float(len(result.k2_centroids)), **result.timings})
    if result.k2_scores is not None:
        best = result.k2_scores["silhouette"].max()
        report["k2_silhouette"] = float(best)
        log.info(
            "k2 auto: %d pseudo-speakers (silhouette %.3f); tried %s",
            len(result.k2_centroids),
            best,
            ", ".join(f"{k}: {v:.3f}" for k, v in result.k2_scores.itertuples(index=False)),
        )
    figure = cluster_size_histogram_figure(table["pseudo_label"])
    return table, report, figure


def pseudo_labeled_manifest(
    train_manifest: pd.DataFrame, pseudo_labels: pd.DataFrame
) -> pd.DataFrame:
    """The training input: audio columns only, ``speaker``/``speaker_index`` = pseudo-label.

    Raises naming utterances without a pseudo-label.
    """
    labels = pseudo_labels.set_index("utt_id")["speaker_index"]
    audio = train_manifest[[c for c in AUDIO_COLUMNS if c in train_manifest]].copy()
    unlabeled = audio.loc[~audio["utt_id"].isin(labels.index), "utt_id"].tolist()
    if unlabeled:
        raise ValueError(
            f"{len(unlabeled)} utterance(s) have no pseudo-label, e.g. {unlabeled[:5]}"
        )
    index = labels.loc[audio["utt_id"]].to_numpy(dtype=np.int64)
    audio["speaker_index"] = index
    audio["speaker"] = [f"pseudo{i:05d}" for i in index]
    return audio.reset_index(drop=True)


# ------------------------------------------------------------------------------ stages 2-4


def _fine_tune(
    pseudo_labels: pd.DataFrame,
    train_manifest: pd.DataFrame,
    previous: dict[str, Any] | None,
    config: dict[str, Any],
    run: dict[str, Any],
    stage: str,
    previous_embeddings: EmbeddingTable | None = None,
) -> tuple[dict[str, Any], pd.DataFrame, Figure]:
    start = config.get("classifier_start", "fresh")
    if start not in CLASSIFIER_STARTS:
        raise ValueError(
            f"{stage}: classifier_start must be one of {CLASSIFIER_STARTS}, got {start!r}"
        )
    _set_threads(run)
    manifest = pseudo_labeled_manifest(train_manifest, pseudo_labels)
    # k2: auto picks the count at run time: refuse one no batch can hold before training.
    check_speakers_fill_a_batch(
        int(manifest["speaker_index"].nunique()),
        config.get("data") or {},
        f"ssl_pseudo_labeling.{'lmft' if stage == 'lmft' else 'finetune'}.data.batch_size",
        f"{stage}'s pseudo-labels (ssl_pseudo_labeling.clustering)",
    )
    initial = previous if previous is not None and config.get("init_from_previous", True) else None
    if initial is not None:
        # The labels were just re-clustered: the previous classifier's rows name other
        # pseudo-speakers, so it never carries over. It restarts fresh or at prototypes.
        embeddings = previous_embeddings if start == "prototypes" else None
        initial = restart_classifier(initial, embeddings, manifest)
    # New pseudo-labels or a retrained previous stage give a new folder, never a resume.
    fingerprint = run_fingerprint(
        manifest, config, initial["model_state"] if initial is not None else None
    )
    checkpoint, metrics = train_speaker_system(
        manifest,
        None,  # validation pairs carry true labels: no model selection on them
        None,
        architecture_sections(config["model"]),
        config["loss"],
        config["training"],
        config.get("data") or {},
        {
            "work_dir": str(Path(run["work_dir"]) / stage / fingerprint),
            "resume": run.get("resume", True),
            "gate": config.get("gate") or {},
            "l2sp_weight": config.get("l2sp_weight", 0.0) if initial is not None else 0.0,
        },
        run.get("distributed"),
        initial_weights=initial,
    )
    return checkpoint, metrics, gate_figure(checkpoint, stage)


def fine_tune_round(
    pseudo_labels: pd.DataFrame,
    previous_embeddings: EmbeddingTable,
    train_manifest: pd.DataFrame,
    previous_checkpoint: dict[str, Any],
    finetune: dict[str, Any],
    run: dict[str, Any],
    stage: str,
    initial_checkpoint: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], pd.DataFrame, Figure]:
    """One round: train the ``finetune.model`` on the pseudo-labels, initialised from
    ``previous_checkpoint`` (matching weights; L2-SP pulls towards them) unless
    ``finetune.init_from_previous`` is false (e.g. WavLM after a DINO ECAPA-TDNN, round 1).

    ``finetune.round_start: initial`` starts rounds 2.. where round 1 started instead:
    ``initial_checkpoint`` (the DINO encoder), or the model's own pre-trained weights when
    there is none (external embeddings). The original recipe iterates so: each round is a
    new training from WavLM-Base+ on the previous round's pseudo-labels.

    The classifier restarts (the labels were re-clustered): fresh, or with
    ``finetune.classifier_start: prototypes`` at each pseudo-speaker's mean direction in
    ``previous_embeddings`` (what the labels were clustered from)."""
    config = dict(finetune)
    round_start = config.get("round_start", "previous")
    if round_start not in ROUND_STARTS:
        raise ValueError(f"{stage}: round_start must be one of {ROUND_STARTS}, got {round_start!r}")
    if stage == "iter_1":
        start_from = previous_checkpoint
    elif round_start == "previous":
        start_from = previous_checkpoint
        config["init_from_previous"] = True  # later rounds continue the previous one
    else:
        if config.get("classifier_start", "fresh") == "prototypes":
            # The prototypes live in the previous model's space, not the initial one's.
            raise ValueError(f"{stage}: classifier_start 'prototypes' needs round_start 'previous'")
        start_from = initial_checkpoint
    return _fine_tune(
        pseudo_labels, train_manifest, start_from, config, run, stage, previous_embeddings
    )


def fine_tune_first_round_from_scratch(
    pseudo_labels: pd.DataFrame,
    train_manifest: pd.DataFrame,
    finetune: dict[str, Any],
    run: dict[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame, Figure]:
    """Round 1 of the external-embeddings pipeline: no stage-0 model to start from (the
    fine-tuned model starts from its own ``pretrained`` weights, e.g. WavLM-Base+)."""
    return _fine_tune(pseudo_labels, train_manifest, None, dict(finetune), run, "iter_1")


def large_margin_fine_tune(
    pseudo_labels: pd.DataFrame,
    previous_embeddings: EmbeddingTable,
    train_manifest: pd.DataFrame,
    previous_checkpoint: dict[str, Any],
    finetune: dict[str, Any],
    lmft: dict[str, Any],
    run: dict[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame, Figure]:
    """Stage 4: the last round's model, longer crops and a larger AAM margin (``lmft``
    overrides ``finetune`` key by key); the classifier restarts as in :func:`fine_tune_round`
    (the shipped ``lmft`` starts it at the prototypes)."""
    config = deep_merge(finetune, lmft)
    config["init_from_previous"] = True
    return _fine_tune(
        pseudo_labels, train_manifest, previous_checkpoint, config, run, "lmft", previous_embeddings
    )


# ------------------------------------------------------------------------------ reports


def _main_metrics(metrics: Mapping[str, Any] | None, backend: str) -> dict[str, float]:
    empty = {"eer": math.nan, "min_dcf_0.01": math.nan, "min_dcf_0.05": math.nan}
    if not metrics:
        return empty
    values = (metrics.get("test") or {}).get(backend)
    return {**empty, **{k: float(v) for k, v in (values or {}).items() if k in empty}}


def summarize_stages(scoring: dict[str, Any], **stage_outputs: Any) -> tuple[pd.DataFrame, str]:
    """The ``ssl_summary`` table: one row per stage in pipeline order.

    ``stage_outputs`` holds ``<stage>__health`` (cluster-health dicts) and optionally
    ``<stage>__metrics`` (evaluation metrics; the ``test`` set and ``scoring.main_backend``
    are reported). Returns the table and its markdown.
    """
    backend = scoring.get("main_backend", "fusion")
    stages = list(dict.fromkeys(key.rsplit("__", 1)[0] for key in stage_outputs))
    rows = []
    for stage in stages:
        health = stage_outputs.get(f"{stage}__health") or {}
        evaluated = _main_metrics(stage_outputs.get(f"{stage}__metrics"), backend)
        rows.append(
            {
                "stage": stage,
                "nmi": round(float(health.get("nmi", math.nan)), 4),
                "purity": round(float(health.get("purity", math.nan)), 4),
                "n_clusters": int(health.get("n_clusters", 0)),
                "eer_percent": round(100 * evaluated["eer"], 3),
                "min_dcf_0.01": round(evaluated["min_dcf_0.01"], 4),
                "min_dcf_0.05": round(evaluated["min_dcf_0.05"], 4),
            }
        )
    table = pd.DataFrame(rows)
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    lines = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    note = (
        f"NMI: clustering of each stage's training-set embeddings against the true speakers "
        f"(report only). EER/minDCF: `{backend}` back-end on the test trials."
    )
    markdown = "\n".join(
        ["# Self-supervised SV: stage summary", "", note, "", header, rule, *lines]
    )
    return table, markdown + "\n"
