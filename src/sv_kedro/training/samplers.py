"""Batch samplers for speaker training: speaker-balanced batches and balanced pairs.

Both are epoch-seeded (``set_epoch``), DDP-aware and resumable. Every rank builds the
same global plan for an epoch from ``(seed, epoch)`` and takes batches ``rank``,
``rank + num_replicas``, ... of it; the plan is cut to a multiple of ``num_replicas``
batches so every rank steps the same number of times (the few batches left over are not
used in that epoch).

Resuming: ``state_dict()`` records the epoch and the position (batches of this rank's epoch
already used); after ``load_state_dict`` the next iteration continues with the batch at that
position. Under a ``DataLoader`` with workers the sampler is drawn ahead of training
(prefetching), so the training loop should pass the number of batches it actually consumed:
``state_dict(position=steps_done_in_epoch)``. A completed iteration resets the position to
0, so iterating again replays the epoch, as for any torch sampler.
"""

from __future__ import annotations

from abc import abstractmethod
from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class _ResumableEpochSampler(Sampler[list]):
    """Epoch / position bookkeeping shared by the batch samplers."""

    def __init__(self, seed: int, num_replicas: int, rank: int) -> None:
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0
        self._position = 0
        self._plan_cache: tuple[int, list[list]] | None = None
        self._plan_batches = self._plan_used = 0

    @abstractmethod
    def _global_batches(self, rng: np.random.Generator) -> list[list]:
        """Every batch of the epoch, in order, before the split across ranks."""

    def _rank_batches(self) -> list[list]:
        if self._plan_cache is None or self._plan_cache[0] != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            batches = self._global_batches(rng)
            usable = len(batches) - len(batches) % self.num_replicas
            self._plan_cache = (self.epoch, batches[self.rank : usable : self.num_replicas])
            self._plan_batches = usable
            self._plan_used = sum(len(batch) for batch in batches[:usable])
        return self._plan_cache[1]

    def epoch_usage(self) -> tuple[int, int]:
        """``(batches, items)`` of this epoch's plan over all ranks."""
        self._rank_batches()
        return self._plan_batches, self._plan_used

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's plan; a different epoch starts at position 0."""
        if epoch != self.epoch:
            self._position = 0
        self.epoch = int(epoch)

    def state_dict(self, position: int | None = None) -> dict[str, int]:
        """``{"epoch", "position", "seed", "num_replicas", "rank"}``; ``position`` overrides
        the number of batches handed out so far (see the module docstring)."""
        return {
            "epoch": self.epoch,
            "position": self._position if position is None else int(position),
            "seed": self.seed,
            "num_replicas": self.num_replicas,
            "rank": self.rank,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("seed", "num_replicas"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"sampler state has {key}={state[key]} but this sampler has "
                    f"{key}={getattr(self, key)}: the resumed epoch would differ"
                )
        missing = sorted({"epoch", "position"} - set(state))
        if missing:
            raise KeyError(f"sampler state lacks {missing}")
        self.epoch = int(state["epoch"])
        position = int(state["position"])
        if not 0 <= position <= len(self):
            raise ValueError(f"sampler position {position} outside [0, {len(self)}]")
        self._position = position

    def __len__(self) -> int:
        return len(self._rank_batches())

    def __iter__(self) -> Iterator[list]:
        batches = self._rank_batches()
        while self._position < len(batches):
            batch = batches[self._position]
            self._position += 1
            yield list(batch)
        self._position = 0


class SpeakerBalancedBatchSampler(_ResumableEpochSampler):
    """Batches of dataset indices with at most one utterance per speaker.

    Per epoch, each speaker contributes at most ``utts_per_speaker_cap`` of its utterances
    (a random subset; ``None``: all). The utterances are spread evenly over the epoch (each
    speaker's k-th of c utterances gets the sort key ``(k + u) / c``, ``u`` uniform), then
    packed greedily into batches of distinct speakers, deferring a clash to the next
    batch. Utterances that cannot form a batch of distinct speakers at the end are left
    out; with ``drop_last`` a final partial batch is dropped too. No utterance appears twice
    in an epoch, so the ranks' batches are disjoint.
    """

    def __init__(
        self,
        speaker_ids: Sequence[object],
        batch_size: int,
        utts_per_speaker_cap: int | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = True,
    ) -> None:
        super().__init__(seed, num_replicas, rank)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if utts_per_speaker_cap is not None and utts_per_speaker_cap < 1:
            raise ValueError(
                f"utts_per_speaker_cap must be >= 1 or None, got {utts_per_speaker_cap}"
            )
        names, codes = np.unique(np.asarray([str(s) for s in speaker_ids]), return_inverse=True)
        self.speaker_names: list[str] = names.tolist()
        self.speaker_codes = codes.astype(np.int64)
        self.num_speakers = int(codes.max()) + 1 if len(codes) else 0
        if self.num_speakers < batch_size and drop_last:
            raise ValueError(
                f"batch_size {batch_size} exceeds the {self.num_speakers} speakers: no batch of "
                "distinct speakers can be full (lower data.batch_size)"
            )
        self.batch_size = int(batch_size)
        self.cap = utts_per_speaker_cap
        self.drop_last = drop_last
        self._plan_offered = 0
        order = np.argsort(self.speaker_codes, kind="stable")
        bounds = np.searchsorted(self.speaker_codes[order], np.arange(self.num_speakers + 1))
        self._by_speaker = [order[bounds[s] : bounds[s + 1]] for s in range(self.num_speakers)]

    def _global_batches(self, rng: np.random.Generator) -> list[list[int]]:
        chosen, keys = [], []
        for utterances in self._by_speaker:
            picked = rng.permutation(utterances)
            if self.cap is not None:
                picked = picked[: self.cap]
            count = len(picked)
            chosen.append(picked)
            keys.append((np.arange(count) + rng.random(count)) / count)
        utterances = np.concatenate(chosen)
        self._plan_offered = len(utterances)
        sequence = utterances[np.argsort(np.concatenate(keys), kind="stable")]
        return self._pack(sequence.tolist())

    def left_out(self) -> tuple[int, int]:
        """``(left_out, offered)``: utterances of this epoch (after the cap) that no batch
        holds, over all ranks. A speaker fills at most one place in each batch, so one with
        more utterances than the epoch has batches cannot place them all."""
        _, used = self.epoch_usage()
        return self._plan_offered - used, self._plan_offered

    def largest_speakers(self, count: int = 3) -> list[tuple[str, int]]:
        """``(speaker, utterances)`` of the ``count`` speakers with the most utterances."""
        sizes = np.array([len(utterances) for utterances in self._by_speaker])
        order = np.argsort(-sizes, kind="stable")[:count]
        return [(self.speaker_names[code], int(sizes[code])) for code in order]

    def _pack(self, sequence: list[int]) -> list[list[int]]:
        speakers = self.speaker_codes
        batches: list[list[int]] = []
        pending: deque[int] = deque()
        stream = iter(sequence)
        exhausted = False
        while True:
            batch: list[int] = []
            in_batch: set[int] = set()
            for _ in range(len(pending)):
                utt = pending.popleft()
                if len(batch) < self.batch_size and speakers[utt] not in in_batch:
                    batch.append(utt)
                    in_batch.add(speakers[utt])
                else:
                    pending.append(utt)
            while len(batch) < self.batch_size and not exhausted:
                utt = next(stream, None)
                if utt is None:
                    exhausted = True
                elif speakers[utt] in in_batch:
                    pending.append(utt)
                else:
                    batch.append(utt)
                    in_batch.add(speakers[utt])
            if len(batch) == self.batch_size:
                batches.append(batch)
                continue
            if batch and not self.drop_last:
                batches.append(batch)
                if pending:
                    continue
            return batches


class PairBatchSampler(_ResumableEpochSampler):
    """Batches of ``(i, j)`` index pairs for the pair-BCE loss, balanced by label.

    Each batch holds ``round(batch_size * same_fraction)`` same-speaker pairs (two
    different utterances of a speaker that has at least two) and the rest different-speaker
    pairs (two distinct speakers, one utterance each), shuffled. An epoch has
    ``pairs_per_epoch // batch_size`` batches before the per-rank split (default: as many
    pairs as utterances).
    """

    def __init__(
        self,
        speaker_ids: Sequence[object],
        batch_size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        same_fraction: float = 0.5,
        pairs_per_epoch: int | None = None,
    ) -> None:
        super().__init__(seed, num_replicas, rank)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= same_fraction <= 1.0:
            raise ValueError(f"same_fraction must be in [0, 1], got {same_fraction}")
        _, codes = np.unique(np.asarray([str(s) for s in speaker_ids]), return_inverse=True)
        self.speaker_codes = codes.astype(np.int64)
        num_speakers = int(codes.max()) + 1 if len(codes) else 0
        self._by_speaker = [np.flatnonzero(codes == s) for s in range(num_speakers)]
        self._multi = np.array([s for s in range(num_speakers) if len(self._by_speaker[s]) >= 2])
        self.batch_size = int(batch_size)
        self.same_per_batch = round(batch_size * same_fraction)
        if self.same_per_batch and len(self._multi) == 0:
            raise ValueError("same-speaker pairs need a speaker with at least 2 utterances")
        if self.same_per_batch < batch_size and num_speakers < 2:
            raise ValueError("different-speaker pairs need at least 2 speakers")
        self.pairs_per_epoch = len(codes) if pairs_per_epoch is None else int(pairs_per_epoch)

    def _global_batches(self, rng: np.random.Generator) -> list[list[tuple[int, int]]]:
        batches = []
        for _ in range(self.pairs_per_epoch // self.batch_size):
            pairs = []
            for _ in range(self.same_per_batch):
                speaker = self._multi[int(rng.integers(0, len(self._multi)))]
                i, j = rng.choice(self._by_speaker[speaker], size=2, replace=False)
                pairs.append((int(i), int(j)))
            for _ in range(self.batch_size - self.same_per_batch):
                first, second = rng.choice(len(self._by_speaker), size=2, replace=False)
                pairs.append(
                    (
                        int(rng.choice(self._by_speaker[first])),
                        int(rng.choice(self._by_speaker[second])),
                    )
                )
            batches.append([pairs[k] for k in rng.permutation(len(pairs))])
        return batches
