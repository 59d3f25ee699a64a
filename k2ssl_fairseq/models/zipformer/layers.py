"""Zipformer2 encoder layer and its feed-forward, convolution and bypass modules.

All tensors are ``(frame, batch, channel)``. Padded frames (``padding_mask`` True) are never
attended to and are zeroed before every depthwise convolution, so valid frames do not depend on
what the batch is padded with.

A training-mode pass of a layer draws nothing itself: its random numbers (``LayerDraws``) are drawn
before it runs, so the pass is the same code whether it runs eagerly or compiled, and given the
same draws it gives the same numbers either way.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activations import ActivationDropoutLinear
from .attention import NonlinAttention, RelPositionAttentionWeights, SelfAttention
from .norms import BiasNorm
from .regularizers import Balancer, Whiten, limit_param_value, whitening_schedule
from .schedules import Draw, FloatLike, ScheduledFloat, current, scheduled


class LayerDraws(NamedTuple):
    """The random numbers of one training-mode pass of a :class:`Zipformer2EncoderLayer`, U[0, 1).

    Attributes:
        decisions: one draw per yes/no decision (which regularisers act, whether positional scores
            are left out): a list of floats (eager: decided on the host, no device op) or a tensor
            (compiled: decided on the device), ``Zipformer2EncoderLayer.NUM_DECISIONS`` long.
        sequences: ``(NUM_SEQUENCE_SKIPS, batch, 1)`` draws for the per-sequence module and layer skips.
        dropout: ``(1, batch, channels)`` draws for the three feed-forward dropout masks together.
    """

    decisions: Union[List[float], Tensor]
    sequences: Tensor
    dropout: Tensor


def sequence_keep_mask(drop_rate: Union[float, Tensor], draws: Tensor) -> Optional[Tensor]:
    """Per-sequence 0/1 factor ``(batch, 1)`` that drops whole sequences with ``drop_rate``: a
    sequence is kept when its draw is ``> drop_rate``, as in k2SSL. None when a host rate is 0."""
    if isinstance(drop_rate, float) and drop_rate == 0.0:
        return None
    return (draws > drop_rate).to(draws.dtype)


def _apply_keep(x: Tensor, keep: Optional[Tensor]) -> Tensor:
    return x if keep is None else x * keep


class FeedforwardModule(nn.Module):
    """``Linear -> SwooshL -> dropout (mask shared over time) -> Linear``.

    Args:
        embed_dim: input and output channels.
        feedforward_dim: hidden channels.
        dropout: hidden dropout rate (float or schedule).
    """

    def __init__(self, embed_dim: int, feedforward_dim: int, dropout: FloatLike) -> None:
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, feedforward_dim)
        self.hidden_balancer = Balancer(
            feedforward_dim, channel_dim=-1, min_positive=0.3, max_positive=1.0, min_abs=0.75, max_abs=5.0
        )
        self.out_proj = ActivationDropoutLinear(
            feedforward_dim, embed_dim, "swoosh_l", dropout=dropout, dropout_shared_dim=0, initial_scale=0.1
        )
        self.out_whiten = Whiten(
            num_groups=1, whitening_limit=whitening_schedule(7.5), prob=(0.025, 0.25), grad_scale=0.01
        )

    #: Draws of one pass: the hidden balancer's and the output whitener's.
    NUM_DECISIONS = 2

    def forward(self, x: Tensor, draws: Sequence[Optional[Draw]] = (None, None),
                dropout_draws: Optional[Tensor] = None) -> Tensor:
        hidden = self.hidden_balancer(self.in_proj(x), draws[0])
        return self.out_whiten(self.out_proj(hidden, dropout_draws), draws[1])


class ConvolutionModule(nn.Module):
    """``Linear -> GLU -> depthwise Conv1d -> SwooshR -> Linear`` over time.

    Args:
        channels: input, hidden and output channels.
        kernel_size: odd depthwise kernel size ("same" padding).
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"cnn_module_kernel must be odd, got {kernel_size}")
        self.channels = channels
        self.in_proj = nn.Linear(channels, 2 * channels)
        self.balancer1 = Balancer(
            channels,
            channel_dim=-1,
            min_positive=ScheduledFloat((0.0, 0.05), (8000.0, 0.025)),
            max_positive=1.0,
            min_abs=1.5,
            max_abs=ScheduledFloat((0.0, 5.0), (8000.0, 10.0), default=1.0),
        )
        self.depthwise_conv = nn.Conv1d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels
        )
        self.balancer2 = Balancer(
            channels,
            channel_dim=1,
            min_positive=ScheduledFloat((0.0, 0.1), (8000.0, 0.05)),
            max_positive=1.0,
            min_abs=ScheduledFloat((0.0, 0.2), (20000.0, 0.5)),
            max_abs=10.0,
        )
        self.whiten = Whiten(
            num_groups=1, whitening_limit=whitening_schedule(7.5), prob=(0.025, 0.25), grad_scale=0.01
        )
        self.out_proj = ActivationDropoutLinear(channels, channels, "swoosh_r", initial_scale=0.05)

    #: Draws of one pass: the two balancers' and the whitener's.
    NUM_DECISIONS = 3

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None,
                draws: Sequence[Optional[Draw]] = (None, None, None)) -> Tensor:
        """Args: x: ``(frame, batch, channels)``; padding_mask: ``(batch, frame)`` or None;
        draws: this pass's ``NUM_DECISIONS`` draws (None: the regularisers draw their own).

        Returns: ``(frame, batch, channels)``.
        """
        projected = self.in_proj(x)
        gate_input = projected[..., self.channels :]
        balanced = self.balancer1(gate_input, draws[0])
        if balanced is gate_input:
            gated = F.glu(projected, dim=-1)  # fused; stores only its input
        else:
            gated = projected[..., : self.channels] * torch.sigmoid(balanced)
        gated = gated.permute(1, 2, 0)  # (batch, channels, frame)
        if padding_mask is not None:
            gated = gated.masked_fill(padding_mask.unsqueeze(1), 0.0)
        if torch.compiler.is_compiling():
            convolved = depthwise_conv_as_shifts(gated, self.depthwise_conv)
        else:
            convolved = self.depthwise_conv(gated)
        convolved = self.balancer2(convolved, draws[1])
        return self.out_proj(self.whiten(convolved.permute(2, 0, 1), draws[2]))


def depthwise_conv_as_shifts(x: Tensor, conv: nn.Conv1d) -> Tensor:
    """``conv(x)`` for a depthwise ``conv`` ("same" padding, stride 1), written as a sum of shifted
    products: what compiled code runs. Inductor lowers a convolution's backward with the frame
    count fixed (torch 2.14), so every new length recompiled the layer; this form fuses into a
    few kernels and keeps the frame count symbolic. Equal to the convolution up to summation order.

    Args: x: ``(batch, channels, frame)``.
    """
    kernel = conv.kernel_size[0]
    frames = x.shape[-1]
    padded = F.pad(x, (kernel // 2, kernel // 2))
    weight = conv.weight[:, 0, :].unsqueeze(-1)  # (channels, kernel, 1)
    out = padded[..., :frames] * weight[:, 0]
    for k in range(1, kernel):
        out = out + padded[..., k : k + frames] * weight[:, k]
    return out if conv.bias is None else out + conv.bias.unsqueeze(-1)


class BypassModule(nn.Module):
    """Learned per-channel interpolation ``orig + (x - orig) * bypass_scale``, with per-sequence
    layer skipping (scale 0) in training.

    In training ``bypass_scale`` is kept in ``[scale_min, scale_max]`` through its gradient
    only (forward values are never clamped, as in k2SSL).

    Args:
        embed_dim: channels.
        skip_rate: training-time probability of skipping the module for a sequence.
        scale_min: lower limit of the scale (k2SSL: 0.9 -> 0.2 over 20000 batches).
        scale_max: upper limit of the scale.
    """

    def __init__(
        self,
        embed_dim: int,
        skip_rate: FloatLike = 0.0,
        scale_min: FloatLike = ScheduledFloat((0.0, 0.9), (20000.0, 0.2), default=0.0),
        scale_max: FloatLike = 1.0,
    ) -> None:
        super().__init__()
        self.bypass_scale = nn.Parameter(torch.full((embed_dim,), 0.5))
        self.skip_rate = scheduled(skip_rate)
        self.scale_min = scheduled(scale_min)
        self.scale_max = scheduled(scale_max)

    def forward(self, orig: Tensor, x: Tensor, limit_draw: Optional[Draw] = None,
                skip_draws: Optional[Tensor] = None) -> Tensor:
        """Args: orig, x: ``(frame, batch, channel)``; limit_draw: the draw for ``limit_param_value``;
        skip_draws: ``(batch, 1)`` draws for the sequence skips (None: drawn here when it can skip).
        Returns: same shape."""
        scale = self.bypass_scale
        if self.training:
            scale = limit_param_value(scale, current(self.scale_min), current(self.scale_max), limit_draw)
            rate = current(self.skip_rate)
            if not (isinstance(rate, float) and rate == 0.0):
                draws = torch.rand(x.shape[1], 1, device=x.device) if skip_draws is None else skip_draws
                scale = scale * sequence_keep_mask(rate, draws)
        dtype = torch.promote_types(orig.dtype, x.dtype)  # under autocast one may be fp32, the other not
        return torch.lerp(orig.to(dtype), x.to(dtype), scale.to(dtype))


class Zipformer2EncoderLayer(nn.Module):
    """One Zipformer2 layer.

    Order: attention weights (once) -> FF1 -> NonlinAttention -> SelfAttention1 -> Conv1 -> FF2
    -> mid bypass -> SelfAttention2 -> Conv2 -> FF3 -> BiasNorm -> bypass. In training, the
    attention modules, convolutions and FF2/FF3 are dropped per sequence with scheduled rates,
    and the whole layer is skipped per sequence with ``layer_skip_rate``.

    The parameter ``bypass_scale`` directly on the layer is never used: k2SSL creates it (marked
    for removal) and its checkpoints contain it, so it is kept for ``strict=True`` loading and
    exact parameter counts. k2SSL's "constant attention" branch is left out: in its SSL model it
    is gated on eval mode, where its rate is 0, so it never runs.

    Args:
        embed_dim: channels.
        pos_dim: size of the positional encodings.
        num_heads: attention heads.
        query_head_dim, pos_head_dim, value_head_dim: per-head sizes.
        feedforward_dim: FF2 hidden size (FF1 uses 3/4 of it, FF3 5/4).
        dropout: feed-forward hidden dropout (float or schedule).
        cnn_module_kernel: depthwise kernel size of both convolution modules.
        layer_skip_rate: training-time probability of skipping the whole layer for a sequence.
    """

    def __init__(
        self,
        embed_dim: int,
        pos_dim: int,
        num_heads: int,
        query_head_dim: int,
        pos_head_dim: int,
        value_head_dim: int,
        feedforward_dim: int,
        dropout: FloatLike,
        cnn_module_kernel: int,
        layer_skip_rate: FloatLike = 0.0,
    ) -> None:
        super().__init__()
        self.bypass = BypassModule(embed_dim, skip_rate=layer_skip_rate)
        self.bypass_mid = BypassModule(embed_dim)
        self.attention_skip_rate = ScheduledFloat((0.0, 0.2), (4000.0, 0.05), (16000.0, 0.0))
        self.conv_skip_rate = ScheduledFloat((0.0, 0.2), (4000.0, 0.05), (16000.0, 0.0))
        self.ff2_skip_rate = ScheduledFloat((0.0, 0.1), (4000.0, 0.01), (50000.0, 0.0))
        self.ff3_skip_rate = ScheduledFloat((0.0, 0.1), (4000.0, 0.01), (50000.0, 0.0))

        self.self_attn_weights = RelPositionAttentionWeights(
            embed_dim, pos_dim, num_heads, query_head_dim, pos_head_dim
        )
        self.self_attn1 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.self_attn2 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.feed_forward1 = FeedforwardModule(embed_dim, (feedforward_dim * 3) // 4, dropout)
        self.feed_forward2 = FeedforwardModule(embed_dim, feedforward_dim, dropout)
        self.feed_forward3 = FeedforwardModule(embed_dim, (feedforward_dim * 5) // 4, dropout)
        self.nonlin_attention = NonlinAttention(embed_dim, hidden_channels=3 * embed_dim // 4)
        self.conv_module1 = ConvolutionModule(embed_dim, cnn_module_kernel)
        self.conv_module2 = ConvolutionModule(embed_dim, cnn_module_kernel)
        self.bypass_scale = nn.Parameter(torch.full((embed_dim,), 0.5))  # unused, see docstring
        self.norm = BiasNorm(embed_dim)

        self.balancer1 = Balancer(
            embed_dim, channel_dim=-1, min_positive=0.45, max_positive=0.55, min_abs=0.2, max_abs=4.0
        )
        self.balancer_na = Balancer(
            embed_dim,
            channel_dim=-1,
            min_positive=0.3,
            max_positive=0.7,
            min_abs=ScheduledFloat((0.0, 0.004), (4000.0, 0.02)),
            prob=0.05,
        )
        self.balancer_ff2 = Balancer(
            embed_dim,
            channel_dim=-1,
            min_positive=0.3,
            max_positive=0.7,
            min_abs=ScheduledFloat((0.0, 0.0), (4000.0, 0.1)),
            max_abs=2.0,
            prob=0.05,
        )
        self.balancer_ff3 = Balancer(
            embed_dim,
            channel_dim=-1,
            min_positive=0.3,
            max_positive=0.7,
            min_abs=ScheduledFloat((0.0, 0.0), (4000.0, 0.2)),
            max_abs=4.0,
            prob=0.05,
        )
        self.whiten = Whiten(
            num_groups=1,
            whitening_limit=whitening_schedule(4.0, ratio=3.0),
            prob=(0.025, 0.25),
            grad_scale=0.01,
        )
        self.balancer2 = Balancer(
            embed_dim, channel_dim=-1, min_positive=0.45, max_positive=0.55, min_abs=0.1, max_abs=4.0
        )

    #: Decision draws of one pass, in the order ``forward`` consumes them: the attention weights'
    #: 4, three feed-forward modules' 2 each, the non-linear attention's 3, the two self-attentions'
    #: 1 each, the two convolution modules' 3 each, the two bypasses' and the norm's parameter
    #: limits, five balancers and the output whitener.
    NUM_DECISIONS = 30
    #: Per-sequence skip draws of one pass: attention, two convolutions, FF2, FF3, the whole layer.
    NUM_SEQUENCE_SKIPS = 6

    def _dropout_widths(self) -> List[int]:
        """Channels of the three feed-forward dropout masks (their hidden sizes)."""
        return [ff.out_proj.weight.shape[1] for ff in (self.feed_forward1, self.feed_forward2, self.feed_forward3)]

    #: Whether training-mode calls run compiled (set by ``models.compiling.LayerCompiler.attach``).
    compiled = False

    def draw(self, x: Tensor, decisions_on_device: Optional[bool] = None) -> LayerDraws:
        """Draw the random numbers of one training-mode pass over ``x`` (``(frame, batch, channel)``).

        Decision draws come from the host generator: read on the host for an eager pass, copied to
        the device for a compiled one (``decisions_on_device``, by default whether this layer is
        ``compiled``); the per-sequence and dropout draws come from ``x``'s device's generator.
        """
        decisions = torch.rand(self.NUM_DECISIONS)
        on_device = self.compiled if decisions_on_device is None else decisions_on_device
        decisions = decisions.to(x.device, non_blocking=True) if on_device else decisions.tolist()
        batch = x.shape[1]
        return LayerDraws(decisions, torch.rand(self.NUM_SEQUENCE_SKIPS, batch, 1, device=x.device),
                          torch.rand(1, batch, sum(self._dropout_widths()), device=x.device))

    def forward(self, x: Tensor, pos_emb: Tensor, padding_mask: Optional[Tensor] = None,
                draws: Optional[LayerDraws] = None) -> Tensor:
        """Args:
            x: ``(frame, batch, embed_dim)``.
            pos_emb: ``(2 * frame - 1, pos_dim)``.
            padding_mask: ``(batch, frame)`` bool, True for padding, or None.
            draws: this pass's random numbers in training mode (None: drawn here with ``draw``).

        Returns: ``(frame, batch, embed_dim)``.
        """
        if self.training and draws is None:
            draws = self.draw(x)
        d = draws.decisions if self.training else _NO_DRAWS
        attention_keep, conv1_keep, conv2_keep, ff2_keep, ff3_keep = self._module_keeps(draws)
        dropout1, dropout2, dropout3 = self._dropout_draws(draws)
        orig = x
        attn_weights = self.self_attn_weights(x, pos_emb, padding_mask, d[0:4])
        x = x + self.feed_forward1(x, d[4:6], dropout1)
        nonlin = self.nonlin_attention(x, attn_weights[0], d[6:9])
        x = x + _apply_keep(self.balancer_na(nonlin, d[9]), attention_keep)
        x = x + _apply_keep(self.self_attn1(x, attn_weights, d[10]), attention_keep)
        x = x + _apply_keep(self.conv_module1(x, padding_mask, d[11:14]), conv1_keep)
        x = x + _apply_keep(self.balancer_ff2(self.feed_forward2(x, d[14:16], dropout2), d[16]), ff2_keep)
        x = self.bypass_mid(orig, x, d[17])
        x = x + _apply_keep(self.self_attn2(x, attn_weights, d[18]), attention_keep)
        x = x + _apply_keep(self.conv_module2(x, padding_mask, d[19:22]), conv2_keep)
        x = x + _apply_keep(self.balancer_ff3(self.feed_forward3(x, d[22:24], dropout3), d[24]), ff3_keep)
        x = self.norm(self.balancer1(x, d[25]), d[26])
        x = self.bypass(orig, x, d[27], None if draws is None else draws.sequences[5])
        return self.whiten(self.balancer2(x, d[28]), d[29])

    def _module_keeps(self, draws: Optional[LayerDraws]) -> List[Optional[Tensor]]:
        """Per-sequence keep factors of the attention modules (one for all three), the two
        convolutions, FF2 and FF3 (the whole layer's skip is the bypass's)."""
        rates = (self.attention_skip_rate, self.conv_skip_rate, self.conv_skip_rate, self.ff2_skip_rate,
                 self.ff3_skip_rate)
        if draws is None:
            return [None] * len(rates)
        return [sequence_keep_mask(current(rate), draws.sequences[i]) for i, rate in enumerate(rates)]

    def _dropout_draws(self, draws: Optional[LayerDraws]) -> tuple:
        if draws is None:
            return None, None, None
        return tuple(draws.dropout.split(self._dropout_widths(), dim=-1))


#: Decisions of a pass that draws nothing (eval mode): every unit is off there.
_NO_DRAWS: List[None] = [None] * Zipformer2EncoderLayer.NUM_DECISIONS
