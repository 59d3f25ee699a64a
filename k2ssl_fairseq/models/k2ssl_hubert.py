"""``k2ssl_hubert``: fairseq's HuBERT network, cheaper to train, with interchangeable state dicts.

The network, parameter names and shapes are stock ``hubert``'s (the stock constructor builds it), so
checkpoints convert both ways without touching a tensor (``k2ssl_fairseq/conversion/hubert.py``) and
existing yamls switch by setting ``model._name: k2ssl_hubert``. What changes is how it computes:

* **cosine logits** (``logit_mode: cosine``, default): stock HuBERT expands every label embedding
  against every frame into a ``(1+V, S, final_dim)`` tensor before taking cosine similarities. Here
  the same ``(S, 1+V)`` logits (positive in column 0, copies of the positive among the negatives set
  to ``-inf``, float32) come from one product of normalised matrices, so loss, gradients and the
  stock ``hubert`` criterion's accuracy are unchanged while the memory is ``O(S·V)``;
* **linear logits** (``logit_mode: linear``): k2SSL's head ``Linear(D, sum(num_classes)) /
  logit_temp`` with cross-entropy on the real classes; ``get_targets`` returns those classes
  (dictionary indices: k-means id ``k`` is ``k + 4``). Its ``final_proj`` has another shape and there
  are no label embeddings, so only cosine mode converts to stock ``hubert``;
* **attention** runs through ``F.scaled_dot_product_attention`` in ``(batch, head, time, head_dim)``
  layout with a boolean key-padding mask (no mask at all for unpadded batches, which lets the flash
  kernel run); the projections are the stock ``encoder.layers.{i}.self_attn.{q,k,v,out}_proj``;
* **masks** come from ``net_input["mask_indices"]`` when the data path provides them; otherwise they
  are drawn with the package's vectorised span masking (``data/masking.py``, stock ``static``
  distribution) instead of fairseq's per-utterance NumPy loop;
* **padding masks are frame-exact**: frame ``t`` of a row is padding iff ``t >=
  conv_frames(valid samples)``. Stock ``forward_padding_mask`` cuts the sample mask into ``T``
  equal chunks and can be off by one frame for padded rows; on unpadded or equal-length batches the
  two agree;
* **the CNN front-end** runs through ``models/conv_frontend.py`` (same parameters, stock statistics):
  it keeps one tensor per layer for backward instead of two or three;
* **the feature penalty** averages over valid frames (stock: over all frames, padding included; the
  two agree on unpadded batches, which cropped pre-training batches are). The steps around encoder
  and head are ``models/masked_prediction.py``'s, shared with ``zipformer_ssl``.
"""

import copy
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from fairseq.data.dictionary import Dictionary
from fairseq.dataclass import ChoiceEnum
from fairseq.models import register_model
from fairseq.models.hubert.hubert import HubertConfig, HubertModel
from fairseq.modules.multihead_attention import MultiheadAttention
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
from torch import nn

from ..safe_literals import UnsafeLiteralError, parse_literal
from .compiling import CompileConfig, compile_layers
from .config_records import warn_if_stock_hubert_criterion
from .masked_prediction import MaskedPredictionModel, check_static_masking, linear_class_logits
from .summary import ParameterTableRepr

LOGIT_MODE_CHOICES = ChoiceEnum(["cosine", "linear"])

#: ``torch.cosine_similarity``'s default: each vector norm is clamped to at least this.
COSINE_EPS = 1e-8


@dataclass
class K2sslHubertConfig(HubertConfig, CompileConfig):
    logit_mode: LOGIT_MODE_CHOICES = field(
        default="cosine",
        metadata={"help": "cosine: stock HuBERT logits (cosine similarity to label embeddings, "
                          "computed as a normalised matrix product); linear: k2SSL's "
                          "Linear(D, num_classes)/logit_temp head with cross-entropy on the classes"},
    )
    mask_min_masks: int = field(default=2, metadata={"help": "minimum number of masked spans per utterance "
                                                             "(stock HuBERT: 2, as the task's setting of that name)"})


class SdpaSelfAttention(nn.Module):
    """Self-attention with fairseq ``MultiheadAttention``'s parameters, computed by SDPA.

    Same Linear modules (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``) and the same call signature
    as the module it replaces inside ``TransformerSentenceEncoderLayer``, so state dicts and callers
    are unchanged.
    """

    def __init__(self, q_proj: nn.Linear, k_proj: nn.Linear, v_proj: nn.Linear, out_proj: nn.Linear,
                 num_heads: int, dropout: float) -> None:
        super().__init__()
        if q_proj.out_features % num_heads:
            raise ValueError(f"embed dim {q_proj.out_features} is not divisible by {num_heads} heads")
        # Registered in fairseq's order (k, v, q, out): state dicts and optimizer states, which follow
        # parameter order, stay interchangeable with stock checkpoints.
        self.k_proj, self.v_proj, self.q_proj, self.out_proj = k_proj, v_proj, q_proj, out_proj
        self.num_heads = num_heads
        self.dropout = dropout

    @classmethod
    def adopt(cls, attention: MultiheadAttention) -> "SdpaSelfAttention":
        """Take over a fairseq self-attention module's projections (no copy, no new parameters)."""
        if not attention.self_attention or attention.bias_k is not None or attention.add_zero_attn:
            raise ValueError("only plain fairseq self-attention (no bias_kv, no zero_attn) can use SDPA")
        return cls(attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj,
                   attention.num_heads, attention.dropout_module.p)

    def forward(self, query: torch.Tensor, key: Optional[torch.Tensor] = None,
                value: Optional[torch.Tensor] = None, key_padding_mask: Optional[torch.Tensor] = None,
                need_weights: bool = False, attn_mask: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, None]:
        """Attend over the sequence.

        Args:
            query: ``(time, batch, embed)``; ``key`` and ``value`` must be None or ``query`` itself.
            key_padding_mask: ``(batch, time)`` bool, True = padding; None = nothing padded.
            need_weights: must be False (SDPA never materialises the weights).
            attn_mask: must be None (HuBERT's encoder never passes one).

        Returns:
            ``((time, batch, embed), None)``, like fairseq's module with ``need_weights=False``.
        """
        if any(t is not None and t is not query for t in (key, value)):
            raise ValueError("SdpaSelfAttention is self-attention only: key and value must be the query")
        if need_weights or attn_mask is not None:
            raise ValueError("SdpaSelfAttention supports neither need_weights nor attn_mask")
        time, batch, embed = query.shape
        head_dim = embed // self.num_heads

        def heads(proj: nn.Linear) -> torch.Tensor:
            # (time, batch, embed) -> (batch, head, time, head_dim)
            return proj(query).view(time, batch, self.num_heads, head_dim).permute(1, 2, 0, 3)

        keep = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(heads(self.q_proj), heads(self.k_proj), heads(self.v_proj),
                                             attn_mask=keep,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = out.permute(2, 0, 1, 3).reshape(time, batch, embed)
        return self.out_proj(out), None


def _linear_head_config(cfg: K2sslHubertConfig, num_classes: Sequence[int]) -> K2sslHubertConfig:
    """The config under which the stock constructor builds k2SSL's linear head as ``final_proj``."""
    head_cfg = copy.deepcopy(cfg)
    head_cfg.final_dim = sum(num_classes)
    head_cfg.untie_final_proj = False
    return head_cfg


def _check_supported(cfg: K2sslHubertConfig) -> None:
    """Refuse settings this model cannot honour, and a CNN layout that is not plain data (the stock
    constructor ``eval``s it, wherever the config came from: command line, yaml or a checkpoint)."""
    try:
        parse_literal(str(cfg.conv_feature_layers))
    except UnsafeLiteralError as err:
        raise ValueError(f"model.conv_feature_layers={cfg.conv_feature_layers!r} refused: {err}") from None
    check_static_masking(cfg, "k2ssl_hubert")
    problems = []
    if cfg.layer_type != "transformer":
        problems.append(f"layer_type={cfg.layer_type!r} (only 'transformer' has an SDPA encoder)")
    if str(cfg.logit_mode) == "linear" and cfg.target_glu:
        problems.append("target_glu=true with logit_mode=linear (there are no label embeddings)")
    if problems:
        raise ValueError("k2ssl_hubert does not support: " + "; ".join(problems))


@register_model("k2ssl_hubert", dataclass=K2sslHubertConfig)
class K2sslHubertModel(ParameterTableRepr, MaskedPredictionModel, HubertModel):
    """Stock HuBERT with SDPA attention, cheap exact cosine logits or a linear head (module doc), on
    the shared masked-prediction front half (stock CNN statistics)."""

    model_name = "k2ssl_hubert"

    def __init__(self, cfg: K2sslHubertConfig, task_cfg: HubertPretrainingConfig,
                 dictionaries: List[Optional[Dictionary]]) -> None:
        _check_supported(cfg)
        self.logit_mode = str(cfg.logit_mode)
        if self.logit_mode == "linear":
            if any(d is None for d in dictionaries):
                raise ValueError("logit_mode=linear needs the label dictionaries to size its head")
            num_classes = [len(d) for d in dictionaries]
            # The stock constructor's dictionary-less branch builds no label embeddings; with a tied
            # final_dim of sum(num_classes) its final_proj is exactly the linear head.
            super().__init__(_linear_head_config(cfg, num_classes), task_cfg, [None] * len(dictionaries))
            self.num_classes = num_classes
        else:
            super().__init__(cfg, task_cfg, dictionaries)
        self.conv_layers = tuple((block[0].out_channels, block[0].kernel_size[0], block[0].stride[0])
                                 for block in self.feature_extractor.conv_layers)
        self.frames_per_label = self.feat2tar_ratio
        self.mask_min_masks = cfg.mask_min_masks
        for layer in self.encoder.layers:
            layer.self_attn = SdpaSelfAttention.adopt(layer.self_attn)

    @classmethod
    def build_model(cls, cfg: K2sslHubertConfig, task) -> "K2sslHubertModel":
        """Build from a HuBERT-style pre-training task (``cfg.sample_rate`` and ``dictionaries``)."""
        if str(cfg.logit_mode) == "linear":
            warn_if_stock_hubert_criterion(cfg, "k2ssl_hubert with logit_mode=linear")
        model = cls(cfg, task.cfg, task.dictionaries)
        compile_layers(cfg, model.encoder_layers(), cls.model_name)
        return model

    def encoder_layers(self) -> List[nn.Module]:
        """The layers ``model.compile`` compiles."""
        return list(self.encoder.layers)

    def encode(self, x: torch.Tensor, frame_padding: Optional[torch.Tensor],
               output_layer: Optional[int]) -> torch.Tensor:
        """The transformer; no padding mask at all for unpadded batches (SDPA's flash kernel then runs)."""
        padding = frame_padding if frame_padding is not None and frame_padding.any() else None
        encoded, _ = self.encoder(x, padding_mask=padding, layer=None if output_layer is None else output_layer - 1)
        return encoded

    def class_logits(self, frames: torch.Tensor, targets: List[torch.Tensor]
                     ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Linear: ``(S, V)`` logits with the dictionary indices as targets; cosine: ``(S, 1+V)``
        logits with target 0 (the positive in column 0)."""
        projected = self.final_proj(frames)
        if self.logit_mode == "linear":
            return linear_class_logits(projected, self.num_classes, self.logit_temp), targets
        chunks = projected.chunk(len(targets), dim=-1) if self.untie_final_proj else [projected] * len(targets)
        embeddings = self.label_embs_concat.split(self.num_classes, 0)
        logits = [self.cosine_logits(chunk, target, embs) for chunk, target, embs in zip(chunks, targets, embeddings)]
        return logits, [t.new_zeros(t.shape) for t in targets]

    def cosine_logits(self, projected: torch.Tensor, target: torch.Tensor, label_embs: torch.Tensor
                      ) -> torch.Tensor:
        """Stock HuBERT's cosine logits without the ``(1+V, S, D)`` expansion.

        Args:
            projected: ``(S, final_dim)`` projected frames.
            target: ``(S,)`` dictionary index of each frame's label.
            label_embs: ``(V, final_dim)`` embeddings of this label set.

        Returns:
            ``(S, 1+V)`` float32: column 0 the positive's similarity, column ``1+j`` label ``j``'s,
            with every label whose (glu'd) embedding equals the positive's set to ``-inf``; all
            divided by ``logit_temp``.
        """
        with torch.autocast(device_type=projected.device.type, enabled=False):
            embs = label_embs.float() if self.target_glu is None else self.target_glu(label_embs.float())
            similarity = (F.normalize(projected.float(), dim=-1, eps=COSINE_EPS)
                          @ F.normalize(embs, dim=-1, eps=COSINE_EPS).t()) / self.logit_temp
            positive = similarity.gather(1, target[:, None])
            with torch.no_grad():
                _, embedding_class = torch.unique(embs.detach(), dim=0, return_inverse=True)
                is_positive = embedding_class[None, :] == embedding_class[target][:, None]
            return torch.cat([positive, similarity.masked_fill(is_positive, float("-inf"))], dim=1)

