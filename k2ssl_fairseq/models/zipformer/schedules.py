"""Values that follow the training step: piecewise-linear schedules and random draws.

Zipformer2 anneals most of its regularisation (dropout, skip rates, balancer limits, whitening
limits) over the first tens of thousands of batches. Each such value is a ``ScheduledFloat``
registered as a sub-module, so ``.train()``/``.eval()`` reach it and ``set_batch_count`` can push
the step into all of them at once. Random yes/no decisions take a ``Draw``: one U[0, 1) number,
drawn by the caller before the code that uses it runs (``layers.LayerDraws``).
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn


class ScheduledFloat(nn.Module):
    """A float that is a piecewise-linear function of the training batch count.

    The value is the schedule at ``batch_count`` in training mode, and ``default`` in eval mode or
    while no batch count has been set (as in k2SSL, where eval mode disables every scheduled
    regulariser). It is worked out when the batch count or the mode changes, never when read, and
    kept twice: as a Python float (``float(value)``: eager code decides on the host, no device op)
    and as the 0-d buffer ``tensor`` (what compiled code reads, so a new value needs no recompile).
    Read it with :func:`current`.

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
        self.value = self.default
        self.register_buffer("tensor", torch.tensor(self.default), persistent=False)

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

    def set_batch_count(self, batch_count: Optional[float]) -> None:
        self.batch_count = None if batch_count is None else float(batch_count)
        self._refresh()

    def train(self, mode: bool = True) -> "ScheduledFloat":
        super().train(mode)
        self._refresh()
        return self

    def _refresh(self) -> None:
        value = self.default if not self.training or self.batch_count is None else self.value_at(self.batch_count)
        if value != self.value:
            self.value = value
            with torch.no_grad():
                self.tensor.fill_(value)

    def __float__(self) -> float:
        return self.value


FloatLike = Union[float, ScheduledFloat]
#: One U[0, 1) draw: a Python float where eager code decides on the host, a 0-d tensor in compiled code.
Draw = Union[float, Tensor]


def current(value: FloatLike) -> Union[float, Tensor]:
    """A value that may be scheduled, as the running code needs it: a Python float in eager code,
    the schedule's 0-d tensor while ``torch.compile`` traces (so the compiled code reads it)."""
    if isinstance(value, ScheduledFloat):
        return value.tensor if torch.compiler.is_compiling() else value.value
    return float(value)


def own_draw(draw: Optional[Draw]) -> Draw:
    """``draw``, or one drawn now when the caller drew none (a unit used on its own)."""
    return torch.rand(1).tolist()[0] if draw is None else draw


def set_batch_count(module: nn.Module, batch_count: float) -> None:
    """Push the training step into every ``ScheduledFloat`` below ``module``.

    Args:
        module: any module; usually the whole model.
        batch_count: k2SSL's adjusted batch count (see the model's ``set_num_updates``).

    Modules with values derived from schedules recompute them afterwards (their ``refresh()``).
    """
    modules = list(module.modules())
    for sub in modules:
        if isinstance(sub, ScheduledFloat):
            sub.set_batch_count(batch_count)
    for sub in modules:
        refresh = getattr(sub, "refresh", None)
        if refresh is not None and not isinstance(sub, ScheduledFloat):
            refresh()


def scheduled(value: FloatLike) -> FloatLike:
    """Return a private copy of a scheduled value (each module owns its schedule module)."""
    if isinstance(value, ScheduledFloat):
        copy = ScheduledFloat(*value.points, default=value.default)
        copy.set_batch_count(value.batch_count)
        return copy
    return float(value)
