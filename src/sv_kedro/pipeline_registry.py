"""Project pipelines."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from sv_kedro.pipelines import data_engineering, evaluation, judge


def register_pipelines() -> dict[str, Pipeline]:
    """Register each pipeline by name; ``__default__`` chains them all in data order.

    ``evaluation`` judges every system the other pipelines train and writes the global
    comparison (``comparison_table``); each training pipeline also evaluates its own
    systems, so ``kedro run --pipeline X`` ends in metrics too.
    """
    evaluated_systems: list[str] = []
    pipelines: dict[str, Pipeline] = {
        "data_engineering": data_engineering.create_pipeline(),
    }
    pipelines["evaluation"] = evaluation.create_pipeline(evaluated_systems)
    pipelines["__default__"] = sum(pipelines.values(), Pipeline([]))
    # Run on demand only: it needs a checkpoint and an audio folder from --params.
    pipelines["judge"] = judge.create_pipeline()
    return pipelines
