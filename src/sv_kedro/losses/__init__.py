"""Losses: CE, AAM softmax, pair BCE, CTC speaker loss, loss gate and label correction, L2-SP."""

from sv_kedro.losses.base import LossOutput, masked_mean, top1_accuracy
from sv_kedro.losses.classification import AAMSoftmaxLoss, CrossEntropyLoss, MarginSchedule
from sv_kedro.losses.ctc_speaker import CTCSpeakerLoss, frame_accuracy, utterance_speaker_logits
from sv_kedro.losses.factory import LOSS_NAMES, build_loss
from sv_kedro.losses.gate_threshold import (
    GateFit,
    fit_gate_threshold,
    weighted_gaussian_intersections,
)
from sv_kedro.losses.l2sp import L2SPRegularizer
from sv_kedro.losses.label_correction import correct_labels
from sv_kedro.losses.loss_gate import GateSchedule, LossGate
from sv_kedro.losses.pair_bce import PairBCELoss

__all__ = [
    "LOSS_NAMES",
    "AAMSoftmaxLoss",
    "CTCSpeakerLoss",
    "CrossEntropyLoss",
    "GateFit",
    "GateSchedule",
    "L2SPRegularizer",
    "LossGate",
    "LossOutput",
    "MarginSchedule",
    "PairBCELoss",
    "build_loss",
    "correct_labels",
    "fit_gate_threshold",
    "frame_accuracy",
    "masked_mean",
    "top1_accuracy",
    "utterance_speaker_logits",
    "weighted_gaussian_intersections",
]
