"""judge: any checkpoint or embeddings file, on any audio folder and trial list."""

from __future__ import annotations

from typing import Any

from kedro.pipeline import Pipeline, node

from sv_kedro.pipelines.judge import nodes


def create_pipeline(**kwargs: Any) -> Pipeline:
    return Pipeline(
        [
            node(
                nodes.scan_judged_audio,
                inputs="params:judge",
                outputs=["judge_manifest", "judge_quality_report"],
                name="scan_judged_audio",
            ),
            node(
                nodes.judged_trials,
                inputs=["judge_manifest", "judge_quality_report", "params:judge"],
                outputs="judge_trials",
                name="load_or_generate_judged_trials",
            ),
            node(
                nodes.judged_embeddings,
                inputs=["judge_manifest", "judge_trials", "params:judge"],
                outputs="judge_embeddings",
                name="embed_judged_audio",
            ),
            node(
                nodes.score_judged_trials,
                inputs=["judge_trials", "judge_embeddings", "params:judge"],
                outputs=["judge_scores", "judge_metrics"],
                name="score_judged_trials",
            ),
        ]
    )
