"""Frame arithmetic: the one place that converts sample counts to frame counts.

Data, models and scripts all call these functions so that the CNN front-end, label files and
padding masks can never disagree by a frame.
"""
from __future__ import annotations

from typing import Sequence, Tuple, TypeVar, Union

import numpy as np
import torch

#: The wav2vec2/HuBERT CNN front-end as (channels, kernel, stride): receptive field 400, stride 320.
WAV2VEC2_CONV_LAYERS: Tuple[Tuple[int, int, int], ...] = (
    ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
)

Count = TypeVar("Count", int, np.ndarray, torch.Tensor)


def conv_frames(num_samples: Count, conv_layers: Sequence[Sequence[int]] = WAV2VEC2_CONV_LAYERS) -> Count:
    """Number of output frames of a stack of unpadded 1-D convolutions.

    Args:
        num_samples: samples per utterance (int, numpy array or tensor).
        conv_layers: (channels, kernel, stride) per layer.

    Returns:
        Frames per utterance, same type as the input; never negative. For the wav2vec2 stack this
        equals ``1 + (n - 400) // 320`` for ``n >= 400`` and 0 below.
    """
    frames = num_samples
    for _, kernel, stride in conv_layers:
        frames = (frames - kernel) // stride + 1
        if isinstance(frames, torch.Tensor):
            frames = frames.clamp(min=0)
        elif isinstance(frames, np.ndarray):
            frames = np.maximum(frames, 0)
        else:
            frames = max(int(frames), 0)
    return frames


def receptive_field(conv_layers: Sequence[Sequence[int]] = WAV2VEC2_CONV_LAYERS) -> int:
    """Fewest samples that give one output frame (400 for wav2vec2)."""
    samples = 1
    for _, kernel, stride in reversed(list(conv_layers)):
        samples = (samples - 1) * stride + kernel
    return samples


def conv_stride(conv_layers: Sequence[Sequence[int]] = WAV2VEC2_CONV_LAYERS) -> int:
    """Total stride (samples per frame) of a convolution stack: 320 for wav2vec2."""
    stride = 1
    for _, _, s in conv_layers:
        stride *= s
    return stride


def label_frames(num_samples: Union[int, np.ndarray], label_rate: float, sample_rate: int = 16000,
                 conv_layers: Sequence[Sequence[int]] = WAV2VEC2_CONV_LAYERS):
    """Expected number of frame labels for an utterance.

    At the CNN rate (``label_rate * conv_stride == sample_rate``, 50 Hz) labels are one per CNN
    frame; at other rates (e.g. 100 Hz MFCC labels) the count is what a 25 ms / 10 ms-style
    framing at that rate produces, ``1 + (n - win) // hop`` with ``hop = sample_rate / label_rate``
    and ``win = 2.5 * hop``.
    """
    hop = sample_rate / label_rate
    if abs(hop - conv_stride(conv_layers)) < 1e-9:
        return conv_frames(num_samples, conv_layers)
    win = int(round(2.5 * hop))
    hop_i = int(round(hop))
    if isinstance(num_samples, np.ndarray):
        return np.maximum(1 + (num_samples - win) // hop_i, 0)
    return max(1 + (int(num_samples) - win) // hop_i, 0)


def samples_to_label_index(sample_offset: Union[int, np.ndarray], label_rate: float,
                           sample_rate: int = 16000):
    """Label frame that starts at a sample offset (rounded, as fairseq's collater does)."""
    return np.round(np.asarray(sample_offset) * label_rate / sample_rate).astype(np.int64)


def frame_padding_mask(sample_lengths: torch.Tensor, num_frames: int,
                       conv_layers: Sequence[Tuple[int, int, int]]) -> torch.Tensor:
    """Frame-level padding mask ``(batch, num_frames)``, True at padding.

    Frame ``i`` of a row is padding iff ``i >= conv_frames(valid samples)``, which is exact for the
    CNN (stock HuBERT's reshape-and-``all`` rule can be off by one frame).

    Args:
        sample_lengths: valid samples per row ``(batch,)``.
        num_frames: frames of the padded batch.
        conv_layers: the CNN's (channels, kernel, stride) per layer.
    """
    valid_frames = conv_frames(sample_lengths, conv_layers)
    return torch.arange(num_frames, device=sample_lengths.device)[None, :] >= valid_frames[:, None]


def parse_conv_layers(spec: str) -> Tuple[Tuple[int, int, int], ...]:
    """A fairseq ``conv_feature_layers`` string (``"[(512,10,5)] + [(512,3,2)] * 4 + ..."``) as
    ``(channels, kernel, stride)`` tuples, read as data (``safe_literals.parse_literal``), never ``eval``.

    Raises:
        ValueError: not a plain literal, or not a non-empty list of three positive integers each.
    """
    from ..safe_literals import parse_literal

    layers = parse_literal(spec)
    if not isinstance(layers, (list, tuple)) or not layers or not all(
            isinstance(layer, tuple) and len(layer) == 3 and all(isinstance(v, int) and v > 0 for v in layer)
            for layer in layers):
        raise ValueError(f"conv_feature_layers {spec!r} is not a non-empty list of (channels, kernel, stride) "
                         f"tuples of positive integers")
    return tuple(tuple(layer) for layer in layers)


def format_conv_layers(layers: Sequence[Sequence[int]]) -> str:
    """The inverse of :func:`parse_conv_layers`: one list literal."""
    return "[" + ", ".join(f"({c}, {k}, {s})" for c, k, s in layers) + "]"
