"""fairseq optimizer ``scaled_adam``: ``ScaledAdam`` (``scaled_adam.py``) behind fairseq's optimizer API.

What the wrapper adds:

* Clipping diagnostics as fairseq metrics after every update: ``scaled_adam_clip_thr`` (the current
  threshold, once estimated) and ``scaled_adam_clipped`` (1 if this update was clipped, so the logged
  average is the fraction of clipped updates in the log interval). ScaledAdam clips by itself, so set
  ``optimization.clip_norm=0``; a positive value also clips (before ScaledAdam) and gets a warning.
* Precision checks: ScaledAdam needs every tensor with its own shape. ``common.fp16=true`` alone makes
  fairseq flatten all parameters into one vector, which is refused here with the settings that work:
  ``common.fp16_no_flatten_grads=true``, ``common.amp=true`` or ``common.bf16=true``. The
  memory-efficient fp16/bf16 wrappers are refused too (they need an optimizer that supports them).
* Names: parameters tagged with ``param_names.tag_parameter_names`` keep their names in diagnostics.

State: ``state_dict()`` is the torch optimizer's (tensors and numbers only), saved by fairseq in
``last_optimizer_state``, so resuming from ``checkpoint_last.pt`` continues exactly.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List

import torch
from fairseq.logging import metrics
from fairseq.optim import FairseqOptimizer, register_optimizer
from fairseq.optim.adam import FairseqAdamConfig
from omegaconf import II

from ..stock_settings import log_ignored
from .param_names import parameter_names
from .scaled_adam import ScaledAdam

logger = logging.getLogger(__name__)


#: Adam settings a stock yaml carries that ScaledAdam has no use for (accepted, and named in the log).
IGNORED_ADAM_KEYS = ("adam_betas", "adam_eps", "weight_decay", "use_old_adam", "fp16_adam_stats")


@dataclass
class ScaledAdamConfig(FairseqAdamConfig):
    """ScaledAdam's settings. Extends fairseq's Adam config, so ``optimizer._name=scaled_adam``
    switches a stock yaml; Adam's own keys (:data:`IGNORED_ADAM_KEYS`) are ignored. ScaledAdam has
    no weight decay (its learned scale and ``param_max_rms`` bound tensor sizes) and its own
    ``betas`` and ``eps``."""

    clipping_scale: float = field(
        default=2.0,
        metadata={"help": "clip gradients to this times the median gradient norm of the last "
                          "clipping_update_period updates (k2SSL 2.0); 0 disables clipping"},
    )
    betas: List[float] = field(
        default_factory=lambda: [0.9, 0.98], metadata={"help": "[momentum, second-moment decay]"}
    )
    scalar_lr_scale: float = field(
        default=0.1, metadata={"help": "lr factor for scalar parameters and for the learned tensor scales"}
    )
    eps: float = field(default=1.0e-8, metadata={"help": "added to square roots in denominators"})
    param_min_rms: float = field(
        default=1.0e-5, metadata={"help": "floor of the tensor RMS that sizes steps; smaller tensors stop shrinking"}
    )
    param_max_rms: float = field(
        default=3.0, metadata={"help": "the learned scale never takes a tensor's RMS above this"}
    )
    scalar_max: float = field(default=10.0, metadata={"help": "scalar parameters are clamped to +-scalar_max"})
    size_update_period: int = field(
        default=4, metadata={"help": "updates between tensor-RMS refreshes and learned-scale steps"}
    )
    clipping_update_period: int = field(
        default=100, metadata={"help": "updates between clipping-threshold estimates (and history length)"}
    )
    lr: List[float] = II("optimization.lr")
    clip_norm: float = II("optimization.clip_norm")
    fp16: bool = II("common.fp16")
    bf16: bool = II("common.bf16")
    amp: bool = II("common.amp")
    fp16_no_flatten_grads: bool = II("common.fp16_no_flatten_grads")
    memory_efficient_fp16: bool = II("common.memory_efficient_fp16")
    memory_efficient_bf16: bool = II("common.memory_efficient_bf16")


@register_optimizer("scaled_adam", dataclass=ScaledAdamConfig)
class FairseqScaledAdam(FairseqOptimizer):
    """k2SSL's ScaledAdam for any fairseq model; see the module docstring."""

    def __init__(self, cfg: ScaledAdamConfig, params):
        super().__init__(cfg)
        _check_precision_settings(cfg)
        log_ignored("optimizer=scaled_adam", cfg, FairseqAdamConfig, IGNORED_ADAM_KEYS)
        if cfg.clip_norm > 0 and cfg.clipping_scale > 0:
            logger.warning("optimizer=scaled_adam clips gradients itself (clipping_scale=%s), but "
                           "optimization.clip_norm=%s clips them first; set optimization.clip_norm=0",
                           cfg.clipping_scale, cfg.clip_norm)
        params = list(params)
        self._optimizer = ScaledAdam(list(zip(parameter_names(params), params)), **self.optimizer_config)

    @property
    def optimizer_config(self) -> Dict:
        """ScaledAdam's arguments; fairseq also applies them over a resumed checkpoint's groups."""
        lr = list(self.cfg.lr)
        if len(lr) != 1:
            raise ValueError(f"optimizer=scaled_adam takes one lr in optimization.lr, got {lr}")
        return {
            "lr": lr[0],
            "clipping_scale": self.cfg.clipping_scale if self.cfg.clipping_scale > 0 else None,
            "betas": tuple(self.cfg.betas),
            "scalar_lr_scale": self.cfg.scalar_lr_scale,
            "eps": self.cfg.eps,
            "param_min_rms": self.cfg.param_min_rms,
            "param_max_rms": self.cfg.param_max_rms,
            "scalar_max": self.cfg.scalar_max,
            "size_update_period": self.cfg.size_update_period,
            "clipping_update_period": self.cfg.clipping_update_period,
        }

    @property
    def supports_flat_params(self) -> bool:
        return False

    def step(self, closure=None, scale=1.0, groups=None):
        """One ScaledAdam update, then log its clipping threshold and whether it clipped."""
        super().step(closure, scale=scale, groups=groups)
        if self.optimizer.defaults["clipping_scale"] is None:
            return
        smallest = torch.stack([torch.as_tensor(factor, dtype=torch.float32) for factor in self.optimizer.clip_factors]).min()
        metrics.log_scalar("scaled_adam_clipped", (smallest < 1.0).float(), priority=800, round=3)  # read when logged
        threshold = self.optimizer.clipping_thresholds()[0]
        if threshold is not None:
            metrics.log_scalar("scaled_adam_clip_thr", threshold, weight=0, priority=800, round=4)


def _check_precision_settings(cfg: ScaledAdamConfig) -> None:
    working = ("common.fp16_no_flatten_grads=true (fp16 with per-tensor fp32 master weights), "
               "common.amp=true, or common.bf16=true")
    if cfg.memory_efficient_fp16 or cfg.memory_efficient_bf16:
        raise ValueError("optimizer=scaled_adam does not support common.memory_efficient_fp16/bf16 "
                         f"(fairseq's MemoryEfficientFP16Optimizer); use {working}")
    if cfg.fp16 and not (cfg.fp16_no_flatten_grads or cfg.amp or cfg.bf16):
        raise ValueError("optimizer=scaled_adam needs each parameter tensor with its own shape, but "
                         "common.fp16=true flattens all parameters into one vector; set "
                         f"{working}")
