"""judge: metrics for any checkpoint or embeddings file on any audio folder and trial list."""

from sv_kedro.pipelines.judge.pipeline import create_pipeline

__all__ = ["create_pipeline"]
