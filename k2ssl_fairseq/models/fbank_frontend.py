"""An fbank front-end for the Zipformer SSL model: log-mel filterbanks computed in the model, then a
small Conv2d subsampling to the label rate.

k2SSL keeps HuBERT's seven-layer waveform CNN, which is most of a CPU training step at Base size.
This replaces it by what icefall's ASR Zipformer reads (80-dim fbank at 100 Hz, as Kaldi computes
it) followed by stride-2 Conv2d stages: one stage gives 50 Hz frames (k2SSL's label rate), two give
25 Hz frames (Fast-HuBERT's 40 ms frames; the model then takes every other 50 Hz label).

Frame arithmetic stays the project's one function (``data/frames.conv_frames``): the fbank is a
window of 400 samples every 160, and each stride-2 stage (kernel 3, padding 1) turns ``T`` frames
into ``ceil(T / 2)``, which is exactly a kernel-1, stride-2 layer. So :func:`frame_layout` is a
``(channels, kernel, stride)`` list that ``conv_frames`` and ``frame_padding_mask`` read like the
CNN's, and at 50 Hz it yields the same frame count as HuBERT's CNN for every length.

Padding-aware: a frame is valid iff its window lies inside the utterance; invalid frames are zeroed
before normalisation statistics and after every stage, so an utterance's output does not depend on
the batch it is in.
"""
from __future__ import annotations

import functools
import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.frames import conv_frames

SAMPLE_RATE = 16000
#: Kaldi's defaults at 16 kHz: 25 ms windows every 10 ms, padded to a power of two for the FFT.
WINDOW, HOP, FFT_SIZE = 400, 160, 512
PREEMPHASIS = 0.97
LOW_FREQUENCY = 20.0
#: Kaldi's floor before the log (float32 machine epsilon).
LOG_FLOOR = torch.finfo(torch.float32).eps
#: Output frame rates the subsampling supports: stride-2 stages after the 100 Hz fbank.
STAGES_FOR_RATE = {50: 1, 25: 2}


def frame_layout(frame_rate: int, channels: int) -> Tuple[Tuple[int, int, int], ...]:
    """The ``(channels, kernel, stride)`` layers whose ``conv_frames`` is this front-end's frame count.

    Raises:
        ValueError: a frame rate other than 50 or 25 Hz.
    """
    if frame_rate not in STAGES_FOR_RATE:
        raise ValueError(f"fbank frame rate must be one of {sorted(STAGES_FOR_RATE)} Hz, got {frame_rate}")
    return ((channels, WINDOW, HOP),) + ((channels, 1, 2),) * STAGES_FOR_RATE[frame_rate]


@functools.lru_cache(maxsize=8)
def _mel_banks(num_bins: int, device: torch.device) -> Tensor:
    """Kaldi's triangular mel filters over the FFT bins, ``(bins, FFT_SIZE // 2 + 1)``; built once per
    (bins, device), not in every training step."""
    from torchaudio.compliance.kaldi import get_mel_banks

    banks, _ = get_mel_banks(num_bins, FFT_SIZE, float(SAMPLE_RATE), LOW_FREQUENCY, 0.0, 100.0, -500.0, 1.0)
    return F.pad(banks, (0, 1)).to(device)


def log_mel(source: Tensor, num_bins: int = 80) -> Tensor:
    """Kaldi-compatible log-mel filterbank energies of a batch of waveforms, ``(batch, frame, bins)``.

    Same steps and defaults as ``torchaudio.compliance.kaldi.fbank(dither=0)`` (snip edges, DC
    removal, pre-emphasis 0.97, Povey window, power spectrum, 20 Hz to Nyquist), batched and on the
    input's device, in float32 whatever autocast says (the log of small energies needs it).
    """
    with torch.autocast(source.device.type, enabled=False):
        frames = source.float().unfold(1, WINDOW, HOP)
        frames = frames - frames.mean(dim=-1, keepdim=True)
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = frames - PREEMPHASIS * previous
        window = torch.hann_window(WINDOW, periodic=False, device=source.device).pow(0.85)
        spectrum = torch.fft.rfft(frames * window, n=FFT_SIZE).abs().pow(2)
        energies = spectrum @ _mel_banks(num_bins, source.device).T
        return energies.clamp(min=LOG_FLOOR).log()


class FbankFrontEnd(nn.Module):
    """Waveform → log-mel fbank (optionally normalised per utterance) → Conv2d subsampling →
    ``(batch, frame, output_dim)`` features at ``frame_rate`` Hz.

    Args:
        output_dim: channels of the features handed on (like the CNN's last layer).
        frame_rate: 50 or 25 Hz.
        num_bins: mel bins.
        channels: Conv2d channels of each subsampling stage.
        normalize: subtract each utterance's mean and divide by its standard deviation, per bin, over
            its valid frames.
    """

    def __init__(self, output_dim: int, frame_rate: int = 50, num_bins: int = 80, channels: int = 64,
                 normalize: bool = True) -> None:
        super().__init__()
        self.layout = frame_layout(frame_rate, output_dim)
        self.num_bins, self.normalize = num_bins, normalize
        stages: List[nn.Module] = []
        width, in_channels = num_bins, 1
        for _ in range(STAGES_FOR_RATE[frame_rate]):
            stages.append(nn.Conv2d(in_channels, channels, kernel_size=3, stride=2, padding=1))
            width, in_channels = math.ceil(width / 2), channels
        self.stages = nn.ModuleList(stages)
        self.out_proj = nn.Linear(channels * width, output_dim)

    def valid_frames(self, lengths: Tensor, stages: Optional[int] = None) -> Tensor:
        """Valid frames per row after the fbank (``stages=0``) or after ``stages`` subsampling stages."""
        count = len(self.stages) if stages is None else stages
        return conv_frames(lengths, self.layout[:1 + count]).clamp(min=0)

    def forward(self, source: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """``source`` ``(batch, samples)``; ``lengths`` valid samples per row (None: all valid)."""
        if lengths is None:
            lengths = torch.full((source.shape[0],), source.shape[1], dtype=torch.long, device=source.device)
        features = log_mel(source, self.num_bins)
        valid = self._valid(lengths, 0, features.shape[1])
        if self.normalize:
            features = _normalize(features, valid)
        x = (features * valid[..., None]).unsqueeze(1)
        for stage, conv in enumerate(self.stages, start=1):
            x = F.gelu(conv(x))
            x = x * self._valid(lengths, stage, x.shape[2])[:, None, :, None].to(x.dtype)
        batch, channels, frames, width = x.shape
        return self.out_proj(x.permute(0, 2, 1, 3).reshape(batch, frames, channels * width))

    def _valid(self, lengths: Tensor, stages: int, num_frames: int) -> Tensor:
        counts = self.valid_frames(lengths, stages).to(lengths.device)
        return torch.arange(num_frames, device=lengths.device)[None, :] < counts[:, None]


def _normalize(features: Tensor, valid: Tensor) -> Tensor:
    """Per-utterance, per-bin mean and variance normalisation over the valid frames."""
    weights = valid[..., None].to(features.dtype)
    count = weights.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = (features * weights).sum(dim=1, keepdim=True) / count
    variance = ((features - mean).pow(2) * weights).sum(dim=1, keepdim=True) / count
    return (features - mean) / (variance + 1e-5).sqrt()
