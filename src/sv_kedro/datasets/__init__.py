"""Kedro datasets: audio, embeddings, checkpoints, trial lists (each with a kedro-viz preview).

Use them in the catalog by their full path, e.g. ``type: sv_kedro.datasets.AudioDataset``.
"""

from __future__ import annotations

from sv_kedro.datasets.atomic_files import (
    AtomicCSVDataset,
    AtomicJSONDataset,
    AtomicParquetDataset,
    AtomicTextDataset,
)
from sv_kedro.datasets.audio_dataset import AudioDataset
from sv_kedro.datasets.checkpoint_dataset import CheckpointDataset
from sv_kedro.datasets.embeddings_dataset import EmbeddingsDataset
from sv_kedro.datasets.trials_dataset import TrialsDataset
from sv_kedro.datasets.vector_mapping import table_from_vectors

__all__ = [
    "AtomicCSVDataset",
    "AtomicJSONDataset",
    "AtomicParquetDataset",
    "AtomicTextDataset",
    "AudioDataset",
    "CheckpointDataset",
    "EmbeddingsDataset",
    "TrialsDataset",
    "table_from_vectors",
]
