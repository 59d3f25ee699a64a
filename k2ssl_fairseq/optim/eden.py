"""Eden learning-rate schedule: the maths, independent of any trainer.

    lr(b, e) = base_lr * ((b^2 + B^2) / B^2)^(-1/4) * ((e^2 + E^2) / E^2)^(-1/4) * w(b)
    w(b)     = warmup_start + (1 - warmup_start) * b / warmup_batches   while b < warmup_batches, else 1

``b`` counts optimizer steps *including* the one about to be taken (icefall calls ``step_batch(b)``
before ``optimizer.step()``), ``e`` is the 0-based epoch index or, for data sets where an epoch is
very long, any other measure of data seen such as hours of audio (k2SSL on Libri-Light). ``B`` and
``E`` are where the decay becomes significant; far beyond both, lr falls like ``(b * e)^(-1/2)``.
Formula and defaults: k2ssl-notes.md section 9.2 (icefall ``optim.py`` ``Eden``).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EdenSchedule:
    """Eden's shape; ``lr = base_lr * schedule.factor(batch, epoch)``.

    Args:
        lr_batches: ``B``, steps after which the lr decays noticeably (k2SSL: 7500).
        lr_epochs: ``E``, epochs (or hours, ...) after which it decays noticeably (k2SSL Base: 10.5).
        warmup_batches: steps of linear warm-up (k2SSL: 5000); 0 disables warm-up.
        warmup_start: warm-up factor at step 0, in [0, 1] (k2SSL: 0).

    Raises:
        ValueError: naming every invalid value.
    """

    lr_batches: float
    lr_epochs: float
    warmup_batches: float
    warmup_start: float

    def __post_init__(self) -> None:
        problems = []
        if not self.lr_batches > 0:
            problems.append(f"lr_batches must be > 0, got {self.lr_batches}")
        if not self.lr_epochs > 0:
            problems.append(f"lr_epochs must be > 0, got {self.lr_epochs}")
        if not self.warmup_batches >= 0:
            problems.append(f"warmup_batches must be >= 0, got {self.warmup_batches}")
        if not 0.0 <= self.warmup_start <= 1.0:
            problems.append(f"warmup_start must be in [0, 1], got {self.warmup_start}")
        if problems:
            raise ValueError("Eden: " + "; ".join(problems))

    def factor(self, batch: float, epoch: float) -> float:
        """lr / base_lr after ``batch`` steps (counting the current one) in epoch (or hour) ``epoch``."""
        batch_term = ((batch**2 + self.lr_batches**2) / self.lr_batches**2) ** -0.25
        epoch_term = ((epoch**2 + self.lr_epochs**2) / self.lr_epochs**2) ** -0.25
        return batch_term * epoch_term * self.warmup(batch)

    def warmup(self, batch: float) -> float:
        """Linear warm-up factor: ``warmup_start`` at batch 0, 1 from ``warmup_batches`` on."""
        if batch >= self.warmup_batches:
            return 1.0
        return self.warmup_start + (1.0 - self.warmup_start) * (batch / self.warmup_batches)
