"""DINO's multi-crop views of unlabeled utterances, from audio files or WebDataset shards.

Per utterance: ``global_crops`` long and ``local_crops`` short random crops of a window of
at most ``max_read_seconds`` at a random offset, each augmented on its own. Every draw comes
from ``(seed, epoch, index)``, ``index`` being the utterance's row in the training manifest,
so an epoch replays exactly on resume and the shard stream gives the items the files give
(up to the shards' 16-bit quantisation). No label is read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from sv_kedro.audio.crops import crop_array
from sv_kedro.audio.io import read_audio, to_mono
from sv_kedro.audio.rir import resample_poly
from sv_kedro.corpus.shard_records import ShardRecord
from sv_kedro.corpus.shards import ShardError
from sv_kedro.training.shard_data import ShardDataset


class MultiCropViews:
    """Cuts ``{"global": float32 [G, Tg], "local": float32 [L, Tl], "index": int}`` from
    one utterance's waveform; ``augmenter`` (may be ``None``) is applied to each crop."""

    def __init__(
        self,
        global_seconds: float,
        local_seconds: float,
        global_crops: int = 2,
        local_crops: int = 4,
        augmenter: Any = None,
        sample_rate: int = 16000,
        max_read_seconds: float = 12.0,
    ) -> None:
        if global_crops < 1 or local_crops < 0 or global_crops + local_crops < 2:
            raise ValueError(
                f"DINO needs >= 1 global crop and >= 2 crops in all, got {global_crops} global "
                f"and {local_crops} local"
            )
        self.sample_rate = int(sample_rate)
        self.global_frames = round(global_seconds * sample_rate)
        self.local_frames = round(local_seconds * sample_rate)
        self.global_crops, self.local_crops = int(global_crops), int(local_crops)
        self.augmenter = augmenter
        self.max_read_seconds = float(max_read_seconds)

    def read_window(self, num_frames: int, rate: int, rng: np.random.Generator) -> tuple[int, int]:
        """``(offset, frames)`` of the part of a ``num_frames`` utterance that is read."""
        window = min(int(num_frames), round(self.max_read_seconds * rate))
        return int(rng.integers(0, int(num_frames) - window + 1)), window

    def _crops(
        self, wave: np.ndarray, frames: int, count: int, rng: np.random.Generator, utt_id: str
    ) -> np.ndarray:
        crops = []
        for _ in range(count):
            crop = crop_array(wave, frames, "random", rng)
            if self.augmenter is not None:
                # The utterance is its own "speaker": babble comes from other utterances.
                crop = self.augmenter(crop, rng, utt_id)
            crops.append(np.asarray(crop, dtype=np.float32))
        return np.stack(crops) if crops else np.zeros((0, frames), dtype=np.float32)

    def __call__(
        self, wave: np.ndarray, rng: np.random.Generator, utt_id: str, index: int
    ) -> dict[str, Any]:
        return {
            "global": self._crops(wave, self.global_frames, self.global_crops, rng, utt_id),
            "local": self._crops(wave, self.local_frames, self.local_crops, rng, utt_id),
            "index": int(index),
        }


class MultiCropDataset(Dataset):
    """Multi-crop items (see :class:`MultiCropViews`) of a manifest's audio files.

    Crops are drawn at random positions of the utterance (its first ``max_read_seconds``;
    shorter utterances are wrap-padded) from ``(seed, epoch, index)``.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        global_seconds: float,
        local_seconds: float,
        global_crops: int = 2,
        local_crops: int = 4,
        augmenter: Any = None,
        sample_rate: int = 16000,
        max_read_seconds: float = 12.0,
        seed: int = 0,
    ) -> None:
        missing = [c for c in ("utt_id", "path", "num_frames", "sample_rate") if c not in manifest]
        if missing:
            raise ValueError(f"DINO manifest lacks column(s) {missing}")
        self.views = MultiCropViews(
            global_seconds,
            local_seconds,
            global_crops,
            local_crops,
            augmenter,
            sample_rate,
            max_read_seconds,
        )
        self.utt_ids = manifest["utt_id"].astype(str).tolist()
        self.paths = manifest["path"].astype(str).tolist()
        self.num_frames = manifest["num_frames"].astype(np.int64).to_numpy()
        self.file_rates = manifest["sample_rate"].astype(np.int64).to_numpy()
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.utt_ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        rate = int(self.file_rates[index])
        offset, window = self.views.read_window(int(self.num_frames[index]), rate, rng)
        wave = to_mono(read_audio(self.paths[index], offset, window)[0])
        wave = resample_poly(wave, rate, self.views.sample_rate)
        return self.views(wave, rng, self.utt_ids[index], index)


class MultiCropShardDataset(ShardDataset):
    """Multi-crop items streamed from WebDataset shards, shard by shard.

    Shards are spread over ranks and loader workers, shuffled, and skipped on resume as in
    :class:`ShardDataset`. ``utt_to_index`` (the manifest's rows) must name every sample:
    an item's draws are seeded by its row, as in :class:`MultiCropDataset`. Only the read
    window of each sample is decoded.
    """

    def __init__(
        self,
        shard_paths: Sequence[str],
        views: MultiCropViews,
        utt_to_index: Mapping[str, int],
        **stream: Any,
    ) -> None:
        super().__init__(
            shard_paths,
            None,
            sample_rate=views.sample_rate,
            utt_to_index=utt_to_index,
            **stream,
        )
        self.views = views

    def _item(self, record: ShardRecord) -> dict[str, Any]:
        utt_id = str(record.metadata()["utt_id"])
        if utt_id not in self.utt_to_index:
            raise ShardError(f"{record.shard}: {utt_id!r} is not in the training manifest")
        index = self.utt_to_index[utt_id]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        rate = int(record.metadata()["sample_rate"])
        _, _, wave, rate = record.decode(lambda frames: self.views.read_window(frames, rate, rng))
        wave = resample_poly(to_mono(np.asarray(wave, dtype=np.float32)), rate, self.sample_rate)
        return self.views(wave, rng, utt_id, index)


def collate_multicrop(items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """``global [B, G, Tg]``, ``local [B, L, Tl]``, ``indices [B]``."""
    return {
        "global": torch.from_numpy(np.stack([item["global"] for item in items])),
        "local": torch.from_numpy(np.stack([item["local"] for item in items])),
        "indices": torch.tensor([int(item["index"]) for item in items], dtype=torch.int64),
    }
