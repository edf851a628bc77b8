"""Training batches for a system: manifest -> crops -> augmentation -> speaker-balanced batches.

``build_loader(config)`` returns a picklable loader factory the training loop calls once
per epoch with a ``LoaderRequest`` (epoch, resume position, rank, world size). Config::

    manifest_path: .../train_manifest.parquet   # needs speaker_index
    batch_size: 32                # utterances (or pairs) per rank and micro-batch
    crop_seconds: 3.0
    crop_mode: random
    utts_per_speaker_cap: null    # per epoch
    pairs: false                  # pair batches for the BCE system
    pairs_per_epoch: null
    return_clean: false           # the un-augmented view too (label correction)
    num_workers: 0
    sample_rate: 16000
    augmentation:                 # null: none
      weights: {none: 1, reverb: 1, noise: 1, babble: 1, reverb+noise: 1}
      noise_dirs: []              # folders of noise files (category noise)
      music_dirs: []
      musan_root: null            # MUSAN's layout: noise/, music/, speech/
      rir_dirs: []                # real RIR files; empty: a simulated bank
      simulated_rirs: 50
      rir_cache: null             # .npz cache of the simulated bank
      babble_from_manifest: true  # babble from other speakers of the training set
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
from torch.utils.data import DataLoader

from sv_kedro.audio.augmentation import AugmentationConfig, Augmenter, BabbleSource, NoiseBank
from sv_kedro.audio.crops import CropSpec
from sv_kedro.audio.rir import RirBank
from sv_kedro.training.batches import SkipBatches
from sv_kedro.training.data import PairDataset, SpeakerDataset, collate_padded, collate_pairs
from sv_kedro.training.samplers import PairBatchSampler, SpeakerBalancedBatchSampler
from sv_kedro.training.task import LoaderRequest

AUGMENTATION_SOURCES = (
    "noise_dirs",
    "music_dirs",
    "musan_root",
    "rir_dirs",
    "simulated_rirs",
    "rir_cache",
    "babble_from_manifest",
)


def build_augmenter(
    config: Mapping[str, Any] | None, manifest: pd.DataFrame, sample_rate: int, seed: int
) -> Augmenter | None:
    """The augmenter a config asks for, with only the resources its weights need."""
    if not config:
        return None
    options = {k: v for k, v in config.items() if k not in AUGMENTATION_SOURCES}
    aug_config = AugmentationConfig.from_dict({**options, "sample_rate": sample_rate})
    weights = aug_config.probabilities()
    bank: NoiseBank | None = None
    if config.get("musan_root"):
        bank = NoiseBank.from_musan(config["musan_root"])
    for category, key in (("noise", "noise_dirs"), ("music", "music_dirs")):
        for folder in config.get(key) or []:
            more = NoiseBank.from_folder(folder, category)
            bank = more if bank is None else bank.merged(more)
    rir_bank = None
    if weights["reverb"] > 0 or weights["reverb+noise"] > 0:
        rir_dirs = config.get("rir_dirs") or []
        if rir_dirs:
            rir_bank = RirBank.from_folder(rir_dirs[0], sample_rate)
        elif config.get("rir_cache"):
            rir_bank = RirBank.load_or_simulate(
                config["rir_cache"], int(config.get("simulated_rirs", 50)), sample_rate, seed=seed
            )
        else:
            rir_bank = RirBank.simulated(
                int(config.get("simulated_rirs", 50)), sample_rate, seed=seed
            )
    babble = None
    if weights["babble"] > 0 and config.get("babble_from_manifest", True):
        babble = BabbleSource.from_manifest(manifest)
    return Augmenter(aug_config, bank, rir_bank, babble, seed=seed)


class SpeakerLoaderFactory:
    """Builds each epoch's DataLoader; picklable, so DDP workers can construct it."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)
        self.manifest = pd.read_parquet(self.config["manifest_path"])
        if "speaker_index" not in self.manifest.columns:
            raise ValueError(
                f"{self.config['manifest_path']}: a training manifest needs a speaker_index column"
            )
        rate = int(self.config.get("sample_rate", 16000))
        seed = int(self.config.get("seed", 0))
        crop = CropSpec(self.config.get("crop_mode", "random"), float(self.config["crop_seconds"]))
        augmenter = build_augmenter(self.config.get("augmentation"), self.manifest, rate, seed)
        self.dataset = SpeakerDataset(
            self.manifest,
            crop,
            augmenter,
            sample_rate=rate,
            return_clean=bool(self.config.get("return_clean", False)),
            seed=seed,
        )
        self.pairs = bool(self.config.get("pairs", False))

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def __call__(self, request: LoaderRequest) -> DataLoader:
        batch_size = int(self.config["batch_size"])
        speakers = self.dataset.speakers
        if self.pairs:
            sampler: Any = PairBatchSampler(
                speakers,
                batch_size,
                seed=request.seed,
                num_replicas=request.world_size,
                rank=request.rank,
                pairs_per_epoch=self.config.get("pairs_per_epoch"),
            )
            dataset: Any = PairDataset(self.dataset)
            collate = collate_pairs
        else:
            sampler = SpeakerBalancedBatchSampler(
                speakers,
                batch_size,
                utts_per_speaker_cap=self.config.get("utts_per_speaker_cap"),
                seed=request.seed,
                num_replicas=request.world_size,
                rank=request.rank,
            )
            dataset = self.dataset
            collate = collate_padded
        sampler.set_epoch(request.epoch)
        dataset.set_epoch(request.epoch)
        workers = int(self.config.get("num_workers", 0))
        return DataLoader(
            dataset,
            batch_sampler=SkipBatches(sampler, request.start_batch),
            collate_fn=collate,
            num_workers=workers,
            persistent_workers=False,
        )


def build_loader(config: Mapping[str, Any]) -> SpeakerLoaderFactory:
    """Loader-builder entry point for ``TrainingJob.loader_builder``."""
    return SpeakerLoaderFactory(config)
