"""A round's classifier starts at the new pseudo-speakers' prototypes, never scrambled."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sv_kedro.clustering.prototypes import (
    CLASSIFIER_KEY,
    class_prototypes,
    restart_classifier,
)
from sv_kedro.scoring.embedding_table import EmbeddingError, EmbeddingTable


def clustered(n_classes=4, per_class=5, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 3
    labels = np.repeat(np.arange(n_classes), per_class)
    vectors = (centres[labels] + 0.3 * rng.normal(size=(len(labels), dim))).astype(np.float32)
    keys = [f"u{i:03d}.wav" for i in range(len(labels))]
    return EmbeddingTable(keys, vectors), pd.DataFrame({"utt_id": keys, "speaker_index": labels})


def test_prototypes_are_unit_class_means_and_classify_their_own_members():
    table, labels = clustered()
    prototypes = class_prototypes(table.vectors, labels.speaker_index.to_numpy(), 4)
    assert prototypes.shape == (4, 8)
    np.testing.assert_allclose(np.linalg.norm(prototypes, axis=1), 1.0, rtol=1e-6)
    unit = table.vectors / np.linalg.norm(table.vectors, axis=1, keepdims=True)
    expected = unit[labels.speaker_index.to_numpy() == 2].mean(axis=0)
    np.testing.assert_allclose(prototypes[2], expected / np.linalg.norm(expected), rtol=1e-5)
    # As a cosine classifier they already put every member in its own class.
    predicted = (unit @ prototypes.T).argmax(axis=1)
    assert (predicted == labels.speaker_index.to_numpy()).all()


def test_an_empty_class_gets_a_unit_row_and_out_of_range_labels_fail():
    prototypes = class_prototypes(np.eye(3, dtype=np.float32), np.array([0, 0, 2]), 3)
    np.testing.assert_allclose(np.linalg.norm(prototypes, axis=1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        class_prototypes(np.eye(3), np.array([0, 1, 2]), 2)


def test_previous_classifier_is_replaced_by_the_new_labels_prototypes():
    table, labels = clustered()
    scrambled = torch.randn(4, 8)
    checkpoint = {
        "architecture": "ecapa_tdnn",
        "model_state": {CLASSIFIER_KEY: scrambled, "pooling.w": torch.ones(2)},
    }
    started = restart_classifier(checkpoint, table, labels.sample(frac=1, random_state=0))
    weight = started["model_state"][CLASSIFIER_KEY]
    expected = class_prototypes(table.vectors, labels.speaker_index.to_numpy(), 4)
    np.testing.assert_allclose(weight.numpy(), expected, rtol=1e-5)
    assert started["model_state"]["pooling.w"] is checkpoint["model_state"]["pooling.w"]
    assert checkpoint["model_state"][CLASSIFIER_KEY] is scrambled  # the input is untouched
    assert started["architecture"] == "ecapa_tdnn"


def test_without_matching_embeddings_the_previous_classifier_is_dropped():
    table, labels = clustered()
    state = {CLASSIFIER_KEY: torch.randn(4, 16), "head.classifier.bias": torch.zeros(4)}
    for embeddings in (None, table):  # none, or 8-d embeddings for a 16-d classifier input
        started = restart_classifier({"model_state": state}, embeddings, labels)
        assert not [k for k in started["model_state"] if k.startswith("head.classifier")]
    # A DINO encoder has no classifier: the prototypes are added for the new one.
    started = restart_classifier({"model_state": {}}, table, labels)
    assert started["model_state"][CLASSIFIER_KEY].shape == (4, 8)


def test_labels_for_utterances_without_embeddings_are_named():
    table, labels = clustered()
    labels.loc[0, "utt_id"] = "nobody.wav"
    with pytest.raises(EmbeddingError, match=r"nobody\.wav"):
        restart_classifier({"model_state": {}}, table, labels)
