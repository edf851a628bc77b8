"""CTC speaker loss: shapes, masks, frame accuracy, and a tiny model that learns 4 speakers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sv_kedro.losses import CTCSpeakerLoss, frame_accuracy

N_SPEAKERS = 4
FEATURE_DIM = 20


def _speaker_batch(
    generator: torch.Generator, batch: int, max_frames: int = 40
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic per-speaker signals: each speaker has its own feature offset and its own
    oscillation frequency over time, under frame noise; padded rows end with zero frames.

    Returns ``features [batch, T, 20]``, ``mask [batch, T]``, ``labels [batch]``.
    """
    speaker_generator = torch.Generator().manual_seed(1234)  # the speakers never change
    offsets = torch.randn(N_SPEAKERS, FEATURE_DIM, generator=speaker_generator) * 0.7
    frequencies = torch.linspace(0.15, 0.6, N_SPEAKERS)
    loadings = torch.randn(N_SPEAKERS, FEATURE_DIM, generator=speaker_generator)
    labels = torch.randint(0, N_SPEAKERS, (batch,), generator=generator)
    lengths = torch.randint(max_frames // 2, max_frames + 1, (batch,), generator=generator)
    time_axis = torch.arange(max_frames, dtype=torch.float32)
    phase = torch.rand(batch, 1, generator=generator) * 2 * math.pi
    oscillation = torch.sin(frequencies[labels][:, None] * time_axis[None, :] + phase)
    features = offsets[labels][:, None, :] + oscillation[..., None] * loadings[labels][:, None, :]
    features = features + torch.randn(batch, max_frames, FEATURE_DIM, generator=generator)
    mask = time_axis[None, :] < lengths[:, None]
    return features * mask[..., None], mask, labels


class _TinyConvCTC(nn.Module):
    """Two 1-D convolutions over ``[batch, T, 20]`` -> ``[batch, T, speakers + blank]``.

    ``blank_bias`` initialises the blank logit's bias. Left at its default (random, near 0)
    CTC drifts to the "peaky" solution: the speaker on a few frames, blank elsewhere, and
    on blank frames the ranking of the speakers is barely trained (all speaker logits are
    pushed down there), so frame accuracy ends anywhere between 0.77 and 0.98 by seed.
    Starting with blank unlikely (-2) leads CTC to the solution that names the speaker on
    every frame, which is what frame accuracy measures.
    """

    def __init__(self, blank_bias: float | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(FEATURE_DIM, 32, kernel_size=5, padding=2)
        self.conv2 = nn.Conv1d(32, N_SPEAKERS + 1, kernel_size=1)
        if blank_bias is not None:
            with torch.no_grad():
                self.conv2.bias[0] = blank_bias

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.conv1(features.transpose(1, 2)))
        return self.conv2(hidden).transpose(1, 2)


@pytest.fixture
def single_thread():
    # Intra-op threads only spin against each other on a small, busy CPU.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _train(blank_bias: float | None, steps: int, seed: int = 0) -> _TinyConvCTC:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = _TinyConvCTC(blank_bias)
    loss_fn = CTCSpeakerLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        features, mask, labels = _speaker_batch(generator, batch=32)
        out = loss_fn(model(features), labels, mask)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    return model


@pytest.mark.usefixtures("single_thread")
def test_tiny_model_learns_speakers_above_90_percent_frame_accuracy():
    model = _train(blank_bias=-2.0, steps=100)
    features, mask, labels = _speaker_batch(torch.Generator().manual_seed(99), batch=64)
    with torch.no_grad():
        frame_logits = model(features)
        held_out = CTCSpeakerLoss()(frame_logits, labels, mask)
    accuracy = frame_accuracy(frame_logits, mask, labels)
    assert accuracy > 0.9, f"frame accuracy {accuracy:.3f}"
    assert held_out.extra["frame_accuracy"].item() == pytest.approx(accuracy)
    assert (held_out.logits.argmax(1) == labels).float().mean().item() > 0.9


@pytest.mark.usefixtures("single_thread")
def test_default_initialisation_still_learns_utterance_speakers():
    model = _train(blank_bias=None, steps=100, seed=1)
    features, mask, labels = _speaker_batch(torch.Generator().manual_seed(98), batch=64)
    with torch.no_grad():
        held_out = CTCSpeakerLoss()(model(features), labels, mask)
    assert (held_out.logits.argmax(1) == labels).float().mean().item() > 0.9


def test_per_sample_loss_matches_ctc_definition_for_one_frame():
    # With a single frame the only alignment is the speaker itself: loss = -log p(speaker).
    frame_logits = torch.randn(3, 1, N_SPEAKERS + 1, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2, 3])
    out = CTCSpeakerLoss()(frame_logits, labels)
    expected = -F.log_softmax(frame_logits[:, 0], dim=-1).gather(1, labels[:, None] + 1)
    torch.testing.assert_close(out.per_sample, expected.squeeze(1))
    assert out.per_sample.sum().item() == pytest.approx(out.loss.item() * 3, rel=1e-6)


def test_padding_frames_do_not_change_the_loss_and_frames_normalisation_divides():
    generator = torch.Generator().manual_seed(2)
    short = torch.randn(2, 6, N_SPEAKERS + 1, generator=generator)
    padded = torch.cat([short, torch.randn(2, 4, N_SPEAKERS + 1, generator=generator)], dim=1)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[:, :6] = True
    labels = torch.tensor([1, 3])
    plain = CTCSpeakerLoss()(short, labels)
    masked = CTCSpeakerLoss()(padded, labels, mask)
    torch.testing.assert_close(plain.per_sample, masked.per_sample)
    per_frame = CTCSpeakerLoss(length_normalization="frames")(padded, labels, mask)
    torch.testing.assert_close(per_frame.per_sample, plain.per_sample / 6)


def test_frame_accuracy_ignores_blank_and_padding():
    # Frame 0: blank is largest but speaker 1 beats the other speakers -> counts as speaker 1.
    frame_logits = torch.tensor(
        [[[9.0, 0.0, 1.0, 0.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0]]]
    )  # [1, 3, 3 speakers + blank]
    labels = torch.tensor([1])
    mask = torch.tensor([[True, True, False]])
    assert frame_accuracy(frame_logits, mask, labels) == pytest.approx(0.5)
    assert frame_accuracy(frame_logits, None, labels) == pytest.approx(1 / 3)


def test_bad_ctc_inputs_are_reported():
    loss_fn = CTCSpeakerLoss()
    frame_logits = torch.zeros(2, 5, 3)
    with pytest.raises(ValueError, match="labels must lie in"):
        loss_fn(frame_logits, torch.tensor([0, 2]))  # 2 speakers only: index 2 is out
    holes = torch.tensor([[True, False, True, False, False], [True] * 5])
    with pytest.raises(ValueError, match="prefix of valid frames"):
        loss_fn(frame_logits, torch.tensor([0, 1]), holes)
    with pytest.raises(ValueError, match="no valid frame"):
        loss_fn(frame_logits, torch.tensor([0, 1]), torch.zeros(2, 5, dtype=torch.bool))
