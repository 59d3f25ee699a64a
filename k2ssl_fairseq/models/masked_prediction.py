"""The masked-prediction front half both SSL models share, with stock HuBERT's model interface.

``zipformer_ssl`` and ``k2ssl_hubert`` differ in their encoder and their head; everything around them
is one sequence of steps, written once here: CNN features → frames aligned to the labels → feature
penalty → LayerNorm, projection, input dropout → time (and channel) masks → *encoder* → *class
logits* on the masked and on the unmasked valid frames. A model mixes in :class:`MaskedPredictionModel`
and provides the model-specific parts:

* :meth:`~MaskedPredictionModel.encode` (the encoder, and what ``output_layer`` means for it);
* :meth:`~MaskedPredictionModel.class_logits` (the head: linear classes or HuBERT's cosine logits);
* :attr:`~MaskedPredictionModel.valid_frame_statistics`: whether the first CNN layer's GroupNorm takes
  its statistics over each row's valid frames (the Zipformer, so that an utterance's output does not
  depend on its batch) or over all frames, padding included (``k2ssl_hubert``, which stays stock
  HuBERT numerically);
* the attributes the steps read: ``feature_extractor``, ``conv_layers``, ``frames_per_label``,
  ``feature_grad_mult``, ``layer_norm``, ``post_extract_proj``, ``dropout_input``, ``mask_emb``,
  ``mask_prob``, ``mask_length``, ``mask_min_masks``, ``mask_channel_prob``, ``mask_channel_length``,
  ``skip_masked``, ``skip_nomask``, ``logit_temp`` and ``num_classes``.

Definitions both models follow (each tested in ``tests/test_masked_prediction_front.py``):

* the feature penalty is the mean square of the CNN features over valid frames (stock HuBERT's
  includes padded frames; the two agree on unpadded batches, which is what pre-training crops to);
* without a time mask (``mask=False``, or ``mask_prob`` 0 and no precomputed mask) no frame is masked
  and every valid frame is an unmasked frame; with ``mask_prob`` > 0 the drawn spans number at least
  ``mask_min_masks`` per utterance, as the data path's precomputed masks do;
* a precomputed ``mask_indices`` must be ``(batch, >= frames)``; anything else is a ``ValueError``
  naming the model and both shapes.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from fairseq.modules import GradMultiply
from torch import Tensor

from ..data.frames import conv_frames, frame_padding_mask
from ..data.masking import span_mask_tensor
from .conv_frontend import conv_features
from .fbank_frontend import FbankFrontEnd

Predictions = Tuple[List[Optional[Tensor]], List[Optional[Tensor]]]


def check_static_masking(cfg: Any, model_name: str) -> None:
    """Refuse HuBERT masking settings the vectorised span masking (``data/masking.py``) does not draw:
    only ``static`` spans, which may overlap, as stock HuBERT's default."""
    problems = []
    for name in ("mask_selection", "mask_channel_selection"):
        if str(getattr(cfg, name, "static")) != "static":
            problems.append(f"{name}={getattr(cfg, name)!r} (the vectorised masking draws 'static' spans)")
    for name in ("no_mask_overlap", "no_mask_channel_overlap"):
        if getattr(cfg, name, False):
            problems.append(f"{name}=true (the vectorised masking lets spans overlap)")
    if problems:
        raise ValueError(f"{model_name} does not support: " + "; ".join(problems))


def align_to_labels(features: Tensor, frame_padding: Optional[Tensor], target_list: List[Tensor],
                    frames_per_label: float) -> Tuple[Tensor, Optional[Tensor], List[Tensor]]:
    """Trim frames to those with a label and pick each frame's label (stock HuBERT's rule).

    Frame ``i`` takes label ``floor(i * frames_per_label)``: 1 at 50 Hz labels, 2 at 100 Hz.
    """
    label_frames = min(t.shape[1] for t in target_list)
    num_frames = features.shape[1]
    if frames_per_label * num_frames > label_frames:
        num_frames = int(label_frames / frames_per_label)
        features = features[:, :num_frames]
        if frame_padding is not None:
            frame_padding = frame_padding[:, :num_frames]
    label_index = (torch.arange(num_frames, device=features.device).double() * frames_per_label).long()
    return features, frame_padding, [t[:, label_index] for t in target_list]


def feature_penalty(features: Tensor, frame_padding: Optional[Tensor]) -> Tensor:
    """Mean square of the CNN features ``(batch, frame, channel)`` over valid frames (the L2 penalty
    HuBERT and k2SSL weight by ``loss_weights``)."""
    squares = features.float().pow(2)
    if frame_padding is None:
        return squares.mean()
    valid = (~frame_padding).unsqueeze(-1).to(squares.dtype)
    return (squares * valid).sum() / (valid.sum() * squares.shape[2]).clamp(min=1.0)


def linear_class_logits(projected: Tensor, num_classes: Sequence[int], logit_temp: float) -> List[Tensor]:
    """k2SSL's head: one ``Linear(D, sum(num_classes))`` output split per label set, over ``logit_temp``."""
    return [chunk / logit_temp for chunk in projected.split(list(num_classes), dim=-1)]


class MaskedPredictionModel:
    """Stock HuBERT's ``forward``/``extract_features``/``get_logits``/``get_targets``/``get_extra_losses``
    on the shared front half (module docstring); mixed into a ``torch.nn.Module`` model."""

    #: Name used in error messages.
    model_name = "masked-prediction model"
    #: First-layer GroupNorm statistics over each row's valid frames (and padded samples zeroed).
    valid_frame_statistics = False

    def encode(self, x: Tensor, frame_padding: Optional[Tensor], output_layer: Optional[int]) -> Tensor:
        """The encoder on ``(batch, frame, dim)`` input; ``output_layer`` (1-based) stops early."""
        raise NotImplementedError

    def class_logits(self, frames: Tensor, targets: List[Tensor]) -> Predictions:
        """Logits and targets of selected encoder frames ``(S, dim)``; ``targets`` are their
        dictionary indices per label set."""
        raise NotImplementedError

    def forward(
        self,
        source: Tensor,
        target_list: Optional[List[Tensor]] = None,
        padding_mask: Optional[Tensor] = None,
        mask: bool = True,
        features_only: bool = False,
        output_layer: Optional[int] = None,
        mask_indices: Optional[Tensor] = None,
    ) -> Dict[str, object]:
        """Stock HuBERT's forward, plus the data path's precomputed ``mask_indices``.

        Args:
            source: waveform ``(batch, samples)``.
            target_list: one ``(batch, label_frames)`` int64 tensor of dictionary indices per label
                set; required unless ``features_only``.
            padding_mask: ``(batch, samples)`` True at padded samples (padding at the end), or None.
            mask: mask the encoder input (``mask_indices`` if given, else drawn here).
            features_only: return encoder features instead of logits.
            output_layer: 1-based encoder layer (stack, for the Zipformer) to stop after.
            mask_indices: ``(batch, >= frames)`` bool masks from the data path.

        Returns:
            With ``features_only``: ``{"x": (batch, frame, dim), "padding_mask": (batch, frame) or
            None, "features": the encoder input}``. Otherwise ``logit_m_list``/``logit_u_list`` and
            ``target_m_list``/``target_u_list`` (per label set, None when skipped), the frame
            ``padding_mask``, ``mask_indices`` (the time mask applied, or None) and ``features_pen``.
        """
        if not features_only and target_list is None:
            raise ValueError(f"{self.model_name}: target_list is required unless features_only=True")
        features, frame_padding = self.cnn_features(source, padding_mask)
        if target_list is not None:
            features, frame_padding, target_list = align_to_labels(features, frame_padding, target_list,
                                                                   self.frames_per_label)
        features_pen = feature_penalty(features, frame_padding)
        x = self.layer_norm(features)
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        x = self.dropout_input(x)
        time_mask = None
        if mask:
            time_mask = self.time_mask(mask_indices, frame_padding, x)
            x = self.apply_masks(x, time_mask)
        encoded = self.encode(x, frame_padding, output_layer)
        if features_only:
            return {"x": encoded, "padding_mask": frame_padding, "features": x}

        valid = (torch.ones(encoded.shape[:2], dtype=torch.bool, device=encoded.device)
                 if frame_padding is None else ~frame_padding)
        masked = torch.zeros_like(valid) if time_mask is None else valid & time_mask
        logit_m, target_m = self.predictions(encoded, masked, target_list, self.skip_masked)
        logit_u, target_u = self.predictions(encoded, valid & ~masked, target_list, self.skip_nomask)
        return {"logit_m_list": logit_m, "logit_u_list": logit_u, "target_m_list": target_m,
                "target_u_list": target_u, "padding_mask": frame_padding, "mask_indices": time_mask,
                "features_pen": features_pen}

    def cnn_features(self, source: Tensor, padding_mask: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """The front-end (the CNN, or :meth:`fbank_features`): ``(features (batch, frame, channel),
        frame padding (batch, frame) or None)``.

        Frame ``t`` of a row is padding iff ``t >= conv_frames(valid samples)``.
        """
        if source.dim() != 2:
            raise ValueError(f"{self.model_name}: source must be (batch, samples), got shape {tuple(source.shape)}")
        if isinstance(self.feature_extractor, FbankFrontEnd):
            return self.fbank_features(source, padding_mask)
        if padding_mask is None:
            return conv_features(self.feature_extractor, source, grad_mult=self.feature_grad_mult), None
        if padding_mask.shape != source.shape:
            raise ValueError(f"{self.model_name}: padding_mask shape {tuple(padding_mask.shape)} does not match "
                             f"source shape {tuple(source.shape)}")
        lengths = (~padding_mask).sum(1)
        first_layer_frames = None
        if self.valid_frame_statistics:
            source = source.masked_fill(padding_mask, 0.0)
            first_layer_frames = conv_frames(lengths, self.conv_layers[:1])
        features = conv_features(self.feature_extractor, source, first_layer_frames, self.feature_grad_mult)
        return features, frame_padding_mask(lengths, features.shape[1], self.conv_layers)

    def fbank_features(self, source: Tensor, padding_mask: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """The fbank front-end's features and frame padding, on the same frame arithmetic as the CNN's."""
        if padding_mask is not None and padding_mask.shape != source.shape:
            raise ValueError(f"{self.model_name}: padding_mask shape {tuple(padding_mask.shape)} does not match "
                             f"source shape {tuple(source.shape)}")
        lengths = None if padding_mask is None else (~padding_mask).sum(1)
        features = self.feature_extractor(source, lengths)
        if self.feature_grad_mult != 1.0:
            features = GradMultiply.apply(features, self.feature_grad_mult)
        if lengths is None:
            return features, None
        return features, frame_padding_mask(lengths, features.shape[1], self.conv_layers)

    def time_mask(self, mask_indices: Optional[Tensor], frame_padding: Optional[Tensor], x: Tensor
                  ) -> Optional[Tensor]:
        """The ``(batch, frame)`` bool time mask: the data path's, else a fresh span mask, else None."""
        batch, num_frames = x.shape[:2]
        if mask_indices is not None:
            if mask_indices.dim() != 2 or mask_indices.size(0) != batch or mask_indices.size(1) < num_frames:
                raise ValueError(f"{self.model_name}: mask_indices has shape {tuple(mask_indices.shape)}; expected "
                                 f"(batch, >= frames) = ({batch}, >= {num_frames}) for this batch")
            return mask_indices[:, :num_frames].to(device=x.device, dtype=torch.bool)
        if self.mask_prob <= 0:
            return None
        return span_mask_tensor(frame_padding, batch, num_frames, self.mask_prob, self.mask_length,
                                self.mask_min_masks).to(x.device)

    def apply_masks(self, x: Tensor, time_mask: Optional[Tensor]) -> Tensor:
        """Masked frames become ``mask_emb``; with ``mask_channel_prob`` > 0, drawn channel spans are zeroed."""
        if time_mask is not None:
            x = torch.where(time_mask[..., None], self.mask_emb.to(x.dtype), x)
        if self.mask_channel_prob > 0:
            channel_mask = span_mask_tensor(None, x.size(0), x.size(2), self.mask_channel_prob,
                                            self.mask_channel_length, min_masks=0).to(x.device)
            x = x.masked_fill(channel_mask[:, None, :], 0.0)
        return x

    def predictions(self, encoded: Tensor, selected: Tensor, target_list: List[Tensor], skip: bool) -> Predictions:
        """Logits and targets of the ``selected`` ``(batch, frame)`` frames, or Nones when ``skip``."""
        if skip:
            return [None] * len(target_list), [None] * len(target_list)
        return self.class_logits(encoded[selected], [t[selected].long() for t in target_list])

    def extract_features(self, source: Tensor, padding_mask: Optional[Tensor] = None, mask: bool = False,
                         ret_conv: bool = False, output_layer: Optional[int] = None
                         ) -> Tuple[Tensor, Optional[Tensor]]:
        """Stock HuBERT's feature extraction: ``(features (batch, frame, dim), frame padding or None)``;
        with ``ret_conv`` the features are the encoder input instead of its output."""
        res = self.forward(source, padding_mask=padding_mask, mask=mask, features_only=True,
                           output_layer=output_layer)
        return (res["features"] if ret_conv else res["x"]), res["padding_mask"]

    def get_logits(self, net_output: Dict[str, object], is_masked: bool = True) -> List[Tensor]:
        """Logits per label set of masked (or unmasked) frames, float32; skipped sets left out."""
        return [x.float() for x in net_output["logit_m_list" if is_masked else "logit_u_list"] if x is not None]

    def get_targets(self, net_output: Dict[str, object], is_masked: bool = True) -> List[Tensor]:
        """Targets matching :meth:`get_logits`."""
        return [t for t in net_output["target_m_list" if is_masked else "target_u_list"] if t is not None]

    def get_extra_losses(self, net_output: Dict[str, object]) -> Tuple[List[Tensor], List[str]]:
        """The CNN feature penalty, weighted by the criterion's ``loss_weights``."""
        return [net_output["features_pen"]], ["features_pen"]
