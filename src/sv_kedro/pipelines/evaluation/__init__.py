"""evaluation: embedding extraction, scoring back-ends, metrics, comparison table and DET plot."""

from sv_kedro.pipelines.evaluation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
