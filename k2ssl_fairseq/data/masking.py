"""HuBERT span masking, vectorised and seeded.

Same distribution as fairseq's ``compute_mask_indices`` in its HuBERT setting (static span length,
spans may overlap, span starts drawn without replacement, ``min_masks`` spans at least, and with
``require_same_masks`` every row cut down to the batch's smallest masked count), but computed with
array operations from an explicit generator instead of a Python loop over fresh OS entropy. Used
by DataLoader workers and, when a batch carries no mask, by the models as their fallback.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch


def mask_rng(seed: int, epoch: int, batch_index: int) -> np.random.Generator:
    """Generator for one batch's masks; the three numbers are hashed together, never added."""
    return np.random.default_rng([int(seed), int(epoch), int(batch_index)])


def torch_seeded_rng() -> np.random.Generator:
    """Generator drawn from torch's global RNG, which fairseq reseeds from (seed, update)."""
    return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))


def compute_span_mask(
    lengths: np.ndarray,
    num_frames: int,
    mask_prob: float,
    mask_length: int,
    rng: np.random.Generator,
    min_masks: int = 2,
    require_same_masks: bool = True,
) -> np.ndarray:
    """Draw HuBERT-style span masks.

    Args:
        lengths: valid frames per row, shape ``(batch,)``; frames at or past a row's length are
            padding and never masked.
        num_frames: padded frame count ``T`` of the batch.
        mask_prob: probability of a frame being a span start, times ``mask_length``; the expected
            masked fraction is about ``1 - exp(-mask_prob)``.
        mask_length: span length in frames.
        rng: generator; the same generator state gives the same masks.
        min_masks: minimum number of spans per row.
        require_same_masks: cut every row down to the smallest masked count of the batch (what
            HuBERT's criterion needs to stack masked frames per row).

    Returns:
        Boolean array ``(batch, num_frames)``, True where a frame is masked.
    """
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    batch = lengths.shape[0]
    if batch == 0 or num_frames == 0 or mask_prob <= 0:
        return np.zeros((batch, num_frames), dtype=bool)
    if np.any(lengths > num_frames):
        raise ValueError(f"a row length {lengths.max()} exceeds num_frames={num_frames}")

    num_spans = (mask_prob * lengths / float(mask_length) + rng.random(batch)).astype(np.int64)
    num_spans = np.maximum(num_spans, min_masks)
    # Span starts come from [0, length - mask_length); short rows shrink the span instead, as
    # fairseq does, so that at least one frame stays unmasked.
    span = np.full(batch, mask_length, dtype=np.int64)
    too_many = lengths - span <= num_spans
    span[too_many] = np.maximum(lengths[too_many] - num_spans[too_many] - 1, 0)
    start_range = lengths - span
    num_spans = np.minimum(num_spans, np.maximum(start_range, 0))

    # Sampling without replacement per row: the k smallest random keys among the allowed starts.
    keys = rng.random((batch, num_frames))
    keys[np.arange(num_frames)[None, :] >= start_range[:, None]] = np.inf
    order = np.argsort(keys, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(num_frames)[None, :].repeat(batch, 0), axis=1)
    starts = rank < num_spans[:, None]

    # A frame is masked if a span of its row started within the previous `span` frames.
    mask = np.zeros_like(starts)
    for offset in range(int(span.max(initial=0))):
        mask[:, offset:] |= starts[:, : num_frames - offset] & (offset < span)[:, None]
    mask &= np.arange(num_frames)[None, :] < lengths[:, None]

    if require_same_masks and batch > 1:
        per_row = mask.sum(1)
        target = per_row.min()
        if np.any(per_row > target):
            keep_keys = rng.random((batch, num_frames))
            keep_keys[~mask] = np.inf
            order = np.argsort(keep_keys, axis=1, kind="stable")
            rank = np.empty_like(order)
            np.put_along_axis(rank, order, np.arange(num_frames)[None, :].repeat(batch, 0), axis=1)
            mask &= rank < target
    return mask


def span_mask_tensor(padding_mask: Optional[torch.Tensor], batch: int, num_frames: int,
                     mask_prob: float, mask_length: int, min_masks: int = 2,
                     rng: Optional[np.random.Generator] = None) -> torch.Tensor:
    """Model-side fallback: masks for a batch given its frame-level padding mask (True = pad)."""
    if padding_mask is None:
        lengths = np.full(batch, num_frames, dtype=np.int64)
    else:
        lengths = (~padding_mask).sum(1).cpu().numpy()
    mask = compute_span_mask(lengths, num_frames, mask_prob, mask_length,
                             rng if rng is not None else torch_seeded_rng(), min_masks=min_masks)
    device = padding_mask.device if padding_mask is not None else "cpu"
    return torch.from_numpy(mask).to(device)
