"""Compact relative positional encoding of Zipformer2.

A relative offset x (key frame minus query frame) is squashed by a logarithm beyond
c = sqrt(pos_dim), ``x_c = c * sign(x) * (log(|x| + c) - log c)``, mapped into (-pi/2, pi/2) by
``theta = atan(2 pi x_c / pos_dim)``, and encoded by a Fourier series of theta: channel 2k is
cos((k+1) theta), channel 2k+1 is sin((k+1) theta), and the last channel is a constant 1 (a bias).
Small offsets stay distinguishable while large ones share nearly the same code.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def relative_position_table(num_frames: int, pos_dim: int) -> Tensor:
    """Encodings of every offset from -(num_frames - 1) to num_frames - 1.

    Returns:
        ``(2 * num_frames - 1, pos_dim)`` float32; row n encodes offset ``n - (num_frames - 1)``.
    """
    offsets = torch.arange(-(num_frames - 1), num_frames, dtype=torch.float32).unsqueeze(1)
    compression = pos_dim**0.5
    compressed = (
        compression * offsets.sign() * ((offsets.abs() + compression).log() - math.log(compression))
    )
    theta = (compressed / (pos_dim / (2.0 * math.pi))).atan()
    angles = theta * torch.arange(1, pos_dim // 2 + 1, dtype=torch.float32)
    table = torch.stack((angles.cos(), angles.sin()), dim=-1).reshape(offsets.shape[0], pos_dim)
    table[:, -1] = 1.0
    return table


class CompactRelPositionalEncoding(nn.Module):
    """Relative positional encodings for a sequence length, with dropout in training.

    The table is cached for the longest length seen and sliced; every row depends only on its
    offset, so slicing gives exactly the encodings computed for the shorter length.

    Args:
        pos_dim: encoding size (even).
        dropout: dropout rate applied to the encodings in training mode.
    """

    def __init__(self, pos_dim: int, dropout: float = 0.15) -> None:
        super().__init__()
        if pos_dim % 2:
            raise ValueError(f"pos_dim must be even, got {pos_dim}")
        self.pos_dim = pos_dim
        self.dropout = dropout
        self._table: Optional[Tensor] = None

    def forward(self, num_frames: int, like: Tensor) -> Tensor:
        """Encodings for a sequence of ``num_frames`` frames.

        Args:
            num_frames: sequence length T.
            like: a tensor whose dtype and device the result takes.

        Returns:
            ``(2T - 1, pos_dim)``; row n encodes relative offset ``n - (T - 1)`` (key minus query).
        """
        table = self._table
        longest = 0 if table is None else (table.shape[0] + 1) // 2
        if num_frames > longest or table.device != like.device or table.dtype != like.dtype:
            longest = max(num_frames, longest)
            table = relative_position_table(longest, self.pos_dim).to(device=like.device, dtype=like.dtype)
            self._table = table
        table = table[longest - num_frames : longest + num_frames - 1]
        return F.dropout(table, p=self.dropout, training=self.training)
