"""``zipformer_ssl``: k2SSL's Zipformer-based masked-prediction model as a fairseq model.

The model is the one of icefall's ``egs/librispeech/SSL/zipformer/hubert_ce.py``: the wav2vec2 CNN
front-end on raw 16 kHz audio, a LayerNorm, a projection to the first stack's width, a learned mask
embedding, the six-stack Zipformer2 encoder (``models/zipformer``) and a plain linear classifier
``final_proj(x) / logit_temp`` trained with cross-entropy on masked frames, plus the CNN feature
penalty. Parameter names and shapes equal the original's, so icefall state dicts load strictly
(see ``k2ssl_fairseq/conversion/icefall.py``).

It exposes stock HuBERT's interface (``forward``, ``extract_features``, ``get_logits``,
``get_targets``, ``get_extra_losses``), so fairseq's ``hubert`` criterion and feature dumpers work
unchanged. ``get_targets`` returns the real class indices (dictionary indices: k-means id ``k`` is
class ``k + 4`` because fairseq dictionaries start with 4 special symbols). With the stock ``hubert``
criterion the loss is therefore correct, but its accuracy is not: it counts ``argmax == 0``, which is
only right for HuBERT's positive-in-column-0 logits. Use ``k2ssl_masked_prediction`` for correct
accuracy.

Two deliberate differences from the original, both invisible on unpadded batches:

* padding: frame ``i`` is padding iff ``i >= conv_frames(valid samples)``, padded samples are zeroed
  and the first CNN layer's GroupNorm statistics are taken over valid frames only, and the padding
  mask reaches the encoder, so an utterance's output does not depend on its batch;
* the feature penalty averages over valid frames only.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model
from fairseq.models.wav2vec.wav2vec2 import ConvFeatureExtractionModel
from fairseq.modules import LayerNorm
from omegaconf import II
from torch import nn

from ..data.frames import conv_frames, conv_stride, frame_padding_mask
from ..data.masking import span_mask_tensor
from .conv_frontend import conv_features
from .zipformer import Zipformer2, set_batch_count

EXTRACTOR_MODE_CHOICES = ChoiceEnum(["default", "layer_norm"])


def _stack_field(default: Sequence[int], help_text: str):
    """A per-stack list field (one entry per Zipformer2 stack)."""
    return field(default_factory=lambda: list(default), metadata={"help": help_text})


@dataclass
class ZipformerSslConfig(FairseqDataclass):
    """Model settings; defaults are icefall's Zipformer Base (the k2SSL Base pre-training run)."""

    label_rate: float = field(default=II("task.label_rate"), metadata={"help": "label frames per second (50 for k2SSL's k-means labels)"})
    sample_rate: int = field(default=II("task.sample_rate"), metadata={"help": "audio samples per second of the input waveform"})

    extractor_mode: EXTRACTOR_MODE_CHOICES = field(
        default="default",
        metadata={"help": "CNN normalisation: 'default' = GroupNorm after the first conv only (k2SSL Base), "
                          "'layer_norm' = LayerNorm after every conv"})
    conv_channels: List[int] = field(default_factory=lambda: [512] * 7, metadata={"help": "output channels of each CNN layer"})
    conv_kernels: List[int] = field(default_factory=lambda: [10, 3, 3, 3, 3, 2, 2], metadata={"help": "kernel size of each CNN layer"})
    conv_strides: List[int] = field(default_factory=lambda: [5, 2, 2, 2, 2, 2, 2], metadata={"help": "stride of each CNN layer (product 320 = 50 Hz at 16 kHz)"})
    conv_bias: bool = field(default=False, metadata={"help": "give the CNN convolutions a bias"})
    feature_grad_mult: float = field(default=1.0, metadata={"help": "gradient multiplier into the CNN (0 freezes it; k2SSL Base 0.1)"})
    dropout_input: float = field(default=0.0, metadata={"help": "dropout on the projected CNN features, before masking"})

    num_encoder_layers: List[int] = _stack_field([2, 2, 3, 4, 3, 2], "Zipformer2 layers per stack")
    downsampling_factor: List[int] = _stack_field([1, 2, 4, 8, 4, 2], "frame-rate reduction of each stack")
    encoder_dim: List[int] = _stack_field(
        [192, 256, 448, 768, 448, 192], "width of each stack; the encoder output has max(encoder_dim) channels")
    feedforward_dim: List[int] = _stack_field([512, 768, 1024, 1536, 1024, 768], "feed-forward hidden size of each stack")
    num_heads: List[int] = _stack_field([4, 4, 4, 8, 4, 4], "attention heads of each stack")
    encoder_unmasked_dim: List[int] = _stack_field(
        [192, 192, 256, 256, 256, 192], "channels of each stack never zeroed by the training-time feature mask")
    cnn_module_kernel: List[int] = _stack_field([31, 31, 15, 15, 15, 31], "depthwise convolution kernel of each stack")
    query_head_dim: int = field(default=32, metadata={"help": "query/key dimension per attention head"})
    value_head_dim: int = field(default=12, metadata={"help": "value dimension per attention head"})
    pos_head_dim: int = field(default=4, metadata={"help": "positional-query dimension per attention head"})
    pos_dim: int = field(default=48, metadata={"help": "dimension of the relative positional encoding"})

    mask_prob: float = field(default=0.65, metadata={"help": "HuBERT span-mask probability (k2SSL recipes: 0.8)"})
    mask_length: int = field(default=10, metadata={"help": "span length of the time mask, in frames"})
    mask_min_masks: int = field(default=2, metadata={"help": "minimum number of masked spans per utterance "
                                                             "(as the task's setting of that name)"})
    logit_temp: float = field(default=0.1, metadata={"help": "the class logits are final_proj(x) / logit_temp"})
    skip_nomask: bool = field(default=False, metadata={"help": "do not compute logits on unmasked frames (they are only logged when pred_nomask_weight is 0)"})

    ref_duration: float = field(default=600.0, metadata={"help": "k2SSL's reference batch duration in seconds for the schedules' batch count"})
    seconds_per_update: Optional[float] = field(
        default=None,
        metadata={"help": "audio seconds per optimizer update over all workers and accumulation steps "
                          "(max duration per batch x world size x update_freq); the schedules run on "
                          "num_updates * seconds_per_update / ref_duration. None: on num_updates itself"})


@register_model("zipformer_ssl", dataclass=ZipformerSslConfig)
class ZipformerSslModel(BaseFairseqModel):
    """Zipformer SSL model (k2SSL) with stock HuBERT's model interface.

    Args:
        cfg: the model config.
        num_classes: classes of each label set (``len(dictionary)``, fairseq's 4 specials included).
    """

    def __init__(self, cfg: ZipformerSslConfig, num_classes: Sequence[int]) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = [int(n) for n in num_classes]
        if not (len(cfg.conv_channels) == len(cfg.conv_kernels) == len(cfg.conv_strides)):
            raise ValueError("conv_channels, conv_kernels and conv_strides must have the same length, got "
                             f"{len(cfg.conv_channels)}, {len(cfg.conv_kernels)}, {len(cfg.conv_strides)}")
        self.conv_layers = list(zip(cfg.conv_channels, cfg.conv_kernels, cfg.conv_strides))
        self.frames_per_label = cfg.label_rate * conv_stride(self.conv_layers) / cfg.sample_rate
        cnn_dim = self.conv_layers[-1][0]
        model_dim = cfg.encoder_dim[0]

        self.feature_extractor = ConvFeatureExtractionModel(
            conv_layers=self.conv_layers, dropout=0.0, mode=str(cfg.extractor_mode), conv_bias=cfg.conv_bias)
        self.layer_norm = LayerNorm(cnn_dim)
        self.post_extract_proj = nn.Linear(cnn_dim, model_dim) if cnn_dim != model_dim else None
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.mask_emb = nn.Parameter(torch.empty(model_dim).uniform_())
        self.encoder = Zipformer2(
            input_dim=model_dim,
            downsampling_factor=tuple(cfg.downsampling_factor),
            num_encoder_layers=tuple(cfg.num_encoder_layers),
            encoder_dim=tuple(cfg.encoder_dim),
            encoder_unmasked_dim=tuple(cfg.encoder_unmasked_dim),
            query_head_dim=cfg.query_head_dim,
            pos_head_dim=cfg.pos_head_dim,
            value_head_dim=cfg.value_head_dim,
            num_heads=tuple(cfg.num_heads),
            feedforward_dim=tuple(cfg.feedforward_dim),
            cnn_module_kernel=tuple(cfg.cnn_module_kernel),
            pos_dim=cfg.pos_dim,
        )
        self.final_proj = nn.Linear(max(cfg.encoder_dim), sum(self.num_classes))

    @classmethod
    def build_model(cls, cfg: ZipformerSslConfig, task) -> "ZipformerSslModel":
        """Build from the task's label dictionaries (``task.dictionaries``, as stock HuBERT tasks have)."""
        return cls(cfg, [len(d) for d in task.dictionaries])

    def set_num_updates(self, num_updates: int) -> None:
        """Drive the encoder's schedules with k2SSL's adjusted batch count.

        ``batch_count = num_updates * seconds_per_update / ref_duration``, where ``seconds_per_update``
        is ``max_duration * world_size * update_freq`` (k2SSL Base: 600 s x 8 GPUs x 1 / 600 = 8 batch
        counts per update); with ``seconds_per_update`` unset the batch count is ``num_updates``.
        """
        super().set_num_updates(num_updates)
        set_batch_count(self.encoder, self.batch_count(num_updates))

    def batch_count(self, num_updates: int) -> float:
        """k2SSL's adjusted batch count for ``num_updates`` optimizer updates (see ``set_num_updates``)."""
        if self.cfg.seconds_per_update is None:
            return float(num_updates)
        return num_updates * self.cfg.seconds_per_update / self.cfg.ref_duration


    def forward(
        self,
        source: torch.Tensor,
        target_list: Optional[List[torch.Tensor]] = None,
        padding_mask: Optional[torch.Tensor] = None,
        mask: bool = True,
        features_only: bool = False,
        output_layer: Optional[int] = None,
        mask_indices: Optional[torch.Tensor] = None,
    ) -> Dict[str, object]:
        """Stock HuBERT's forward.

        Args:
            source: waveform ``(batch, samples)``.
            target_list: one ``(batch, label_frames)`` int64 tensor of dictionary indices per label
                set; required unless ``features_only``.
            padding_mask: ``(batch, samples)`` True at padded samples (padding at the end), or None.
            mask: replace masked frames by the mask embedding.
            features_only: return encoder features instead of logits.
            output_layer: 1-based encoder stack whose output (at the full frame rate) is returned
                instead of the encoder output; None for the whole encoder.
            mask_indices: ``(batch, frames)`` precomputed masks (the data path's); drawn here with
                ``data.masking`` when absent.

        Returns:
            With ``features_only``: ``{"x": (batch, frame, dim), "padding_mask": (batch, frame) or
            None, "features": (batch, frame, encoder_dim[0]) encoder input}``. Otherwise
            ``logit_m_list``/``logit_u_list`` (per label set, ``(frames, num_classes)``), the
            matching ``target_m_list``/``target_u_list``, ``padding_mask``, ``mask_indices`` and
            ``features_pen``.
        """
        if not features_only and target_list is None:
            raise ValueError("zipformer_ssl: target_list is required unless features_only=True")
        features, frame_padding = self._cnn(source, padding_mask)
        if target_list is not None:
            features, frame_padding, target_list = self._align_to_labels(features, frame_padding, target_list)
        features_pen = self._feature_penalty(features, frame_padding)

        x = self.layer_norm(features)
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        x = self.dropout_input(x)
        batch, num_frames, _ = x.shape
        if mask:
            if mask_indices is None:
                mask_indices = span_mask_tensor(frame_padding, batch, num_frames, self.cfg.mask_prob,
                                                self.cfg.mask_length, self.cfg.mask_min_masks)
            mask_indices = mask_indices[:, :num_frames].to(x.device)
            if mask_indices.shape != (batch, num_frames):
                raise ValueError(f"zipformer_ssl: mask_indices has shape {tuple(mask_indices.shape)}, "
                                 f"expected at least (batch, frames) = ({batch}, {num_frames})")
            x = torch.where(mask_indices.unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        else:
            mask_indices = None
        encoder_input = x
        x = self._encode(x, frame_padding, output_layer)

        if features_only:
            return {"x": x, "padding_mask": frame_padding, "features": encoder_input}
        logit_m, target_m, logit_u, target_u = self._predict(x, frame_padding, mask_indices, target_list)
        return {
            "logit_m_list": logit_m, "logit_u_list": logit_u,
            "target_m_list": target_m, "target_u_list": target_u,
            "padding_mask": frame_padding, "mask_indices": mask_indices, "features_pen": features_pen,
        }

    def extract_features(
        self,
        source: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
        mask: bool = False,
        ret_conv: bool = False,
        output_layer: Optional[int] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Stock HuBERT's feature extraction.

        Returns:
            ``(features (batch, frame, dim), frame padding mask (batch, frame) or None)``; with
            ``ret_conv`` the features are the encoder input instead of its output.
        """
        res = self.forward(source, padding_mask=padding_mask, mask=mask, features_only=True,
                           output_layer=output_layer)
        return (res["features"] if ret_conv else res["x"]), res["padding_mask"]

    def get_logits(self, net_output: Dict[str, object], is_masked: bool = True) -> List[torch.Tensor]:
        """Class logits ``(frames, num_classes)`` per label set, masked or unmasked frames, as float32."""
        return [x.float() for x in net_output["logit_m_list" if is_masked else "logit_u_list"]]

    def get_targets(self, net_output: Dict[str, object], is_masked: bool = True) -> List[torch.Tensor]:
        """Class indices ``(frames,)`` matching ``get_logits``: CE against them is k2SSL's loss."""
        return list(net_output["target_m_list" if is_masked else "target_u_list"])

    def get_extra_losses(self, net_output: Dict[str, object]) -> Tuple[List[torch.Tensor], List[str]]:
        """The CNN feature penalty, weighted by the criterion's ``loss_weights``."""
        return [net_output["features_pen"]], ["features_pen"]

    def remove_pretraining_modules(self) -> None:
        """Drop the classification head (fine-tuning wrappers call this)."""
        self.final_proj = None

    def _cnn(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor]
             ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Run the CNN front-end (first-layer GroupNorm statistics over each row's valid frames).

        Returns:
            ``(features (batch, frames, channels), frame padding mask (batch, frames) or None)``.
        """
        if source.dim() != 2:
            raise ValueError(f"zipformer_ssl: source must be (batch, samples), got shape {tuple(source.shape)}")
        sample_lengths = None
        if padding_mask is not None:
            if padding_mask.shape != source.shape:
                raise ValueError(f"zipformer_ssl: padding_mask shape {tuple(padding_mask.shape)} does not "
                                 f"match source shape {tuple(source.shape)}")
            source = source.masked_fill(padding_mask, 0.0)
            sample_lengths = (~padding_mask).sum(1)
        first_layer_frames = None if sample_lengths is None else conv_frames(sample_lengths, self.conv_layers[:1])
        features = conv_features(self.feature_extractor, source, first_layer_frames, self.cfg.feature_grad_mult)
        if sample_lengths is None:
            return features, None
        return features, frame_padding_mask(sample_lengths, features.shape[1], self.conv_layers)

    def _align_to_labels(self, features: torch.Tensor, frame_padding: Optional[torch.Tensor],
                         target_list: List[torch.Tensor]):
        """Trim frames to those with a label and pick each frame's label (stock HuBERT's rule).

        Frame ``i`` takes label ``floor(i * frames_per_label)``; 1 at 50 Hz labels, 2 at 100 Hz.
        """
        label_frames = min(t.shape[1] for t in target_list)
        num_frames = features.shape[1]
        if self.frames_per_label * num_frames > label_frames:
            num_frames = int(label_frames / self.frames_per_label)
            features = features[:, :num_frames]
            if frame_padding is not None:
                frame_padding = frame_padding[:, :num_frames]
        label_index = (torch.arange(num_frames, device=features.device).double() * self.frames_per_label).long()
        return features, frame_padding, [t[:, label_index] for t in target_list]

    @staticmethod
    def _feature_penalty(features: torch.Tensor, frame_padding: Optional[torch.Tensor]) -> torch.Tensor:
        """Mean square of the CNN features over valid frames (the L2 penalty k2SSL weights by 10)."""
        squares = features.float().pow(2)
        if frame_padding is None:
            return squares.mean()
        valid = (~frame_padding).unsqueeze(-1).to(squares.dtype)
        return (squares * valid).sum() / (valid.sum() * squares.shape[2]).clamp(min=1.0)

    def _encode(self, x: torch.Tensor, frame_padding: Optional[torch.Tensor],
                output_layer: Optional[int]) -> torch.Tensor:
        """Zipformer2 on ``(batch, frame, encoder_dim[0])`` → ``(batch, frame, dim)``."""
        stacks = len(self.cfg.encoder_dim)
        if output_layer is not None and not 1 <= output_layer <= stacks:
            raise ValueError(f"zipformer_ssl: output_layer must be a stack number in 1..{stacks}, got {output_layer}")
        encoded = self.encoder(x.transpose(0, 1), padding_mask=frame_padding)
        out = encoded.output if output_layer is None else encoded.stack_outputs[output_layer - 1]
        return out.transpose(0, 1)

    def _predict(self, x: torch.Tensor, frame_padding: Optional[torch.Tensor],
                 mask_indices: Optional[torch.Tensor], target_list: List[torch.Tensor]):
        """Logits and targets on masked and unmasked valid frames, one entry per label set."""
        valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if frame_padding is None else ~frame_padding
        masked = valid if mask_indices is None else valid & mask_indices
        unmasked = valid & ~masked
        logit_m, target_m = self._class_logits(x, masked, target_list)
        if self.cfg.skip_nomask:
            return logit_m, target_m, [], []
        logit_u, target_u = self._class_logits(x, unmasked, target_list)
        return logit_m, target_m, logit_u, target_u

    def _class_logits(self, x: torch.Tensor, frames: torch.Tensor, target_list: List[torch.Tensor]):
        """``final_proj(x) / logit_temp`` on the selected frames, split per label set."""
        logits = self.final_proj(x[frames]) / self.cfg.logit_temp
        return list(logits.split(self.num_classes, dim=-1)), [t[frames].long() for t in target_list]
