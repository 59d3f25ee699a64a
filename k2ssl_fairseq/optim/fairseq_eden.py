"""fairseq LR scheduler ``eden``: the Eden schedule (``eden.py``) driven by fairseq's trainer hooks.

Mapping to icefall's loop (k2ssl-notes.md section 9.2):

* fairseq calls ``step_update(n)`` *after* update ``n``; icefall calls ``step_batch(b)`` *before*
  update ``b``. So the lr set by ``step_update(n)`` is Eden's at ``b = n + 1``, and the first update
  (``n = 0``) already uses ``b = 1``, exactly as icefall.
* ``step_begin_epoch(epoch)`` gets fairseq's 1-based epoch; Eden's epoch term uses ``e = epoch - 1``.
* ``lr_hours > 0`` replaces the epoch term by hours of audio seen, ``e = b * seconds_per_update /
  3600`` with ``E = lr_hours``, as k2SSL's Libri-Light recipe does (``max_duration * world_size`` seconds
  per step there). The audio per update is a configured number rather than a measured one because
  the scheduler only sees update counts; with duration-bucketed batches it is nearly constant.

State saved in checkpoints: ``best``, ``epoch_index``, ``num_updates``; it is also recomputed on
resume, since fairseq calls ``step_begin_epoch`` and ``step_update`` again.
"""
from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Dict, List

from fairseq.optim.lr_scheduler import FairseqLRScheduler, register_lr_scheduler
from fairseq.optim.lr_scheduler.polynomial_decay_schedule import PolynomialDecayLRScheduleConfig
from omegaconf import II

from ..stock_settings import log_ignored
from .eden import EdenSchedule

logger = logging.getLogger(__name__)

SECONDS_PER_HOUR = 3600.0


#: Polynomial-decay settings a stock yaml carries that Eden has no use for (accepted, and named in the
#: log; ``total_num_update`` is only an interpolation of ``optimization.max_update``).
IGNORED_POLYNOMIAL_DECAY_KEYS = ("warmup_updates", "force_anneal", "end_learning_rate", "power")


@dataclass
class EdenLRScheduleConfig(PolynomialDecayLRScheduleConfig):
    """Eden's settings. Extends fairseq's polynomial-decay config, so ``lr_scheduler._name=eden``
    switches a stock yaml; that schedule's own keys (:data:`IGNORED_POLYNOMIAL_DECAY_KEYS`) are
    ignored: Eden warms up over ``warmup_batches`` and decays by its own formula."""

    lr_batches: float = field(
        default=7500, metadata={"help": "Eden B: updates after which the lr decays noticeably (k2SSL 7500)"}
    )
    lr_epochs: float = field(
        default=10.5,
        metadata={"help": "Eden E: epochs after which the lr decays noticeably (k2SSL Base 10.5); "
                          "unused when lr_hours > 0"},
    )
    warmup_batches: float = field(
        default=5000, metadata={"help": "updates of linear warm-up (k2SSL pre-training 5000; 0 = none)"}
    )
    warmup_start: float = field(
        default=0.0, metadata={"help": "warm-up factor at update 0, in [0, 1] (k2SSL 0; icefall's default 0.5)"}
    )
    lr_hours: float = field(
        default=0.0,
        metadata={"help": "if > 0, the epoch term counts hours of audio seen instead of epochs, with "
                          "E = lr_hours (k2SSL Large on Libri-Light: 10000); needs seconds_per_update"},
    )
    seconds_per_update: float = field(
        default=0.0,
        metadata={"help": "seconds of audio per optimizer update over all workers and update_freq "
                          "(icefall: max_duration * world_size); used only when lr_hours > 0"},
    )
    lr: List[float] = II("optimization.lr")
    max_update: int = II("optimization.max_update")


@register_lr_scheduler("eden", dataclass=EdenLRScheduleConfig)
class EdenLRScheduler(FairseqLRScheduler):
    """Eden (k2SSL's schedule, normally with ``optimizer=scaled_adam``); see the module docstring."""

    def __init__(self, cfg: EdenLRScheduleConfig, optimizer):
        super().__init__(cfg, optimizer)
        log_ignored("lr_scheduler=eden", cfg, PolynomialDecayLRScheduleConfig, IGNORED_POLYNOMIAL_DECAY_KEYS)
        self.base_lr = _single_lr(cfg.lr)
        self.by_hours = cfg.lr_hours > 0
        decay_span = cfg.lr_hours if self.by_hours else cfg.lr_epochs
        self.schedule = EdenSchedule(cfg.lr_batches, decay_span, cfg.warmup_batches, cfg.warmup_start)
        if self.by_hours and not cfg.seconds_per_update > 0:
            raise ValueError(f"lr_scheduler=eden: lr_hours={cfg.lr_hours} needs seconds_per_update > 0 "
                             f"(audio seconds per update), got {cfg.seconds_per_update}")
        _warn_if_warmup_outlasts_training(cfg)
        self.epoch_index = 0
        self.num_updates = 0
        self.optimizer.set_lr(self.current_lr())

    def current_lr(self) -> float:
        """The lr for the next update, ``num_updates + 1``."""
        batch = self.num_updates + 1
        if self.by_hours:
            epoch = batch * self.cfg.seconds_per_update / SECONDS_PER_HOUR
        else:
            epoch = self.epoch_index
        return self.base_lr * self.schedule.factor(batch, epoch)

    def step_begin_epoch(self, epoch: int) -> float:
        """Start of fairseq's 1-based ``epoch``."""
        self.epoch_index = epoch - 1
        return self._apply()

    def step(self, epoch: int, val_loss=None) -> float:
        """End of an epoch: track the best validation loss; the lr changes at the next epoch's start."""
        super().step(epoch, val_loss)
        return self.optimizer.get_lr()

    def step_update(self, num_updates: int) -> float:
        """After update ``num_updates``: set the lr of the next one."""
        self.num_updates = num_updates
        return self._apply()

    def _apply(self) -> float:
        lr = self.current_lr()
        self.optimizer.set_lr(lr)
        return lr

    def state_dict(self) -> Dict:
        return {"best": self.best, "epoch_index": self.epoch_index, "num_updates": self.num_updates}

    def load_state_dict(self, state_dict: Dict) -> None:
        missing = {"best", "epoch_index", "num_updates"} - set(state_dict)
        if missing:
            raise KeyError(f"lr_scheduler=eden: checkpoint scheduler state lacks {sorted(missing)} "
                           f"(has {sorted(state_dict)}); was it written by another scheduler? "
                           "Use checkpoint.reset_lr_scheduler=true to start the schedule afresh")
        self.best = state_dict["best"]
        self.epoch_index = state_dict["epoch_index"]
        self.num_updates = state_dict["num_updates"]
        self._apply()


def _single_lr(lr) -> float:
    values = list(lr) if isinstance(lr, Collection) else [lr]
    if len(values) != 1:
        raise ValueError(f"lr_scheduler=eden takes one base lr in optimization.lr, got {values}")
    if not values[0] >= 0:
        raise ValueError(f"lr_scheduler=eden: optimization.lr must be >= 0, got {values[0]}")
    return float(values[0])


def _warn_if_warmup_outlasts_training(cfg: EdenLRScheduleConfig) -> None:
    if cfg.warmup_start == 0 and 0 < cfg.max_update < cfg.warmup_batches:
        logger.warning(
            "lr_scheduler=eden: warmup_batches=%g is longer than optimization.max_update=%d with "
            "warmup_start=0, so training ends at %.1f%% of the peak lr; shorten the warm-up or raise "
            "warmup_start", cfg.warmup_batches, cfg.max_update, 100.0 * cfg.max_update / cfg.warmup_batches,
        )
