"""Project pipelines."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from sv_kedro.pipelines import (
    data_engineering,
    evaluation,
    judge,
    ssl_pseudo_labeling,
    supervised_training,
)


def register_pipelines() -> dict[str, Pipeline]:
    """Register each pipeline by name; ``__default__`` chains them all in data order.

    ``evaluation`` judges every system the other pipelines train and writes the global
    comparison (``comparison_table``); each training pipeline also evaluates its own
    systems, so ``kedro run --pipeline X`` ends in metrics too.
    """
    evaluated_systems: list[str] = [
        *supervised_training.SYSTEMS,
        *ssl_pseudo_labeling.evaluated_systems(),
    ]
    pipelines: dict[str, Pipeline] = {
        "data_engineering": data_engineering.create_pipeline(),
    }
    # The wav2vec2 study: seven systems, each trained and evaluated, compared in
    # supervised_comparison_table; --namespaces <system> runs one.
    pipelines["supervised_training"] = supervised_training.create_pipeline()
    pipelines["ssl_pseudo_labeling"] = ssl_pseudo_labeling.create_pipeline()
    # Self-supervised stages build their AS-norm / PLDA cohorts from their own pseudo-labels.
    pipelines["evaluation"] = evaluation.create_pipeline(
        evaluated_systems, cohorts=ssl_pseudo_labeling.cohort_manifests()
    )
    pipelines["__default__"] = sum(pipelines.values(), Pipeline([]))
    # Run on demand only: it needs a checkpoint and an audio folder from --params.
    pipelines["judge"] = judge.create_pipeline()
    # Stage 0 from a published .pt file instead of DINO (ssl_pseudo_labeling.external_embeddings).
    pipelines["ssl_pseudo_labeling_external"] = ssl_pseudo_labeling.create_pipeline("external")
    return pipelines
