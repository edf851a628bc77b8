"""evaluation: every system's checkpoint -> embeddings -> scores -> metrics; one comparison.

Each system is a namespace (``<system>.checkpoint`` in, ``<system>.metrics`` out), so the
same template evaluates supervised systems and every self-supervised round alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kedro.pipeline import Pipeline, node, pipeline

from sv_kedro.pipelines.evaluation import nodes

SHARED_INPUTS = {"test_manifest", "train_manifest", "test_trials", "trial_lists"}
SHARED_PARAMS = {"params:evaluation.extraction", "params:evaluation.scoring"}


def system_evaluation_template() -> Pipeline:
    """Nodes that judge one checkpoint; namespaced per system by :func:`create_pipeline`."""
    return Pipeline(
        [
            node(
                nodes.embed_test_utterances,
                inputs=[
                    "checkpoint",
                    "test_manifest",
                    "params:evaluation.extraction",
                    "params:evaluation.scoring",
                ],
                outputs=["test_embeddings", "test_crop_embeddings"],
                name="embed_test_utterances",
            ),
            node(
                nodes.embed_cohort_utterances,
                inputs=[
                    "checkpoint",
                    "train_manifest",
                    "params:evaluation.extraction",
                    "params:evaluation.scoring",
                ],
                outputs="cohort_embeddings",
                name="embed_cohort_utterances",
            ),
            node(
                nodes.score_trial_sets,
                inputs=[
                    "test_embeddings",
                    "test_crop_embeddings",
                    "cohort_embeddings",
                    "train_manifest",
                    "test_trials",
                    "trial_lists",
                    "params:evaluation.scoring",
                    "checkpoint",  # the paired (BCE) model scores trials jointly
                    "test_manifest",
                ],
                outputs=["scores", "metrics", "score_histogram"],
                name="score_trial_sets",
            ),
        ]
    )


def create_pipeline(
    systems: Sequence[str] = (),
    comparison: str = "comparison",
    cohorts: Mapping[str, str] | None = None,
) -> Pipeline:
    """Evaluate each of ``systems`` and compare them in one table and DET plot.

    The comparison's outputs are ``<comparison>_table``, ``<comparison>_markdown`` and
    ``<comparison>_det_plot``, so several pipelines can each compare their own systems.
    ``cohorts``: system -> the manifest whose ``speaker`` column groups its AS-norm cohort
    and LDA/PLDA training (default ``train_manifest``; a self-supervised stage passes its
    pseudo-labelled one).
    """
    if not systems:
        return Pipeline([])
    cohorts = dict(cohorts or {})
    evaluations = [
        pipeline(
            system_evaluation_template(),
            namespace=system,
            inputs={
                **{name: name for name in SHARED_INPUTS},
                "train_manifest": cohorts.get(system, "train_manifest"),
            },
            parameters=SHARED_PARAMS,
        )
        for system in systems
    ]
    comparison_inputs = {"comparison": "params:evaluation.comparison"}
    for system in systems:
        comparison_inputs[f"{system}__metrics"] = f"{system}.metrics"
        comparison_inputs[f"{system}__scores"] = f"{system}.scores"
    compare = node(
        nodes.compare_systems,
        inputs=comparison_inputs,
        outputs=[f"{comparison}_table", f"{comparison}_markdown", f"{comparison}_det_plot"],
        name=f"compare_systems_in_{comparison}",
    )
    return sum(evaluations, Pipeline([])) + Pipeline([compare])
