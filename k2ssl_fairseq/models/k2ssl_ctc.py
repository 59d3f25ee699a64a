"""``k2ssl_ctc``: a pre-trained SSL encoder plus a letter CTC head, fine-tuned with fairseq's ``ctc``.

The encoder comes from a pre-training checkpoint (``pretrained_path``) of ``zipformer_ssl``,
``k2ssl_hubert`` or stock ``hubert`` (migrated on the fly to ``k2ssl_hubert``, whose parameters are the
same tensors). The head is k2SSL's letter-CTC head ``Dropout -> Linear(D, len(target dictionary))``;
the blank is the dictionary's ``<s>`` (index 0), the ``ctc`` criterion's ``blank_symbol``.

Self-contained checkpoints: the first build copies what is needed to rebuild the encoder (its model
config, class counts and sample rate) into ``model.encoder`` of the *trainer's* config object, which
is what fairseq saves. Loading a fine-tuned checkpoint then rebuilds the encoder from that record and
never opens the pre-training file or its data directories (fairseq's ``hubert_ctc`` records
``w2v_args`` on a merged copy, so its checkpoints keep needing ``w2v_path``).

Fine-tuning options follow k2SSL: masking stays on (``mask_prob`` 0.65, span 10),
``feature_grad_mult`` 1, no freezing, and the Zipformer's regularisation schedules restart from batch
count 0 (they are driven by the fine-tuning update count). Each encoder override (masking, dropouts,
``feature_grad_mult``) replaces the pre-trained config value of the same name; ``None`` keeps it.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from fairseq.models import BaseFairseqModel, register_model
from omegaconf import OmegaConf
from torch import nn

from .. import checkpoints
from ..checkpoints import EncoderRecord
from ..paths import from_launch_dir
from . import k2ssl_hubert, zipformer_ssl  # noqa: F401  (registers the encoder models)
from .compiling import CompileConfig, compile_layers
from .config_records import record_in_saved_config
from .summary import ParameterTableRepr

#: ``K2sslCtcConfig`` fields that override the encoder config key of the same name when not None.
ENCODER_OVERRIDES = (
    "mask_prob", "mask_length", "mask_channel_prob", "mask_channel_length", "feature_grad_mult",
    "dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop", "dropout_input",
    "dropout_features", "seconds_per_update",
)


def _override(default: Optional[float], help_text: str) -> Any:
    """A dataclass field for an encoder override (see ``ENCODER_OVERRIDES``)."""
    return field(default=default, metadata={"help": help_text + "; None keeps the pre-trained value"})


@dataclass
class K2sslCtcConfig(CompileConfig):
    pretrained_path: Optional[str] = field(
        default=None, metadata={"help": "pre-training checkpoint (zipformer_ssl, k2ssl_hubert or stock hubert); "
                                        "only read on the first build, when model.encoder is empty"})
    pretrained_weights: bool = field(
        default=True, metadata={"help": "load the pre-trained weights; false builds the same encoder randomly "
                                        "initialised (the from-scratch baseline)"})
    encoder: Optional[Any] = field(
        default=None, metadata={"help": "filled at build time: {model, num_classes, sample_rate, normalize, "
                                        "source} of the pre-trained encoder, so checkpoints are self-contained; "
                                        "leave unset"})
    final_dropout: float = field(default=0.1, metadata={"help": "dropout before the CTC projection (k2SSL: 0.1)"})
    apply_mask: bool = field(default=True, metadata={"help": "mask encoder input spans while fine-tuning"})
    freeze_finetune_updates: int = field(
        default=0, metadata={"help": "train only the CTC head for this many updates (k2SSL: 0)"})
    mask_prob: Optional[float] = _override(0.65, "span-mask probability while fine-tuning (k2SSL: 0.65)")
    mask_length: Optional[int] = _override(10, "span-mask length in frames (k2SSL: 10)")
    mask_channel_prob: Optional[float] = _override(None, "channel-mask probability (HuBERT encoders only)")
    mask_channel_length: Optional[int] = _override(None, "channel-mask span (HuBERT encoders only)")
    feature_grad_mult: Optional[float] = _override(1.0, "gradient multiplier into the CNN front-end (k2SSL: 1.0)")
    dropout: Optional[float] = _override(None, "transformer dropout (HuBERT encoders only)")
    attention_dropout: Optional[float] = _override(None, "attention dropout (HuBERT encoders only)")
    activation_dropout: Optional[float] = _override(None, "feed-forward activation dropout (HuBERT encoders only)")
    encoder_layerdrop: Optional[float] = _override(None, "layer drop probability (HuBERT encoders only)")
    dropout_input: Optional[float] = _override(None, "dropout on the projected CNN features")
    dropout_features: Optional[float] = _override(None, "dropout on the CNN features (HuBERT encoders only)")
    seconds_per_update: Optional[float] = _override(
        None, "audio seconds per update for the Zipformer schedules' batch count (zipformer_ssl only)")


def encoder_overrides(cfg: K2sslCtcConfig) -> Dict[str, Any]:
    """The fine-tuning overrides of the encoder config: every ``ENCODER_OVERRIDES`` field that is set."""
    return {key: getattr(cfg, key) for key in ENCODER_OVERRIDES if getattr(cfg, key) is not None}


def build_encoder(record: EncoderRecord, cfg: K2sslCtcConfig) -> BaseFairseqModel:
    """The encoder a record describes with ``cfg``'s overrides (random weights)."""
    try:
        return checkpoints.build_encoder(record, encoder_overrides(cfg))
    except ValueError as err:
        raise ValueError(f"k2ssl_ctc: {err}") from None


@register_model("k2ssl_ctc", dataclass=K2sslCtcConfig)
class K2sslCtcModel(ParameterTableRepr, BaseFairseqModel):
    """Pre-trained encoder + ``Dropout -> Linear(D, vocabulary)`` CTC head (module docstring).

    Args:
        cfg: the fine-tuning config.
        encoder: the pre-training model (its pre-training head already removed).
        encoder_dim: ``D``, channels of the encoder output.
        vocabulary_size: ``len(target_dictionary)``.
    """

    def __init__(self, cfg: K2sslCtcConfig, encoder: BaseFairseqModel, encoder_dim: int,
                 vocabulary_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.final_dropout = nn.Dropout(cfg.final_dropout)
        self.proj = nn.Linear(encoder_dim, vocabulary_size)
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.num_updates = 0
        self.encoder.set_num_updates(0)

    @classmethod
    def build_model(cls, cfg: K2sslCtcConfig, task) -> "K2sslCtcModel":
        """Build from ``cfg.encoder`` if recorded, else from ``cfg.pretrained_path`` (and record it)."""
        weights = None
        stored = OmegaConf.to_container(cfg.encoder, resolve=True) if OmegaConf.is_config(cfg.encoder) else cfg.encoder
        if stored is None:
            if not cfg.pretrained_path:
                raise ValueError("k2ssl_ctc: set model.pretrained_path to a pre-training checkpoint")
            record, weights = checkpoints.record_from_pretraining(from_launch_dir(cfg.pretrained_path,
                                                                                  "model.pretrained_path"))
            if not cfg.pretrained_weights:
                weights = None
            _check_task(record, task)
            record_in_saved_config(cfg, {"encoder": record.to_dict()})
        else:
            record = EncoderRecord.from_mapping(stored, cfg.pretrained_path or "model.encoder")
        encoder = build_encoder(record, cfg)
        if weights is not None:
            checkpoints.check_state_dict(weights, encoder.state_dict(), record.source,
                                         f"the {record.model['_name']} encoder its config describes")
            encoder.load_state_dict(weights, strict=True)
        encoder_dim = encoder.final_proj.in_features
        encoder.remove_pretraining_modules()
        compile_layers(cfg, encoder.encoder_layers(), "k2ssl_ctc")
        return cls(cfg, encoder, encoder_dim, len(task.target_dictionary))

    def set_num_updates(self, num_updates: int) -> None:
        """Fine-tuning update count; it also drives the encoder's schedules, which restart at 0."""
        super().set_num_updates(num_updates)
        self.num_updates = num_updates

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                mask_indices: Optional[torch.Tensor] = None, **unused: Any) -> Dict[str, Optional[torch.Tensor]]:
        """CTC logits, in the layout of fairseq's ``ctc`` criterion.

        Args:
            source: waveform ``(batch, samples)``.
            padding_mask: ``(batch, samples)`` True at padding, or None.
            mask_indices: ``(batch, frames)`` masks from the data path; drawn by the encoder when absent.

        Returns:
            ``encoder_out`` ``(frame, batch, vocabulary)`` logits, ``encoder_padding_mask`` and
            ``padding_mask`` ``(batch, frame)`` True at padded frames (None when nothing is padded).
        """
        mask = self.cfg.apply_mask and self.training
        encoder_kwargs = {"padding_mask": padding_mask, "mask": mask, "features_only": True}
        if mask and mask_indices is not None:
            encoder_kwargs["mask_indices"] = mask_indices
        train_encoder = self.num_updates >= self.cfg.freeze_finetune_updates
        with torch.set_grad_enabled(train_encoder and torch.is_grad_enabled()):
            encoded = self.encoder(source, **encoder_kwargs)
        logits = self.proj(self.final_dropout(encoded["x"])).transpose(0, 1)
        frame_padding = encoded["padding_mask"]
        if frame_padding is not None and not frame_padding.any():
            frame_padding = None
        return {"encoder_out": logits, "encoder_padding_mask": frame_padding, "padding_mask": frame_padding}

    def get_logits(self, net_output: Dict[str, Optional[torch.Tensor]]) -> torch.Tensor:
        """Logits ``(frame, batch, vocabulary)`` in float32 with every padded frame forced to blank.

        Padded frames get logit 0 for the blank (index 0) and ``-inf`` for every other unit, so any
        decoder reading them emits nothing there.
        """
        logits = net_output["encoder_out"].float()
        padding = net_output["encoder_padding_mask"]
        if padding is None:
            return logits
        forced = torch.full_like(logits[:1, :1], float("-inf")).expand_as(logits).clone()
        forced[..., 0] = 0.0
        return torch.where(padding.t()[..., None], forced, logits)

    def get_normalized_probs(self, net_output: Dict[str, Optional[torch.Tensor]], log_probs: bool,
                             sample: Optional[Dict[str, Any]] = None) -> torch.Tensor:
        """(Log-)softmax of :meth:`get_logits`, ``(frame, batch, vocabulary)``."""
        logits = self.get_logits(net_output)
        return F.log_softmax(logits, dim=-1) if log_probs else F.softmax(logits, dim=-1)

    @property
    def vocabulary_size(self) -> int:
        """Units of the CTC head (blank included)."""
        return self.proj.out_features


def _check_task(record: EncoderRecord, task: Any) -> None:
    """Refuse a fine-tuning task whose audio settings differ from pre-training."""
    task_cfg = getattr(task, "cfg", None)
    if task_cfg is None:
        return
    for key in ("sample_rate", "normalize"):
        value = getattr(task_cfg, key, None)
        if value is not None and value != getattr(record, key):
            raise ValueError(f"k2ssl_ctc: task.{key}={value} but {record.source} was pre-trained "
                             f"with {key}={getattr(record, key)}; fine-tune with the pre-training setting")
