"""Encoder records: what a fine-tuned model needs to rebuild its pre-trained encoder, and nothing else.

A ``k2ssl_ctc`` checkpoint carries one in ``cfg.model.encoder`` (so it never reopens the pre-training
file); the ``hubert_ctc`` converter writes one. It holds the pre-training model config (stock
``hubert`` rewritten to ``k2ssl_hubert``, whose parameters are the same tensors), the class count of
each label set (the encoder's head is sized by them), the audio settings the encoder was trained
with, and where it came from.
"""
from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from fairseq.data.dictionary import Dictionary

from .errors import CheckpointMismatchError
from .reading import read_fairseq_checkpoint

STOCK_HUBERT = "hubert"
PLUGIN_HUBERT = "k2ssl_hubert"
#: Pre-training models an encoder record can describe (stock ``hubert`` becomes ``k2ssl_hubert``).
ENCODER_MODELS = ("zipformer_ssl", PLUGIN_HUBERT, STOCK_HUBERT)


def as_plugin_hubert(model_cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """A stock ``hubert`` model config as ``k2ssl_hubert``'s (same tensors, cosine logits); any other
    config unchanged. A new dict either way."""
    model_cfg = copy.deepcopy(dict(model_cfg))
    if model_cfg.get("_name") == STOCK_HUBERT:
        model_cfg["_name"] = PLUGIN_HUBERT
        model_cfg.setdefault("logit_mode", "cosine")
    return model_cfg


def as_stock_hubert(model_cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """A ``k2ssl_hubert`` model config as stock ``hubert``'s; a new dict."""
    model_cfg = copy.deepcopy(dict(model_cfg))
    model_cfg["_name"] = STOCK_HUBERT
    model_cfg.pop("logit_mode", None)
    return model_cfg


@dataclass
class EncoderRecord:
    """The pre-trained encoder of a fine-tuned model.

    Attributes:
        model: the pre-training model config (``_name`` one of ``zipformer_ssl``, ``k2ssl_hubert``).
        num_classes: classes of each pre-training label set (``len(dictionary)``).
        sample_rate: audio samples per second it was trained on.
        normalize: whether its task layer-normalised the waveform.
        source: where the record came from (a path, or a path and a config key).
    """

    model: Dict[str, Any]
    num_classes: List[int]
    sample_rate: int = 16000
    normalize: bool = False
    source: str = ""

    def to_dict(self) -> Dict[str, Any]:
        """The plain dict stored in ``cfg.model.encoder``."""
        return asdict(self)

    @classmethod
    def from_mapping(cls, record: Mapping[str, Any], path: Union[str, os.PathLike]) -> "EncoderRecord":
        """Read a stored record; ``path`` is the checkpoint holding it (for errors).

        Raises:
            CheckpointMismatchError: a key is missing or the model is not one a record can describe.
        """
        missing = [key for key in ("model", "num_classes") if key not in record]
        if missing:
            raise CheckpointMismatchError(path, f"encoder record (cfg.model.encoder) lacks {', '.join(missing)}")
        model = dict(record["model"])
        if model.get("_name") not in ENCODER_MODELS:
            raise CheckpointMismatchError(path, f"encoder record's model is {model.get('_name')!r}, not one of "
                                                f"{', '.join(ENCODER_MODELS)}")
        return cls(model=as_plugin_hubert(model), num_classes=[int(n) for n in record["num_classes"]],
                   sample_rate=int(record.get("sample_rate", 16000)), normalize=bool(record.get("normalize", False)),
                   source=str(record.get("source", "")))


def record_from_pretraining(path: Union[str, os.PathLike], trusted: bool = False
                            ) -> Tuple[EncoderRecord, Dict[str, torch.Tensor]]:
    """The encoder record of a pre-training checkpoint, and its weights (stock ``hubert`` names are
    ``k2ssl_hubert`` names).

    Raises:
        CheckpointMismatchError: not a pre-training checkpoint of a model a record can describe, or
            without label dictionaries.
    """
    checkpoint = read_fairseq_checkpoint(path, trusted)
    cfg = checkpoint["cfg"]
    name = (cfg.get("model") or {}).get("_name")
    if name not in ENCODER_MODELS:
        raise CheckpointMismatchError(path, f"model._name is {name!r}; fine-tuning starts from pre-training "
                                            f"checkpoints of {', '.join(ENCODER_MODELS)}")
    dictionaries = (checkpoint.get("task_state") or {}).get("dictionaries")
    if not dictionaries:
        raise CheckpointMismatchError(path, "no task_state['dictionaries'] (label sets) in the checkpoint")
    task = cfg.get("task") or {}
    record = EncoderRecord(model=as_plugin_hubert(cfg["model"]), num_classes=[len(d) for d in dictionaries],
                           sample_rate=int(task.get("sample_rate", 16000)), normalize=bool(task.get("normalize", False)),
                           source=str(path))
    return record, checkpoint["model"]


def placeholder_dictionary(size: int) -> Dictionary:
    """A dictionary of ``size`` entries (4 specials included): encoders only need label-set sizes."""
    dictionary = Dictionary()
    for index in range(size - len(dictionary)):
        dictionary.add_symbol(f"class{index}")
    return dictionary


def build_encoder(record: EncoderRecord, model_overrides: Optional[Mapping[str, Any]] = None) -> torch.nn.Module:
    """The pre-training model a record describes, randomly initialised, with ``model_overrides``
    (config keys the model has) applied.

    Raises:
        ValueError: an override names a key the encoder's model does not have, or accepts only to
            ignore it (the model config's ``IGNORED_KEYS``).
    """
    from fairseq import models as fairseq_models
    from omegaconf import OmegaConf

    model_cfg = dict(record.model)
    model_cfg["compile"] = False  # the wrapper that trains it (k2ssl_ctc) decides; see models/compiling.py
    dataclass = fairseq_models.MODEL_DATACLASS_REGISTRY.get(model_cfg.get("_name"))
    ignored = getattr(dataclass, "IGNORED_KEYS", ())
    for key, value in (model_overrides or {}).items():
        if key not in model_cfg or key in ignored:
            raise ValueError(f"model.{key}={value} does not apply to a {model_cfg['_name']} encoder "
                             f"(it has no such setting); leave it null")
        model_cfg[key] = value
    builder = SimpleNamespace(cfg=SimpleNamespace(sample_rate=record.sample_rate),
                              dictionaries=[placeholder_dictionary(n) for n in record.num_classes])
    return fairseq_models.build_model(OmegaConf.create(model_cfg), builder, from_checkpoint=True)
