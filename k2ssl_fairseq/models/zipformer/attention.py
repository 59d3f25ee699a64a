"""Attention of Zipformer2: weights computed once per layer, consumed three times.

``RelPositionAttentionWeights`` turns a layer input into per-head attention weights (content
scores plus relative-position scores, no 1/sqrt(d) factor: the initial weight scale plays that
role). The layer then reuses them in ``NonlinAttention`` (first head only) and in two
``SelfAttention`` modules, each with its own values.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .linear import scaled_linear
from .regularizers import Balancer, Whiten, penalize_abs_values_gt, whitening_schedule
from .schedules import Draw, FloatLike, ScheduledFloat, current, own_draw, scheduled

# Score given to padded keys: exp(-1000 - max) is exactly 0 in float32 and float16.
_MASKED_SCORE = -1000.0


def relative_to_absolute(scores: Tensor) -> Tensor:
    """Turn scores indexed by relative offset into scores indexed by key frame.

    Args:
        scores: ``(head, batch, query, 2 * query - 1)``, contiguous; last axis n is offset
            ``n - (query - 1)``.

    Returns:
        A view ``(head, batch, query, key)`` with ``out[..., i, j] = scores[..., i, (query - 1) - i +
        j]``, i.e. the score for offset ``j - i``: in the flattened rows that is element
        ``(query - 1) + i (2 query - 2) + j``, so the view skips ``query - 1`` elements and reads rows
        of ``2 query - 2`` (views only: no strides read, so it also traces under ``torch.compile``).
    """
    heads, batch, frames, width = scores.shape
    if frames == 1:
        return scores
    flat = scores.reshape(heads, batch, frames * width)[..., frames - 1 : frames - 1 + frames * (width - 1)]
    return flat.reshape(heads, batch, frames, width - 1)[..., :frames]


class RelPositionAttentionWeights(nn.Module):
    """Multi-head attention weights with relative positional scores.

    Args:
        embed_dim: input channels.
        pos_dim: size of the positional encodings.
        num_heads: number of heads.
        query_head_dim: query (= key) size per head.
        pos_head_dim: positional-query size per head.
        pos_emb_skip_rate: in training, probability of leaving out the positional scores.
    """

    def __init__(
        self,
        embed_dim: int,
        pos_dim: int,
        num_heads: int,
        query_head_dim: int,
        pos_head_dim: int,
        pos_emb_skip_rate: FloatLike = ScheduledFloat((0.0, 0.5), (4000.0, 0.0)),
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query_head_dim = query_head_dim
        self.pos_head_dim = pos_head_dim
        self.pos_emb_skip_rate = scheduled(pos_emb_skip_rate)
        key_dim = query_head_dim * num_heads
        self.in_proj = scaled_linear(
            embed_dim,
            (2 * query_head_dim + pos_head_dim) * num_heads,
            initial_scale=query_head_dim**-0.25,
        )
        self.whiten_keys = Whiten(
            num_groups=num_heads,
            whitening_limit=whitening_schedule(3.0),
            prob=(0.025, 0.25),
            grad_scale=0.025,
        )
        # Scores ignore a constant added to the keys; this keeps rounding from growing one.
        self.balance_keys = Balancer(
            key_dim,
            channel_dim=-1,
            min_positive=0.4,
            max_positive=0.6,
            min_abs=0.0,
            max_abs=100.0,
            prob=0.025,
        )
        self.linear_pos = scaled_linear(pos_dim, num_heads * pos_head_dim, bias=False, initial_scale=0.05)

    #: Draws of one pass: the key balancer's and whitener's, leaving out the positional scores
    #: (when ``>= pos_emb_skip_rate`` they are kept), the score penalty (acts when ``< 0.1``).
    NUM_DECISIONS = 4

    def forward(self, x: Tensor, pos_emb: Tensor, key_padding_mask: Optional[Tensor] = None,
                draws: Sequence[Optional[Draw]] = (None, None, None, None)) -> Tensor:
        """Compute the attention weights.

        Args:
            x: ``(frame, batch, embed_dim)``.
            pos_emb: ``(2 * frame - 1, pos_dim)`` from ``CompactRelPositionalEncoding``.
            key_padding_mask: ``(batch, frame)`` bool, True for padded frames (never attended
                to), or None.
            draws: this pass's ``NUM_DECISIONS`` draws in training mode (None: drawn here).

        Returns:
            ``(head, batch, query_frame, key_frame)``; each row sums to 1.
        """
        frames, batch, _ = x.shape
        heads, qdim, pdim = self.num_heads, self.query_head_dim, self.pos_head_dim
        projected = self.in_proj(x)
        query = projected[..., : heads * qdim]
        key = projected[..., heads * qdim : 2 * heads * qdim]
        key = self.whiten_keys(self.balance_keys(key, draws[0]), draws[1])
        pos_query = projected[..., 2 * heads * qdim :]

        query = query.reshape(frames, batch, heads, qdim).permute(2, 1, 0, 3)
        key = key.reshape(frames, batch, heads, qdim).permute(2, 1, 3, 0)
        scores = torch.matmul(query, key)

        use_pos = True
        if self.training:
            use_pos = own_draw(draws[2]) >= current(self.pos_emb_skip_rate)
        if use_pos is not False:
            pos_keys = self.linear_pos(pos_emb).reshape(2 * frames - 1, heads, pdim).permute(1, 2, 0)
            pos_query = pos_query.reshape(frames, batch, heads, pdim).permute(2, 1, 0, 3)
            pos_scores = relative_to_absolute(torch.matmul(pos_query, pos_keys.unsqueeze(1)).contiguous())
            scores = scores + (pos_scores if use_pos is True else torch.where(use_pos, pos_scores, 0.0))

        if self.training:
            # Fail-safe against implausibly large scores (k2SSL: limit 25, penalty 1e-4, 10 % of passes).
            scores = penalize_abs_values_gt(scores, limit=25.0, penalty=1.0e-4, fire=own_draw(draws[3]) < 0.1)

        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[None, :, None, :], _MASKED_SCORE)
        return scores.softmax(dim=-1)


class SelfAttention(nn.Module):
    """Attention with given weights: project values per head, average, project back.

    Args:
        embed_dim: input and output channels.
        num_heads: heads of the weights it will receive.
        value_head_dim: value size per head.
    """

    def __init__(self, embed_dim: int, num_heads: int, value_head_dim: int) -> None:
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, num_heads * value_head_dim)
        self.out_proj = scaled_linear(num_heads * value_head_dim, embed_dim, initial_scale=0.05)
        self.whiten = Whiten(
            num_groups=1,
            whitening_limit=whitening_schedule(7.5, ratio=3.0),
            prob=(0.025, 0.25),
            grad_scale=0.01,
        )

    def forward(self, x: Tensor, attn_weights: Tensor, draw: Optional[Draw] = None) -> Tensor:
        """Args: x: ``(frame, batch, embed_dim)``; attn_weights: ``(head, batch, frame, frame)``;
        draw: the output whitener's draw.

        Returns: ``(frame, batch, embed_dim)``.
        """
        frames, batch, _ = x.shape
        heads = attn_weights.shape[0]
        values = self.in_proj(x).reshape(frames, batch, heads, -1).permute(2, 1, 0, 3)
        attended = torch.matmul(attn_weights, values)
        attended = attended.permute(2, 1, 0, 3).reshape(frames, batch, -1)
        return self.whiten(self.out_proj(attended), draw)


class NonlinAttention(nn.Module):
    """Gated attention over one head's weights: ``out_proj(A @ (x * tanh(s)) * y)``.

    Like a convolution module whose convolution is replaced by the attention weights of the
    layer's first head, shared by all channels.

    Args:
        channels: input and output channels.
        hidden_channels: width of s, x and y (k2SSL: 3/4 of ``channels``).
    """

    def __init__(self, channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.in_proj = nn.Linear(channels, 3 * hidden_channels)
        self.balancer = Balancer(
            hidden_channels,
            channel_dim=-1,
            min_positive=ScheduledFloat((0.0, 0.25), (20000.0, 0.05)),
            max_positive=ScheduledFloat((0.0, 0.75), (20000.0, 0.95)),
            min_abs=0.5,
            max_abs=5.0,
        )
        self.out_proj = scaled_linear(hidden_channels, channels, initial_scale=0.05)
        self.whiten1 = Whiten(
            num_groups=1, whitening_limit=whitening_schedule(5.0), prob=(0.025, 0.25), grad_scale=0.01
        )
        self.whiten2 = Whiten(
            num_groups=1,
            whitening_limit=whitening_schedule(5.0, ratio=3.0),
            prob=(0.025, 0.25),
            grad_scale=0.01,
        )

    #: Draws of one pass: the gate balancer's and the two whiteners'.
    NUM_DECISIONS = 3

    def forward(self, x: Tensor, attn_weights: Tensor, draws: Sequence[Optional[Draw]] = (None, None, None)) -> Tensor:
        """Args: x: ``(frame, batch, channels)``; attn_weights: ``(batch, frame, frame)``, one head;
        draws: this pass's ``NUM_DECISIONS`` draws.

        Returns: ``(frame, batch, channels)``.
        """
        gate, values, post_gate = self.in_proj(x).chunk(3, dim=-1)
        values = self.whiten1(values, draws[1]) * torch.tanh(self.balancer(gate, draws[0]))
        attended = torch.bmm(attn_weights, values.transpose(0, 1)).transpose(0, 1)
        return self.whiten2(self.out_proj(attended * post_gate), draws[2])
