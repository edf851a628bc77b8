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
    shard_dir: null               # read the WebDataset shards of data_engineering.shards instead
    shuffle_buffer: 1000          # with shard_dir: items shuffled within each worker's stream
    augmentation:                 # null: none
      weights: {none: 1, reverb: 1, noise: 1, babble: 1, reverb+noise: 1}
      noise_dirs: []              # folders of noise files (category noise)
      music_dirs: []
      musan_root: null            # MUSAN's layout: noise/, music/, speech/
      rir_dirs: []                # real RIR files; empty: a simulated bank
      simulated_rirs: 50
      rir_cache: null             # .npz cache of the simulated bank
      babble_from_manifest: true  # babble from other speakers of the training set

With ``shard_dir`` the items come from the WebDataset shards of the training manifest
(``corpus.shards``; checked to hold exactly this manifest) in random batches read shard by
shard; speaker-balanced batches and pairs need random access and stay with the manifest.
Babble augmentation then reads its other speakers' crops from the same shards by
``utt_id``, so the manifest's files need not be present.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import pandas as pd
from torch.utils.data import DataLoader

from sv_kedro.audio.augmentation import AugmentationConfig, Augmenter
from sv_kedro.audio.crops import CropSpec
from sv_kedro.audio.noise_sources import BabbleSource, NoiseBank
from sv_kedro.audio.rir import RirBank
from sv_kedro.corpus.shard_access import ShardAudioReader
from sv_kedro.corpus.shards import check_shards_hold, shard_counts
from sv_kedro.training.batches import SkipBatches
from sv_kedro.training.data import PairDataset, SpeakerDataset, collate_padded, collate_pairs
from sv_kedro.training.samplers import PairBatchSampler, SpeakerBalancedBatchSampler
from sv_kedro.training.shard_data import ShardDataset, SizedLoader, shard_epoch_loader
from sv_kedro.training.task import LoaderRequest
from sv_kedro.utils.params import as_float, as_int, check_keys

logger = logging.getLogger(__name__)

# The share of an epoch's utterances left out of speaker-balanced batches that is worth a
# warning: a few stragglers at the end of the plan are normal.
LEFT_OUT_WARNING = 0.05

AUGMENTATION_SOURCES = (
    "noise_dirs",
    "music_dirs",
    "musan_root",
    "rir_dirs",
    "simulated_rirs",
    "rir_cache",
    "babble_from_manifest",
)
# The keys of ``<system>.data`` (see the module docstring); the runner adds RUNNER_KEYS.
LOADER_KEYS = (
    "batch_size",
    "crop_seconds",
    "crop_mode",
    "utts_per_speaker_cap",
    "pairs",
    "pairs_per_epoch",
    "return_clean",
    "num_workers",
    "sample_rate",
    "shard_dir",
    "shuffle_buffer",
    "augmentation",
)
RUNNER_KEYS = ("manifest_path", "seed")
REQUIRED_KEYS = ("batch_size", "crop_seconds")
NULLABLE_KEYS = ("utts_per_speaker_cap", "pairs_per_epoch")  # null: no limit
INT_KEYS = (
    "batch_size",
    "utts_per_speaker_cap",
    "pairs_per_epoch",
    "num_workers",
    "sample_rate",
    "shuffle_buffer",
    "seed",
)


def checked_loader_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a loader config with its keys checked and its numbers converted.

    An unknown key, a missing ``batch_size`` / ``crop_seconds`` or a value that is not a
    number raises ``ValueError`` naming ``data.<key>``: a misspelt key read with
    ``.get(key, default)`` would otherwise be ignored.
    """
    check_keys(set(config) - set(RUNNER_KEYS), LOADER_KEYS, "data")
    missing = [key for key in REQUIRED_KEYS if config.get(key) is None]
    if missing:
        raise ValueError(f"data: missing key(s) {missing}")
    checked = dict(config)
    for key in INT_KEYS:
        if key in checked and not (key in NULLABLE_KEYS and checked[key] is None):
            checked[key] = as_int(checked[key], f"data.{key}")
    checked["crop_seconds"] = as_float(checked["crop_seconds"], "data.crop_seconds")
    if not checked["crop_seconds"] > 0:
        raise ValueError(f"data.crop_seconds must be > 0, got {checked['crop_seconds']}")
    for key in (
        "batch_size",
        "sample_rate",
        "shuffle_buffer",
        "utts_per_speaker_cap",
        "pairs_per_epoch",
    ):
        if checked.get(key) is not None and checked[key] < 1:
            raise ValueError(f"data.{key} must be >= 1, got {checked[key]}")
    if checked.get("num_workers") is not None and checked["num_workers"] < 0:
        raise ValueError(f"data.num_workers must be >= 0, got {checked['num_workers']}")
    return checked


def build_augmenter(
    config: Mapping[str, Any] | None,
    manifest: pd.DataFrame,
    sample_rate: int,
    seed: int,
    shard_dir: str | os.PathLike[str] | None = None,
) -> Augmenter | None:
    """The augmenter a config asks for, with only the resources its weights need.

    ``shard_dir``: shards of ``manifest`` (already checked to hold it) that babble reads
    its crops from instead of the manifest's files.
    """
    if not config:
        return None
    options = {k: v for k, v in config.items() if k not in AUGMENTATION_SOURCES}
    aug_config = AugmentationConfig.from_dict({**options, "sample_rate": sample_rate})
    weights = aug_config.probabilities()
    simulated = as_int(config.get("simulated_rirs", 50), "data.augmentation.simulated_rirs")
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
                config["rir_cache"], simulated, sample_rate, seed=seed
            )
        else:
            rir_bank = RirBank.simulated(simulated, sample_rate, seed=seed)
    babble = None
    if weights["babble"] > 0 and config.get("babble_from_manifest", True):
        shards = ShardAudioReader(shard_dir) if shard_dir else None
        babble = BabbleSource.from_manifest(manifest, shards)
    return Augmenter(aug_config, bank, rir_bank, babble, seed=seed)


class SpeakerLoaderFactory:
    """Builds each epoch's DataLoader; picklable, so DDP workers can construct it."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = checked_loader_config(config)
        self.manifest = pd.read_parquet(self.config["manifest_path"])
        if "speaker_index" not in self.manifest.columns:
            raise ValueError(
                f"{self.config['manifest_path']}: a training manifest needs a speaker_index column"
            )
        rate = self.config.get("sample_rate", 16000)
        seed = self.config.get("seed", 0)
        crop = CropSpec(self.config.get("crop_mode", "random"), self.config["crop_seconds"])
        self.shard_index: dict[str, Any] | None = None
        if self.config.get("shard_dir"):
            self.shard_index = self._checked_shards(rate)
        augmenter = build_augmenter(
            self.config.get("augmentation"),
            self.manifest,
            rate,
            seed,
            self.config.get("shard_dir") or None,
        )
        self.dataset = SpeakerDataset(
            self.manifest,
            crop,
            augmenter,
            sample_rate=rate,
            return_clean=bool(self.config.get("return_clean", False)),
            seed=seed,
        )
        self.pairs = bool(self.config.get("pairs", False))
        self._usage_reported = False

    def _checked_shards(self, rate: int) -> dict[str, Any]:
        folder = self.config["shard_dir"]
        for key, why in (
            ("pairs", "pair batches"),
            ("utts_per_speaker_cap", "a per-speaker cap"),
        ):
            if self.config.get(key):
                raise ValueError(
                    f"data.{key} ({why}) needs the manifest's random access: unset it or "
                    f"data.shard_dir ({folder})"
                )
        index = check_shards_hold(self.manifest, folder)
        manifest = self.manifest
        self.speaker_to_index = dict(
            zip(manifest["speaker"], manifest["speaker_index"].astype(int), strict=True)
        )
        self.utt_to_index = {utt: row for row, utt in enumerate(manifest["utt_id"].astype(str))}
        # Labels come from this manifest, not the shards: pseudo-labels read the same shards.
        self.utt_to_speaker = dict(
            zip(manifest["utt_id"].astype(str), manifest["speaker"].astype(str), strict=True)
        )
        if int(index["sample_rate"]) != rate:
            raise ValueError(
                f"{folder}: shards are {index['sample_rate']} Hz, data.sample_rate is {rate}"
            )
        logger.info(
            "Training items stream from %d WebDataset shard(s) in %s; labels from %s",
            index["num_shards"],
            folder,
            self.config["manifest_path"],
        )
        return index

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def __call__(self, request: LoaderRequest) -> Any:
        if self.shard_index is not None:
            return self._shard_loader(request)
        batch_size = self.config["batch_size"]
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
        if isinstance(sampler, SpeakerBalancedBatchSampler) and request.rank == 0:
            self._report_left_out(sampler)
        dataset.set_epoch(request.epoch)
        workers = self.config.get("num_workers", 0)
        return DataLoader(
            dataset,
            batch_sampler=SkipBatches(sampler, request.start_batch),
            collate_fn=collate,
            num_workers=workers,
            persistent_workers=False,
        )

    def _report_left_out(self, sampler: SpeakerBalancedBatchSampler) -> None:
        """Warn once when the distinct-speaker batches leave out much of an epoch's data
        (pseudo-labels often put many utterances in a few large clusters)."""
        if self._usage_reported:
            return
        self._usage_reported = True
        left_out, offered = sampler.left_out()
        if offered == 0 or left_out / offered <= LEFT_OUT_WARNING:
            return
        batches, _ = sampler.epoch_usage()
        largest = ", ".join(f"{name} ({count})" for name, count in sampler.largest_speakers())
        logger.warning(
            "%s: speaker-balanced batches leave out %d of %d utterances (%.0f%%) per epoch: a "
            "batch holds one utterance per speaker, so a speaker fills at most one place in "
            "each of the epoch's %d batches; the largest speakers (utterances): %s. Set "
            "data.utts_per_speaker_cap (e.g. %d) to sample them evenly, or lower "
            "data.batch_size (%d).",
            self.config["manifest_path"],
            left_out,
            offered,
            100.0 * left_out / offered,
            batches,
            largest,
            max(1, batches),
            sampler.batch_size,
        )

    def _shard_loader(self, request: LoaderRequest) -> SizedLoader:
        assert self.shard_index is not None
        counts = shard_counts(self.config["shard_dir"], self.shard_index)
        dataset = ShardDataset(
            list(counts),
            self.dataset.crop,
            self.dataset.augmenter,
            sample_rate=self.dataset.sample_rate,
            speaker_to_index=self.speaker_to_index,
            return_clean=self.dataset.return_clean,
            seed=request.seed,
            num_replicas=request.world_size,
            rank=request.rank,
            shuffle_buffer=self.config.get("shuffle_buffer", 1000),
            shard_counts=counts,
            utt_to_index=self.utt_to_index,
            utt_to_speaker=self.utt_to_speaker,
        )
        dataset.set_epoch(request.epoch)
        batch_size, workers = self.config["batch_size"], self.config.get("num_workers", 0)
        return shard_epoch_loader(dataset, batch_size, workers, request.start_batch, collate_padded)


def build_loader(config: Mapping[str, Any]) -> SpeakerLoaderFactory:
    """Loader-builder entry point for ``TrainingJob.loader_builder``."""
    return SpeakerLoaderFactory(config)
