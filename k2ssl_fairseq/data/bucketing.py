"""Duration-bucketed batch plans: pure functions of (lengths, settings, seed, epoch).

An epoch plan lists, for every batch, which utterances it holds and which window of each is read.
Utterances of similar (capped) length share a bucket, so cropping a batch to its shortest member
(``pad_audio=false``) or padding it to its longest (fine-tuning) wastes little audio; inside a bucket, utterances are sorted by length times a small
random factor before batches are cut, which keeps that loss small even in wide buckets while
neighbours change every epoch. Batches are
filled up to a budget of audio seconds *fed to the model*, their composition is reshuffled every
epoch, and their count is a multiple of the number of ranks so that every rank runs the same number
of steps. Nothing here keeps state: resuming mid-epoch recomputes the same plan and skips the
batches already consumed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Union

import numpy as np

#: Tags that keep the generators of one (seed, epoch) independent of each other.
_SHUFFLE_STREAM, _CROP_STREAM = 0, 1
#: Relative noise on lengths when sorting a bucket: neighbours (hence batch composition) change
#: every epoch while a batch's lengths stay within about this fraction of each other. 0.5 % keeps the
#: audio cropped away close to stock fairseq's length-sorted batches (measured in the A/B harness's own-batches mode).
LENGTH_JITTER = 0.005
#: Largest relative length difference inside a batch: bounds the share of an utterance cropped away
#: (crop mode) or of a row that is padding (pad mode).
MAX_LENGTH_SPREAD = 0.15
#: Fewest batches' worth of audio per bucket.
MIN_BUCKET_BATCHES = 4


@dataclass(frozen=True)
class BatchingSettings:
    """How batches are formed.

    Attributes:
        max_duration: audio seconds fed to the model per batch (after cropping, including padding).
        sample_rate: samples per second.
        num_buckets: number of duration buckets (fewer when the split holds less than
            ``MIN_BUCKET_BATCHES`` batches of audio per bucket).
        crop: True crops every batch to its shortest utterance (HuBERT ``pad_audio=false``); False
            feeds whole utterances padded to the longest of the batch.
        max_sample_size: longest window fed in crop mode (longer utterances are cropped); None for
            no cap. Ignored when ``crop`` is False.
        random_crop: draw crop windows at random offsets; False starts every window at 0.
        quadratic_duration: if set, an utterance of ``d`` seconds costs ``d + d**2 / q`` seconds of
            the budget, which evens out attention cost across buckets.
        max_batch_size: most utterances per batch; None for no limit.
        shuffle: reshuffle batch composition and order per epoch; False gives a fixed,
            length-sorted plan (validation).
    """

    max_duration: float
    sample_rate: int = 16000
    num_buckets: int = 30
    crop: bool = True
    max_sample_size: Optional[int] = None
    random_crop: bool = True
    quadratic_duration: Optional[float] = None
    max_batch_size: Optional[int] = None
    shuffle: bool = True

    def window_cap(self) -> Optional[int]:
        """Longest window fed in samples: the crop cap, further limited so one window fits the budget."""
        if not self.crop:
            return None
        budget = int(self.max_duration * self.sample_rate)
        return budget if self.max_sample_size is None else min(self.max_sample_size, budget)

    def cost(self, batch_size: int, window: Union[int, np.ndarray]) -> Union[float, np.ndarray]:
        """Budget seconds used by ``batch_size`` windows of ``window`` samples each (``window`` may
        be an array)."""
        seconds = window / self.sample_rate
        if self.quadratic_duration:
            seconds += seconds * seconds / self.quadratic_duration
        return batch_size * seconds


@dataclass
class EpochPlan:
    """Every batch of one epoch, in the order they are consumed.

    Attributes:
        utterances: utterance index of each item, batches concatenated, shape ``(item,)``.
        starts: first sample of each item's window, shape ``(item,)``.
        num_samples: window length of each item, shape ``(item,)``.
        batch_offsets: start of each batch in the item arrays plus the end, shape ``(batch + 1,)``.
        epoch: the epoch planned.
    """

    utterances: np.ndarray
    starts: np.ndarray
    num_samples: np.ndarray
    batch_offsets: np.ndarray
    epoch: int

    def __len__(self) -> int:
        return len(self.batch_offsets) - 1

    def batch(self, index: int) -> np.ndarray:
        """Utterance indices of one batch, shape ``(batch_size,)``."""
        return self.utterances[self.batch_offsets[index]:self.batch_offsets[index + 1]]

    def batch_rows(self) -> List[np.ndarray]:
        """One ``(batch_size, 5)`` int64 array per batch, columns utterance, start, num_samples,
        batch index, epoch: everything a DataLoader worker needs to read and mask the batch."""
        batch_index = np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.batch_offsets))
        rows = np.stack([self.utterances, self.starts, self.num_samples, batch_index,
                         np.full_like(batch_index, self.epoch)], axis=1)
        bounds = self.batch_offsets.tolist()
        return [rows[first:end] for first, end in zip(bounds[:-1], bounds[1:])]


def bucket_edges(lengths: np.ndarray, num_buckets: int) -> np.ndarray:
    """Duration bucket boundaries holding equal total audio.

    Args:
        lengths: samples per utterance, shape ``(utterance,)``.
        num_buckets: buckets wanted.

    Returns:
        Increasing edges, shape ``(num_buckets - 1,)`` at most (duplicates removed); utterance ``i``
        falls in bucket ``searchsorted(edges, lengths[i], side="right")``, i.e. bucket ``b`` holds
        ``edges[b-1] <= length < edges[b]``.
    """
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    if num_buckets == 1 or len(lengths) == 0:
        return np.zeros(0, dtype=np.int64)
    ordered = np.sort(np.asarray(lengths, dtype=np.int64))
    audio_before = np.cumsum(ordered, dtype=np.float64) - ordered
    targets = (audio_before[-1] + ordered[-1]) * np.arange(1, num_buckets) / num_buckets
    positions = np.minimum(np.searchsorted(audio_before, targets, side="left"), len(ordered) - 1)
    return np.unique(ordered[positions])


def plan_epoch(lengths: np.ndarray, settings: BatchingSettings, seed: int, epoch: int,
               num_shards: int = 1) -> EpochPlan:
    """Batches of one epoch.

    Args:
        lengths: samples per utterance, shape ``(utterance,)``.
        settings: batching settings.
        seed: run seed (``common.seed``).
        epoch: epoch number; each epoch gets its own composition, order and crop windows.
        num_shards: number of ranks; the batch count is made a multiple of it by splitting the
            largest batches, so every utterance is still used exactly once.

    Returns:
        The plan. Every utterance appears in exactly one batch, and every batch costs at most
        ``settings.max_duration`` seconds unless it is a single utterance longer than that in pad
        mode (filter those out beforehand, e.g. with ``max_keep_size``).

    Raises:
        ValueError: fewer utterances than ranks.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) < num_shards:
        raise ValueError(f"{len(lengths)} utterances cannot give every one of {num_shards} ranks a batch")
    cap = settings.window_cap()
    windows = lengths if cap is None else np.minimum(lengths, cap)
    buckets = np.searchsorted(bucket_edges(windows, _useful_buckets(windows, settings)), windows, side="right")
    if settings.shuffle:
        shuffle_rng = np.random.default_rng([int(seed), int(epoch), _SHUFFLE_STREAM])
        jitter = shuffle_rng.uniform(1 - LENGTH_JITTER, 1 + LENGTH_JITTER, len(lengths))
        order = np.lexsort((windows * jitter, buckets))
    else:
        order = np.lexsort((windows, buckets))
    offsets = _fill_batches(windows[order], buckets[order], settings)
    offsets = _split_until_divisible(offsets, windows[order], settings, num_shards)
    if settings.shuffle:
        offsets, order = _shuffle_batches(offsets, order, shuffle_rng)
    return _windows(order, offsets, lengths, windows, settings, seed, epoch)


def _useful_buckets(windows: np.ndarray, settings: BatchingSettings) -> int:
    """``num_buckets``, reduced so that every bucket holds at least ``MIN_BUCKET_BATCHES`` batches'
    worth of audio (smaller buckets yield undersized batches and the same batches every epoch)."""
    total_seconds = float(windows.sum()) / settings.sample_rate
    return max(1, min(settings.num_buckets, int(total_seconds // (MIN_BUCKET_BATCHES * settings.max_duration))))


def _fill_batches(windows: np.ndarray, buckets: np.ndarray, settings: BatchingSettings) -> np.ndarray:
    """Greedy batch boundaries over utterances sorted by bucket.

    A batch never spans two buckets, its members' lengths stay within ``MAX_LENGTH_SPREAD`` of its
    longest (which bounds what cropping or padding loses per utterance), and it grows while its
    size fits the capacity of its window (shortest member when cropping, longest when padding).
    """
    capacities = _capacities(windows, settings).tolist()
    crop = settings.crop
    keep = 1.0 - MAX_LENGTH_SPREAD
    starts = [0]
    shortest = longest = capacity = size = 0
    previous_bucket = None
    for position, (length, length_capacity, bucket) in enumerate(zip(windows.tolist(), capacities, buckets.tolist())):
        if size and bucket == previous_bucket:
            new_shortest, new_longest = min(shortest, length), max(longest, length)
            new_capacity = capacity
            if (crop and length < shortest) or (not crop and length > longest):
                new_capacity = length_capacity
            if size < new_capacity and new_shortest >= keep * new_longest:
                shortest, longest, capacity, size = new_shortest, new_longest, new_capacity, size + 1
                continue
        if size:
            starts.append(position)
        shortest = longest = length
        capacity, size, previous_bucket = length_capacity, 1, bucket
    starts.append(len(windows))
    return np.asarray(starts, dtype=np.int64)


def _capacities(windows: np.ndarray, settings: BatchingSettings) -> np.ndarray:
    """Most utterances a batch may hold when its window is ``windows[i]`` (at least 1)."""
    unit_cost = np.maximum(settings.cost(1, windows.astype(np.float64)), 1e-12)
    capacity = np.floor(settings.max_duration / unit_cost * (1 + 1e-12)).astype(np.int64)
    if settings.max_batch_size:
        capacity = np.minimum(capacity, settings.max_batch_size)
    return np.maximum(capacity, 1)


def _split_until_divisible(offsets: np.ndarray, windows: np.ndarray, settings: BatchingSettings,
                           num_shards: int) -> np.ndarray:
    """Split the largest batches in two until the batch count is a multiple of ``num_shards``.

    A cropped batch is charged at its shortest member, so its longer half alone could exceed the
    budget; the split point is moved towards the end until the second part fits."""
    while (missing := -(len(offsets) - 1) % num_shards) > 0:
        sizes = np.diff(offsets)
        splittable = np.count_nonzero(sizes > 1)
        if splittable == 0:
            raise ValueError(f"cannot split {len(sizes)} batches into a multiple of {num_shards} ranks")
        cuts = [_fitting_cut(windows[offsets[b]:offsets[b + 1]], settings) + offsets[b]
                for b in np.argsort(-sizes, kind="stable")[:min(missing, splittable)].tolist()]
        offsets = np.sort(np.concatenate([offsets, np.asarray(cuts, dtype=np.int64)]))
    return offsets


def _fitting_cut(windows: np.ndarray, settings: BatchingSettings) -> int:
    """First position from the middle on whose tail batch fits the budget (the head always fits)."""
    pick = np.minimum if settings.crop else np.maximum
    tail_window = pick.accumulate(windows[::-1])[::-1]
    tail_size = len(windows) - np.arange(len(windows))
    fits = np.flatnonzero(tail_size[len(windows) // 2:] <= _capacities(tail_window, settings)[len(windows) // 2:])
    return len(windows) // 2 + int(fits[0]) if len(fits) else len(windows) - 1


def _shuffle_batches(offsets: np.ndarray, order: np.ndarray, rng: np.random.Generator):
    """Random batch order; returns the new offsets and the items reordered to match."""
    sizes = np.diff(offsets)
    permutation = rng.permutation(len(sizes))
    item_batch = np.repeat(np.arange(len(sizes)), sizes)
    rank_of_batch = np.empty_like(permutation)
    rank_of_batch[permutation] = np.arange(len(sizes))
    items = np.argsort(rank_of_batch[item_batch], kind="stable")
    new_offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes[permutation], out=new_offsets[1:])
    return new_offsets, order[items]


def _windows(order: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, windows: np.ndarray,
             settings: BatchingSettings, seed: int, epoch: int) -> EpochPlan:
    """Window of every item: the batch's shortest (capped) length at a random offset when
    cropping, the whole utterance when padding."""
    if not settings.crop:
        return EpochPlan(order, np.zeros_like(order), lengths[order], offsets, epoch)
    sizes = np.diff(offsets)
    batch_window = np.minimum.reduceat(windows[order], offsets[:-1]) if len(sizes) else np.zeros(0, np.int64)
    item_window = np.repeat(batch_window, sizes)
    slack = lengths[order] - item_window
    if settings.random_crop:
        crop_rng = np.random.default_rng([int(seed), int(epoch), _CROP_STREAM])
        starts = np.floor(crop_rng.random(len(order)) * (slack + 1)).astype(np.int64)
    else:
        starts = np.zeros_like(order)
    return EpochPlan(order, starts, item_window, offsets, epoch)
