"""Pair scoring for the paired-input (BCE) model, which judges two utterances jointly.

``score_pairs_batched`` is what evaluation and validation use; ``score_pairs_jointly`` is
the one-pair-at-a-time reference it must equal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from sv_kedro.audio.crops import evaluation_inputs


def score_pairs_jointly(
    model: nn.Module, manifest: pd.DataFrame, trials: pd.DataFrame, max_seconds: float | None
) -> np.ndarray:
    """Same-speaker logits of the paired model for each trial (one pair at a time)."""
    paths = manifest.set_index("utt_id")["path"].astype(str)
    device = next(model.parameters()).device
    cache: dict[str, torch.Tensor] = {}

    def wave(utt: str) -> torch.Tensor:
        if utt not in cache:
            full = evaluation_inputs(paths[utt], n_crops=0, max_seconds=max_seconds).full
            cache[utt] = torch.from_numpy(full)[None].to(device)
        return cache[utt]

    scores = []
    with torch.no_grad():
        for enrol, test in zip(
            trials["enrol"].astype(str), trials["test"].astype(str), strict=True
        ):
            scores.append(float(model.score_pairs(wave(enrol), None, wave(test), None)[0]))
    return np.asarray(scores)


def _padded_frames(frames: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[T_i, D]`` tensors -> ``(frames [B, T_max, D], mask [B, T_max])`` (padding at the end)."""
    longest = max(len(f) for f in frames)
    batch = frames[0].new_zeros(len(frames), longest, frames[0].shape[-1])
    mask = torch.zeros(len(frames), longest, dtype=torch.bool, device=frames[0].device)
    for row, item in enumerate(frames):
        batch[row, : len(item)] = item
        mask[row, : len(item)] = True
    return batch, mask


def score_pairs_batched(
    model: Any,
    manifest: pd.DataFrame,
    trials: pd.DataFrame,
    max_seconds: float | None = 20.0,
    batch_size: int = 32,
) -> np.ndarray:
    """Same-speaker logits of the paired (BCE) model for every trial ``[n_trials]``.

    Equal to scoring one pair at a time (``PairedSpeakerModel.score_pairs``): each
    utterance's CNN features are computed once, alone (no padding), and cached; pairs of
    similar total length are then packed ``[CLS] a [SEP] b [END]`` and run through the
    transformer in padded batches, which the model's masks make exact.
    """
    paths = manifest.drop_duplicates("utt_id").set_index("utt_id")["path"].astype(str)
    enrol = trials["enrol"].astype(str).to_numpy()
    test = trials["test"].astype(str).to_numpy()
    missing = sorted(set(enrol) - set(paths.index) | set(test) - set(paths.index))
    if missing:
        raise ValueError(f"pair scoring: trial utterance(s) not in the manifest: {missing[:5]}")
    device = next(model.parameters()).device
    model.eval()
    features: dict[str, torch.Tensor] = {}
    scores = np.empty(len(trials), dtype=np.float64)
    with torch.no_grad():
        for utt in pd.unique(np.concatenate([enrol, test])):
            full = evaluation_inputs(paths[utt], n_crops=0, max_seconds=max_seconds).full
            frames, mask = model.frontend.extract_features(
                torch.from_numpy(full)[None].to(device), None
            )[:2]
            features[utt] = frames[0, mask[0]]
        sizes = np.array(
            [len(features[a]) + len(features[b]) for a, b in zip(enrol, test, strict=True)]
        )
        order = np.argsort(sizes, kind="stable")
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            frames_a, mask_a = _padded_frames([features[u] for u in enrol[rows]])
            frames_b, mask_b = _padded_frames([features[u] for u in test[rows]])
            logits = model.pair_logits(frames_a, mask_a, frames_b, mask_b)
            scores[rows] = logits.double().cpu().numpy()
    return scores
