from __future__ import annotations

import pytest
import torch

from sv_kedro.models.heads import ClassificationHead, CosineClassifier, FrameClassificationHead


def test_cosine_classifier_returns_cosines() -> None:
    classifier = CosineClassifier(8, 5)
    inputs = torch.randn(4, 8) * 30
    cosines = classifier(inputs)
    assert cosines.shape == (4, 5)
    assert cosines.abs().max() <= 1.0 + 1e-6
    expected = torch.nn.functional.cosine_similarity(
        inputs[:, None, :], classifier.weight[None, :, :], dim=-1
    )
    torch.testing.assert_close(cosines, expected, atol=1e-5, rtol=1e-5)
    # scaling the input does not change a cosine
    torch.testing.assert_close(classifier(inputs * 7), cosines, atol=1e-5, rtol=1e-5)


def test_embedding_from_pooled_or_hidden_layer() -> None:
    pooled = torch.randn(3, 10)
    head = ClassificationHead(10, [6, 4], n_classes=5, embedding_layer="pooled")
    embedding, logits = head(pooled)
    assert torch.equal(embedding, pooled) and logits.shape == (3, 5)
    head = ClassificationHead(10, [6, 4], 5, embedding_layer=0, batch_norm=True).eval()
    embedding, logits = head(pooled)
    # x-vector style: the affine output of the first hidden layer, before the ReLU
    torch.testing.assert_close(embedding, head.blocks[0].linear(pooled))
    assert (embedding < 0).any() and head.embedding_dim == 6
    assert logits.shape == (3, 5)


def test_embedding_only_head_and_bad_layer() -> None:
    embedding, logits = ClassificationHead(10, [], None)(torch.randn(2, 10))
    assert logits is None and embedding.shape == (2, 10)
    with pytest.raises(ValueError, match="embedding_layer"):
        ClassificationHead(10, [6], 5, embedding_layer=1)
    with pytest.raises(ValueError, match="classifier"):
        ClassificationHead(10, [], 5, classifier="arc")


def test_frame_head_has_blank_class() -> None:
    head = FrameClassificationHead(8, n_classes=5, hidden_dims=[4])
    features, logits = head(torch.randn(2, 7, 8))
    assert features.shape == (2, 7, 4) and logits.shape == (2, 7, 6)


def test_frame_head_starts_with_every_frame_saying_a_speaker() -> None:
    # CTC from a neutral start collapses to "blank everywhere"; the head starts with small
    # logits and a low blank bias, so blank is the least likely symbol on every frame.
    torch.manual_seed(0)
    head = FrameClassificationHead(16, n_classes=4)
    with torch.no_grad():
        _, logits = head(torch.randn(3, 50, 16))
    probabilities = logits.softmax(dim=-1)
    assert (probabilities[..., 0] < 0.02).all()
    speakers = probabilities[..., 1:]
    assert torch.allclose(speakers, torch.full_like(speakers, float(speakers.mean())), atol=0.05)
    blank_free = FrameClassificationHead(16, n_classes=4, blank_bias=0.0)
    assert float(blank_free.classifier.bias[0].detach()) == 0.0
