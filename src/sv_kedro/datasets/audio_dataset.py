"""``AudioDataset``: one audio file (wav, flac, m4a, ...) as ``(waveform, sample_rate)``.

Works on its own or as the ``dataset`` of a ``PartitionedDataset`` (one partition per
utterance), which is how the pipelines write a generated corpus.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import numpy as np
from kedro.io.core import (
    DatasetError,
    Version,
    get_filepath_str,
)

from sv_kedro.audio.io import (
    SOUNDFILE_SUFFIXES,
    audio_info,
    read_audio,
    resample,
    to_mono,
    write_audio,
)
from sv_kedro.datasets.file_dataset import VersionedFileDataset, check_known_args
from sv_kedro.datasets.previews import ImagePreview, waveform_png_preview

AudioData = tuple[np.ndarray, int]
# More "channels" than this means the caller passed [channels, time].
_MAX_CHANNELS = 32


class AudioDataset(VersionedFileDataset[AudioData, AudioData]):
    """Load/save ``(waveform float32 [time] or [time, channels], sample_rate)``.

    Catalog example::

        enrol_utterance:
          type: sv_kedro.datasets.AudioDataset
          filepath: data/01_raw/spk001/utt001.flac
          load_args: {mono: true, sample_rate: 16000}

        generated_corpus:
          type: partitions.PartitionedDataset
          path: data/01_raw/generated
          dataset: sv_kedro.datasets.AudioDataset
          filename_suffix: .wav

    ``load_args``: ``offset`` and ``frames`` (samples; partial reads seek in wav/flac),
    ``mono`` (average channels), ``sample_rate`` (resample to this rate).
    ``save_args``: ``subtype`` (soundfile subtype, default ``PCM_16``; ``FLOAT`` keeps
    float32 exactly in wav). Saving is wav/flac/ogg only (PyAV can decode m4a but this
    dataset does not encode it) and atomic on local disks.
    """

    DEFAULT_LOAD_ARGS: ClassVar[dict[str, Any]] = {
        "offset": 0,
        "frames": -1,
        "mono": False,
        "sample_rate": None,
    }
    DEFAULT_SAVE_ARGS: ClassVar[dict[str, Any]] = {"subtype": "PCM_16"}

    def __init__(
        self,
        *,
        filepath: str | os.PathLike[str],
        load_args: dict[str, Any] | None = None,
        save_args: dict[str, Any] | None = None,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        check_known_args("load_args", load_args, self.DEFAULT_LOAD_ARGS, filepath)
        check_known_args("save_args", save_args, self.DEFAULT_SAVE_ARGS, filepath)
        super().__init__(
            filepath=filepath,
            version=version,
            credentials=credentials,
            fs_args=fs_args,
            metadata=metadata,
        )
        self._load_args = {**self.DEFAULT_LOAD_ARGS, **(load_args or {})}
        self._save_args = {**self.DEFAULT_SAVE_ARGS, **(save_args or {})}

    def _describe_options(self) -> dict[str, Any]:
        return {"load_args": self._load_args, "save_args": self._save_args}

    def load(self) -> AudioData:
        path = get_filepath_str(self._get_load_path(), self._protocol)
        if not self._fs.exists(path):
            raise DatasetError(f"{path}: audio file not found")
        wave, rate = self._read(
            path, int(self._load_args["offset"]), int(self._load_args["frames"])
        )
        if self._load_args["mono"]:
            wave = to_mono(wave)
        target_rate = self._load_args["sample_rate"]
        if target_rate and int(target_rate) != rate:
            wave, rate = resample(wave, rate, int(target_rate)), int(target_rate)
        return wave, rate

    def save(self, data: AudioData) -> None:
        path = get_filepath_str(self._get_save_path(), self._protocol)
        wave, rate = _validate_audio_data(data, path)
        suffix = PurePosixPath(path).suffix.lower()
        if suffix not in SOUNDFILE_SUFFIXES:
            raise DatasetError(
                f"{path}: cannot save '{suffix or 'no suffix'}' audio; AudioDataset writes "
                f"{sorted(SOUNDFILE_SUFFIXES)} only (m4a/aac encoding is not supported — "
                "save as .flac for lossless compression)"
            )
        subtype = self._save_args["subtype"]
        if self._protocol == "file":
            write_audio(path, wave, rate, subtype=subtype)
        else:
            with tempfile.TemporaryDirectory() as folder:
                local = Path(folder) / f"audio{suffix}"
                write_audio(local, wave, rate, subtype=subtype)
                self._fs.put_file(str(local), path)
        self._invalidate_cache()

    def preview(self, max_seconds: float = 10.0, n_mels: int = 64) -> ImagePreview:
        """PNG (base64) of the waveform and log-mel spectrogram of the first ``max_seconds``."""
        path = get_filepath_str(self._get_load_path(), self._protocol)
        if self._protocol == "file":
            rate = audio_info(path).sample_rate
            wave, rate = read_audio(path, 0, max(1, round(max_seconds * rate)))
        else:
            wave, rate = self._read(path, 0, -1)
            wave = wave[: max(1, round(max_seconds * rate))]
        name = PurePosixPath(path).name
        return waveform_png_preview(wave, rate, title=f"{name} ({rate} Hz)", n_mels=n_mels)

    def _read(self, path: str, offset: int, frames: int) -> AudioData:
        """Read from local disk directly, from other filesystems through a temp copy."""
        if self._protocol == "file":
            return read_audio(path, offset=offset, frames=frames)
        suffix = PurePosixPath(path).suffix.lower()
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / f"audio{suffix}"
            self._fs.get_file(path, str(local))
            return read_audio(local, offset=offset, frames=frames)


def _validate_audio_data(data: Any, path: str) -> tuple[np.ndarray, int]:
    if not isinstance(data, tuple) or len(data) != 2:
        raise DatasetError(
            f"{path}: AudioDataset saves a (waveform, sample_rate) tuple, got {type(data).__name__}"
        )
    wave, rate = data
    wave = np.asarray(wave.detach().cpu().numpy() if hasattr(wave, "detach") else wave)
    if wave.ndim not in (1, 2) or wave.shape[0] == 0:
        raise DatasetError(
            f"{path}: waveform must be a non-empty [time] or [time, channels] array, "
            f"got shape {wave.shape}"
        )
    if wave.ndim == 2 and wave.shape[1] > _MAX_CHANNELS:
        raise DatasetError(
            f"{path}: waveform shape {wave.shape} looks like [channels, time]; "
            "pass [time, channels] (transpose it)"
        )
    if not np.issubdtype(wave.dtype, np.floating) and not np.issubdtype(wave.dtype, np.integer):
        raise DatasetError(f"{path}: waveform dtype {wave.dtype} is not numeric")
    if np.issubdtype(wave.dtype, np.floating) and not np.isfinite(wave).all():
        raise DatasetError(f"{path}: waveform contains NaN or inf samples")
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise DatasetError(f"{path}: sample_rate must be a positive int, got {rate!r}")
    return wave, int(rate)
