"""Loss-gated learning (LGL) with a dynamic threshold (DLG), and the schedule that turns on
LGL, DLG and label correction (Miara, Lepage & Dehak 2024; Han et al., loss-gated learning).

LGL: a sample whose loss ``ℓ`` has ``log ℓ > threshold`` is taken to carry a wrong
pseudo-label and is left out of the batch mean (weight 0). DLG re-fits the threshold at each
epoch boundary from the previous epoch's log-losses (``gate_threshold.fit_gate_threshold``).

Typical use in a training loop::

    gate = LossGate(threshold=initial_threshold)
    for epoch in range(start, n_epochs):
        gate.enabled = schedule.lgl_active(epoch)
        for batch in loader:
            scores = model(batch.augmented)
            out = loss_fn(scores, batch.labels)
            keep = gate.gate(out.per_sample)
            if schedule.lc_active(epoch):
                with torch.no_grad():
                    clean_scores = model(batch.clean)
                labels, corrected = correct_labels(clean_scores, batch.labels, ~keep)
                out = loss_fn(scores, labels)  # corrected samples scored against new labels
                keep = keep | corrected
            loss = gate.gated_mean(out.per_sample, keep)
        gate.end_epoch(epoch, refit=schedule.dlg_active(epoch + 1), seed=seed)

``state_dict()`` goes into the checkpoint's ``training_state["loss_gate"]``; its ``history``
has one entry per finished epoch (threshold used, kept fraction, the DLG fit) for plots.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sv_kedro.losses.base import masked_mean
from sv_kedro.losses.gate_threshold import GateFit, fit_gate_threshold

logger = logging.getLogger(__name__)

__all__ = ["GateFit", "GateSchedule", "LossGate", "fit_gate_threshold"]

_STATE_KEYS = {"format_version", "threshold", "enabled", "history", "n_empty_batches"}


@dataclass(frozen=True)
class GateSchedule:
    """Epochs (as the training loop counts them) from which each mechanism is on.

    ``None`` switches a mechanism off for the whole run. ``dlg_active(e)`` means the
    threshold used in epoch ``e`` comes from a GMM fit on epoch ``e − 1``'s log-losses, so
    ``dlg_start_epoch`` must be at least 1. Defaults follow the paper: LGL from the start
    with an initial threshold, DLG from epoch 5, label correction from epoch 9.
    """

    lgl_start_epoch: int | None = 0
    dlg_start_epoch: int | None = 5
    lc_start_epoch: int | None = 9

    def __post_init__(self) -> None:
        for name in ("lgl_start_epoch", "dlg_start_epoch", "lc_start_epoch"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"GateSchedule: {name} must be an int >= 0 or None, got {value!r}")
        if self.dlg_start_epoch == 0:
            raise ValueError(
                "GateSchedule: dlg_start_epoch must be >= 1 (DLG fits on the previous epoch)"
            )

    @staticmethod
    def _on(start: int | None, epoch: int) -> bool:
        return start is not None and epoch >= start

    def lgl_active(self, epoch: int) -> bool:
        return self._on(self.lgl_start_epoch, epoch)

    def dlg_active(self, epoch: int) -> bool:
        return self._on(self.dlg_start_epoch, epoch)

    def lc_active(self, epoch: int) -> bool:
        return self._on(self.lc_start_epoch, epoch)


class LossGate:
    """Keep samples with ``log(loss) <= threshold``; average over the kept ones.

    Args:
        threshold: initial threshold on the natural log of the per-sample loss.
        enabled: when false, ``gate`` keeps every sample (log-losses are still recorded, so
            a DLG fit can start from an ungated epoch).
        warn_every: log a warning on the first and then every ``warn_every``-th batch in
            which no sample is kept (they are all counted in ``n_empty_batches``).
    """

    def __init__(self, threshold: float, enabled: bool = True, warn_every: int = 100) -> None:
        if not math.isfinite(threshold):
            raise ValueError(f"LossGate: threshold must be finite, got {threshold}")
        self.threshold = float(threshold)
        self.enabled = bool(enabled)
        self.warn_every = max(1, int(warn_every))
        self.n_empty_batches = 0
        self.history: list[dict] = []
        self._epoch_log_losses: list[Tensor] = []
        self._epoch_seen = 0
        self._epoch_kept = 0

    def gate(self, per_sample_loss: Tensor) -> Tensor:
        """Keep mask ``[batch]`` (bool) for the losses ``[batch]``; records epoch statistics.

        ``log 0 = −inf`` is kept. A NaN or +inf loss raises ``ValueError`` naming its batch
        positions: it comes from a broken input or a diverged model, not a noisy label, and
        gating it out would hide it while its NaN gradient still reaches the weights (after
        which every loss is NaN, every batch is gated out and the logged loss reads 0).
        """
        if per_sample_loss.dim() != 1:
            raise ValueError(
                f"LossGate.gate: expected per-sample losses [batch], got "
                f"{tuple(per_sample_loss.shape)}"
            )
        log_loss = torch.log(per_sample_loss.detach().float())
        broken = torch.isnan(per_sample_loss.detach()) | torch.isposinf(per_sample_loss.detach())
        if self.enabled:
            keep = log_loss <= self.threshold
        else:
            keep = torch.ones_like(log_loss, dtype=torch.bool)
        # One device-to-host copy per batch for both counts (each is a GPU sync).
        kept, n_broken = torch.stack([keep.sum(), broken.sum()]).tolist()
        if n_broken:
            positions = torch.nonzero(broken).flatten().tolist()
            raise ValueError(
                f"LossGate.gate: {len(positions)} of {per_sample_loss.numel()} per-sample "
                f"losses are NaN or inf (batch positions {positions[:10]}): a broken input or a "
                "diverged model, which the gate must not hide; lower the LR, enable grad_clip "
                "or check those utterances"
            )
        self._epoch_log_losses.append(log_loss)
        self._epoch_seen += int(log_loss.numel())
        self._epoch_kept += int(kept)
        return keep

    def gated_mean(self, per_sample_loss: Tensor, keep: Tensor) -> Tensor:
        """Mean of ``per_sample_loss [batch]`` over ``keep [batch]``; 0 (not NaN) if none kept.

        The zero stays attached to the graph, so ``backward`` gives zero gradients.
        """
        if keep.dtype != torch.bool:
            raise TypeError(f"LossGate.gated_mean: keep must be a bool mask, got {keep.dtype}")
        mean, n_kept = masked_mean(per_sample_loss, keep)
        if float(n_kept) == 0:
            self.n_empty_batches += 1
            if self.n_empty_batches == 1 or self.n_empty_batches % self.warn_every == 0:
                logger.warning(
                    "loss gate: no sample of a batch of %d has log-loss <= %.4f; the batch "
                    "loss is 0 (%d such batches so far)",
                    per_sample_loss.numel(),
                    self.threshold,
                    self.n_empty_batches,
                )
        return mean

    def __call__(self, per_sample_loss: Tensor) -> tuple[Tensor, Tensor]:
        """``(gated mean [], keep [batch])`` in one go."""
        keep = self.gate(per_sample_loss)
        return self.gated_mean(per_sample_loss, keep), keep

    @property
    def kept_fraction(self) -> float:
        """Share of the samples gated so far this epoch that were kept (NaN before any)."""
        return self._epoch_kept / self._epoch_seen if self._epoch_seen else math.nan

    def epoch_log_losses(self) -> np.ndarray:
        """All log-losses recorded this epoch ``[n]`` (float64; may contain ``-inf``)."""
        if not self._epoch_log_losses:
            return np.zeros(0, dtype=np.float64)
        return torch.cat(self._epoch_log_losses).cpu().double().numpy()

    def statistics(self) -> dict[str, float]:
        """Current threshold, this epoch's seen/kept counts and kept fraction, empty batches."""
        return {
            "threshold": self.threshold,
            "n_seen": float(self._epoch_seen),
            "n_kept": float(self._epoch_kept),
            "kept_fraction": self.kept_fraction,
            "n_empty_batches": float(self.n_empty_batches),
        }

    def end_epoch(
        self,
        epoch: int,
        refit: bool,
        seed: int = 0,
        log_losses: np.ndarray | None = None,
        **fit_options: float,
    ) -> GateFit | None:
        """Close ``epoch``: store its statistics in ``history``; with ``refit``, fit the DLG
        threshold for the next epoch on this epoch's log-losses.

        ``log_losses`` replaces the recorded ones (e.g. gathered from all ranks under DDP);
        ``fit_options`` go to ``fit_gate_threshold``. Clears the epoch's records. Returns the
        fit, or ``None`` without ``refit``.
        """
        values = self.epoch_log_losses() if log_losses is None else np.asarray(log_losses)
        entry: dict = {
            "epoch": int(epoch),
            "threshold": self.threshold,
            "enabled": self.enabled,
            "kept_fraction": self.kept_fraction,
            "n_samples": int(values.size),
            "fit": None,
        }
        fit = None
        if refit:
            fit = fit_gate_threshold(values, self.threshold, seed=seed, **fit_options)  # type: ignore[arg-type]
            self.threshold = fit.threshold
            entry["fit"] = fit.to_dict()
        entry["next_threshold"] = self.threshold
        self.history.append(entry)
        self._epoch_log_losses = []
        self._epoch_seen = 0
        self._epoch_kept = 0
        return fit

    def threshold_history(self) -> list[tuple[int, float]]:
        """``(epoch, threshold used in that epoch)`` for every finished epoch, for plots."""
        return [(entry["epoch"], entry["threshold"]) for entry in self.history]

    def state_dict(self) -> dict:
        """Plain Python state (JSON-able, ``weights_only``-loadable); no per-sample records."""
        return {
            "format_version": 1,
            "threshold": self.threshold,
            "enabled": self.enabled,
            "history": [dict(entry) for entry in self.history],
            "n_empty_batches": self.n_empty_batches,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict()``; an unknown or missing key is an error naming it."""
        if not isinstance(state, dict):
            raise TypeError(f"LossGate.load_state_dict: expected a dict, got {type(state)}")
        missing = _STATE_KEYS - state.keys()
        unknown = state.keys() - _STATE_KEYS
        if missing or unknown:
            raise KeyError(
                f"LossGate.load_state_dict: missing keys {sorted(missing)}, "
                f"unknown keys {sorted(unknown)}"
            )
        if state["format_version"] != 1:
            raise ValueError(
                f"LossGate.load_state_dict: unsupported format_version {state['format_version']}"
            )
        threshold = float(state["threshold"])
        if not math.isfinite(threshold):
            raise ValueError(f"LossGate.load_state_dict: threshold is not finite: {threshold}")
        self.threshold = threshold
        self.enabled = bool(state["enabled"])
        self.history = [dict(entry) for entry in state["history"]]
        self.n_empty_batches = int(state["n_empty_batches"])
        self._epoch_log_losses = []
        self._epoch_seen = 0
        self._epoch_kept = 0
