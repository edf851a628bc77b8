"""Speaker-balanced and pair batch samplers: balance, caps, DDP shards, epochs, resume."""

from __future__ import annotations

import numpy as np
import pytest

from sv_kedro.training.samplers import PairBatchSampler, SpeakerBalancedBatchSampler


def _speakers(seed: int = 0, count: int = 40) -> list[str]:
    """Uneven corpus: speaker k has 2 + (k * 7) % 13 utterances, in shuffled order."""
    ids = [f"s{k:02d}" for k in range(count) for _ in range(2 + (k * 7) % 13)]
    return [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]


def test_no_duplicate_speakers_and_cap_respected():
    speakers = _speakers()
    sampler = SpeakerBalancedBatchSampler(speakers, batch_size=8, utts_per_speaker_cap=5, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        assert len(batch) == 8
        assert len({speakers[i] for i in batch}) == 8
    used = [i for batch in batches for i in batch]
    assert len(used) == len(set(used))
    per_speaker: dict[str, int] = {}
    for i in used:
        per_speaker[speakers[i]] = per_speaker.get(speakers[i], 0) + 1
    assert max(per_speaker.values()) <= 5
    # the cap leaves at most 40 * 5 utterances; nearly all of them are used
    capped_total = sum(min(5, speakers.count(s)) for s in set(speakers))
    assert len(used) >= capped_total - 8 - 5


def test_left_out_counts_the_utterances_no_batch_holds():
    # One speaker with 60 of 100 utterances: at most one per batch of 4 distinct speakers.
    speakers = ["big"] * 60 + [f"s{k}" for k in range(8) for _ in range(5)]
    sampler = SpeakerBalancedBatchSampler(speakers, batch_size=4, seed=0, num_replicas=2)
    batches = [b for rank in range(2) for b in _rank_plan(speakers, rank)]
    used = sum(len(b) for b in batches)
    assert sampler.left_out() == (100 - used, 100)
    assert sampler.epoch_usage() == (len(batches), used)
    assert sampler.left_out()[0] >= 60 - len(batches)  # "big" can fill one place per batch
    assert sampler.largest_speakers(2) == [("big", 60), ("s0", 5)]
    # The cap shrinks what is offered; then only the last partial batch is left out.
    capped = SpeakerBalancedBatchSampler(speakers, batch_size=4, utts_per_speaker_cap=5)
    assert capped.left_out() == (45 % 4, 45)


def _rank_plan(speakers: list[str], rank: int) -> list[list[int]]:
    sampler = SpeakerBalancedBatchSampler(speakers, batch_size=4, seed=0, num_replicas=2, rank=rank)
    return list(sampler)


def test_rank_shards_disjoint_and_equal_sized():
    speakers = _speakers()
    samplers = [
        SpeakerBalancedBatchSampler(speakers, 6, None, seed=3, num_replicas=3, rank=r)
        for r in range(3)
    ]
    for sampler in samplers:
        sampler.set_epoch(2)
    per_rank = [list(s) for s in samplers]
    assert len({len(batches) for batches in per_rank}) == 1 and len(per_rank[0]) > 0
    flat = [i for batches in per_rank for batch in batches for i in batch]
    assert len(flat) == len(set(flat))
    single = SpeakerBalancedBatchSampler(speakers, 6, None, seed=3)
    single.set_epoch(2)
    # the ranks together use the single-process plan's batches, dealt round-robin
    plan = list(single)
    assert per_rank[1] == plan[1 : 3 * len(per_rank[1]) : 3]


def test_epochs_differ_and_same_epoch_repeats():
    speakers = _speakers()
    sampler = SpeakerBalancedBatchSampler(speakers, 8, 4, seed=0)
    sampler.set_epoch(0)
    first = list(sampler)
    assert list(sampler) == first
    other = SpeakerBalancedBatchSampler(speakers, 8, 4, seed=0)
    other.set_epoch(0)
    assert list(other) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(SpeakerBalancedBatchSampler(speakers, 8, 4, seed=9)) != first


def test_resume_mid_epoch_yields_the_remaining_batches_exactly():
    speakers = _speakers()
    sampler = SpeakerBalancedBatchSampler(speakers, 8, None, seed=5, num_replicas=2, rank=1)
    sampler.set_epoch(3)
    full = list(sampler)
    sampler.set_epoch(3)
    iterator = iter(sampler)
    consumed = [next(iterator) for _ in range(4)]
    state = sampler.state_dict()
    assert state["epoch"] == 3 and state["position"] == 4 and consumed == full[:4]
    resumed = SpeakerBalancedBatchSampler(speakers, 8, None, seed=5, num_replicas=2, rank=1)
    resumed.load_state_dict(state)
    assert list(resumed) == full[4:]
    # an explicit position (what a prefetching DataLoader consumer passes) wins
    explicit = SpeakerBalancedBatchSampler(speakers, 8, None, seed=5, num_replicas=2, rank=1)
    explicit.load_state_dict(sampler.state_dict(position=2))
    assert list(explicit) == full[2:]
    with pytest.raises(ValueError, match="seed=5 but this sampler has seed=6"):
        SpeakerBalancedBatchSampler(speakers, 8, None, seed=6).load_state_dict(state)


def test_partial_batches_kept_without_drop_last():
    speakers = ["a", "b", "c"] * 3 + ["a"] * 3
    sampler = SpeakerBalancedBatchSampler(speakers, 3, None, seed=0, drop_last=False)
    batches = list(sampler)
    used = sorted(i for batch in batches for i in batch)
    assert used == list(range(len(speakers)))
    assert all(len({speakers[i] for i in batch}) == len(batch) for batch in batches)
    with pytest.raises(ValueError, match="exceeds the 3 speakers"):
        SpeakerBalancedBatchSampler(speakers, 4)


def test_pair_batches_balanced_and_rank_aware():
    speakers = _speakers()
    samplers = [
        PairBatchSampler(speakers, 10, seed=2, num_replicas=2, rank=r, pairs_per_epoch=200)
        for r in range(2)
    ]
    per_rank = [list(s) for s in samplers]
    assert len(per_rank[0]) == len(per_rank[1]) == 10
    assert per_rank[0] != per_rank[1]
    for batch in per_rank[0] + per_rank[1]:
        same = [speakers[i] == speakers[j] for i, j in batch]
        assert sum(same) == 5 and len(batch) == 10
        assert all(i != j for i, j in batch)
    state = samplers[0].state_dict(position=7)
    resumed = PairBatchSampler(speakers, 10, seed=2, num_replicas=2, rank=0, pairs_per_epoch=200)
    resumed.load_state_dict(state)
    assert list(resumed) == per_rank[0][7:]
