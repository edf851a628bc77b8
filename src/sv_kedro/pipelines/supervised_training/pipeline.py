"""supervised_training: the wav2vec2 speaker-recognition study, one namespace per system.

Every system (``SYSTEMS``) is the same two-node template under its own namespace, so
kedro-viz shows them side by side and ``kedro run --pipelines supervised_training
--namespaces ecapa_tdnn`` runs one of them (training and its evaluation):

- ``find_learning_rate``: the optional LR range test (``<system>.lr_finder.enabled``),
  ``<system>.lr_finder_plot`` and ``<system>.lr_finder_suggestion``;
- ``train_speaker_model``: training through the DDP launcher, ``<system>.checkpoint`` and
  ``<system>.training_metrics``.

The evaluation pipeline then judges each ``<system>.checkpoint`` and compares the systems
in ``supervised_comparison_table`` / ``_markdown`` / ``_det_plot``.
"""

from __future__ import annotations

from collections.abc import Sequence

from kedro.pipeline import Pipeline, node, pipeline

from sv_kedro.pipelines import evaluation
from sv_kedro.pipelines.supervised_training import nodes
from sv_kedro.pipelines.supervised_training.settings import SYSTEMS

COMPARISON = "supervised_comparison"
SHARED_INPUTS = {"train_manifest", "validation_manifest", "validation_pairs"}


def system_training_template() -> Pipeline:
    """The nodes of one system, before namespacing (parameters are per system)."""
    return Pipeline(
        [
            node(
                nodes.find_learning_rate,
                inputs=[
                    "train_manifest",
                    "params:model",
                    "params:loss",
                    "params:training",
                    "params:data",
                    "params:run",
                    "params:lr_finder",
                ],
                outputs=["lr_finder_plot", "lr_finder_suggestion"],
                name="find_learning_rate",
            ),
            node(
                nodes.train_speaker_model,
                inputs=[
                    "train_manifest",
                    "validation_manifest",
                    "validation_pairs",
                    "params:model",
                    "params:loss",
                    "params:training",
                    "params:data",
                    "params:run",
                    "params:distributed",
                    "lr_finder_suggestion",
                ],
                outputs=["checkpoint", "training_metrics"],
                name="train_speaker_model",
            ),
        ]
    )


def create_training_pipeline(systems: Sequence[str] = SYSTEMS) -> Pipeline:
    """Only the training nodes of ``systems`` (each under its own namespace)."""
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        raise ValueError(f"supervised_training: unknown system(s) {unknown}; known: {SYSTEMS}")
    return sum(
        (
            pipeline(system_training_template(), namespace=system, inputs=SHARED_INPUTS)
            for system in systems
        ),
        Pipeline([]),
    )


def create_pipeline(
    systems: Sequence[str] = SYSTEMS, comparison: str = COMPARISON, **kwargs: object
) -> Pipeline:
    """Training of ``systems`` plus their evaluation and one comparison named ``comparison``."""
    return create_training_pipeline(systems) + evaluation.create_pipeline(
        list(systems), comparison=comparison
    )
