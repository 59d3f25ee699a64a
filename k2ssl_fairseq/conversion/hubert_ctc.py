"""Fine-tuned stock ``hubert_ctc`` checkpoints -> self-contained ``k2ssl_ctc`` ones.

A ``hubert_ctc`` checkpoint holds the fine-tuned weights (``w2v_encoder.w2v_model.*``: the HuBERT
network; ``w2v_encoder.proj.*``: the letter head) but usually not the pre-training config: fairseq
records ``w2v_args`` on a merged copy of the config, so the saved ``model.w2v_args`` is empty and
loading needs the pre-training file at ``model.w2v_path``. The conversion takes that config from,
in order: ``pretrained`` (a path given by the user, e.g. when ``w2v_path`` is from another machine),
``model.w2v_args`` when the checkpoint has it, or the file at ``model.w2v_path``. The pre-trained
*weights* are never used, only its model config and label-set sizes.

The result is a ``k2ssl_ctc`` checkpoint whose encoder is ``k2ssl_hubert`` (same tensors, renamed
``encoder.*``; the head becomes ``proj.*``) and whose ``model.encoder`` record makes it loadable
without any other file. hubert_ctc's fine-tuning overrides (masking, dropouts, layerdrop,
``feature_grad_mult``, ``freeze_finetune_updates``) map to ``k2ssl_ctc``'s fields of the same
meaning. The task and criterion stay as they were (``hubert_pretraining`` with ``fine_tuning``,
``ctc``), machine paths are reset as for pre-training checkpoints. The optimizer state is kept: the
parameters keep their order.

There is no way back to ``hubert_ctc``: stock fairseq cannot build that model at all (its
``HubertEncoder`` reads ``cfg.autoregressive``, a key ``HubertCtcConfig`` does not have, in 0.12 and
on the main branch), so a converted-back file would have no consumer.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from omegaconf import OmegaConf

from ..checkpoints import (
    CheckpointMismatchError,
    EncoderRecord,
    as_plugin_hubert,
    check_state_dict,
    read_fairseq_checkpoint,
)
from ..models.k2ssl_ctc import K2sslCtcConfig, K2sslCtcModel, build_encoder
from .hubert import PLUGIN_MODEL, STOCK_MODEL, reset_machine_paths

STOCK_CTC_MODEL = "hubert_ctc"
PLUGIN_CTC_MODEL = "k2ssl_ctc"

#: hubert_ctc config key -> k2ssl_ctc config key, for the settings both models have.
CTC_SETTINGS: Mapping[str, str] = {
    "apply_mask": "apply_mask", "final_dropout": "final_dropout",
    "freeze_finetune_updates": "freeze_finetune_updates", "mask_prob": "mask_prob", "mask_length": "mask_length",
    "mask_channel_prob": "mask_channel_prob", "mask_channel_length": "mask_channel_length",
    "feature_grad_mult": "feature_grad_mult", "dropout": "dropout", "attention_dropout": "attention_dropout",
    "activation_dropout": "activation_dropout", "layerdrop": "encoder_layerdrop", "dropout_input": "dropout_input",
}

#: hubert_ctc overrides of the encoder that k2ssl_ctc has no field for: written into the encoder
#: record's model config (k2ssl_hubert refuses the values it does not support when it is built).
ENCODER_SETTINGS = ("mask_selection", "mask_other", "no_mask_overlap", "mask_channel_selection",
                    "mask_channel_other", "no_mask_channel_overlap")

STOCK_PREFIX = "w2v_encoder.w2v_model."
STOCK_HEAD = "w2v_encoder.proj."


def stock_settings(checkpoint: Mapping[str, Any]) -> Dict[str, Any]:
    """The checkpoint's ``hubert_ctc`` config completed with ``HubertCtcConfig``'s defaults, as fairseq
    sees it (its interpolated ``data``/``normalize`` resolved from the task section)."""
    from fairseq.models.hubert.hubert_asr import HubertCtcConfig

    task_cfg = checkpoint["cfg"].get("task") or {}
    given = {k: v for k, v in checkpoint["cfg"]["model"].items() if k not in ("_name", "w2v_args", "autoregressive")}
    merged = OmegaConf.merge(OmegaConf.structured(HubertCtcConfig),
                             {**given, "data": task_cfg.get("data", "."), "normalize": bool(task_cfg.get("normalize", False))})
    return OmegaConf.to_container(merged, resolve=True, enum_to_str=True)


def pretraining_config(checkpoint: Mapping[str, Any], name: str, pretrained: Optional[Path] = None
                       ) -> Tuple[Dict[str, Any], Optional[List[int]], str]:
    """The pre-training config (plain dict), its label-set sizes if known, and where it came from."""
    model_cfg = checkpoint["cfg"]["model"]
    if pretrained is None and model_cfg.get("w2v_args"):
        w2v_args = model_cfg["w2v_args"]
        if not isinstance(w2v_args, Mapping):
            raise CheckpointMismatchError(name, f"model.w2v_args is a {type(w2v_args).__name__}, not a config")
        return copy.deepcopy(dict(w2v_args)), None, f"{name} (model.w2v_args)"
    path = pretrained if pretrained is not None else model_cfg.get("w2v_path")
    if not path or not Path(path).is_file():
        raise CheckpointMismatchError(
            name, f"the checkpoint does not contain its pre-training config (model.w2v_args is empty, as "
            f"fairseq saves it) and model.w2v_path={model_cfg.get('w2v_path')!r} is not a file here; pass the "
            f"pre-training checkpoint it was fine-tuned from (--pretrained PATH)")
    source = read_fairseq_checkpoint(Path(path))
    dictionaries = (source.get("task_state") or {}).get("dictionaries")
    sizes = [len(d) for d in dictionaries] if dictionaries else None
    return source["cfg"], sizes, str(path)


def encoder_record(checkpoint: Mapping[str, Any], name: str, pretrained: Optional[Path] = None) -> EncoderRecord:
    """The ``k2ssl_ctc`` ``model.encoder`` record of a ``hubert_ctc`` checkpoint."""
    pre_cfg, sizes, origin = pretraining_config(checkpoint, name, pretrained)
    pre_name = (pre_cfg.get("model") or {}).get("_name")
    if pre_name not in (STOCK_MODEL, PLUGIN_MODEL):
        raise CheckpointMismatchError(name, f"its pre-training model ({origin}) is {pre_name!r}, not hubert")
    model_cfg = as_plugin_hubert(pre_cfg["model"])
    ctc_cfg = stock_settings(checkpoint)
    for key in ENCODER_SETTINGS:
        model_cfg[key] = ctc_cfg[key]
    if sizes is None:
        label_embs = checkpoint["model"].get(STOCK_PREFIX + "label_embs_concat")
        labels = (pre_cfg.get("task") or {}).get("labels") or []
        if label_embs is None or len(labels) != 1:
            raise CheckpointMismatchError(
                name, f"cannot tell the pre-training label-set sizes from {origin}; pass the pre-training "
                f"checkpoint (--pretrained PATH)")
        sizes = [int(label_embs.shape[0])]
    task_cfg = pre_cfg.get("task") or {}
    return EncoderRecord(model=model_cfg, num_classes=sizes, sample_rate=int(task_cfg.get("sample_rate", 16000)),
                         normalize=bool(task_cfg.get("normalize", False)), source=origin)


def convert_hubert_ctc(checkpoint: Mapping[str, Any], name: str, pretrained: Optional[Path] = None
                       ) -> Tuple[Dict[str, Any], List[str]]:
    """Convert a loaded ``hubert_ctc`` checkpoint (``checkpoints.read_fairseq_checkpoint``) to ``k2ssl_ctc``.

    Returns:
        (the converted checkpoint sharing the source's tensors, the config keys that were reset).

    Raises:
        CheckpointMismatchError: not a hubert_ctc checkpoint, pre-training config not found,
            weights that do not fit the model the configs describe.
    """
    ctc_cfg = checkpoint["cfg"].get("model") or {}
    if ctc_cfg.get("_name") != STOCK_CTC_MODEL:
        raise CheckpointMismatchError(name, f"model._name is {ctc_cfg.get('_name')!r}, not {STOCK_CTC_MODEL!r}")
    record = encoder_record(checkpoint, name, pretrained)
    weights = {}
    for key, tensor in checkpoint["model"].items():
        if key.startswith(STOCK_PREFIX):
            weights["encoder." + key[len(STOCK_PREFIX):]] = tensor
        elif key.startswith(STOCK_HEAD):
            weights["proj." + key[len(STOCK_HEAD):]] = tensor
        else:
            raise CheckpointMismatchError(name, f"unexpected tensor {key!r} in a hubert_ctc checkpoint")
    if "proj.weight" not in weights:
        raise CheckpointMismatchError(name, "no CTC head (w2v_encoder.proj.weight) in the checkpoint")

    settings = stock_settings(checkpoint)
    model_cfg = {"_name": PLUGIN_CTC_MODEL, "pretrained_path": None, "pretrained_weights": True,
                 "encoder": record.to_dict(),
                 **{plugin_key: settings[stock_key] for stock_key, plugin_key in CTC_SETTINGS.items()}}
    converted_model = build_ctc_model(model_cfg, record, int(weights["proj.weight"].shape[0]), name)
    check_state_dict(weights, converted_model.state_dict(), name, "the k2ssl_ctc model the configs describe")
    expected = list(converted_model.state_dict())

    cfg, dropped = reset_machine_paths({**checkpoint["cfg"], "model": model_cfg})
    converted = dict(checkpoint)
    converted["cfg"] = cfg
    converted["model"] = {key: weights[key] for key in expected}
    if list(weights) != expected:  # the optimizer state follows parameter order
        converted["last_optimizer_state"] = None
    converted["extra_state"] = {
        **(checkpoint.get("extra_state") or {}),
        "k2ssl_migration": {"source": Path(name).name, "from": STOCK_CTC_MODEL, "to": PLUGIN_CTC_MODEL,
                            "reset": dropped, "pretraining_config": record.source},
    }
    return converted, dropped


def build_ctc_model(model_cfg: Mapping[str, Any], record: EncoderRecord, vocabulary_size: int,
                    name: str) -> K2sslCtcModel:
    """A ``k2ssl_ctc`` model (random weights) for a converted config."""
    cfg = OmegaConf.merge(OmegaConf.structured(K2sslCtcConfig), {k: v for k, v in model_cfg.items() if k != "_name"})
    try:
        encoder = build_encoder(record, cfg)
    except (ValueError, KeyError) as err:
        raise CheckpointMismatchError(name, f"cannot build the k2ssl_hubert encoder: {err}") from None
    dim = encoder.final_proj.in_features
    encoder.remove_pretraining_modules()
    return K2sslCtcModel(cfg, encoder, dim, vocabulary_size)


def build_stock_model(checkpoint: Mapping[str, Any], name: str, pretrained: Optional[Path] = None,
                      load_weights: bool = True) -> torch.nn.Module:
    """fairseq's own ``HubertCtc`` for a hubert_ctc checkpoint (the reference of ``--verify``).

    The pre-training checkpoint (``pretrained`` or ``model.w2v_path``) provides the encoder's config and
    label dictionaries, the fine-tuning checkpoint its task and weights (unless ``load_weights`` is
    false: then the encoder has the pre-trained weights and the head is new, as at the start of stock
    fine-tuning). Stock ``HubertEncoder`` reads ``cfg.autoregressive``, which ``HubertCtcConfig``
    lacks; it is supplied as False (CTC), the value it is meant to have.
    """
    from fairseq import tasks
    from fairseq.models.hubert.hubert_asr import HubertCtc

    ctc_cfg = checkpoint["cfg"]["model"]
    path = pretrained if pretrained is not None else ctc_cfg.get("w2v_path")
    if not path or not Path(path).is_file():
        raise CheckpointMismatchError(name, f"the stock model needs its pre-training checkpoint; "
                                        f"model.w2v_path={ctc_cfg.get('w2v_path')!r} is not a file here (--pretrained)")
    task = tasks.setup_task(OmegaConf.create(checkpoint["cfg"]["task"]))
    task.load_state_dict(checkpoint["task_state"])
    cfg = OmegaConf.create({**stock_settings(checkpoint), "w2v_path": str(path), "w2v_args": None,
                            "autoregressive": False})
    model = HubertCtc.build_model(cfg, task)
    if load_weights:
        model.load_state_dict(checkpoint["model"], strict=True)
    return model


def ctc_logits(model: torch.nn.Module, audio: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """``(frame, batch, vocabulary)`` logits of a stock ``hubert_ctc`` or a ``k2ssl_ctc`` model."""
    if isinstance(model, K2sslCtcModel):
        return model(audio, padding_mask=padding_mask)["encoder_out"]
    return model(source=audio, padding_mask=padding_mask)["encoder_out"]


def compare_ctc_models(reference: torch.nn.Module, candidate: torch.nn.Module, seconds: float = 2.0,
                       batch: int = 2, seed: int = 0, sample_rate: int = 16000) -> Dict[str, Tuple[float, float]]:
    """Both models on the same random unpadded audio (eval, float32).

    Returns:
        ``{"ctc_logits": (max |diff|, max |diff| / max |reference|)}``.
    """
    generator = torch.Generator().manual_seed(seed)
    audio = torch.randn(batch, int(seconds * sample_rate), generator=generator)
    padding = torch.zeros(audio.shape, dtype=torch.bool)
    with torch.no_grad():
        ref = ctc_logits(reference.float().eval(), audio, padding)
        cand = ctc_logits(candidate.float().eval(), audio, padding)
    diff = (ref.double() - cand.double()).abs().max().item()
    return {"ctc_logits": (diff, diff / max(ref.double().abs().max().item(), 1e-30))}


def migrate_hubert_ctc(source: Path, destination: Path, pretrained: Optional[Path] = None,
                       trusted: bool = False) -> Tuple[Dict[str, Any], List[str]]:
    """Read, convert and write a fine-tuned checkpoint; returns what :func:`convert_hubert_ctc` returns."""
    if Path(source).resolve() == Path(destination).resolve():
        raise CheckpointMismatchError(source, "refusing to overwrite the source checkpoint")
    converted, dropped = convert_hubert_ctc(read_fairseq_checkpoint(source, trusted), str(source), pretrained)
    Path(destination).parent.mkdir(parents=True, exist_ok=True)
    torch.save(converted, destination)
    return converted, dropped
