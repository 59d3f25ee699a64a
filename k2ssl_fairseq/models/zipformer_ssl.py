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

Deliberate differences from the original. Two are invisible on unpadded batches:

* padding: frame ``i`` is padding iff ``i >= conv_frames(valid samples)``, padded samples are zeroed
  and the first CNN layer's GroupNorm statistics are taken over valid frames only, and the padding
  mask reaches the encoder, so an utterance's output does not depend on its batch;
* the feature penalty averages over valid frames only.

One concerns training with several batches per update: the Whiten modules' adaptive probability
follows whole updates, combined over ``update_freq`` and ranks (icefall: after every backward, per
process); it is the same with ``update_freq`` 1 on one process. What does follow the original: a
unit is kept when its random draw is ``> p``, and the schedules' batch count is refreshed every 10
updates (``batch_count_interval``); the state that changes during training (the Whiten
probabilities) is saved with the model, and the ``k2ssl_pretraining`` task seeds the model's
randomness per batch, so resumed and multi-rank runs are exact (``tests/test_fault_tolerance.py``,
``tests/test_distributed.py``).
"""

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
from fairseq.models import BaseFairseqModel, register_model
from fairseq.models.hubert.hubert import HubertConfig
from fairseq.models.wav2vec.wav2vec2 import ConvFeatureExtractionModel
from fairseq.modules import LayerNorm
from omegaconf import II, OmegaConf
from torch import nn

from .. import presets
from ..data.frames import conv_stride, parse_conv_layers
from ..stock_settings import log_ignored, plain
from .compiling import CompileConfig, compile_layers
from .config_records import record_in_saved_config, warn_if_stock_hubert_criterion
from .fbank_frontend import FbankFrontEnd
from .masked_prediction import MaskedPredictionModel, check_static_masking, linear_class_logits
from .summary import ParameterTableRepr
from .zipformer import Zipformer2, end_whitening_update, set_batch_count

logger = logging.getLogger(__name__)

#: Settings that define the network; ``model.preset`` sets them all at once.
ARCHITECTURE_KEYS = ("conv_feature_layers", "extractor_mode", "conv_bias", "num_encoder_layers",
                     "downsampling_factor", "encoder_dim", "feedforward_dim", "num_heads", "encoder_unmasked_dim",
                     "cnn_module_kernel", "query_head_dim", "value_head_dim", "pos_head_dim", "pos_dim")
#: Size presets of ``model.preset`` (``k2ssl_fairseq/config/pretrain/zipformer_<name>.yaml``).
PRESETS = ("tiny", "small", "base", "large")
#: Stock HuBERT settings with no meaning for this model (its encoder and head are not HuBERT's): a
#: stock yaml may carry them, and those not at HuBERT's default are named once in the log.
IGNORED_HUBERT_KEYS = ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads",
                       "activation_fn", "layer_type", "dropout", "attention_dropout", "activation_dropout",
                       "encoder_layerdrop", "dropout_features", "final_dim", "untie_final_proj", "layer_norm_first",
                       "target_glu", "mask_other", "mask_min_space", "mask_channel_other", "mask_channel_min_space",
                       "conv_pos", "conv_pos_groups", "conv_pos_batch_norm", "latent_temp", "checkpoint_activations",
                       "required_seq_len_multiple", "depthwise_conv_kernel_size", "attn_type", "pos_enc_type", "fp16")


def _stack_field(default: Sequence[int], help_text: str):
    """A per-stack list field (one entry per Zipformer2 stack)."""
    return field(default_factory=lambda: list(default), metadata={"help": help_text})


@dataclass
class ZipformerSslConfig(HubertConfig, CompileConfig):
    """Model settings; defaults are icefall's Zipformer Base (the k2SSL Base pre-training run).

    Every key of stock HuBERT's model config is accepted, so ``model._name=zipformer_ssl`` switches
    an existing HuBERT yaml. Those with a meaning here keep it (``label_rate``, ``extractor_mode``,
    ``conv_feature_layers``, ``conv_bias``, ``logit_temp``, ``feature_grad_mult``, the time and channel
    masking settings, ``dropout_input``, ``skip_masked``, ``skip_nomask``); the others
    (:data:`IGNORED_HUBERT_KEYS`) are ignored and named in the log.
    """

    #: Keys it accepts and ignores (``checkpoints.build_encoder`` refuses overrides of them).
    IGNORED_KEYS: ClassVar[Tuple[str, ...]] = IGNORED_HUBERT_KEYS

    sample_rate: int = field(default=II("task.sample_rate"), metadata={"help": "audio samples per second of the input waveform"})
    preset: Optional[str] = field(
        default=None, metadata={"help": f"size preset: one of {', '.join(PRESETS)}; sets the architecture keys "
                                        f"({', '.join(ARCHITECTURE_KEYS)}) to those of "
                                        "config/pretrain/zipformer_<preset>.yaml"})
    conv_channels: Optional[List[int]] = field(
        default=None, metadata={"help": "older form of conv_feature_layers (with conv_kernels and conv_strides), "
                                        "read from earlier checkpoints; when set it replaces conv_feature_layers"})
    conv_kernels: Optional[List[int]] = field(default=None, metadata={"help": "see conv_channels"})
    conv_strides: Optional[List[int]] = field(default=None, metadata={"help": "see conv_channels"})

    num_encoder_layers: List[int] = _stack_field([2, 2, 3, 4, 3, 2], "Zipformer2 layers per stack")
    downsampling_factor: List[int] = _stack_field([1, 2, 4, 8, 4, 2], "frame-rate reduction of each stack")
    encoder_dim: List[int] = _stack_field(
        [192, 256, 448, 768, 448, 192], "width of each stack; the encoder output has max(encoder_dim) channels")
    feedforward_dim: List[int] = _stack_field([512, 768, 1024, 1536, 1024, 768], "feed-forward hidden size of each stack")
    num_heads: List[int] = _stack_field([4, 4, 4, 8, 4, 4], "attention heads of each stack")
    encoder_unmasked_dim: List[int] = _stack_field(
        [192, 192, 256, 256, 256, 192], "channels of each stack never zeroed by the training-time feature mask")
    cnn_module_kernel: List[int] = _stack_field([31, 31, 15, 15, 15, 31], "depthwise convolution kernel of each stack")
    query_head_dim: Any = field(
        default=32, metadata={"help": "query/key dimension per attention head: one value, or one per stack"})
    value_head_dim: Any = field(
        default=12, metadata={"help": "value dimension per attention head: one value, or one per stack"})
    pos_head_dim: Any = field(
        default=4, metadata={"help": "positional-query dimension per attention head: one value, or one per stack"})
    pos_dim: int = field(default=48, metadata={"help": "dimension of the relative positional encoding"})

    frontend: str = field(
        default="cnn", metadata={"help": "cnn: HuBERT's waveform CNN (k2SSL, icefall-compatible); fbank: 80-dim "
                                         "log-mel filterbank computed in the model, then Conv2d subsampling "
                                         "(models/fbank_frontend.py)"})
    fbank_frame_rate: int = field(
        default=50, metadata={"help": "fbank front-end only: encoder input frames per second, 50 (one stride-2 "
                                      "stage) or 25 (two; each frame then takes every other 50 Hz label)"})
    fbank_bins: int = field(default=80, metadata={"help": "fbank front-end only: mel bins"})
    fbank_channels: int = field(default=64, metadata={"help": "fbank front-end only: Conv2d channels per stage"})
    fbank_normalize: bool = field(
        default=True, metadata={"help": "fbank front-end only: normalise each utterance's fbank per bin (mean 0, "
                                        "variance 1 over its valid frames)"})

    mask_min_masks: int = field(default=2, metadata={"help": "minimum number of masked spans per utterance "
                                                             "(as the task's setting of that name)"})
    ref_duration: float = field(default=600.0, metadata={"help": "k2SSL's reference batch duration in seconds for the schedules' batch count"})
    batch_count_interval: int = field(
        default=10, metadata={"help": "updates between refreshes of the schedules' batch count (k2SSL: every 10 "
                                      "batches); the count is that of the last multiple of this interval"})
    seconds_per_update: Optional[float] = field(
        default=None,
        metadata={"help": "audio seconds per optimizer update over all workers and accumulation steps "
                          "(max duration per batch x world size x update_freq); the schedules run on "
                          "num_updates * seconds_per_update / ref_duration. None: on num_updates itself"})


def conv_layers(cfg: ZipformerSslConfig) -> Tuple[Tuple[int, int, int], ...]:
    """The CNN layout ``(channels, kernel, stride)`` per layer: ``conv_channels``/``conv_kernels``/
    ``conv_strides`` when set (earlier checkpoints), else ``conv_feature_layers`` read as data."""
    lists = (cfg.conv_channels, cfg.conv_kernels, cfg.conv_strides)
    if all(values is None for values in lists):
        return parse_conv_layers(str(cfg.conv_feature_layers))
    if any(values is None for values in lists) or len({len(values) for values in lists}) != 1:
        raise ValueError("conv_channels, conv_kernels and conv_strides must be set together, with one entry per "
                         f"CNN layer; got {[None if v is None else list(v) for v in lists]}")
    return tuple(zip(*(map(int, values) for values in lists)))


def resolve_preset(cfg: ZipformerSslConfig) -> Dict[str, Any]:
    """The architecture values ``cfg.preset`` stands for (empty without a preset).

    Raises:
        ValueError: an unknown preset, or an architecture key set to a value other than both its
            default and the preset's (say which one you mean).
    """
    if not cfg.preset:
        return {}
    if cfg.preset not in PRESETS:
        raise ValueError(f"zipformer_ssl: model.preset={cfg.preset!r}; the presets are {', '.join(PRESETS)}")
    section = presets.model_section("pretrain", f"zipformer_{cfg.preset}")
    defaults = ZipformerSslConfig()
    values = {}
    for key in ARCHITECTURE_KEYS:
        given, wanted = plain(getattr(cfg, key)), plain(section[key])
        if given != wanted and given != plain(getattr(defaults, key)):
            raise ValueError(f"zipformer_ssl: model.{key}={given} conflicts with model.preset={cfg.preset} "
                             f"({key}={wanted}); drop one of them")
        values[key] = wanted
    return values


FRONTENDS = ("cnn", "fbank")


def _frontend(cfg: ZipformerSslConfig) -> nn.Module:
    """The waveform front-end ``cfg.frontend`` names.

    Raises:
        ValueError: an unknown front-end.
    """
    if cfg.frontend == "cnn":
        return ConvFeatureExtractionModel(conv_layers=list(conv_layers(cfg)), dropout=0.0,
                                          mode=str(cfg.extractor_mode), conv_bias=cfg.conv_bias)
    if cfg.frontend == "fbank":
        return FbankFrontEnd(cfg.encoder_dim[0], cfg.fbank_frame_rate, cfg.fbank_bins, cfg.fbank_channels,
                             cfg.fbank_normalize)
    raise ValueError(f"zipformer_ssl: model.frontend={cfg.frontend!r}; the front-ends are {', '.join(FRONTENDS)}")


@register_model("zipformer_ssl", dataclass=ZipformerSslConfig)
class ZipformerSslModel(ParameterTableRepr, MaskedPredictionModel, BaseFairseqModel):
    """Zipformer SSL model (k2SSL) with stock HuBERT's model interface (``MaskedPredictionModel``).

    Args:
        cfg: the model config.
        num_classes: classes of each label set (``len(dictionary)``, fairseq's 4 specials included).
    """

    model_name = "zipformer_ssl"
    valid_frame_statistics = True

    def __init__(self, cfg: ZipformerSslConfig, num_classes: Sequence[int]) -> None:
        super().__init__()
        check_static_masking(cfg, self.model_name)
        architecture = resolve_preset(cfg)
        if architecture:
            cfg = OmegaConf.merge(cfg, {**architecture, "preset": None})
        self.cfg = cfg
        self.num_classes = [int(n) for n in num_classes]
        model_dim = cfg.encoder_dim[0]
        self.feature_extractor = _frontend(cfg)
        # The frame layout: conv_frames of it is the encoder input's frame count, for either front-end.
        self.conv_layers = list(getattr(self.feature_extractor, "layout", None) or conv_layers(cfg))
        self.frames_per_label = cfg.label_rate * conv_stride(self.conv_layers) / cfg.sample_rate
        cnn_dim = self.conv_layers[-1][0]
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
        self._closed_update: Optional[int] = None
        self._batch_count: Optional[float] = None
        # What the shared front half reads (MaskedPredictionModel).
        self.feature_grad_mult = cfg.feature_grad_mult
        self.mask_prob, self.mask_length, self.mask_min_masks = cfg.mask_prob, cfg.mask_length, cfg.mask_min_masks
        self.mask_channel_prob, self.mask_channel_length = cfg.mask_channel_prob, cfg.mask_channel_length
        self.skip_masked, self.skip_nomask = cfg.skip_masked, cfg.skip_nomask
        self.logit_temp = cfg.logit_temp

    @classmethod
    def build_model(cls, cfg: ZipformerSslConfig, task) -> "ZipformerSslModel":
        """Build from the task's label dictionaries (``task.dictionaries``, as stock HuBERT tasks have);
        the resolved architecture of a preset is recorded in the config fairseq saves, and stock
        HuBERT settings this model ignores are named in the log."""
        model = cls(cfg, [len(d) for d in task.dictionaries])
        log_ignored("zipformer_ssl", cfg, HubertConfig, IGNORED_HUBERT_KEYS)
        if cfg.preset:
            record_in_saved_config(cfg, {**resolve_preset(cfg), "preset": None})
        warn_if_stock_hubert_criterion(cfg, cls.model_name)
        compile_layers(cfg, model.encoder_layers(), cls.model_name)
        return model

    def encoder_layers(self) -> List[nn.Module]:
        """The layers ``model.compile`` compiles."""
        return self.encoder.layers()

    def set_num_updates(self, num_updates: int) -> None:
        """fairseq calls this before every batch (and on load) with the update count. When the count
        changes, close the previous update for the regularisers' adaptive state, on every rank
        alike; and drive the encoder's schedules with k2SSL's adjusted batch count.

        ``batch_count = n * seconds_per_update / ref_duration`` with ``n`` the last multiple of
        ``batch_count_interval`` up to ``num_updates`` (k2SSL refreshes every 10 batches), where
        ``seconds_per_update`` is ``max_duration * world_size * update_freq`` (k2SSL Base: 600 s x 8
        GPUs x 1 / 600 = 8 batch counts per update); with it unset the batch count is ``n``. Both
        depend on nothing but the saved state and ``num_updates``, so a resumed run continues exactly.
        """
        super().set_num_updates(num_updates)
        if num_updates != self._closed_update:
            end_whitening_update(self.encoder, _max_over_ranks if _distributed() else None)
            self._closed_update = num_updates
        batch_count = self.batch_count(num_updates)
        if batch_count != self._batch_count:  # it moves every batch_count_interval updates
            set_batch_count(self.encoder, batch_count)
            self._batch_count = batch_count

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # fairseq's trainer calls set_num_updates(n) before it loads the weights, and a checkpoint is
        # saved before its update is closed: the loaded findings are closed by the next call for n.
        self._closed_update = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def batch_count(self, num_updates: int) -> float:
        """k2SSL's adjusted batch count for ``num_updates`` optimizer updates (see ``set_num_updates``)."""
        interval = max(int(self.cfg.batch_count_interval), 1)
        refreshed = num_updates // interval * interval
        if self.cfg.seconds_per_update is None:
            return float(refreshed)
        return refreshed * self.cfg.seconds_per_update / self.cfg.ref_duration

    def remove_pretraining_modules(self) -> None:
        """Drop the classification head (fine-tuning wrappers call this)."""
        self.final_proj = None

    def encode(self, x: torch.Tensor, frame_padding: Optional[torch.Tensor],
               output_layer: Optional[int]) -> torch.Tensor:
        """Zipformer2 on ``(batch, frame, encoder_dim[0])`` → ``(batch, frame, dim)``; ``output_layer``
        is a 1-based stack, whose output is taken at the full frame rate."""
        stacks = len(self.cfg.encoder_dim)
        if output_layer is not None and not 1 <= output_layer <= stacks:
            raise ValueError(f"zipformer_ssl: output_layer must be a stack number in 1..{stacks}, got {output_layer}")
        encoded = self.encoder(x.transpose(0, 1), padding_mask=frame_padding)
        out = encoded.output if output_layer is None else encoded.stack_outputs[output_layer - 1]
        return out.transpose(0, 1)

    def class_logits(self, frames: torch.Tensor, targets: List[torch.Tensor]):
        """``final_proj(x) / logit_temp`` split per label set; the targets are the classes."""
        return linear_class_logits(self.final_proj(frames), self.num_classes, self.logit_temp), targets


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


def _max_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The element-wise maximum over all ranks (on the default group; a CUDA tensor for NCCL)."""
    device = torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" \
        else torch.device("cpu")
    values = values.to(device)
    torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
    return values.cpu()
