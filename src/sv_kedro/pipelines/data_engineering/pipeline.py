"""The data_engineering pipeline: raw audio to manifests, quality report, splits and trials.

Node names read as sentences in kedro-viz. The source (synthetic / folder / voxceleb) is
a parameter, so the graph is the same for every corpus; see ``source_nodes.py``
and ``nodes.py``.
"""

from __future__ import annotations

from typing import Any

from kedro.pipeline import Pipeline, node

from sv_kedro.pipelines.data_engineering import nodes, source_nodes

PARAMS = "params:data_engineering"


def create_pipeline(**kwargs: Any) -> Pipeline:
    """Build the data_engineering pipeline."""
    return Pipeline(
        [
            node(
                source_nodes.generate_synthetic_corpus,
                inputs=PARAMS,
                outputs=["synthetic_corpus", "synthetic_corpus_definition"],
                name="generate_synthetic_corpus",
            ),
            node(
                source_nodes.build_raw_manifest,
                inputs=["synthetic_corpus_definition", PARAMS],
                outputs=["raw_manifest", "conversion_failures"],
                name="build_raw_manifest",
            ),
            node(
                source_nodes.validate_audio,
                inputs=["raw_manifest", "conversion_failures", PARAMS],
                outputs=["manifest", "audio_quality_report"],
                name="validate_audio",
            ),
            node(
                nodes.hold_out_test_speakers,
                inputs=["manifest", PARAMS],
                outputs=["train_validation_manifest", "test_manifest"],
                name="hold_out_test_speakers",
            ),
            node(
                nodes.build_trial_lists,
                inputs=["test_manifest", PARAMS],
                outputs=["test_trials", "trial_lists"],
                name="build_trial_lists",
            ),
            node(
                nodes.split_train_and_validation,
                inputs=["train_validation_manifest", PARAMS],
                outputs=["train_manifest", "validation_manifest"],
                name="split_train_validation",
            ),
            node(
                nodes.make_validation_trials,
                inputs=["validation_manifest", PARAMS],
                outputs="validation_pairs",
                name="make_validation_pairs",
            ),
            node(
                nodes.write_training_shards,
                inputs=["train_manifest", PARAMS],
                outputs="train_shard_index",
                name="write_shards",
            ),
            node(
                nodes.summarize_data_engineering,
                inputs=[
                    "raw_manifest",
                    "manifest",
                    "audio_quality_report",
                    "train_manifest",
                    "validation_manifest",
                    "test_manifest",
                    "trial_lists",
                    "validation_pairs",
                    PARAMS,
                ],
                outputs="data_engineering_summary",
                name="summarize_data_engineering",
            ),
        ]
    )
