"""Stock fairseq ``hubert`` <-> ``k2ssl_hubert`` pre-training checkpoints.

The two models share parameter names, shapes and order, so conversion never touches a tensor: the
weights (and the optimizer state, whose order follows the parameters) are carried over as they are,
and only the config is rewritten:

* ``model._name`` becomes the target; ``model.logit_mode`` is added (``cosine``) or removed;
* machine-specific paths are reset to fairseq's defaults, so the file works on another machine:
  ``task.data`` (``.``: a relative placeholder; the real directory comes from the training yaml or
  ``arg_overrides``; ``???`` would make fairseq's loader fail), ``task.label_dir``, ``common.user_dir``,
  ``common.tensorboard_logdir``, ``checkpoint.save_dir``, ``checkpoint.restore_file``,
  ``checkpoint.finetune_from_model``;
* everything else (architecture, masking, label rate, sample rate, ``task.normalize``, labels, the
  task and its dictionaries) is kept. The task stays what it was (stock ``hubert_pretraining``
  loads both models); continued training picks its own task in its yaml.

Before converting, the source is rebuilt from its own config and its weights are loaded strictly, so
an unknown model, a config that does not describe the weights, or a ``k2ssl_hubert`` with the linear
head (no stock equivalent) is refused with the file name and the reason. Fine-tuned ``hubert_ctc``
checkpoints are converted to ``k2ssl_ctc`` by ``conversion/hubert_ctc.py``.

:func:`compare_models` is the ``--verify`` check: both models on the same random audio (eval,
float32, the same pinned masks), max difference per layer output and of the losses.
"""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from fairseq.models.hubert import hubert as stock_hubert

from ..checkpoints import (
    PLUGIN_HUBERT,
    STOCK_HUBERT,
    CheckpointMismatchError,
    as_plugin_hubert,
    as_stock_hubert,
    build_model,
    read_fairseq_checkpoint,
)
from ..data.masking import compute_span_mask
from ..models.k2ssl_hubert import K2sslHubertModel

STOCK_MODEL = STOCK_HUBERT
PLUGIN_MODEL = PLUGIN_HUBERT

#: Config keys that hold machine paths, and the fairseq default each is reset to.
PORTABLE_DEFAULTS: Mapping[Tuple[str, str], Any] = {
    ("task", "data"): ".",
    ("task", "label_dir"): None,
    ("common", "user_dir"): None,
    ("common", "tensorboard_logdir"): None,
    ("checkpoint", "save_dir"): "checkpoints",
    ("checkpoint", "restore_file"): "checkpoint_last.pt",
    ("checkpoint", "finetune_from_model"): None,
}


def model_name(checkpoint: Mapping[str, Any], name: str) -> str:
    """The checkpoint's ``model._name``, refusing anything this module cannot convert."""
    model_cfg = checkpoint["cfg"].get("model") or {}
    found = model_cfg.get("_name")
    if found == "hubert_ctc":
        raise CheckpointMismatchError(
            name, f"a fine-tuned hubert_ctc checkpoint converts to k2ssl_ctc (--to k2ssl_ctc), "
            f"not to {PLUGIN_MODEL!r}/{STOCK_MODEL!r}")
    if found not in (STOCK_MODEL, PLUGIN_MODEL):
        raise CheckpointMismatchError(
            name, f"model._name is {found!r}; only {STOCK_MODEL!r} and {PLUGIN_MODEL!r} "
            f"pre-training checkpoints can be converted")
    return found


def rewrite_config(cfg: Mapping[str, Any], target: str) -> Tuple[Dict[str, Any], List[str]]:
    """The target's config and the dotted names of the machine paths that were reset."""
    cfg, dropped = reset_machine_paths(cfg)
    cfg["model"] = as_stock_hubert(cfg["model"]) if target == STOCK_MODEL else as_plugin_hubert(cfg["model"])
    return cfg, dropped


def reset_machine_paths(cfg: Mapping[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """A deep copy of ``cfg`` with ``PORTABLE_DEFAULTS`` applied, and the dotted names that changed."""
    cfg = copy.deepcopy(dict(cfg))
    dropped = []
    for (section, key), default in PORTABLE_DEFAULTS.items():
        group = cfg.get(section)
        if isinstance(group, dict) and key in group and group[key] != default:
            group[key] = default
            dropped.append(f"{section}.{key}")
    return cfg, dropped


def convert_checkpoint(checkpoint: Mapping[str, Any], target: str, name: str, criterion: Optional[str] = None
                       ) -> Tuple[Dict[str, Any], List[str]]:
    """Convert a loaded pre-training checkpoint to ``target`` (``hubert`` or ``k2ssl_hubert``).

    Args:
        checkpoint: as returned by ``checkpoints.read_fairseq_checkpoint``.
        target: model name to convert to.
        name: how to refer to the checkpoint in errors (its file name).
        criterion: the criterion training will continue with, if not the checkpoint's: the
            criterion record is rewritten (:func:`rewrite_criterion`) so that fairseq restores the
            optimizer state, the update count and the lr schedule instead of refusing to resume.

    Returns:
        (the converted checkpoint sharing the source's tensors, the config keys that were reset).

    Raises:
        CheckpointMismatchError: unknown or inconsistent source, or nothing to convert.
    """
    if target not in (STOCK_MODEL, PLUGIN_MODEL):
        raise CheckpointMismatchError(name, f"unknown target {target!r}; use {STOCK_MODEL!r} or {PLUGIN_MODEL!r}")
    source = model_name(checkpoint, name)
    if source == target:
        raise CheckpointMismatchError(name, f"already a {target!r} checkpoint")
    logit_mode = checkpoint["cfg"]["model"].get("logit_mode", "cosine")
    if target == STOCK_MODEL and logit_mode != "cosine":
        raise CheckpointMismatchError(
            name, f"k2ssl_hubert with logit_mode={logit_mode!r} has no stock equivalent "
            f"(stock HuBERT only has the cosine head)")
    build_model(checkpoint, name)  # the source must be what its config says
    cfg, dropped = rewrite_config(checkpoint["cfg"], target)
    converted = dict(checkpoint)
    converted["cfg"] = cfg
    if criterion is not None:
        rewrite_criterion(converted, criterion, name)
    converted["model"] = dict(checkpoint["model"])
    converted["extra_state"] = {
        **(checkpoint.get("extra_state") or {}),
        "k2ssl_migration": {"source": Path(name).name, "from": source, "to": target, "reset": dropped},
    }
    return converted, dropped


def rewrite_criterion(checkpoint: Dict[str, Any], criterion: str, name: str) -> None:
    """Make ``checkpoint`` a checkpoint of training with ``criterion`` (in place).

    fairseq resumes the optimizer state, the update count and the lr schedule only when the saved
    criterion's class is the one training continues with ("Criterion does not match; please reset
    the optimizer" otherwise, and a reset restarts the count and the schedule at 0). The criterion
    section keeps the saved settings, which must be valid for ``criterion``.

    Raises:
        CheckpointMismatchError: an unknown criterion, or saved settings it does not have.
    """
    from fairseq.criterions import CRITERION_DATACLASS_REGISTRY, CRITERION_REGISTRY
    from omegaconf import OmegaConf

    if criterion not in CRITERION_REGISTRY:
        raise CheckpointMismatchError(name, f"unknown criterion {criterion!r}")
    section = {**(checkpoint["cfg"].get("criterion") or {}), "_name": criterion}
    try:
        OmegaConf.merge(OmegaConf.structured(CRITERION_DATACLASS_REGISTRY[criterion]),
                        {k: v for k, v in section.items() if k != "_name"})
    except Exception as err:
        raise CheckpointMismatchError(name, f"its criterion settings do not fit {criterion!r}: {err}") from None
    checkpoint["cfg"]["criterion"] = section
    history = [dict(entry) for entry in checkpoint.get("optimizer_history") or []]
    if history:
        history[-1]["criterion_name"] = CRITERION_REGISTRY[criterion].__name__
    checkpoint["optimizer_history"] = history


def migrate_checkpoint(source: Path, destination: Path, target: str, trusted: bool = False,
                       criterion: Optional[str] = None) -> Tuple[Dict[str, Any], List[str]]:
    """Read, convert and write a checkpoint; returns what :func:`convert_checkpoint` returns."""
    if Path(source).resolve() == Path(destination).resolve():
        raise CheckpointMismatchError(source, "refusing to overwrite the source checkpoint")
    converted, dropped = convert_checkpoint(read_fairseq_checkpoint(source, trusted), target, str(source), criterion)
    Path(destination).parent.mkdir(parents=True, exist_ok=True)
    torch.save(converted, destination)
    return converted, dropped


@contextlib.contextmanager
def pinned_stock_masks(mask: np.ndarray) -> Iterator[None]:
    """Make stock ``HubertModel`` use ``mask`` (``(batch, frame)`` bool) instead of drawing one."""
    with mock.patch.object(stock_hubert, "compute_mask_indices", lambda *args, **kwargs: mask):
        yield


def masked_forward(model: torch.nn.Module, audio: torch.Tensor, targets: List[torch.Tensor],
                    mask: np.ndarray) -> Dict[str, Any]:
    padding = torch.zeros(audio.shape, dtype=torch.bool)
    if isinstance(model, K2sslHubertModel):
        return model(audio, target_list=targets, padding_mask=padding, mask_indices=torch.from_numpy(mask))
    with pinned_stock_masks(mask):
        return model(audio, target_list=targets, padding_mask=padding)


def prediction_losses(model: torch.nn.Module, net_output: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """Summed cross-entropies of masked and unmasked frames (as the ``hubert`` criterion) and the
    feature penalty."""
    losses = {}
    for kind, is_masked in (("loss_m", True), ("loss_u", False)):
        pairs = zip(model.get_logits(net_output, is_masked), model.get_targets(net_output, is_masked))
        losses[kind] = sum(F.cross_entropy(logits, target, reduction="sum") for logits, target in pairs)
    losses["features_pen"] = net_output["features_pen"]
    return losses


def compare_models(reference: torch.nn.Module, candidate: torch.nn.Module, seconds: float = 2.0,
                   batch: int = 2, seed: int = 0, sample_rate: int = 16000,
                   mask_prob: float = 0.8, mask_length: int = 10) -> Dict[str, Tuple[float, float]]:
    """Run two HuBERT-family models on the same random audio and masks (eval, float32).

    Returns:
        For each layer output (``layer_1`` ... ``layer_L``), the CNN features and each loss:
        ``(max |diff|, max |diff| / max |reference|)``.
    """
    generator = torch.Generator().manual_seed(seed)
    audio = torch.randn(batch, int(seconds * sample_rate), generator=generator)
    reference, candidate = reference.float().eval(), candidate.float().eval()
    report = {}

    def record(key: str, ref: torch.Tensor, cand: torch.Tensor) -> None:
        diff = (ref.double() - cand.double()).abs().max().item()
        report[key] = (diff, diff / max(ref.double().abs().max().item(), 1e-30))

    with torch.no_grad():
        padding = torch.zeros(audio.shape, dtype=torch.bool)
        for layer in range(1, len(reference.encoder.layers) + 1):
            ref, _ = reference.extract_features(audio, padding, output_layer=layer)
            cand, _ = candidate.extract_features(audio, padding, output_layer=layer)
            record(f"layer_{layer}", ref, cand)
        record("features", reference.extract_features(audio, padding, ret_conv=True)[0],
               candidate.extract_features(audio, padding, ret_conv=True)[0])
        frames = reference.forward_features(audio).size(2)
        rng = np.random.default_rng(seed)
        mask = compute_span_mask(np.full(batch, frames), frames, mask_prob, mask_length, rng)
        targets = [torch.from_numpy(rng.integers(4, classes, (batch, frames))) for classes in reference.num_classes]
        ref_losses = prediction_losses(reference, masked_forward(reference, audio, targets, mask))
        cand_losses = prediction_losses(candidate, masked_forward(candidate, audio, targets, mask))
        for key in ref_losses:
            record(key, ref_losses[key], cand_losses[key])
    return report
