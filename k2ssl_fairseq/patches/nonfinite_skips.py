"""Patch ``nonfinite_skips``: one non-finite update is skipped instead of ending the run.

What it changes: fairseq's ``Trainer.clip_grad_norm`` raises an internal signal when the gradient
norm (after all-reduce, so every rank sees the same value) is NaN/Inf, and ``Trainer.train_step``
then drops the gradients and returns without an update: weights, optimizer state and update count
stay as they were, a warning names the update, and skips are counted in the ``nonfinite_skips``
metric. Only after :data:`MAX_CONSECUTIVE_SKIPS` skips in a row (a diverged run, not a bad batch)
is fairseq's own ``FloatingPointError`` raised. Why: fairseq raises ``FloatingPointError`` at the
first NaN gradient norm (after writing ``crash.pt`` and re-running the step), so one bad batch ends
a week-long run. Mixed precision keeps fairseq's handling (fp16 loss scaling and AMP already skip
overflowing steps). Off: fairseq's behaviour.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Optional

import torch

from .wrapping import replace, restore

logger = logging.getLogger(__name__)

NAME = "nonfinite_skips"

#: Environment variable overriding :data:`MAX_CONSECUTIVE_SKIPS`.
MAX_SKIPS_ENV = "K2SSL_MAX_CONSECUTIVE_NONFINITE_SKIPS"
#: Consecutive non-finite updates tolerated before the run is declared diverged.
MAX_CONSECUTIVE_SKIPS = 20


class NonFiniteGradients(Exception):
    """Raised inside fairseq's ``train_step`` to abandon an update whose gradient norm is NaN/Inf.

    Deliberately not a ``FloatingPointError``/``OverflowError``/``RuntimeError``, which the trainer
    catches and handles its own way.
    """


def max_consecutive_skips() -> int:
    """:data:`MAX_CONSECUTIVE_SKIPS`, or the value of ``K2SSL_MAX_CONSECUTIVE_NONFINITE_SKIPS``."""
    value = os.environ.get(MAX_SKIPS_ENV)
    if value is None:
        return MAX_CONSECUTIVE_SKIPS
    if not value.strip().isdigit():
        raise ValueError(f"{MAX_SKIPS_ENV} must be a non-negative integer, got {value!r}")
    return int(value)


def _uses_amp(trainer: Any) -> bool:
    return bool(trainer.cfg.common.amp)


def _checked_clip(original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def clip_grad_norm(self: Any, clip_norm: float) -> torch.Tensor:
        grad_norm = original(self, clip_norm)
        if not _uses_amp(self) and not torch.isfinite(grad_norm).all():
            raise NonFiniteGradients(f"gradient norm is {float(grad_norm)}")
        return grad_norm
    return clip_grad_norm


def _skipping_step(original: Callable[..., Any]) -> Callable[..., Any]:
    def train_step(self: Any, samples: Any, raise_oom: bool = False) -> Optional[Any]:
        try:
            logging_output = original(self, samples, raise_oom)
        except NonFiniteGradients as error:
            return _skip_update(self, error)
        self._k2ssl_consecutive_skips = 0
        return logging_output
    return train_step


def _skip_update(trainer: Any, error: NonFiniteGradients) -> None:
    from fairseq.logging import metrics

    trainer.zero_grad()
    trainer._k2ssl_nonfinite_skips = getattr(trainer, "_k2ssl_nonfinite_skips", 0) + 1
    trainer._k2ssl_consecutive_skips = getattr(trainer, "_k2ssl_consecutive_skips", 0) + 1
    limit = max_consecutive_skips()
    if trainer._k2ssl_consecutive_skips > limit:
        raise FloatingPointError(
            f"{trainer._k2ssl_consecutive_skips} consecutive updates had non-finite gradients "
            f"(limit {limit}, set {MAX_SKIPS_ENV} to change): the run has diverged") from error
    logger.warning("non-finite loss/gradients (%s) at update %d: update skipped, weights unchanged "
                   "(%d skipped so far)", error, trainer.get_num_updates() + 1, trainer._k2ssl_nonfinite_skips)
    metrics.log_scalar_sum("nonfinite_skips", 1, priority=900, round=0)


def install() -> None:
    from fairseq.trainer import Trainer

    replace(Trainer, "clip_grad_norm", _checked_clip)
    replace(Trainer, "train_step", _skipping_step)


def nonfinite_skips(trainer: Any) -> int:
    """Updates this trainer skipped because of non-finite gradients."""
    return getattr(trainer, "_k2ssl_nonfinite_skips", 0)


def remove() -> None:
    from fairseq.trainer import Trainer

    restore(Trainer, "clip_grad_norm")
    restore(Trainer, "train_step")
