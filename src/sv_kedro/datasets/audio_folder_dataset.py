"""``AudioFolderDataset``: a folder of audio files (one partition per utterance) with a
kedro-viz preview.

A plain ``PartitionedDataset`` has no ``preview()``, so a generated corpus would show
nothing in kedro-viz. This subclass loads and saves exactly like it and previews the
waveform and log-mel spectrogram of one utterance.

Catalog example::

    synthetic_corpus:
      type: sv_kedro.datasets.audio_folder_dataset.AudioFolderDataset
      path: data/01_raw/synthetic
      dataset: sv_kedro.datasets.AudioDataset
      filename_suffix: .wav
"""

from __future__ import annotations

from kedro.io.core import DatasetError
from kedro_datasets.partitions import PartitionedDataset

from sv_kedro.datasets.audio_dataset import AudioDataset
from sv_kedro.datasets.previews import ImagePreview


class AudioFolderDataset(PartitionedDataset):
    """``PartitionedDataset`` of ``AudioDataset`` partitions, previewed as audio."""

    def preview(
        self, partition: str | None = None, max_seconds: float = 10.0, n_mels: int = 64
    ) -> ImagePreview:
        """PNG of one utterance: ``partition`` (its id, e.g. ``spk001/utt003``) or the first
        in sorted order; at most ``max_seconds`` of it."""
        loaders = self.load()  # raises "No partitions found in <path>" for an empty folder
        chosen = partition if partition is not None else sorted(loaders)[0]
        if chosen not in loaders:
            raise DatasetError(f"{self._path}: no partition {chosen!r}")
        # load() hands out each partition's bound ``load``; its owner is the dataset.
        dataset = getattr(loaders[chosen], "__self__", None)
        if not isinstance(dataset, AudioDataset):
            raise DatasetError(
                f"{self._path}: partitions are {type(dataset).__name__}, not AudioDataset"
            )
        return dataset.preview(max_seconds=max_seconds, n_mels=n_mels)
