"""supervised_training: the wav2vec2 speaker-recognition study as namespaced experiments."""

from sv_kedro.pipelines.supervised_training.pipeline import SYSTEMS, create_pipeline

__all__ = ["SYSTEMS", "create_pipeline"]
