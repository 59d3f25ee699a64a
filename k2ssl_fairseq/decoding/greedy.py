"""Batched greedy (best-path) CTC decoding."""
from __future__ import annotations

from typing import List, Optional

import torch


def greedy_ctc(emissions: torch.Tensor, lengths: Optional[torch.Tensor], blank: int) -> List[List[int]]:
    """Best path per utterance: argmax per frame, merge repeats, drop blanks.

    Only the first ``lengths[b]`` frames of row ``b`` are read, so padded frames never emit.

    Args:
        emissions: ``(batch, frame, vocabulary)`` logits or (log-)probabilities.
        lengths: ``(batch,)`` valid frames per row; None when no row is padded.
        blank: index of the CTC blank.

    Returns:
        One list of unit indices per row.
    """
    if emissions.dim() != 3:
        raise ValueError(f"emissions must be (batch, frame, vocabulary), got shape {tuple(emissions.shape)}")
    batch, frames, _ = emissions.shape
    best = emissions.argmax(dim=-1)
    valid = torch.ones_like(best, dtype=torch.bool)
    if lengths is not None:
        valid = torch.arange(frames, device=best.device)[None, :] < lengths.to(best.device)[:, None]
    changed = torch.ones_like(valid)
    changed[:, 1:] = best[:, 1:] != best[:, :-1]
    keep = (valid & changed & (best != blank)).cpu()
    best = best.cpu()
    return [best[row][keep[row]].tolist() for row in range(batch)]
