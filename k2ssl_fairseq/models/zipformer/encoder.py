"""The Zipformer2 encoder as k2SSL uses it for self-supervised pre-training.

A chain of stacks, each running at its own frame rate (downsampling factors 1, 2, 4, 8, 4, 2 in
k2SSL) and returning to the input rate, so every stack output is at the input frame rate; the
encoder output (``max(encoder_dim)`` channels) takes each channel range from the latest stack that
has it. Unlike the original, padding is handled exactly: an utterance gives the same output alone
and inside a padded batch (attention ignores padded keys, convolutions see zeros there, and
downsampling never reads padded frames).
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import BypassModule, Zipformer2EncoderLayer
from .positional import CompactRelPositionalEncoding
from .schedules import FloatLike, ScheduledFloat, scheduled

FeatureMask = Union[Tensor, float]


def _per_stack(values: Union[int, Sequence[int]], num_stacks: int, name: str) -> Tuple[int, ...]:
    """A per-stack setting as a tuple of ``num_stacks`` ints (a single int, or a one-entry list, is
    repeated, as icefall's ``_to_tuple`` does)."""
    if isinstance(values, int):
        return (values,) * num_stacks
    values = tuple(int(v) for v in values)
    if len(values) == 1:
        return values * num_stacks
    if len(values) != num_stacks:
        raise ValueError(
            f"{name} has {len(values)} entries, but downsampling_factor defines {num_stacks} stacks: "
            f"{list(values)}"
        )
    return values


def convert_num_channels(x: Tensor, num_channels: int) -> Tensor:
    """Truncate the last axis to ``num_channels``, or zero-pad it up to that size."""
    if num_channels <= x.shape[-1]:
        return x[..., :num_channels]
    return F.pad(x, (0, num_channels - x.shape[-1]))


class Zipformer2Stack(nn.Module):
    """Layers at one frame rate, sharing one positional encoding, with the feature mask applied
    to the input and after every layer.

    Args:
        layers: the encoder layers, in order.
        pos_dim: size of the positional encodings.
    """

    def __init__(self, layers: List[Zipformer2EncoderLayer], pos_dim: int) -> None:
        super().__init__()
        self.encoder_pos = CompactRelPositionalEncoding(pos_dim, dropout=0.15)
        self.layers = nn.ModuleList(layers)

    def forward(
        self, x: Tensor, padding_mask: Optional[Tensor] = None, feature_mask: FeatureMask = 1.0
    ) -> Tensor:
        """Args:
            x: ``(frame, batch, channel)``.
            padding_mask: ``(batch, frame)`` bool, True for padding, or None.
            feature_mask: ``(1, batch, channel)`` 0/1 factors, or 1.0.

        Returns: ``(frame, batch, channel)``.
        """
        pos_emb = self.encoder_pos(x.shape[0], x)
        x = x * feature_mask
        for layer in self.layers:
            draws = layer.draw(x) if self.training else None
            x = layer(x, pos_emb, padding_mask, draws) * feature_mask
        return x


class SimpleDownsample(nn.Module):
    """Downsample by a weighted sum of each group of ``factor`` frames, weights
    ``softmax(bias)``.

    A group that runs past a sequence's end is completed with copies of that sequence's last
    valid frame (k2SSL completes the batch's last group this way); so padded frames are never
    read, and a group's weights still sum to one.

    Args:
        factor: downsampling factor.
    """

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.bias = nn.Parameter(torch.zeros(factor))

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """Args:
            x: ``(frame, batch, channel)``.
            lengths: ``(batch,)`` valid frames per sequence, or None (no padding).

        Returns: ``(ceil(frame / factor), batch, channel)``.
        """
        frames, batch, channels = x.shape
        groups = -(-frames // self.factor)
        extra = groups * self.factor - frames
        if extra:
            x = torch.cat((x, x[-1:].expand(extra, batch, channels)), dim=0)
        if lengths is not None:  # a sequence shorter than the batch: its group completed with its own last frame
            last_valid = x[(lengths - 1).clamp(min=0), torch.arange(batch, device=x.device)]
            valid = torch.arange(x.shape[0], device=x.device).unsqueeze(1) < lengths.unsqueeze(0)
            x = torch.where(valid.unsqueeze(-1), x, last_valid.unsqueeze(0))
        weights = self.bias.softmax(dim=0).to(x.dtype).reshape(1, self.factor, 1, 1)
        return (x.reshape(groups, self.factor, batch, channels) * weights).sum(dim=1)


def upsample(x: Tensor, factor: int, num_frames: int) -> Tensor:
    """Repeat every frame ``factor`` times and keep the first ``num_frames`` frames.

    Args: x: ``(frame, batch, channel)``. Returns: ``(num_frames, batch, channel)``.
    """
    frames, batch, channels = x.shape
    repeated = (
        x.unsqueeze(1).expand(frames, factor, batch, channels).reshape(frames * factor, batch, channels)
    )
    return repeated[:num_frames]


class DownsampledZipformer2Stack(nn.Module):
    """A stack run at ``1 / factor`` of the input frame rate: downsample, run the layers,
    upsample, and mix with the stack input through a learned bypass (``out_combiner``).

    Args:
        stack: the layers to run at the reduced rate.
        dim: channels.
        factor: downsampling factor.
    """

    def __init__(self, stack: Zipformer2Stack, dim: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.downsample = SimpleDownsample(factor)
        self.encoder = stack
        self.out_combiner = BypassModule(dim)

    def forward(
        self, x: Tensor, padding_mask: Optional[Tensor] = None, feature_mask: FeatureMask = 1.0
    ) -> Tensor:
        """Same contract as ``Zipformer2Stack.forward``; the output is at the input frame rate."""
        lengths = None if padding_mask is None else (~padding_mask).sum(dim=1)
        reduced_mask = None if padding_mask is None else padding_mask[:, :: self.factor].contiguous()
        reduced = self.encoder(self.downsample(x, lengths), reduced_mask, feature_mask)
        return self.out_combiner(x, upsample(reduced, self.factor, x.shape[0]))


class ZipformerOutput(NamedTuple):
    """What ``Zipformer2.forward`` returns.

    Attributes:
        output: ``(frame, batch, max(encoder_dim))`` encoder output.
        lengths: ``(batch,)`` int64 valid frames per sequence (the output keeps the input rate).
        stack_outputs: one ``(frame, batch, encoder_dim[i])`` tensor per stack, at the input
            frame rate (after upsampling and ``out_combiner`` for downsampled stacks).
    """

    output: Tensor
    lengths: Tensor
    stack_outputs: List[Tensor]


class Zipformer2(nn.Module):
    """Zipformer2 encoder of k2SSL's SSL model (no output downsampling).

    Every per-stack argument is a sequence with one entry per stack (a single int is repeated).
    Parameter names equal k2SSL's (``encoders.{i}.layers.{j}...`` for stacks at the input rate,
    ``encoders.{i}.encoder.layers.{j}...``, ``encoders.{i}.downsample.bias`` and
    ``encoders.{i}.out_combiner.bypass_scale`` for downsampled ones), so k2SSL checkpoints load with
    ``strict=True``. Two kinds of parameters are kept although nothing uses them, because k2SSL
    checkpoints contain them and parameter counts must match: each layer's own ``bypass_scale``
    (k2SSL's layers use ``bypass.bypass_scale`` and ``bypass_mid.bypass_scale``) and
    ``downsample_output.bias`` (k2SSL builds an output downsampler and never calls it).

    Training-time behaviour follows k2SSL and is driven by ``set_batch_count(encoder, n)``
    (``schedules.py``): scheduled dropout, per-sequence module and layer skipping, per-sequence
    feature masks (channels above ``encoder_unmasked_dim`` zeroed), gradient-only regularisers.
    In eval mode all of these are off and the forward pass is deterministic.

    Args:
        input_dim: channels of the input (k2SSL: ``encoder_dim[0]``; otherwise the input is
            truncated or zero-padded to ``encoder_dim[0]``).
        encoder_dim: channels per stack.
        num_encoder_layers: layers per stack.
        feedforward_dim: FF2 hidden size per stack (FF1 3/4 of it, FF3 5/4).
        encoder_unmasked_dim: channels per stack that feature masking never zeroes.
        num_heads: attention heads per stack.
        cnn_module_kernel: depthwise convolution kernel per stack (odd).
        downsampling_factor: frame-rate reduction per stack; defines the number of stacks.
        query_head_dim: query/key size per head, per stack.
        value_head_dim: value size per head, per stack.
        pos_head_dim: positional-query size per head, per stack.
        pos_dim: size of the relative positional encodings.
        dropout: feed-forward dropout; None means k2SSL's schedule 0.3 -> 0.1 over 20000 batches.
        warmup_batches: span over which the layer-skip rates fall from 0.5 to their final values,
            staggered by stack.
    """

    def __init__(
        self,
        input_dim: int,
        encoder_dim: Sequence[int],
        num_encoder_layers: Sequence[int],
        feedforward_dim: Sequence[int],
        encoder_unmasked_dim: Sequence[int],
        num_heads: Sequence[int],
        cnn_module_kernel: Sequence[int],
        downsampling_factor: Sequence[int],
        query_head_dim: Union[int, Sequence[int]],
        value_head_dim: Union[int, Sequence[int]],
        pos_head_dim: Union[int, Sequence[int]],
        pos_dim: int,
        dropout: Optional[FloatLike] = None,
        warmup_batches: float = 4000.0,
    ) -> None:
        super().__init__()
        self.downsampling_factor = _per_stack(
            downsampling_factor, len(downsampling_factor), "downsampling_factor"
        )
        num_stacks = len(self.downsampling_factor)
        self.input_dim = input_dim
        self.encoder_dim = _per_stack(encoder_dim, num_stacks, "encoder_dim")
        self.encoder_unmasked_dim = _per_stack(encoder_unmasked_dim, num_stacks, "encoder_unmasked_dim")
        num_encoder_layers = _per_stack(num_encoder_layers, num_stacks, "num_encoder_layers")
        feedforward_dim = _per_stack(feedforward_dim, num_stacks, "feedforward_dim")
        num_heads = _per_stack(num_heads, num_stacks, "num_heads")
        cnn_module_kernel = _per_stack(cnn_module_kernel, num_stacks, "cnn_module_kernel")
        query_head_dim = _per_stack(query_head_dim, num_stacks, "query_head_dim")
        value_head_dim = _per_stack(value_head_dim, num_stacks, "value_head_dim")
        pos_head_dim = _per_stack(pos_head_dim, num_stacks, "pos_head_dim")
        for i, (unmasked, dim) in enumerate(zip(self.encoder_unmasked_dim, self.encoder_dim)):
            if not 0 < unmasked <= dim:
                raise ValueError(
                    f"encoder_unmasked_dim[{i}]={unmasked} must be in 1..encoder_dim[{i}]={dim}"
                )
        if dropout is None:
            dropout = ScheduledFloat((0.0, 0.3), (20000.0, 0.1))

        stacks = []
        for i, factor in enumerate(self.downsampling_factor):
            # Stack i warms up (layer-skip rate falling) over its slice of warmup_batches.
            begin = warmup_batches * (i + 1) / (num_stacks + 1)
            step = warmup_batches / (num_stacks + 1) / num_encoder_layers[i]
            final_skip_rate = 0.035 * factor**0.5
            layers = [
                Zipformer2EncoderLayer(
                    embed_dim=self.encoder_dim[i],
                    pos_dim=pos_dim,
                    num_heads=num_heads[i],
                    query_head_dim=query_head_dim[i],
                    pos_head_dim=pos_head_dim[i],
                    value_head_dim=value_head_dim[i],
                    feedforward_dim=feedforward_dim[i],
                    dropout=scheduled(dropout),
                    cnn_module_kernel=cnn_module_kernel[i],
                    layer_skip_rate=ScheduledFloat(
                        (begin + j * step, 0.5), (begin + (j + 1) * step, final_skip_rate), default=0.0
                    ),
                )
                for j in range(num_encoder_layers[i])
            ]
            stack = Zipformer2Stack(layers, pos_dim)
            stacks.append(
                stack if factor == 1 else DownsampledZipformer2Stack(stack, self.encoder_dim[i], factor)
            )
        self.encoders = nn.ModuleList(stacks)
        self.downsample_output = SimpleDownsample(1)  # unused, see the class docstring

    def layers(self) -> List[Zipformer2EncoderLayer]:
        """Every encoder layer, stack by stack."""
        return [module for module in self.modules() if isinstance(module, Zipformer2EncoderLayer)]

    @property
    def output_dim(self) -> int:
        """Channels of the encoder output, ``max(encoder_dim)``."""
        return max(self.encoder_dim)

    def feature_masks(self, x: Tensor) -> List[FeatureMask]:
        """Per-stack feature masks for one training batch (all 1.0 in eval mode).

        With probability 0.125 a sequence loses every channel at or above
        ``encoder_unmasked_dim`` in every stack; otherwise, with probability 0.125, it loses the
        upper half of those channels. The draw is shared by all stacks.

        Args:
            x: encoder input ``(frame, batch, channel)`` (for batch size, dtype and device).

        Returns:
            One ``(1, batch, encoder_dim[i])`` tensor per stack, or ``1.0`` per stack.
        """
        if not self.training:
            return [1.0] * len(self.encoder_dim)
        batch = x.shape[1]
        keep_lower = (torch.rand(1, batch, 1, device=x.device) > 0.125).to(x.dtype)
        keep_upper = keep_lower * (torch.rand(1, batch, 1, device=x.device) > 0.125).to(x.dtype)
        masks = []
        for dim, unmasked in zip(self.encoder_dim, self.encoder_unmasked_dim):
            middle = unmasked + (dim - unmasked) // 2
            masks.append(
                torch.cat(
                    (
                        x.new_ones(1, batch, unmasked),
                        keep_lower.expand(1, batch, middle - unmasked),
                        keep_upper.expand(1, batch, dim - middle),
                    ),
                    dim=-1,
                )
            )
        return masks

    def _full_dim_output(self, stack_outputs: List[Tensor]) -> Tensor:
        """Concatenate channel ranges, each from the latest stack that has it."""
        pieces = [stack_outputs[-1]]
        have = self.encoder_dim[-1]
        for dim, output in zip(reversed(self.encoder_dim[:-1]), reversed(stack_outputs[:-1])):
            if dim > have:
                pieces.append(output[..., have:dim])
                have = dim
        return torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0]

    def forward(
        self, x: Tensor, x_lens: Optional[Tensor] = None, padding_mask: Optional[Tensor] = None
    ) -> ZipformerOutput:
        """Encode a batch.

        Args:
            x: ``(frame, batch, input_dim)`` (time first, as in icefall).
            x_lens: ``(batch,)`` valid frames per sequence, or None.
            padding_mask: ``(batch, frame)`` bool, True for padded frames, or None. Give
                ``x_lens`` or ``padding_mask`` (or neither when nothing is padded), not both.

        Returns:
            ``ZipformerOutput(output, lengths, stack_outputs)``; output ``(frame, batch,
            max(encoder_dim))``. Values at padded frames are unspecified.
        """
        if x.ndim != 3 or x.shape[-1] != self.input_dim:
            raise ValueError(
                f"Zipformer2 expects input (frame, batch, {self.input_dim}), got {tuple(x.shape)}"
            )
        frames, batch, _ = x.shape
        if x_lens is not None and padding_mask is not None:
            raise ValueError("give x_lens or padding_mask, not both")
        if x_lens is not None:
            x_lens = x_lens.to(x.device)
            padding_mask = torch.arange(frames, device=x.device).unsqueeze(0) >= x_lens.unsqueeze(1)
        if padding_mask is not None:
            if padding_mask.shape != (batch, frames):
                raise ValueError(
                    f"padding_mask must be (batch, frame) = {(batch, frames)}, "
                    f"got {tuple(padding_mask.shape)}"
                )
            lengths = (~padding_mask).sum(dim=1)
        else:
            lengths = torch.full((batch,), frames, dtype=torch.long, device=x.device)

        feature_masks = self.feature_masks(x)
        stack_outputs = []
        for dim, stack, feature_mask in zip(self.encoder_dim, self.encoders, feature_masks):
            x = stack(convert_num_channels(x, dim), padding_mask, feature_mask)
            stack_outputs.append(x)
        return ZipformerOutput(self._full_dim_output(stack_outputs), lengths, stack_outputs)
