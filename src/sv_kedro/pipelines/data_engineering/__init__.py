"""data_engineering: raw audio to manifests, data-quality reports, trial lists and splits."""

from sv_kedro.pipelines.data_engineering.pipeline import create_pipeline

__all__ = ["create_pipeline"]
