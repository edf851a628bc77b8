"""Restart a round's classifier: fresh, or at its pseudo-speakers' prototypes.

Each round re-clusters the training set, so pseudo-speaker ``j`` of the new labels has
nothing to do with row ``j`` of the previous round's classifier; with a constant number of
clusters the shapes match and weight matching would silently load those rows. The
classifier therefore never carries over. Its prototype start is the mean direction of each
pseudo-speaker's embeddings as the encoder that produced the labels saw them: what a
trained cosine classifier converges to, so training starts near a solution and the first
losses already separate clean from noisy labels.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from sv_kedro.scoring.embedding_table import EmbeddingTable

log = logging.getLogger(__name__)

CLASSIFIER_KEY = "head.classifier.weight"


def class_prototypes(
    vectors: np.ndarray, labels: np.ndarray, n_classes: int, seed: int = 0
) -> np.ndarray:
    """Unit mean direction per class: ``vectors [n, dim]``, ``labels [n]`` -> ``[n_classes, dim]``.

    Rows are L2-normalised before averaging (cosine geometry). A class without members gets
    a random unit vector, so no classifier row is zero.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if vectors.ndim != 2 or labels.shape != (len(vectors),):
        raise ValueError(f"vectors {vectors.shape} and labels {labels.shape} do not pair up")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got {labels.min()}..{labels.max()}")
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sums = np.zeros((n_classes, vectors.shape[1]))
    np.add.at(sums, labels, unit)
    empty = np.bincount(labels, minlength=n_classes) == 0
    if empty.any():
        sums[empty] = np.random.default_rng(seed).normal(size=(int(empty.sum()), sums.shape[1]))
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32)


def restart_classifier(
    checkpoint: Mapping[str, Any],
    embeddings: EmbeddingTable | None,
    pseudo_labels: pd.DataFrame,
) -> dict[str, Any]:
    """``checkpoint`` without its classifier, or with it at the prototypes of
    ``pseudo_labels`` (``utt_id``, ``speaker_index``) in ``embeddings``.

    Without embeddings (a fresh start), or when they are not what the classifier reads
    (their dimension differs from the previous classifier's input), the previous classifier
    is dropped and the new model builds its own. The input is never modified.
    """
    state = dict(checkpoint["model_state"])
    previous = state.get(CLASSIFIER_KEY)
    for key in [k for k in state if k.startswith("head.classifier.")]:
        del state[key]
    if embeddings is None or (previous is not None and previous.shape[1] != embeddings.dim):
        log.info("classifier starts fresh: no embeddings that match its input")
        return {**checkpoint, "model_state": state}
    labels = pseudo_labels["speaker_index"].to_numpy(dtype=np.int64)
    n_classes = int(labels.max()) + 1
    vectors = embeddings.vectors[embeddings.rows(list(pseudo_labels["utt_id"].astype(str)))]
    prototypes = class_prototypes(vectors, labels, n_classes)
    dtype = previous.dtype if previous is not None else torch.float32
    state[CLASSIFIER_KEY] = torch.from_numpy(prototypes).to(dtype)
    log.info("classifier starts at %d pseudo-speaker prototypes", n_classes)
    return {**checkpoint, "model_state": state}
