"""Layer-L features of a pre-trained SSL checkpoint, for the second k-means iteration.

Any checkpoint fairseq can rebuild works: stock ``hubert`` and the plugin's models, which expose
stock HuBERT's ``extract_features(source, padding_mask, mask=False, output_layer=L)``. Loading goes
through ``fairseq.checkpoint_utils.load_model_ensemble_and_task``; importing this module imports
``k2ssl_fairseq`` first, which registers the plugin and applies the torch >= 2.6 loading fix.

**Long files.** Audio is processed in windows so memory stays bounded: the utterance's CNN frames
are split into cores of ``chunk_samples / 320`` frames, and each core is computed from a window that
adds ``context_samples`` of audio on both sides (clipped to the file) plus the 80 samples frame
``j``'s 400-sample receptive field needs beyond ``320 j + 320``. Only the core's frames are kept, so
the output has exactly ``conv_frames(n) = 1 + (n - 400) // 320`` frames, and a context as long as
the file reproduces the unchunked features.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from .. import checkpoints
from ..checkpoints import CheckpointMismatchError
from ..data.frames import WAV2VEC2_CONV_LAYERS, conv_frames, conv_stride
from .shards import LabelPipelineError

CNN_STRIDE = conv_stride(WAV2VEC2_CONV_LAYERS)
#: Samples of the receptive field beyond the frame's own stride (400 - 320).
RECEPTIVE_OVERHANG = 400 - CNN_STRIDE


def load_feature_model(checkpoint: Union[str, Path], arg_overrides: Optional[Dict[str, Any]] = None,
                       trusted: bool = False):
    """Rebuild a checkpoint's model with fairseq.

    Args:
        checkpoint: fairseq checkpoint (``checkpoint_best.pt``, released HuBERT, plugin model).
        arg_overrides: config overrides, e.g. ``{"data": ..., "label_dir": ...}`` when the task
            paths stored in the checkpoint do not exist on this machine.
        trusted: fully unpickle this file even if it holds objects outside ``k2ssl_fairseq.checkpoints``'s
            allowlist (it may then execute code; only for files you trust).

    Returns:
        ``(model, normalize)``: the model in eval mode and whether the task layer-normalises audio.

    Raises:
        checkpoints.CheckpointError: the file is unreadable or refused, its model type is registered
            by neither fairseq nor the plugin, it cannot be rebuilt, or it has no ``extract_features``.
    """
    state = checkpoints.load_checkpoint(checkpoint, trusted, arg_overrides)
    _check_model_registered(checkpoint, state)
    model, task = checkpoints.build_model(state, checkpoint)
    if not callable(getattr(model, "extract_features", None)):
        raise CheckpointMismatchError(checkpoint, f"model {type(model).__name__} has no extract_features(); "
                                                  f"expected a HuBERT-style model")
    return model.eval(), bool(getattr(task.cfg, "normalize", False))


def _check_model_registered(checkpoint: Union[str, Path], state: Dict[str, Any]) -> None:
    """Name the model type when neither fairseq nor the plugin registers it."""
    from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY

    if state.get("args") is not None:
        name = getattr(state["args"], "arch", None)
    else:
        model_cfg = (state.get("cfg") or {}).get("model") or {}
        name = model_cfg.get("_name")
    if name not in MODEL_REGISTRY and name not in ARCH_MODEL_REGISTRY:
        raise CheckpointMismatchError(checkpoint, f"model type {name!r} is registered neither by fairseq nor by "
                                                  f"k2ssl_fairseq, so the plugin cannot load this checkpoint's model")


class CheckpointLayerExtractor:
    """Waveform → output of encoder layer ``layer`` (50 Hz, one frame per CNN frame).

    Args:
        checkpoint: fairseq checkpoint path.
        layer: 1-based encoder layer whose output is taken (fairseq's ``output_layer``).
        device: ``"cpu"``, ``"cuda"``, ...
        chunk_samples: audio per window core; rounded down to a multiple of 320 (default 100 s).
        context_samples: audio added on each side of a core; rounded up to a multiple of 320.
        arg_overrides, trusted: passed to :func:`load_feature_model`.
    """

    frame_rate = 50.0

    def __init__(self, checkpoint: Union[str, Path], layer: int, device: str = "cpu",
                 chunk_samples: int = 1_600_000, context_samples: int = 80_000,
                 arg_overrides: Optional[Dict[str, Any]] = None, trusted: bool = False):
        if layer < 1:
            raise ValueError(f"layer must be >= 1 (fairseq's output_layer is 1-based), got {layer}")
        if chunk_samples < CNN_STRIDE or context_samples < 0:
            raise ValueError(f"chunk_samples must be >= {CNN_STRIDE} and context_samples >= 0, "
                             f"got {chunk_samples} and {context_samples}")
        self.checkpoint = Path(checkpoint)
        self.layer = layer
        self.device = torch.device(device)
        self.core_frames = chunk_samples // CNN_STRIDE
        self.context_frames = -(-context_samples // CNN_STRIDE)
        model, self.normalize = load_feature_model(checkpoint, arg_overrides, trusted)
        self.model = model.to(self.device)
        self.dim: Optional[int] = None

    @staticmethod
    def num_frames(num_samples: int) -> int:
        """Frames produced for ``num_samples`` samples: ``conv_frames(n)``."""
        return int(conv_frames(int(num_samples)))

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        """Features of one utterance.

        Args:
            waveform: ``(sample,)`` float32.

        Returns:
            ``(frame, feature)`` float32 with ``conv_frames(len(waveform))`` frames.
        """
        total = self.num_frames(len(waveform))
        samples = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32)).to(self.device)
        if self.normalize:
            samples = F.layer_norm(samples, samples.shape)
        pieces = []
        with torch.inference_mode():
            for core_start in range(0, total, self.core_frames):
                core_end = min(core_start + self.core_frames, total)
                pieces.append(self._window_features(samples, core_start, core_end))
        if not pieces:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        features = torch.cat(pieces).float().cpu().numpy()
        self.dim = features.shape[1]
        return features

    def _window_features(self, samples: torch.Tensor, core_start: int, core_end: int) -> torch.Tensor:
        """Features of CNN frames ``[core_start, core_end)``, computed with context on both sides."""
        window_first_frame = max(core_start - self.context_frames, 0)
        window_start = window_first_frame * CNN_STRIDE
        window_end = min((core_end + self.context_frames) * CNN_STRIDE + RECEPTIVE_OVERHANG, samples.shape[0])
        output, _ = self.model.extract_features(
            source=samples[window_start:window_end].unsqueeze(0), padding_mask=None, mask=False,
            output_layer=self.layer)
        expected = conv_frames(window_end - window_start)
        if output.dim() != 3 or output.shape[1] != expected:
            raise LabelPipelineError(
                f"{self.checkpoint}: extract_features returned shape {tuple(output.shape)} for "
                f"{window_end - window_start} samples, expected (1, {expected}, feature): the model is not "
                f"a 320-sample-stride HuBERT-style encoder")
        offset = core_start - window_first_frame
        return output[0, offset:offset + core_end - core_start]
