"""Values that follow the training step: piecewise-linear schedules and random draws.

Zipformer2 anneals most of its regularisation (dropout, skip rates, balancer limits, whitening
limits) over the first tens of thousands of batches. Each such value is a ``ScheduledFloat``
registered as a sub-module, so ``.train()``/``.eval()`` reach it and ``set_batch_count`` can push
the step into all of them at once.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import nn


class ScheduledFloat(nn.Module):
    """A float that is a piecewise-linear function of the training batch count.

    The value is the schedule at ``batch_count`` in training mode, and ``default`` in eval mode or
    while no batch count has been set (as in k2SSL, where eval mode disables every scheduled
    regulariser). Read it with ``float(value)``.

    Args:
        *points: ``(batch_count, value)`` pairs with strictly increasing batch counts; values are
            held constant before the first and after the last point.
        default: the value in eval mode or before ``set_batch_count`` is first called.
    """

    def __init__(self, *points: Tuple[float, float], default: float = 0.0) -> None:
        super().__init__()
        if not points:
            raise ValueError("ScheduledFloat needs at least one (batch_count, value) point")
        xs = [float(x) for x, _ in points]
        if any(b <= a for a, b in zip(xs, xs[1:])):
            raise ValueError(f"ScheduledFloat batch counts must increase strictly, got {xs}")
        self.points = [(x, float(y)) for x, (_, y) in zip(xs, points)]
        self.default = float(default)
        self.batch_count: Optional[float] = None

    def extra_repr(self) -> str:
        return f"points={self.points}, default={self.default}, batch_count={self.batch_count}"

    def value_at(self, batch_count: float) -> float:
        """The schedule's value at ``batch_count``, ignoring the mode."""
        (x0, y0), (x_last, y_last) = self.points[0], self.points[-1]
        if batch_count <= x0:
            return y0
        if batch_count >= x_last:
            return y_last
        for (xa, ya), (xb, yb) in zip(self.points, self.points[1:]):
            if batch_count <= xb:
                return ya + (yb - ya) * (batch_count - xa) / (xb - xa)
        raise AssertionError("unreachable: batch_count lies inside the schedule")

    def __float__(self) -> float:
        if not self.training or self.batch_count is None:
            return self.default
        return self.value_at(self.batch_count)


FloatLike = Union[float, ScheduledFloat]


def set_batch_count(module: nn.Module, batch_count: float) -> None:
    """Push the training step into every ``ScheduledFloat`` below ``module``.

    Args:
        module: any module; usually the whole model.
        batch_count: k2SSL's adjusted batch count (see the model's ``set_num_updates``).
    """
    for sub in module.modules():
        if isinstance(sub, ScheduledFloat):
            sub.batch_count = float(batch_count)


def random_uniform() -> float:
    """One draw from U[0, 1) using torch's global generator, which fairseq seeds."""
    return float(torch.rand(()))


def scheduled(value: FloatLike) -> FloatLike:
    """Return a private copy of a scheduled value (each module owns its schedule module)."""
    if isinstance(value, ScheduledFloat):
        copy = ScheduledFloat(*value.points, default=value.default)
        copy.batch_count = value.batch_count
        return copy
    return float(value)
