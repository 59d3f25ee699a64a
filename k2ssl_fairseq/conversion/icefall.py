"""icefall k2SSL checkpoints ↔ fairseq ``zipformer_ssl`` checkpoints.

icefall (``egs/librispeech/SSL/zipformer/pretrain.py``) saves ``{"model": state_dict, "model_avg":
state_dict, "optimizer": ..., ...}`` with the training hyper-parameters stored next to them at the top
level (``encoder_dim = "192,256,448,768,448,192"``, ``num_encoder_layers``, ``conv_feature_layers``, ...).
The import reads the architecture from those keys (or from a preset when they are absent), builds
the ``zipformer_ssl`` config, checks every key and shape against a freshly built model, and writes
a fairseq checkpoint (``cfg``, ``model``, ``optimizer_history``, ``extra_state``, ``task_state`` with
the label Dictionary) that ``checkpoint_utils.load_model_ensemble_and_task`` loads.

Two mappings besides the identical parameter names:

* classes: icefall's head row ``k`` scores k-means id ``k`` (504 rows for 500 clusters, the last 4
  unused); fairseq's label Dictionary puts id ``k`` at index ``k + 4`` after its 4 special symbols.
  The head rows are therefore rolled by 4 on import (row ``j`` = icefall row ``(j - 4) mod C``) and
  back on export, and the Dictionary written on import lists ids ``0 .. C-5`` in order;
* parameters the original creates but never uses (each layer's stray ``bypass_scale``,
  ``encoder.downsample_output.bias``): when the plugin's encoder does not have them, the import drops
  them and keeps their values in ``extra_state["icefall_unused"]`` so that the export restores them
  exactly (a checkpoint never imported gets icefall's initial values, 0.5 and 0).
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Mapping, Optional

import torch
from fairseq.data import Dictionary
from fairseq.dataclass.configs import FairseqConfig
from omegaconf import OmegaConf

from ..checkpoints import CheckpointMismatchError, check_state_dict
from ..data.frames import format_conv_layers, parse_conv_layers
from ..models.zipformer import without_training_state
from ..models.zipformer_ssl import ZipformerSslConfig, ZipformerSslModel, conv_layers

NUM_SPECIAL_SYMBOLS = 4
UNUSED_BYPASS_INIT = 0.5

_PER_STACK_KEYS = ("num_encoder_layers", "downsampling_factor", "encoder_dim", "feedforward_dim",
                   "num_heads", "encoder_unmasked_dim", "cnn_module_kernel")
_HEAD_DIM_KEYS = ("query_head_dim", "value_head_dim", "pos_head_dim")
_SCALAR_KEYS = {"pos_dim": int, "extractor_mode": str, "conv_bias": bool, "feature_grad_mult": float,
                "dropout_input": float, "mask_prob": float, "mask_length": int, "logit_temp": float,
                "label_rate": float, "sample_rate": int}


def parse_int_list(value: Any, key: str) -> List[int]:
    """icefall's ``"192,256,448"`` strings (or already-parsed ints/lists) → ``[192, 256, 448]``."""
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    try:
        return [int(v) for v in str(value).split(",")]
    except ValueError:
        raise ValueError(f"hyper-parameter {key}={value!r} is not a comma-separated list of ints") from None


def model_config_from_hparams(hparams: Mapping[str, Any], preset: Optional[Mapping[str, Any]] = None
                              ) -> ZipformerSslConfig:
    """Build the ``zipformer_ssl`` config from icefall's top-level hyper-parameters.

    Args:
        hparams: the icefall checkpoint (its top-level keys); keys it lacks come from ``preset``.
        preset: ``model`` section of a preset yaml (``--preset base|large``), or None.

    Returns:
        The model config (``label_rate``/``sample_rate`` default to 50 / 16000).
    """
    values: Dict[str, Any] = {"label_rate": 50.0, "sample_rate": 16000}
    if preset is not None:
        values.update({k: v for k, v in preset.items() if k != "_name"})
    for key in _PER_STACK_KEYS:
        if key in hparams:
            values[key] = parse_int_list(hparams[key], key)
    for key in _HEAD_DIM_KEYS:
        if key in hparams:
            dims = parse_int_list(hparams[key], key)
            values[key] = dims[0] if len(dims) == 1 else dims
    for key, kind in _SCALAR_KEYS.items():
        if key in hparams:
            values[key] = kind(hparams[key])
    if "conv_feature_layers" in hparams:
        values["conv_feature_layers"] = format_conv_layers(parse_conv_layers(str(hparams["conv_feature_layers"])))
    missing = [k for k in _PER_STACK_KEYS if k not in values]
    if missing:
        raise ValueError(f"the checkpoint has no {', '.join(missing)} and no preset was given "
                         "(use --preset base|large)")
    lengths = {k: len(values[k]) for k in _PER_STACK_KEYS}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"per-stack hyper-parameters disagree on the number of stacks: {lengths}")
    return OmegaConf.structured(ZipformerSslConfig(**values))


def icefall_only_parameters(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The parameters icefall's model has but never uses, with icefall's initial values, for a plugin
    state dict that lacks them: ``...layers.N.bypass_scale`` next to each ``...layers.N.bypass.bypass_scale``,
    and ``encoder.downsample_output.bias``."""
    extra: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(".bypass.bypass_scale"):
            stray = key[: -len(".bypass.bypass_scale")] + ".bypass_scale"
            if stray not in state_dict:
                extra[stray] = torch.full_like(value, UNUSED_BYPASS_INIT)
    if any(k.startswith("encoder.") for k in state_dict) and "encoder.downsample_output.bias" not in state_dict:
        extra["encoder.downsample_output.bias"] = torch.zeros(1)
    return extra


def _primitive(value: Any) -> Any:
    """Hyper-parameter values as plain Python data (paths and other objects as strings)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_primitive(v) for v in value]
    return str(value)


def _icefall_list(value: Any) -> str:
    """A per-stack setting as icefall writes it: ``"192,256,448"``, or ``"32"`` for one value."""
    return str(value) if isinstance(value, int) else ",".join(str(v) for v in value)


@contextlib.contextmanager
def _named(source: str) -> Iterator[None]:
    """Hyper-parameters that do not describe a model become a mismatch error naming the file."""
    try:
        yield
    except ValueError as err:
        raise CheckpointMismatchError(source, str(err)) from None


def label_dictionary(num_classes: int) -> Dictionary:
    """A fairseq Dictionary whose k-means id ``k`` (symbol ``str(k)``) has index ``k + 4``."""
    if num_classes <= NUM_SPECIAL_SYMBOLS:
        raise ValueError(f"the head has {num_classes} classes; at least {NUM_SPECIAL_SYMBOLS + 1} needed")
    dictionary = Dictionary()
    for cluster in range(num_classes - NUM_SPECIAL_SYMBOLS):
        dictionary.add_symbol(str(cluster))
    return dictionary


def fairseq_config(model_cfg: ZipformerSslConfig, label: str = "km") -> Dict[str, Any]:
    """A complete fairseq config (defaults everywhere) for the model, task ``hubert_pretraining`` and
    criterion ``k2ssl_masked_prediction``, as the plain dict checkpoints store."""
    cfg = OmegaConf.structured(FairseqConfig)
    model = OmegaConf.to_container(model_cfg, resolve=True, enum_to_str=True)
    model["_name"] = "zipformer_ssl"
    cfg.model = model
    cfg.task = {"_name": "hubert_pretraining", "data": "", "labels": [label], "label_rate": model["label_rate"],
                "sample_rate": model["sample_rate"]}
    cfg.criterion = {"_name": "k2ssl_masked_prediction", "pred_masked_weight": 1.0, "pred_nomask_weight": 0.0,
                     "loss_weights": [10.0], "log_keys": []}
    return OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)


def import_icefall_checkpoint(checkpoint: Mapping[str, Any], use_averaged_model: bool = False,
                              preset: Optional[Mapping[str, Any]] = None, source: str = "checkpoint"
                              ) -> Dict[str, Any]:
    """icefall k2SSL checkpoint → fairseq checkpoint dict for ``zipformer_ssl``.

    Args:
        checkpoint: the loaded icefall file.
        use_averaged_model: read ``model_avg`` instead of ``model``.
        preset: ``model`` section of a preset yaml for hyper-parameters the checkpoint lacks.
        source: name used in error messages (the file path).

    Returns:
        A dict to ``torch.save``; ``load_model_ensemble_and_task`` loads it once the plugin is imported.

    Raises:
        CheckpointMismatchError: missing state dict, unknown/missing keys or wrong shapes.
    """
    state_key = "model_avg" if use_averaged_model else "model"
    if state_key not in checkpoint:
        raise CheckpointMismatchError(source, f"no '{state_key}' entry (top-level keys: {sorted(checkpoint)[:20]})")
    state = {k: v.detach().float() for k, v in checkpoint[state_key].items()}
    if "final_proj.weight" not in state:
        raise CheckpointMismatchError(source, f"'{state_key}' has no final_proj.weight, so it is not a k2SSL model")
    num_classes = state["final_proj.weight"].shape[0]
    with _named(source):
        model_cfg = model_config_from_hparams(checkpoint, preset)
        fresh = ZipformerSslModel(model_cfg, [num_classes]).state_dict()
        dictionary = label_dictionary(num_classes)

    expected = without_training_state(fresh)
    stray = icefall_only_parameters(expected)
    unused = {k: state.pop(k) for k in list(state) if k in stray}
    check_state_dict(state, expected, f"{source} ['{state_key}']", "the zipformer_ssl architecture it describes")
    for key in ("final_proj.weight", "final_proj.bias"):
        state[key] = torch.roll(state[key], NUM_SPECIAL_SYMBOLS, dims=0)
    state.update({k: v for k, v in fresh.items() if k not in expected})  # training state, as a fresh run starts

    hparams = {k: _primitive(v) for k, v in checkpoint.items() if not isinstance(v, Mapping) and not torch.is_tensor(v)}
    num_updates = int(hparams.get("batch_idx_train", 0) or 0)
    return {
        "args": None,
        "cfg": fairseq_config(model_cfg),
        "model": state,
        "criterion": None,
        "optimizer_history": [{"criterion_name": "MaskedPredictionCriterion", "optimizer_name": "icefall",
                               "lr_scheduler_state": {"best": None}, "num_updates": num_updates}],
        "task_state": {"dictionaries": [dictionary]},
        "extra_state": {"icefall_unused": unused, "icefall_hparams": hparams, "icefall_state": state_key},
        "last_optimizer_state": None,
    }


def export_icefall_checkpoint(checkpoint: Mapping[str, Any], source: str = "checkpoint") -> Dict[str, Any]:
    """fairseq ``zipformer_ssl`` checkpoint → icefall k2SSL checkpoint (``{"model": ..., hyper-parameters}``).

    The model state goes under ``model`` (and under the key it came from on import, e.g. ``model_avg``);
    unused icefall parameters are restored; the architecture hyper-parameters are written as icefall
    strings, over any hyper-parameters kept from an earlier import.

    Raises:
        CheckpointMismatchError: not a ``zipformer_ssl`` checkpoint, an fbank front-end (icefall has none),
            or keys/shapes do not match its config.
    """
    cfg = checkpoint.get("cfg") or {}
    model_section = dict(cfg.get("model") or {})
    if model_section.get("_name") != "zipformer_ssl":
        raise CheckpointMismatchError(source, f"not a zipformer_ssl checkpoint (model._name="
                                              f"{model_section.get('_name')!r})")
    model_section.pop("_name")
    if model_section.get("frontend", "cnn") != "cnn":
        raise CheckpointMismatchError(source, f"model.frontend={model_section['frontend']!r}: icefall's k2SSL has "
                                              "only the waveform CNN front-end, so this model has no icefall form")
    task = cfg.get("task") or {}
    for key, fallback in (("label_rate", 50.0), ("sample_rate", 16000)):
        if not isinstance(model_section.get(key), (int, float)):
            model_section[key] = task.get(key, fallback)
    state = {k: v.detach().float() for k, v in without_training_state(checkpoint["model"]).items()}
    num_classes = state["final_proj.weight"].shape[0]
    with _named(source):
        model_cfg = OmegaConf.structured(ZipformerSslConfig(**model_section))
        expected = without_training_state(ZipformerSslModel(model_cfg, [num_classes]).state_dict())
    check_state_dict(state, expected, source, "the zipformer_ssl architecture its config describes")
    for key in ("final_proj.weight", "final_proj.bias"):
        state[key] = torch.roll(state[key], -NUM_SPECIAL_SYMBOLS, dims=0)

    extra_state = checkpoint.get("extra_state") or {}
    restored = icefall_only_parameters(state)
    restored.update({k: v for k, v in (extra_state.get("icefall_unused") or {}).items() if k in restored})
    state.update(restored)

    out: Dict[str, Any] = dict(extra_state.get("icefall_hparams") or {})
    out.update({key: _icefall_list(model_cfg[key]) for key in _PER_STACK_KEYS})
    out.update({key: _icefall_list(model_cfg[key]) for key in _HEAD_DIM_KEYS})
    out.update({key: kind(model_cfg[key]) for key, kind in _SCALAR_KEYS.items()})
    out["conv_feature_layers"] = format_conv_layers(conv_layers(model_cfg))
    out["num_classes"] = [num_classes]
    out["model"] = state
    state_key = extra_state.get("icefall_state", "model")
    if state_key != "model":
        out[state_key] = state
    return out
