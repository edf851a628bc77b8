"""Loader throughput: sv_kedro's training loader against the original recipe's loader.

Both produce batches of 3-s random crops of real speech (speechocean762 + LibriSpeech
cohort from ``/work/shared/data``) with the same random augmentation mix (none, reverb,
noise, babble of 3-8 other speakers, reverb+noise; no music: the shared data has none),
through a torch ``DataLoader`` with batch 32, for 2 workers and 0 workers.

- sv_kedro: ``SpeakerDataset`` + ``Augmenter``: partial reads of the crop only, noise and
  babble read as crops, FFT (overlap-add) convolution for reverb.
- original recipe (baseline): read the whole utterance with soundfile and crop in NumPy,
  read every noise / babble file whole each time, ``scipy.signal.convolve(method="direct")``
  for reverb.

Usage: ``python benchmarks/bench_loader.py [--utterances 300] [--workers 2 0]``.
Skips (exit 0) with a message when the shared data folder is absent.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from scipy import signal
from torch.utils.data import DataLoader, Dataset

from sv_kedro.audio.augmentation import AugmentationConfig, Augmenter
from sv_kedro.audio.crops import CropSpec
from sv_kedro.audio.noise_sources import BabbleSource, NoiseBank
from sv_kedro.audio.rir import RirBank
from sv_kedro.corpus.folder_source import scan_folder_roots
from sv_kedro.training.data import SpeakerDataset, collate_padded

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPEECH_CORPORA = ("speechocean762_train", "librispeech_cohort")
DEFAULT_MIX = ("none", "reverb", "noise", "babble", "reverb+noise")
RATE = 16000


def build_manifest(data: Path) -> pd.DataFrame:
    """The speech corpora as one manifest (the library's folder scan) with speaker indices."""
    manifest = scan_folder_roots([data / corpus for corpus in SPEECH_CORPORA], progress=False)
    codes = {s: k for k, s in enumerate(sorted(manifest["speaker"].unique()))}
    return manifest.assign(speaker_index=manifest["speaker"].map(codes))


class OriginalRecipeDataset(Dataset):
    """The baseline: whole-file reads, NumPy crops, direct-convolution reverb."""

    def __init__(
        self,
        manifest: pd.DataFrame,
        corpus: pd.DataFrame,
        noise_paths: list[Path],
        rir_paths: list[Path],
        crop_seconds: float,
        mix: dict[str, float],
        seed: int = 0,
    ) -> None:
        self.paths = manifest["path"].tolist()
        self.speakers = manifest["speaker"].tolist()
        self.labels = manifest["speaker_index"].tolist()
        self.corpus_paths = corpus["path"].tolist()
        self.corpus_speakers = np.asarray(corpus["speaker"].tolist())
        self.noise_paths, self.rir_paths = noise_paths, rir_paths
        self.frames = round(crop_seconds * RATE)
        self.options = list(mix)
        self.probabilities = np.array([mix[o] for o in self.options]) / sum(mix.values())
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def _crop(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if wave.ndim == 2:
            wave = wave.mean(axis=1)
        if len(wave) <= self.frames:
            return np.tile(wave, -(-self.frames // len(wave)))[: self.frames]
        start = int(rng.integers(0, len(wave) - self.frames + 1))
        return wave[start : start + self.frames]

    def _mix(self, speech: np.ndarray, added: np.ndarray, snr_db: float) -> np.ndarray:
        gain = np.sqrt(np.mean(speech**2) / (np.mean(added**2) * 10 ** (snr_db / 10) + 1e-12))
        return speech + gain * added

    def _noise(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise, _ = sf.read(
            self.noise_paths[int(rng.integers(len(self.noise_paths)))], dtype="float32"
        )
        return self._mix(wave, self._crop(noise, rng), rng.uniform(0, 15))

    def _reverb(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rir, _ = sf.read(self.rir_paths[int(rng.integers(len(self.rir_paths)))], dtype="float32")
        rir = rir / np.abs(rir).max()
        peak = int(np.argmax(np.abs(rir)))
        return signal.convolve(wave, rir, method="direct")[peak : peak + len(wave)]

    def _babble(self, wave: np.ndarray, speaker: str, rng: np.random.Generator) -> np.ndarray:
        others = np.flatnonzero(self.corpus_speakers != speaker)
        babble = np.zeros_like(wave)
        for index in rng.choice(others, size=int(rng.integers(3, 9)), replace=False):
            other, _ = sf.read(self.corpus_paths[index], dtype="float32")
            babble += self._crop(other, rng)
        return self._mix(wave, babble, rng.uniform(13, 20))

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        wave, _ = sf.read(self.paths[index], dtype="float32")
        wave = self._crop(wave, rng)
        option = self.options[int(rng.choice(len(self.options), p=self.probabilities))]
        if option in ("reverb", "reverb+noise"):
            wave = self._reverb(wave, rng)
        if option in ("noise", "reverb+noise"):
            wave = self._noise(wave, rng)
        elif option == "babble":
            wave = self._babble(wave, self.speakers[index], rng)
        return {
            "wave": torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)),
            "label": self.labels[index],
        }


def collate_stack(items: list[dict]) -> dict:
    return {
        "waves": torch.stack([i["wave"] for i in items]),
        "labels": torch.tensor([i["label"] for i in items]),
    }


def measure(dataset: Dataset, collate, workers: int, batch_size: int) -> float:
    """Utterances per second over one pass, worker start-up included."""
    start = time.perf_counter()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    count = sum(batch["waves"].shape[0] for batch in loader)
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--utterances", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 0])
    parser.add_argument("--crop-seconds", type=float, default=3.0)
    parser.add_argument(
        "--mix",
        nargs="+",
        default=list(DEFAULT_MIX),
        help="augmentation options, equally likely (music needs MUSAN)",
    )
    args = parser.parse_args(argv)
    if not (args.data / SPEECH_CORPORA[0]).is_dir():
        print(f"SKIP: {args.data} (real speech for benchmarks) is absent")
        return 0
    torch.set_num_threads(1)
    mix = dict.fromkeys(args.mix, 1.0)
    corpus = build_manifest(args.data)
    chosen = np.random.default_rng(0).permutation(len(corpus))[: args.utterances]
    manifest = corpus.iloc[np.sort(chosen)].reset_index(drop=True)
    noise_paths = sorted((args.data / "noise").glob("*.flac"))
    rir_paths = sorted((args.data / "rir").glob("*.flac"))
    augmenter = Augmenter(
        AugmentationConfig(weights=mix),
        noise_bank=NoiseBank.from_files(noise_paths, "noise"),
        rir_bank=RirBank.from_files(rir_paths),
        babble_source=BabbleSource.from_manifest(corpus),
    )
    ours = SpeakerDataset(manifest, CropSpec("random", args.crop_seconds), augmenter, seed=0)
    baseline = OriginalRecipeDataset(
        manifest, corpus, noise_paths, rir_paths, args.crop_seconds, mix
    )
    print(
        f"{len(manifest)} utterances ({manifest['duration'].mean():.1f} s mean) of "
        f"{len(corpus)}, {args.crop_seconds:g}-s crops, batch {args.batch_size}, "
        f"mix {sorted(mix)}"
    )
    print(f"{'workers':>7} {'sv_kedro utt/s':>15} {'original utt/s':>15} {'ratio':>7}")
    for workers in args.workers:
        rate = measure(ours, collate_padded, workers, args.batch_size)
        base = measure(baseline, collate_stack, workers, args.batch_size)
        print(f"{workers:>7} {rate:>15.1f} {base:>15.1f} {rate / base:>6.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
