"""Frame-level CTC speaker loss (the ``-ctc`` variant of Vaessen & van Leeuwen 2022).

The model emits, for every frame, scores over ``S`` speakers plus a blank:
``frame_logits [batch, T, S + 1]`` with index 0 = blank and index ``k + 1`` = speaker ``k``.
Each utterance's CTC target is the length-1 sequence ``(speaker + 1,)``; the valid
alignments are ``blank* speaker+ blank*``, so the model must say the speaker on at least one
frame and may spend the others on blank. The loss is ``torch.nn.functional.ctc_loss`` with
``reduction="none"``: the negative log of the summed probability of those alignments.

Normalisation: ``ctc_loss``'s own ``"mean"`` divides by the target length, which is 1 here,
so dividing by it would change nothing and is not done. By default (``length_normalization=
"none"``) the per-utterance loss is that plain negative log-likelihood; with ``"frames"`` it
is divided by the number of valid frames, which makes utterances of different lengths weigh
alike in the batch mean.

Peaky solutions: both "the speaker on every frame" and "the speaker on one frame, blank
elsewhere" reach zero loss. From a neutral initialisation CTC tends to the peaky one, and on
blank frames the ranking among the speakers is then barely trained, so ``frame_accuracy``
stays low (0.77–0.98 by seed on the unit test's synthetic speakers) while the utterance
decision is right. Initialising the blank logit's bias low (e.g. −2) with small classifier
weights leads to the every-frame solution (frame accuracy ≈ 1 there); the model's CTC head
(``sv_kedro.models.heads.FrameClassificationHead``) starts that way.

Evaluation: the CTC head is a training device only. A speaker embedding for verification is
the concatenation of the mean and the standard deviation, over the valid frames, of the
frame representations that feed the CTC projection (``[batch, 2 · hidden]``); the models
package (``sv_kedro.models``) computes it, this module does not.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sv_kedro.losses.base import LossOutput, masked_mean

BLANK_INDEX = 0
LengthNormalization = Literal["none", "frames"]


def _check_ctc_inputs(frame_logits: Tensor, mask: Tensor | None, labels: Tensor) -> Tensor:
    """Validate shapes and return the frame mask ``[batch, T]`` (bool; all valid if None)."""
    if frame_logits.dim() != 3 or frame_logits.shape[2] < 2:
        raise ValueError(
            "CTC speaker loss: expected frame_logits of shape [batch, T, n_speakers + 1] with "
            f"at least one speaker, got {tuple(frame_logits.shape)}"
        )
    batch, n_frames, n_symbols = frame_logits.shape
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(
            f"CTC speaker loss: labels must have shape [batch]=[{batch}], got {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"CTC speaker loss: labels must be integer speakers, got {labels.dtype}")
    n_speakers = n_symbols - 1
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_speakers):
        raise ValueError(
            f"CTC speaker loss: labels must lie in [0, {n_speakers}) (index 0 of the last axis "
            f"is blank), got min {int(labels.min())} and max {int(labels.max())}"
        )
    if mask is None:
        return torch.ones(batch, n_frames, dtype=torch.bool, device=frame_logits.device)
    if mask.shape != (batch, n_frames):
        raise ValueError(
            f"CTC speaker loss: frame mask must have shape [batch, T]=[{batch}, {n_frames}], "
            f"got {tuple(mask.shape)}"
        )
    return mask.to(torch.bool)


def _frame_lengths(mask: Tensor) -> Tensor:
    """Valid-frame counts ``[batch]``; the valid frames must come first in every row."""
    lengths = mask.sum(dim=1)
    prefix = torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]
    if not bool((prefix == mask).all()):
        bad = torch.nonzero((prefix != mask).any(dim=1)).flatten()[:5].tolist()
        raise ValueError(
            f"CTC speaker loss: the frame mask must mark a prefix of valid frames "
            f"(padding at the end); rows {bad} do not"
        )
    if bool((lengths == 0).any()):
        bad = torch.nonzero(lengths == 0).flatten()[:5].tolist()
        raise ValueError(f"CTC speaker loss: rows {bad} have no valid frame")
    return lengths


def utterance_speaker_logits(frame_logits: Tensor, mask: Tensor) -> Tensor:
    """``[batch, S]``: speaker log-probabilities (blank excluded) averaged over valid frames.

    Their argmax is the utterance-level speaker decision used for training accuracy.
    """
    log_probs = F.log_softmax(frame_logits.float(), dim=-1)[..., BLANK_INDEX + 1 :]
    weights = mask.to(log_probs.dtype)[..., None]
    return (log_probs * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def frame_accuracy(frame_logits: Tensor, mask: Tensor | None, labels: Tensor) -> float:
    """Share of valid frames whose argmax over the *speakers* (blank excluded) is the label.

    ``frame_logits [batch, T, S + 1]`` (index 0 = blank), ``mask [batch, T]`` (``None`` = all
    frames valid), ``labels [batch]`` speaker indices in ``[0, S)``.
    """
    frame_mask = _check_ctc_inputs(frame_logits, mask, labels)
    n_valid = int(frame_mask.sum())
    if n_valid == 0:
        raise ValueError("frame_accuracy: the mask has no valid frame")
    predicted = frame_logits[..., BLANK_INDEX + 1 :].argmax(dim=-1)  # [batch, T] speaker index
    correct = (predicted == labels[:, None]) & frame_mask
    return float(correct.sum()) / n_valid


class CTCSpeakerLoss(nn.Module):
    """CTC over a length-1 speaker target; see the module docstring.

    ``forward(frame_logits [batch, T, S + 1], labels [batch] int, mask [batch, T] | None)``:
    ``frame_logits`` may be raw scores or log-probabilities (``log_softmax`` is applied
    either way and is idempotent on log-probabilities). ``mask`` marks valid frames, as a
    prefix of each row. ``LossOutput.logits`` are ``utterance_speaker_logits`` ``[batch, S]``;
    ``extra`` holds ``frame_accuracy`` and ``n_frames`` (valid frames in the batch).

    ``length_normalization``: ``"none"`` (default) or ``"frames"`` (divide each utterance's
    loss by its number of valid frames).
    """

    def __init__(self, length_normalization: LengthNormalization = "none") -> None:
        super().__init__()
        if length_normalization not in ("none", "frames"):
            raise ValueError(
                "CTCSpeakerLoss: length_normalization must be 'none' or 'frames', "
                f"got {length_normalization!r}"
            )
        self.length_normalization = length_normalization

    def forward(
        self, frame_logits: Tensor, labels: Tensor, mask: Tensor | None = None
    ) -> LossOutput:
        frame_mask = _check_ctc_inputs(frame_logits, mask, labels)
        lengths = _frame_lengths(frame_mask)
        log_probs = F.log_softmax(frame_logits.float(), dim=-1)
        targets = (labels.to(torch.long) + 1)[:, None]  # [batch, 1]; +1 skips the blank
        per_sample = F.ctc_loss(
            log_probs.transpose(0, 1),  # ctc_loss wants [T, batch, S + 1]
            targets,
            input_lengths=lengths,
            target_lengths=torch.ones_like(lengths),
            blank=BLANK_INDEX,
            reduction="none",
            zero_infinity=False,  # a length-1 target always has an alignment when T >= 1
        )
        if self.length_normalization == "frames":
            per_sample = per_sample / lengths.to(per_sample.dtype)
        loss, _ = masked_mean(per_sample, None)
        with torch.no_grad():
            utterance_logits = utterance_speaker_logits(frame_logits, frame_mask)
            predicted = frame_logits[..., BLANK_INDEX + 1 :].argmax(dim=-1)
            correct = ((predicted == labels[:, None]) & frame_mask).sum()
            extra = {
                "frame_accuracy": correct.float() / lengths.sum().float(),
                "n_frames": lengths.sum(),
            }
        return LossOutput(loss, per_sample, utterance_logits, extra)

    def extra_repr(self) -> str:
        return f"length_normalization={self.length_normalization!r}"
