"""Batch plans: every utterance once, budget kept, equal batches per rank, deterministic, reshuffled."""
from __future__ import annotations

import numpy as np
import pytest
from fairseq.data.iterators import ShardedIterator

from k2ssl_fairseq.data.bucketing import MAX_LENGTH_SPREAD, BatchingSettings, bucket_edges, plan_epoch

SR = 16000


def _librispeech_like(count: int, seed: int = 0) -> np.ndarray:
    """Lengths in samples: mostly 10-16 s, a tail down to 1 s, capped at 35 s."""
    rng = np.random.default_rng(seed)
    seconds = np.clip(np.where(rng.random(count) < 0.8, rng.normal(14.0, 2.0, count), rng.uniform(1, 12, count)), 1, 35)
    return (seconds * SR).astype(np.int64)


def _batches(plan) -> list:
    return [plan.batch(b) for b in range(len(plan))]


def test_bucket_edges_hold_equal_audio():
    lengths = np.array([1, 1, 1, 1, 2, 2, 4, 4]) * SR
    edges = bucket_edges(lengths, 2)
    np.testing.assert_array_equal(edges, [4 * SR])  # 8 s below (1+1+1+1+2+2), 8 s from 4 s up
    assert bucket_edges(lengths, 1).size == 0
    with pytest.raises(ValueError, match="num_buckets must be >= 1"):
        bucket_edges(lengths, 0)


@pytest.mark.parametrize("crop", [True, False])
@pytest.mark.parametrize("num_shards", [1, 2, 3, 8])
def test_every_utterance_once_within_budget_equal_shards(crop: bool, num_shards: int):
    lengths = _librispeech_like(3001)
    settings = BatchingSettings(max_duration=100.0, num_buckets=20, crop=crop, max_sample_size=250_000,
                                max_batch_size=None if crop else 9)
    plan = plan_epoch(lengths, settings, seed=3, epoch=2, num_shards=num_shards)
    assert len(plan) % num_shards == 0
    np.testing.assert_array_equal(np.sort(plan.utterances), np.arange(len(lengths)))
    for rows in _batches(plan):
        assert len(rows) >= 1
    sizes = np.diff(plan.batch_offsets)
    # Budget: batch size times the batch's window, in seconds.
    windows = plan.num_samples[plan.batch_offsets[:-1]] if crop else np.maximum.reduceat(
        plan.num_samples, plan.batch_offsets[:-1])
    assert np.all(sizes * windows / SR <= settings.max_duration + 1e-9)
    if not crop:
        assert sizes.max() <= 9
    # Members of a batch differ by at most MAX_LENGTH_SPREAD, bounding crop loss and padding per row.
    capped = np.minimum(lengths, 250_000)[plan.utterances] if crop else lengths[plan.utterances]
    spread = 1 - np.minimum.reduceat(capped, plan.batch_offsets[:-1]) / np.maximum.reduceat(capped, plan.batch_offsets[:-1])
    assert spread.max() <= MAX_LENGTH_SPREAD + 1e-9
    # Windows lie inside their utterances; cropped batches share one window length.
    assert np.all(plan.starts >= 0) and np.all(plan.starts + plan.num_samples <= lengths[plan.utterances])
    if crop:
        assert plan.num_samples.max() <= 250_000
        for b in range(len(plan)):
            assert len(set(plan.num_samples[plan.batch_offsets[b]:plan.batch_offsets[b + 1]].tolist())) == 1
    else:
        np.testing.assert_array_equal(plan.num_samples, lengths[plan.utterances])
    # fairseq's round-robin sharding then gives every rank the same count and no padding batch.
    rows = plan.batch_rows()
    shards = [list(ShardedIterator(rows, num_shards, r, fill_value=[])) for r in range(num_shards)]
    assert len({len(s) for s in shards}) == 1
    assert all(len(b) > 0 for s in shards for b in s)
    seen = np.concatenate([b[:, 0] for s in shards for b in s])
    np.testing.assert_array_equal(np.sort(seen), np.arange(len(lengths)))


def test_quadratic_duration_shrinks_long_batches():
    lengths = _librispeech_like(2000)
    plain = plan_epoch(lengths, BatchingSettings(max_duration=100.0), seed=1, epoch=1)
    quadratic = plan_epoch(lengths, BatchingSettings(max_duration=100.0, quadratic_duration=15.0), seed=1, epoch=1)
    assert len(quadratic) > len(plain)
    seconds = quadratic.num_samples[quadratic.batch_offsets[:-1]] / SR
    assert np.all(np.diff(quadratic.batch_offsets) * (seconds + seconds**2 / 15.0) <= 100.0 + 1e-9)


def test_deterministic_and_reshuffled_per_epoch():
    lengths = _librispeech_like(1500)
    settings = BatchingSettings(max_duration=80.0, num_buckets=10, max_sample_size=250_000)
    first = plan_epoch(lengths, settings, seed=7, epoch=1, num_shards=2)
    again = plan_epoch(lengths, settings, seed=7, epoch=1, num_shards=2)
    for name in ("utterances", "starts", "num_samples", "batch_offsets"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    second = plan_epoch(lengths, settings, seed=7, epoch=2, num_shards=2)
    other_seed = plan_epoch(lengths, settings, seed=8, epoch=1, num_shards=2)
    compositions = [{frozenset(b.tolist()) for b in _batches(p)} for p in (first, second, other_seed)]
    # Composition (not only order) changes: most batches of epoch 1 do not exist in epoch 2.
    assert len(compositions[0] & compositions[1]) < 0.2 * len(compositions[0])
    assert len(compositions[0] & compositions[2]) < 0.2 * len(compositions[0])
    assert not np.array_equal(first.starts, second.starts)


def test_bucketing_limits_crop_waste():
    """Cropping to the shortest of a batch loses little audio beyond the max_sample_size cap, and
    far less than batches of random composition would."""
    lengths = _librispeech_like(4000)
    capped = np.minimum(lengths, 250_000)
    plan = plan_epoch(lengths, BatchingSettings(max_duration=87.5, num_buckets=30, max_sample_size=250_000),
                      seed=1, epoch=1)
    waste = 1 - plan.num_samples.sum() / capped.sum()
    random_batches = np.random.default_rng(0).permutation(capped)[: len(capped) // 5 * 5].reshape(-1, 5)
    random_waste = 1 - (random_batches.min(1) * 5).sum() / random_batches.sum()
    assert waste < 0.02 and random_waste > 0.1


def test_fixed_crop_and_validation_order():
    lengths = _librispeech_like(300)
    settings = BatchingSettings(max_duration=60.0, random_crop=False, shuffle=False, max_sample_size=200_000)
    plan = plan_epoch(lengths, settings, seed=1, epoch=1)
    assert np.all(plan.starts == 0)
    later = plan_epoch(lengths, settings, seed=2, epoch=5)
    np.testing.assert_array_equal(plan.utterances, later.utterances)


def test_too_few_utterances_for_ranks():
    with pytest.raises(ValueError, match="3 utterances cannot give every one of 4 ranks a batch"):
        plan_epoch(np.full(3, SR), BatchingSettings(max_duration=10.0), seed=1, epoch=1, num_shards=4)
    plan = plan_epoch(np.full(4, SR), BatchingSettings(max_duration=10.0), seed=1, epoch=1, num_shards=4)
    assert len(plan) == 4


def test_batch_rows_carry_window_batch_and_epoch():
    lengths = _librispeech_like(50)
    plan = plan_epoch(lengths, BatchingSettings(max_duration=40.0), seed=1, epoch=3)
    rows = plan.batch_rows()
    assert len(rows) == len(plan)
    for b, batch in enumerate(rows):
        assert batch.shape[1] == 5 and batch.dtype == np.int64
        np.testing.assert_array_equal(batch[:, 0], plan.batch(b))
        assert set(batch[:, 3].tolist()) == {b} and set(batch[:, 4].tolist()) == {3}
