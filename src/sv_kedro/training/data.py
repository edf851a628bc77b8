"""Datasets and collate functions for training and embedding extraction.

Every random choice of an item (crop offset, augmentation, speed) comes from a NumPy
generator seeded with ``(seed, epoch, index)``, so an item is the same whichever loader
worker builds it and however many workers there are; ``set_epoch`` moves to the next
epoch's draws. Waveforms are mono float32 at the dataset's ``sample_rate``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from sv_kedro.audio.augmentation import Augmenter, speed_perturb, speed_perturbed_label
from sv_kedro.audio.crops import CropSpec, crop_array, evaluation_inputs, read_crop, wrap_pad
from sv_kedro.audio.io import read_audio, resample, to_mono
from sv_kedro.audio.rir import resample_poly

if TYPE_CHECKING:
    from sv_kedro.corpus.shard_access import ShardAudioReader

REQUIRED_COLUMNS = ("utt_id", "speaker", "path", "num_frames", "sample_rate")
_CONTIGUOUS_STREAM = 7  # separates the per-utterance crop-base generator from per-epoch ones


def _check_manifest(manifest: pd.DataFrame, required: Sequence[str] = REQUIRED_COLUMNS) -> None:
    missing = [c for c in required if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks column(s) {missing}; has {list(manifest.columns)}")
    if manifest.empty:
        raise ValueError("manifest is empty")


def _prepare_wave(
    wave: np.ndarray,
    crop: CropSpec | None,
    sample_rate: int,
    factor: float,
    rng: np.random.Generator,
    contiguous_rng: np.random.Generator,
    epoch: int,
) -> np.ndarray:
    """Crop (at ``sample_rate``, before speed change) an in-memory ``[time]`` waveform."""
    if crop is None:
        return speed_perturb(wave, factor)
    target = crop.frames(sample_rate)
    need = math.ceil(target * factor)
    crop_rng = contiguous_rng if crop.mode == "random_contiguous" else rng
    return wrap_pad(
        speed_perturb(crop_array(wave, need, crop.mode, crop_rng, epoch), factor), target
    )


class SpeakerDataset(Dataset):
    """Training items from a manifest: a crop (or the whole utterance), augmented.

    Item: ``{"wave": float32 [T], "label": int, "index": int, "utt_id": str}`` plus
    ``"clean"`` float32 ``[T]`` (the same crop before augmentation) when ``return_clean``
    and ``"speed"`` (the factor) when the augmenter has speed factors. ``label`` is the
    ``speaker_index`` column (-1 without it), remapped per speed factor
    (:func:`~sv_kedro.audio.augmentation.speed_perturbed_label`); ``num_classes`` counts
    the remapped classes. ``T`` is the crop length (``crop.seconds * sample_rate``) or the
    utterance length when ``crop`` is None. Only the crop's frames are read from disk.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        crop: CropSpec | None,
        augmenter: Augmenter | None = None,
        sample_rate: int = 16000,
        return_clean: bool = False,
        seed: int = 0,
    ) -> None:
        _check_manifest(manifest)
        self.crop = crop
        self.augmenter = augmenter
        self.sample_rate = int(sample_rate)
        self.return_clean = return_clean
        self.seed = int(seed)
        self.epoch = 0
        # Plain lists: per-item pandas lookups would dominate the loader's time.
        self.utt_ids = manifest["utt_id"].astype(str).tolist()
        self.speakers = manifest["speaker"].astype(str).tolist()
        self.paths = manifest["path"].astype(str).tolist()
        self.num_frames = manifest["num_frames"].astype(np.int64).to_numpy()
        self.file_rates = manifest["sample_rate"].astype(np.int64).to_numpy()
        if "speaker_index" in manifest.columns:
            self.labels = manifest["speaker_index"].astype(np.int64).to_numpy()
        else:
            self.labels = np.full(len(manifest), -1, dtype=np.int64)
        self.num_speakers = int(self.labels.max()) + 1 if (self.labels >= 0).any() else 0
        self.speed_factors = tuple(augmenter.config.speed_factors) if augmenter else ()

    def __len__(self) -> int:
        return len(self.utt_ids)

    @property
    def num_classes(self) -> int:
        return self.num_speakers * max(1, len({*self.speed_factors, 1.0}))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def item_rng(self, index: int, *extra: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index), *extra])

    def read(self, index: int, rng: np.random.Generator, factor: float = 1.0) -> np.ndarray:
        """The un-augmented waveform of item ``index`` at ``sample_rate``: ``[T]``."""
        path, rate = self.paths[index], int(self.file_rates[index])
        if self.crop is None:
            wave = to_mono(read_audio(path)[0])
            return speed_perturb(resample_poly(wave, rate, self.sample_rate), factor)
        target = self.crop.frames(self.sample_rate)
        file_frames = math.ceil(target * factor * rate / self.sample_rate)
        crop_rng = rng
        if self.crop.mode == "random_contiguous":
            crop_rng = np.random.default_rng([self.seed, int(index), _CONTIGUOUS_STREAM])
        wave = read_crop(
            path, int(self.num_frames[index]), file_frames, self.crop.mode, crop_rng, self.epoch
        )
        wave = speed_perturb(resample_poly(wave, rate, self.sample_rate), factor)
        return wrap_pad(wave, target)

    def load_item(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside dataset of {len(self)} utterances")
        factor = self.augmenter.draw_speed(rng) if self.augmenter else 1.0
        clean = self.read(index, rng, factor)
        wave = clean
        if self.augmenter is not None:
            wave = self.augmenter(clean, rng, self.speakers[index])
        label = int(self.labels[index])
        item: dict[str, Any] = {"wave": wave, "index": int(index), "utt_id": self.utt_ids[index]}
        if self.speed_factors:
            label = speed_perturbed_label(label, factor, self.speed_factors, self.num_speakers)
            item["speed"] = factor
        item["label"] = label
        if self.return_clean:
            item["clean"] = clean
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.load_item(int(index), self.item_rng(index))


def _pad(waves: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.int64)
    if _same_length_float32(waves):
        # Fixed-length training crops: one stack instead of a zero fill and a copy per row
        # (into a tensor torch allocated, which loader workers can move to shared memory).
        batch = torch.empty(len(waves), len(waves[0]), dtype=torch.float32)
        np.stack(waves, out=batch.numpy())
        return batch, lengths
    batch = torch.zeros(len(waves), int(lengths.max()) if len(waves) else 0, dtype=torch.float32)
    for row, wave in enumerate(waves):
        batch[row, : len(wave)] = torch.as_tensor(wave, dtype=torch.float32)
    return batch, lengths


def _same_length_float32(waves: Sequence[np.ndarray | torch.Tensor]) -> bool:
    if not waves:
        return False
    length = len(waves[0])
    return all(
        isinstance(w, np.ndarray) and w.ndim == 1 and w.dtype == np.float32 and len(w) == length
        for w in waves
    )


def collate_padded(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack items, zero-padding to the longest: ``waves`` float32 ``[B, T]``, ``lengths``
    int64 ``[B]`` (valid frames), ``labels`` int64 ``[B]``, ``indices`` int64 ``[B]``,
    ``utt_ids`` list[str]; ``clean`` ``[B, T]`` and ``speed`` float32 ``[B]`` when present."""
    if not items:
        raise ValueError("collate_padded got an empty batch")
    waves, lengths = _pad([item["wave"] for item in items])
    batch: dict[str, Any] = {
        "waves": waves,
        "lengths": lengths,
        "labels": torch.tensor([int(item["label"]) for item in items], dtype=torch.int64),
        "indices": torch.tensor([int(item["index"]) for item in items], dtype=torch.int64),
        "utt_ids": [str(item["utt_id"]) for item in items],
    }
    if all("clean" in item for item in items):
        batch["clean"], _ = _pad([item["clean"] for item in items])
    if all("speed" in item for item in items):
        batch["speed"] = torch.tensor([float(item["speed"]) for item in items])
    return batch


class PairDataset(Dataset):
    """Pairs for the pair-BCE loss: indexed by ``(i, j)`` (from ``PairBatchSampler``),
    yields ``(item_i, item_j, same)`` with ``same`` 1 for one speaker, else 0.

    Each side draws from ``(seed, epoch, i, j, side)``, so an utterance used in several
    pairs of an epoch gets different crops.
    """

    def __init__(self, speakers: SpeakerDataset) -> None:
        self.speakers = speakers

    def __len__(self) -> int:
        return len(self.speakers)

    def set_epoch(self, epoch: int) -> None:
        self.speakers.set_epoch(epoch)

    def __getitem__(self, pair: tuple[int, int]) -> tuple[dict[str, Any], dict[str, Any], int]:
        first, second = (int(k) for k in pair)
        data = self.speakers
        a = data.load_item(first, data.item_rng(first, second, 0))
        b = data.load_item(second, data.item_rng(first, second, 1))
        return a, b, int(data.speakers[first] == data.speakers[second])


def collate_pairs(items: Sequence[tuple[Mapping, Mapping, int]]) -> dict[str, Any]:
    """``{"a": collate_padded(firsts), "b": collate_padded(seconds), "same": float32 [B]}``."""
    return {
        "a": collate_padded([a for a, _, _ in items]),
        "b": collate_padded([b for _, b, _ in items]),
        "same": torch.tensor([float(same) for _, _, same in items], dtype=torch.float32),
    }


class EvaluationDataset(Dataset):
    """Embedding-extraction inputs: item ``{"full" [T], "crops" [n_crops, L], "offsets"
    [n_crops], "index", "utt_id"}`` exactly as :func:`~sv_kedro.audio.crops.evaluation_inputs`.

    With ``shards`` the audio is read from WebDataset shards by ``utt_id`` instead of from
    each row's ``path`` (resampled to ``sample_rate`` if the shards hold another rate).
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        n_crops: int = 5,
        crop_seconds: float = 4.0,
        max_seconds: float | None = None,
        sample_rate: int = 16000,
        shards: ShardAudioReader | None = None,
    ) -> None:
        _check_manifest(manifest, ("utt_id",) if shards is not None else ("utt_id", "path"))
        self.shards = shards
        self.utt_ids = manifest["utt_id"].astype(str).tolist()
        self.paths = manifest["path"].astype(str).tolist() if "path" in manifest else []
        self.n_crops, self.crop_seconds = int(n_crops), float(crop_seconds)
        self.max_seconds, self.sample_rate = max_seconds, int(sample_rate)
        if "duration" in manifest.columns:
            durations = manifest["duration"].astype(float).to_numpy()
        elif {"num_frames", "sample_rate"} <= set(manifest.columns):
            durations = (manifest["num_frames"] / manifest["sample_rate"]).to_numpy(dtype=float)
        else:
            raise ValueError("manifest needs 'duration' or 'num_frames' and 'sample_rate'")
        self.durations = np.minimum(durations, max_seconds) if max_seconds else durations

    def __len__(self) -> int:
        return len(self.utt_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        source: str | np.ndarray
        if self.shards is not None:
            source, rate = self.shards.read(self.utt_ids[index])
            if rate != self.sample_rate:
                source = resample(source, rate, self.sample_rate)
        else:
            source = self.paths[index]
        inputs = evaluation_inputs(
            source, self.n_crops, self.crop_seconds, self.max_seconds, self.sample_rate
        )
        return {
            "full": inputs.full,
            "crops": inputs.crops,
            "offsets": inputs.offsets,
            "index": int(index),
            "utt_id": self.utt_ids[index],
        }


def collate_evaluation(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``waves`` float32 ``[B, T]`` (full utterances, zero-padded), ``lengths`` ``[B]``,
    ``crops`` ``[B, n_crops, L]``, ``offsets`` ``[B, n_crops]``, ``indices``, ``utt_ids``."""
    if not items:
        raise ValueError("collate_evaluation got an empty batch")
    waves, lengths = _pad([item["full"] for item in items])
    return {
        "waves": waves,
        "lengths": lengths,
        "crops": torch.from_numpy(np.stack([item["crops"] for item in items])),
        "offsets": torch.from_numpy(np.stack([item["offsets"] for item in items])),
        "indices": torch.tensor([int(item["index"]) for item in items], dtype=torch.int64),
        "utt_ids": [str(item["utt_id"]) for item in items],
    }


def bucket_by_length(
    durations: Sequence[float], max_batch_seconds: float, max_batch_size: int | None = None
) -> list[list[int]]:
    """Batches of indices of similar length, longest first.

    Indices are sorted by decreasing duration and packed while ``batch size x longest
    duration in the batch`` (the padded audio a batch holds) stays within
    ``max_batch_seconds`` (and the size within ``max_batch_size``). An utterance longer
    than the budget gets a batch of its own. Use the result as a DataLoader ``batch_sampler``.
    """
    if not max_batch_seconds > 0:
        raise ValueError(f"max_batch_seconds must be > 0, got {max_batch_seconds}")
    values = np.asarray(durations, dtype=float)
    order = np.argsort(-values, kind="stable")
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0.0
    for index in order.tolist():
        full = max_batch_size is not None and len(current) >= max_batch_size
        if current and (full or (len(current) + 1) * longest > max_batch_seconds):
            batches.append(current)
            current = []
        if not current:
            longest = float(values[index])
        current.append(index)
    if current:
        batches.append(current)
    return batches
