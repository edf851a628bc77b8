"""EER on validation pairs during training (rank 0, eval mode, no gradients).

Embedding models are scored by the cosine of full-utterance embeddings (batched by length);
the paired BCE model scores each pair jointly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd
from torch import nn

from sv_kedro.corpus.trials import trial_utterances
from sv_kedro.scoring.cosine import cosine_scores
from sv_kedro.scoring.extraction import ExtractionConfig, extract_embeddings
from sv_kedro.scoring.metrics import verification_metrics
from sv_kedro.scoring.pair_scoring import score_pairs_batched
from sv_kedro.scoring.trial_list import read_trial_list
from sv_kedro.training.task import TrainState

ValidateFn = Callable[[nn.Module, TrainState], dict[str, float]]
# What validation reports: the values ``training.monitor`` can select ``best.pt`` by.
VALIDATION_METRICS = ("eer", "min_dcf_0.05")


def validation_metrics(
    model: nn.Module, manifest: pd.DataFrame, trials: pd.DataFrame, max_seconds: float | None = 10.0
) -> dict[str, float]:
    """EER and minDCFs of ``model`` on ``trials`` over ``manifest``'s utterances."""
    labels = trials["label"].to_numpy(dtype=int)
    if hasattr(model, "score_pairs"):
        scores = score_pairs_batched(model, manifest, trials, max_seconds)
    else:
        subset = manifest[manifest["utt_id"].astype(str).isin(trial_utterances(trials))]
        device = str(next(model.parameters()).device)
        config = ExtractionConfig(n_crops=0, max_seconds=max_seconds, device=device)
        table = extract_embeddings(model, subset, config, progress=False).full
        scores = cosine_scores(table, trials)
    metrics = verification_metrics(scores, labels)
    return {name: metrics[name] for name in VALIDATION_METRICS}


def build_validation(config: Mapping[str, Any]) -> ValidateFn:
    """``{"manifest_path", "pairs_path", "max_seconds"}`` -> ``(model, state) -> metrics``."""
    manifest = pd.read_parquet(config["manifest_path"])
    trials = read_trial_list(config["pairs_path"])
    max_seconds = config.get("max_seconds", 10.0)

    def validate(model: nn.Module, state: TrainState) -> dict[str, float]:
        return validation_metrics(model, manifest, trials, max_seconds)

    return validate
