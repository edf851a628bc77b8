"""Project pipelines."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from sv_kedro.pipelines import data_engineering


def register_pipelines() -> dict[str, Pipeline]:
    """Register each pipeline by name; ``__default__`` chains them all in data order."""
    pipelines: dict[str, Pipeline] = {
        "data_engineering": data_engineering.create_pipeline(),
    }
    pipelines["__default__"] = sum(pipelines.values(), Pipeline([]))
    return pipelines
