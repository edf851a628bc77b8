"""ssl_pseudo_labeling: DINO -> pseudo-labels -> fine-tuning rounds -> large-margin fine-tuning."""

from __future__ import annotations

from sv_kedro.pipelines.ssl_pseudo_labeling.pipeline import (
    cohort_manifests,
    configure_iterations,
    create_pipeline,
    evaluated_systems,
    n_iterations,
)

__all__ = [
    "cohort_manifests",
    "configure_iterations",
    "create_pipeline",
    "evaluated_systems",
    "n_iterations",
]
