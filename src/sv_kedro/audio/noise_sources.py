"""What augmentation mixes into speech, each use a random crop of the crop's length.

- :class:`NoiseBank`: noise and music files by category (folders, or MUSAN's layout);
- :class:`BabbleSource`: utterances of a corpus grouped by speaker, summed into babble of
  *other* speakers, read from the files or, with a ``ShardAudioReader``, from the corpus's
  WebDataset shards.

Files are never read whole: each draw decodes only the frames of its crop.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sv_kedro.audio.crops import crop_window, read_crop, wrap_pad
from sv_kedro.audio.io import audio_files_under, audio_info
from sv_kedro.audio.rir import resample_poly

if TYPE_CHECKING:
    from sv_kedro.corpus.shard_access import ShardAudioReader

MUSAN_CATEGORIES = {"noise": "noise", "music": "music", "speech": "speech"}


@dataclass(frozen=True)
class NoiseFile:
    path: str
    num_frames: int
    sample_rate: int
    category: str


def _read_random_crop(
    path: str,
    num_frames: int,
    file_rate: int,
    frames: int,
    sample_rate: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """A random crop of ``frames`` frames at ``sample_rate`` (reads only what it needs)."""
    file_frames = math.ceil(frames * file_rate / sample_rate)
    wave = read_crop(path, num_frames, file_frames, "random", rng)
    if file_rate != sample_rate:
        wave = wrap_pad(resample_poly(wave, file_rate, sample_rate), frames)
    return wave


class NoiseBank:
    """Background-noise (or music, speech) files by category, read as random crops."""

    def __init__(self, files: Sequence[NoiseFile]) -> None:
        self.files = list(files)
        self._by_category: dict[str, list[NoiseFile]] = {}
        for item in self.files:
            self._by_category.setdefault(item.category, []).append(item)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def categories(self) -> list[str]:
        return sorted(self._by_category)

    def count(self, category: str) -> int:
        return len(self._by_category.get(category, ()))

    @classmethod
    def from_files(cls, paths: Sequence[str | os.PathLike[str]], category: str) -> NoiseBank:
        files = []
        for path in sorted(os.fspath(p) for p in paths):
            info = audio_info(path)
            if info.frames <= 0:
                raise ValueError(f"{path}: noise file has no audio frames")
            files.append(NoiseFile(path, info.frames, info.sample_rate, category))
        return cls(files)

    @classmethod
    def from_folder(cls, root: str | os.PathLike[str], category: str) -> NoiseBank:
        """Every audio file under ``root`` (recursively), all in ``category``."""
        return cls.from_files(audio_files_under(root, "noise"), category)

    @classmethod
    def from_musan(cls, root: str | os.PathLike[str]) -> NoiseBank:
        """MUSAN's layout ``musan/{noise,music,speech}/**`` -> categories noise, music, speech."""
        root = Path(root)
        present = [name for name in MUSAN_CATEGORIES if (root / name).is_dir()]
        if not present:
            raise FileNotFoundError(
                f"{root}: not a MUSAN folder (expected sub-folders {sorted(MUSAN_CATEGORIES)})"
            )
        banks = [cls.from_folder(root / name, MUSAN_CATEGORIES[name]) for name in present]
        return cls([f for bank in banks for f in bank.files])

    def merged(self, other: NoiseBank) -> NoiseBank:
        return NoiseBank(self.files + other.files)

    def sample(
        self, category: str, frames: int, rng: np.random.Generator, sample_rate: int = 16000
    ) -> np.ndarray:
        """A random crop ``[frames]`` of a random file of ``category``, at ``sample_rate``."""
        choices = self._by_category.get(category)
        if not choices:
            raise KeyError(f"noise bank has no {category!r} files (categories: {self.categories})")
        item = choices[int(rng.integers(0, len(choices)))]
        return _read_random_crop(
            item.path, item.num_frames, item.sample_rate, frames, sample_rate, rng
        )


class BabbleSource:
    """Utterances of a corpus grouped by speaker, summed into babble of other speakers.

    Each of ``sources`` is a file path, or, with ``shards`` (a
    :class:`~sv_kedro.corpus.shard_access.ShardAudioReader`), the ``utt_id`` the shards
    hold: babble then reads the shards and the corpus's files need not be present.
    """

    def __init__(
        self,
        sources: Sequence[str],
        num_frames: Sequence[int],
        sample_rates: Sequence[int],
        speakers: Sequence[str],
        shards: ShardAudioReader | None = None,
    ) -> None:
        if not (len(sources) == len(num_frames) == len(sample_rates) == len(speakers)):
            raise ValueError(
                "BabbleSource: sources, num_frames, sample_rates and speakers differ in length"
            )
        if not sources:
            raise ValueError("BabbleSource needs at least one utterance")
        self.sources = [str(p) for p in sources]
        self.shards = shards
        if shards is not None:
            shards.check_holds(self.sources, "babble utterances")
        self.num_frames = np.asarray(num_frames, dtype=np.int64)
        self.sample_rates = np.asarray(sample_rates, dtype=np.int64)
        by_speaker: dict[str, list[int]] = {}
        for index, speaker in enumerate(speakers):
            by_speaker.setdefault(str(speaker), []).append(index)
        self.speakers = sorted(by_speaker)
        self._utterances = [np.asarray(by_speaker[s]) for s in self.speakers]

    @classmethod
    def from_manifest(
        cls, manifest: pd.DataFrame, shards: ShardAudioReader | None = None
    ) -> BabbleSource:
        """From a manifest (columns ``path``, ``num_frames``, ``sample_rate``, ``speaker``;
        with ``shards``, ``utt_id`` instead of ``path``)."""
        source = "path" if shards is None else "utt_id"
        needed = {source, "num_frames", "sample_rate", "speaker"}
        missing = sorted(needed - set(manifest.columns))
        if missing:
            raise ValueError(f"manifest for babble lacks column(s) {missing}")
        return cls(
            manifest[source].astype(str).tolist(),
            manifest["num_frames"].tolist(),
            manifest["sample_rate"].tolist(),
            manifest["speaker"].astype(str).tolist(),
            shards,
        )

    @classmethod
    def from_files(cls, paths: Sequence[str | os.PathLike[str]]) -> BabbleSource:
        """Each file is its own speaker (e.g. MUSAN ``speech``)."""
        infos = [audio_info(p) for p in paths]
        return cls(
            [os.fspath(p) for p in paths],
            [i.frames for i in infos],
            [i.sample_rate for i in infos],
            [os.fspath(p) for p in paths],
        )

    def sample(
        self,
        frames: int,
        rng: np.random.Generator,
        count: int,
        exclude_speaker: str | None = None,
        sample_rate: int = 16000,
    ) -> tuple[np.ndarray, int]:
        """Babble ``[frames]``: ``count`` distinct speakers other than ``exclude_speaker``
        (fewer if the corpus has fewer), one random crop each at unit power, summed.
        Returns ``(babble, speakers_used)``."""
        draw = min(len(self.speakers), count + 1)
        picked = [int(i) for i in rng.choice(len(self.speakers), size=draw, replace=False)]
        picked = [i for i in picked if self.speakers[i] != exclude_speaker][:count]
        if not picked:
            raise ValueError(f"no speakers other than {exclude_speaker!r} for babble")
        babble = np.zeros(frames, dtype=np.float64)
        for speaker_index in picked:
            utterances = self._utterances[speaker_index]
            utt = int(utterances[int(rng.integers(0, len(utterances)))])
            crop = self._random_crop(utt, frames, sample_rate, rng)
            power = float(np.mean(np.square(crop, dtype=np.float64)))
            if power > 0:
                babble += crop / math.sqrt(power)
        return babble.astype(np.float32), len(picked)

    def _random_crop(
        self, utt: int, frames: int, sample_rate: int, rng: np.random.Generator
    ) -> np.ndarray:
        if self.shards is None:
            return _read_random_crop(
                self.sources[utt],
                int(self.num_frames[utt]),
                int(self.sample_rates[utt]),
                frames,
                sample_rate,
                rng,
            )
        rate = self.shards.sample_rate
        stored = math.ceil(frames * rate / sample_rate)
        wave, _ = self.shards.read(
            self.sources[utt], lambda n: crop_window(n, stored, "random", rng)
        )
        if rate != sample_rate:
            wave = resample_poly(wave, rate, sample_rate)
        return wrap_pad(wave, frames)
