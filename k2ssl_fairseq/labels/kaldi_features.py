"""Kaldi-style MFCC and fbank features for the first k-means iteration.

Both are computed with ``torchaudio.compliance.kaldi`` at 100 Hz (25 ms windows, 10 ms hop,
``snip_edges``, no dither), the framing fairseq's ``dump_mfcc_feature.py`` uses: an utterance of
``n`` samples has ``1 + (n - 400) // 160`` frames. MFCC is 13 cepstra (``use_energy=False``) plus
first and second deltas, 39 dimensions.

**50 Hz.** With ``downsample_to_cnn_rate`` the 100 Hz frames are decimated by keeping every other
frame (indices 0, 2, 4, ...). MFCC frame ``2j`` covers samples ``[320 j, 320 j + 400)``, exactly
the receptive field of CNN frame ``j`` of the wav2vec2 front-end, and ``ceil((1 + (n-400)//160) / 2)
== 1 + (n-400)//320``, so the result has ``conv_frames(n)`` frames and label ``j`` describes the
audio CNN frame ``j`` sees. Deltas are taken at 100 Hz before decimation.
"""
from __future__ import annotations

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi
import torchaudio.functional

from ..data.frames import label_frames

NUM_CEPSTRA = 13
KALDI_FRAME_RATE = 100.0


class KaldiFeatureExtractor:
    """Waveform → MFCC (39-d) or log-Mel fbank frames, at 100 Hz or decimated to 50 Hz.

    Args:
        kind: ``"mfcc"`` or ``"fbank"``.
        downsample_to_cnn_rate: keep every other frame so counts equal ``conv_frames(n)`` (50 Hz).
        sample_rate: audio sample rate; 16000 for the 50 Hz alignment to hold.
        num_mel_bins: fbank dimension (ignored for MFCC, which uses Kaldi's 23 bins).
    """

    def __init__(self, kind: str = "mfcc", downsample_to_cnn_rate: bool = False, sample_rate: int = 16000,
                 num_mel_bins: int = 80):
        if kind not in ("mfcc", "fbank"):
            raise ValueError(f"feature kind must be 'mfcc' or 'fbank', got {kind!r}")
        self.kind = kind
        self.downsample_to_cnn_rate = downsample_to_cnn_rate
        self.sample_rate = sample_rate
        self.num_mel_bins = num_mel_bins
        self.frame_rate = KALDI_FRAME_RATE / 2 if downsample_to_cnn_rate else KALDI_FRAME_RATE
        self.dim = 3 * NUM_CEPSTRA if kind == "mfcc" else num_mel_bins

    def num_frames(self, num_samples: int) -> int:
        """Frames this extractor produces for ``num_samples`` samples."""
        return int(label_frames(int(num_samples), self.frame_rate, self.sample_rate))

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        """Features of one utterance.

        Args:
            waveform: ``(sample,)`` float32 in [-1, 1].

        Returns:
            ``(frame, feature)`` float32 with ``num_frames(len(waveform))`` frames (0 when the
            utterance is shorter than one 25 ms window).
        """
        if self.num_frames(len(waveform)) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        samples = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32)).unsqueeze(0)
        with torch.inference_mode():
            if self.kind == "mfcc":
                features = self._mfcc_with_deltas(samples)
            else:
                features = kaldi.fbank(samples, sample_frequency=self.sample_rate, num_mel_bins=self.num_mel_bins)
        if self.downsample_to_cnn_rate:
            features = features[::2]
        return features.numpy().astype(np.float32, copy=False)

    def _mfcc_with_deltas(self, samples: torch.Tensor) -> torch.Tensor:
        cepstra = kaldi.mfcc(samples, sample_frequency=self.sample_rate, use_energy=False)  # (frame, 13)
        by_coefficient = cepstra.T  # (13, frame): compute_deltas works along the last axis
        deltas = torchaudio.functional.compute_deltas(by_coefficient)
        accelerations = torchaudio.functional.compute_deltas(deltas)
        return torch.cat([by_coefficient, deltas, accelerations]).T.contiguous()  # (frame, 39)
