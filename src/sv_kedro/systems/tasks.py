"""Training tasks: ``(model, batch, state) -> StepOutput`` for every SV system.

- ``SpeakerClassificationTask``: CE (linear head), AAM (cosine head) or the CTC speaker
  loss (frame-level head), optionally with loss-gated learning (LGL), a per-epoch
  GMM-refitted threshold (DLG), label correction on the clean view (LC) and L2-SP
  towards the weights the run started from.
- ``PairBCETask``: the paired-input model's same-speaker logit against pair labels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sv_kedro.losses.ctc_speaker import frame_accuracy
from sv_kedro.losses.factory import build_loss
from sv_kedro.losses.l2sp import L2SPRegularizer
from sv_kedro.losses.label_correction import correct_labels
from sv_kedro.losses.loss_gate import GateSchedule, LossGate
from sv_kedro.training.task import GatheredLosses, StepOutput, TrainState
from sv_kedro.utils.params import as_bool, as_float, as_int

log = logging.getLogger(__name__)

GATE_DEFAULTS: dict[str, Any] = {
    "enabled": False,
    "initial_threshold": 3.0,  # natural log of the per-sample loss
    "lgl_start_epoch": 0,
    "dlg_start_epoch": 5,
    "lc_start_epoch": 9,
    "lc_temperature": 0.1,
    "lc_confidence": 0.5,
    # The DLG fit is accepted only for two real modes: Ashman's D of the two Gaussians and
    # the lighter one's weight (``gate_threshold.fit_gate_threshold``).
    "dlg_min_separation": 2.0,
    "dlg_min_weight": 0.02,
}


def _checked_gate(config: dict[str, Any]) -> dict[str, Any]:
    """The gate settings with their types and ranges checked, naming ``gate.<key>``."""
    checked = dict(config)
    as_bool(checked["enabled"], "gate.enabled")
    for key in ("lgl_start_epoch", "dlg_start_epoch", "lc_start_epoch"):
        if checked[key] is not None:  # null: that mechanism stays off
            checked[key] = as_int(checked[key], f"gate.{key}")
    checked["initial_threshold"] = as_float(checked["initial_threshold"], "gate.initial_threshold")
    bounds = {
        "lc_confidence": (0.0, 1.0),
        "dlg_min_separation": (0.0, math.inf),
        "dlg_min_weight": (0.0, 0.5),
    }
    for key, (low, high) in bounds.items():
        checked[key] = as_float(checked[key], f"gate.{key}")
        if not low <= checked[key] <= high:
            raise ValueError(f"gate.{key} must be within [{low:g}, {high:g}], got {checked[key]}")
    checked["lc_temperature"] = as_float(checked["lc_temperature"], "gate.lc_temperature")
    if not 0 < checked["lc_temperature"] < math.inf:  # inf would switch LC off silently
        raise ValueError(
            f"gate.lc_temperature must be a finite number > 0, got {checked['lc_temperature']}"
        )
    return checked


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _set_step(model: nn.Module, step: int) -> None:
    inner = _unwrap(model)
    if hasattr(inner, "set_step"):
        inner.set_step(step)


class SpeakerClassificationTask:
    """CE / AAM / CTC on speaker (or pseudo-speaker) labels, with optional LGL/DLG/LC/L2-SP.

    Batches come from ``collate_padded``: ``waves [B, T]``, ``lengths [B]``, ``labels [B]``,
    ``indices [B]`` and, for label correction, ``clean [B, T]`` (the un-augmented view).
    """

    def __init__(
        self,
        loss: Mapping[str, Any],
        gate: Mapping[str, Any] | None = None,
        l2sp_weight: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.loss_config = dict(loss)
        self.loss_fn = build_loss(self.loss_config)
        self.frame_level = self.loss_config["name"] == "ctc"
        unknown = sorted(set(gate or {}) - set(GATE_DEFAULTS))
        if unknown:
            raise ValueError(
                f"loss gate: unknown key(s) {unknown}; allowed {sorted(GATE_DEFAULTS)}"
            )
        self.gate_config = _checked_gate({**GATE_DEFAULTS, **(gate or {})})
        self.gate: LossGate | None = None
        self.schedule: GateSchedule | None = None
        if self.gate_config["enabled"]:
            if self.frame_level:
                raise ValueError("the loss gate works on utterance-level losses, not CTC")
            self.gate = LossGate(float(self.gate_config["initial_threshold"]))
            self.schedule = GateSchedule(
                self.gate_config["lgl_start_epoch"],
                self.gate_config["dlg_start_epoch"],
                self.gate_config["lc_start_epoch"],
            )
        self.l2sp_weight = as_float(l2sp_weight, "l2sp_weight")
        if self.l2sp_weight < 0:
            raise ValueError(f"l2sp_weight must be >= 0, got {self.l2sp_weight}")
        self.l2sp: L2SPRegularizer | None = None
        self._l2sp_reference: dict[str, Tensor] | None = None
        self.seed = int(seed)
        self.n_corrected = 0
        # Per finished epoch: the histogram of the log-losses the DLG fit saw (for plots).
        self.loss_histograms: list[dict[str, Any]] = []

    def _regularizer(self, state: TrainState) -> L2SPRegularizer | None:
        if self.l2sp_weight <= 0:
            return None
        if self.l2sp is None:
            encoder = _pretrained_part(_unwrap(state.model))  # type: ignore[arg-type]
            # The reference is the encoder as this run found it at step 0 (the pre-trained
            # weights); on resume it comes back from the task state, not the current weights.
            self.l2sp = L2SPRegularizer(encoder, reference=self._l2sp_reference)
            self._l2sp_reference = None
        return self.l2sp

    def compute_loss(
        self, model: nn.Module, batch: Mapping[str, Any], state: TrainState
    ) -> StepOutput:
        _set_step(model, state.step)
        labels = batch["labels"]
        output = model(batch["waves"], batch["lengths"])
        if self.frame_level:
            result = self.loss_fn(output.frame_logits, labels, output.frame_mask)
            accuracy = frame_accuracy(output.frame_logits, output.frame_mask, labels)
            n_correct = round(accuracy * len(labels))
            loss = result.loss
        else:
            result = self.loss_fn(output.logits, labels)
            loss, n_correct, result = self._gated(
                model, batch, output.logits, labels, result, state
            )
        extra: dict[str, Any] = {}
        task_loss = loss.detach()
        regularizer = self._regularizer(state)
        if regularizer is not None:
            loss = regularizer.combine(loss, self.l2sp_weight)
            extra["l2sp"] = float(regularizer.last_penalty)
        if self.gate is not None:
            extra["gate_threshold"] = self.gate.threshold
            extra["gate_kept"] = self.gate.kept_fraction
        return StepOutput(
            loss, result.per_sample.detach(), n_correct, len(labels), extra, logged_loss=task_loss
        )

    def _gated(self, model, batch, logits, labels, result, state):
        if self.gate is None or self.schedule is None:
            return result.loss, _n_correct(result.logits, labels), result
        self.gate.enabled = self.schedule.lgl_active(state.epoch)
        keep = self.gate.gate(result.per_sample)
        if self.schedule.lc_active(state.epoch) and "clean" in batch and (~keep).any():
            with torch.no_grad():
                clean_logits = model(batch["clean"], batch["lengths"]).logits
            new_labels, corrected = correct_labels(
                clean_logits.float(),
                labels,
                ~keep,
                float(self.gate_config["lc_temperature"]),
                float(self.gate_config["lc_confidence"]),
            )
            if corrected.any():
                self.n_corrected += int(corrected.sum())
                labels = new_labels
                result = self.loss_fn(logits, labels)
                keep = keep | corrected
        loss = self.gate.gated_mean(result.per_sample, keep)
        return loss, _n_correct(result.logits, labels), result

    def on_epoch_end(self, state: TrainState, gathered: GatheredLosses) -> dict[str, float] | None:
        if self.gate is None or self.schedule is None:
            return None
        losses = gathered.losses.double().numpy()
        log_losses = np.log(np.clip(losses, 1e-12, None))
        kept = self.gate.kept_fraction
        self.loss_histograms.append({"epoch": int(state.epoch), **log_loss_histogram(log_losses)})
        fit = self.gate.end_epoch(
            state.epoch,
            refit=self.schedule.dlg_active(state.epoch + 1),
            seed=self.seed + state.epoch,
            log_losses=log_losses,
            min_separation=float(self.gate_config["dlg_min_separation"]),
            min_weight=float(self.gate_config["dlg_min_weight"]),
        )
        stats = {"gate_threshold_next": self.gate.threshold, "gate_kept_epoch": kept}
        if fit is not None:
            log.info(
                "epoch %d: loss-gate threshold %.4f (%s)", state.epoch, fit.threshold, fit.reason
            )
        stats["labels_corrected"] = float(self.n_corrected)
        self.n_corrected = 0
        return stats

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "n_corrected": self.n_corrected,
            "loss_histograms": [dict(entry) for entry in self.loss_histograms],
        }
        if self.gate is not None:
            state["gate"] = self.gate.state_dict()
        if self.l2sp is not None:
            state["l2sp_reference"] = {
                name: buffer.detach().cpu().clone() for name, buffer in self.l2sp.reference_items()
            }
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.n_corrected = int(state.get("n_corrected", 0))
        self.loss_histograms = [dict(entry) for entry in state.get("loss_histograms", [])]
        if self.gate is not None and "gate" in state:
            self.gate.load_state_dict(dict(state["gate"]))
        if "l2sp_reference" in state:
            self._l2sp_reference = dict(state["l2sp_reference"])
            self.l2sp = None


def _pretrained_part(model: nn.Module) -> nn.Module:
    """What L2-SP holds near its starting weights: the SSL encoder of an SSL model, the TDNN
    back-bone (``pooling``) of a filterbank model, whose front end has no parameters."""
    if getattr(model, "uses_ssl", True):
        return model.frontend  # type: ignore[return-value]
    return model.pooling  # type: ignore[return-value]


def log_loss_histogram(log_losses: np.ndarray, bins: int = 40) -> dict[str, list[float]]:
    """``{"edges": [bins + 1], "counts": [bins]}`` of the finite log-losses (plots)."""
    finite = log_losses[np.isfinite(log_losses)]
    if finite.size == 0:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(finite, bins=bins)
    return {"edges": edges.tolist(), "counts": counts.astype(float).tolist()}


def _n_correct(logits: Tensor | None, labels: Tensor) -> int:
    if logits is None:
        return 0
    return int((logits.argmax(dim=-1) == labels).sum())


class PairBCETask:
    """Binary cross-entropy on the paired model's same-speaker logits.

    Batches come from ``collate_pairs``: ``a`` and ``b`` (each a ``collate_padded`` batch)
    and ``same [B]`` (1.0 same speaker, 0.0 different).
    """

    def __init__(self, loss: Mapping[str, Any]) -> None:
        self.loss_fn = build_loss({**loss, "name": "bce"})

    def compute_loss(
        self, model: nn.Module, batch: Mapping[str, Any], state: TrainState
    ) -> StepOutput:
        _set_step(model, state.step)
        a, b, same = batch["a"], batch["b"], batch["same"]
        logits = model(a["waves"], a["lengths"], b["waves"], b["lengths"])
        result = self.loss_fn(logits, same)
        n_correct = int(((logits > 0).float() == same).sum())
        return StepOutput(
            result.loss,
            result.per_sample.detach(),
            n_correct,
            len(same),
            sample_indices=a["indices"],
        )


def build_task(config: Mapping[str, Any]) -> SpeakerClassificationTask | PairBCETask:
    """``{"loss": {...}, "gate": {...}, "l2sp_weight": 0.0, "seed": 0}`` -> a task."""
    loss = dict(config["loss"])
    if loss.get("name") == "bce":
        return PairBCETask(loss)
    return SpeakerClassificationTask(
        loss, config.get("gate"), config.get("l2sp_weight", 0.0), int(config.get("seed", 0))
    )
