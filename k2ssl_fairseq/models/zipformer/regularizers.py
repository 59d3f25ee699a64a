"""Gradient-only regularisers of Zipformer2.

Each of these is the identity in the forward pass and only edits the gradient in the backward
pass: ``Balancer`` keeps per-channel sign balance and magnitude in range, ``Whiten`` keeps a
feature covariance close to a multiple of the identity, ``limit_param_value`` keeps a parameter in
range by flipping gradient signs, ``penalize_abs_values_gt`` adds an L1 penalty on values beyond a
limit. They act only in training mode and only when the input requires a gradient; in eval mode
they return their input untouched (k2SSL also skips them whenever no gradient is needed).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from .schedules import FloatLike, ScheduledFloat, random_uniform, scheduled

#: Suffix of a module's extra state in a state dict (``torch.nn.Module``'s name for it).
EXTRA_STATE = "_extra_state"


def _positive_fraction_to_mean(fraction: float) -> float:
    """Mean/std ratio of a Gaussian that is positive ``fraction`` of the time (k2SSL's
    approximation ``0.8139535143 * atanh(2 p - 1)``, with a small epsilon at p = 0 or 1)."""
    z = 2.0 * fraction - 1.0
    eps = 1.0e-10
    return 0.8139535143 * 0.5 * (math.log(1.0 + z + eps) - math.log(1.0 - z + eps))


def _abs_to_rms(mean_abs: float) -> float:
    """RMS of a zero-mean Gaussian with the given mean absolute value (sqrt(pi / 2) times)."""
    return 1.25331413732 * mean_abs


class _BalancerGradient(torch.autograd.Function):
    """Identity; backward adds |grad| times the normalised gradient of a range-violation loss."""

    @staticmethod
    def forward(ctx, x: Tensor, limits: Tuple[float, float, float, float, float], channel_dim: int):
        ctx.save_for_backward(x)
        ctx.limits = limits
        ctx.channel_dim = channel_dim
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        min_mean, max_mean, min_rms, max_rms, grad_scale = ctx.limits
        other_dims = [d for d in range(x.ndim) if d != ctx.channel_dim]
        with torch.enable_grad():
            x = x.detach().float().requires_grad_(True)
            mean_square = (x * x).mean(dim=other_dims, keepdim=True)
            mean = x.mean(dim=other_dims, keepdim=True)
            std = (mean_square - mean * mean).clamp(min=1.0e-20).sqrt()
            rms = mean_square.clamp(min=1.0e-20).sqrt()
            ratio = mean / std
            mean_violation = (ratio - ratio.clamp(min=min_mean, max=max_mean)).abs()
            rms_violation = (rms.clamp(min=min_rms, max=max_rms) / rms).log().abs()
            (loss_grad,) = torch.autograd.grad((mean_violation + rms_violation).sum(), x)
        loss_grad_rms = (loss_grad * loss_grad).mean(dim=other_dims, keepdim=True).sqrt()
        loss_grad = loss_grad * (grad_scale / loss_grad_rms.clamp(min=1.0e-20))
        grad_float = grad.float()
        return (grad_float + grad_float.abs() * loss_grad).to(grad.dtype), None, None


class Balancer(nn.Module):
    """Gradient-only constraint on each channel's sign balance and magnitude.

    Applied on a random ``prob`` fraction of training forward passes. The limits are given as k2SSL
    gives them (fraction of positive values, mean absolute value) and converted to limits on
    mean/std and RMS.

    Args:
        num_channels: size of ``channel_dim`` (checked).
        channel_dim: the channel axis of the input.
        min_positive, max_positive: allowed range of the fraction of positive values.
        min_abs, max_abs: allowed range of the mean absolute value.
        grad_scale: RMS of the added gradient relative to |grad|.
        prob: probability of acting on a forward pass; None means k2SSL's default schedule
            0.5 -> 0.125 over 8000 batches (0.4 in eval mode, where it is unused anyway).
    """

    def __init__(
        self,
        num_channels: int,
        channel_dim: int,
        min_positive: FloatLike = 0.05,
        max_positive: FloatLike = 0.95,
        min_abs: FloatLike = 0.2,
        max_abs: FloatLike = 100.0,
        grad_scale: FloatLike = 0.04,
        prob: Optional[FloatLike] = None,
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.min_positive = scheduled(min_positive)
        self.max_positive = scheduled(max_positive)
        self.min_abs = scheduled(min_abs)
        self.max_abs = scheduled(max_abs)
        self.grad_scale = scheduled(grad_scale)
        if prob is None:
            prob = ScheduledFloat((0.0, 0.5), (8000.0, 0.125), default=0.4)
        self.prob = scheduled(prob)

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and x.requires_grad) or random_uniform() >= float(self.prob):
            return x
        if x.shape[self.channel_dim] != self.num_channels:
            raise ValueError(
                f"Balancer expects {self.num_channels} channels on dim {self.channel_dim}, "
                f"got input of shape {tuple(x.shape)}"
            )
        limits = (
            _positive_fraction_to_mean(float(self.min_positive)),
            _positive_fraction_to_mean(float(self.max_positive)),
            _abs_to_rms(float(self.min_abs)),
            _abs_to_rms(float(self.max_abs)),
            float(self.grad_scale),
        )
        return _BalancerGradient.apply(x, limits, self.channel_dim % x.ndim)


def whitening_metric(x: Tensor, num_groups: int) -> Tensor:
    """How far the centred covariance of each channel group is from a common multiple of I.

    Args:
        x: features, shape ``(*, channel)``; channel must be divisible by ``num_groups``.
        num_groups: number of equal channel groups.

    Returns:
        A scalar >= 1 (1 means perfectly white with equal traces across groups):
        mean(diag(C^2)) / mean(diag(C))^2 over all groups' covariances C.
    """
    x = x.reshape(-1, x.shape[-1])
    frames, channels = x.shape
    group_size = channels // num_groups
    x = x.reshape(frames, num_groups, group_size).transpose(0, 1)
    x = x - x.mean(dim=1, keepdim=True)
    covariance = torch.matmul(x.transpose(1, 2), x)
    mean_diag = torch.diagonal(covariance, dim1=1, dim2=2).mean()
    mean_diag_of_square = (covariance * covariance).sum() / channels
    return mean_diag_of_square / (mean_diag * mean_diag + 1.0e-20)


class _WhitenGradient(torch.autograd.Function):
    """Identity; backward adds the whitening metric's gradient when the metric is over its limit,
    and records on the module whether it was (see :class:`Whiten`)."""

    @staticmethod
    def forward(ctx, x: Tensor, module: "Whiten"):
        ctx.save_for_backward(x)
        ctx.module = module
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        module = ctx.module
        with torch.enable_grad():
            x = x.detach().float().requires_grad_(True)
            metric = whitening_metric(x, module.num_groups)
            over = metric.item() >= float(module.whitening_limit)
            module.observed = max(module.observed, Whiten.OVER if over else Whiten.UNDER)
            if not over:
                return grad, None
            (penalty_grad,) = torch.autograd.grad(metric, x)
        scale = float(module.grad_scale) * grad.float().norm() / (penalty_grad.norm() + 1.0e-20)
        return grad + (penalty_grad * scale).to(grad.dtype), None


class Whiten(nn.Module):
    """Gradient-only push towards white (decorrelated, equal-variance) features.

    Acts on a forward pass with probability ``prob``: ``max_prob`` after an update in which the
    metric was over its limit, ``min_prob`` after one in which it was under (k2SSL's rule), and
    unchanged after one in which the module did not act. k2SSL changes ``prob`` after every backward
    of every process; here the passes of one update are combined first (its ``update_freq``
    batches, and through :func:`end_whitening_update`'s ``combine`` all ranks), and the update is
    closed when the next one starts, so ``prob`` is the same on every rank and N ranks train like
    one process with ``update_freq`` N. ``prob`` and what the current update found so far are module
    state, saved with the model (``get_extra_state``), so a resumed single-process run continues
    exactly; a resumed multi-rank run starts from rank 0's findings of the last update (the only
    rank that saves).

    Args:
        num_groups: number of channel groups whitened separately (with equal traces).
        whitening_limit: metric value (>= 1) tolerated before the penalty starts.
        prob: ``(min_prob, max_prob)``.
        grad_scale: norm of the added gradient relative to the incoming gradient's norm.
    """

    #: What the passes of the current update found: nothing yet, the metric under, or over its limit.
    NOT_SEEN, UNDER, OVER = 0, 1, 2

    def __init__(
        self,
        num_groups: int,
        whitening_limit: FloatLike,
        prob: Tuple[float, float],
        grad_scale: FloatLike,
    ) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.whitening_limit = scheduled(whitening_limit)
        self.grad_scale = scheduled(grad_scale)
        self.min_prob, self.max_prob = prob
        self.prob = self.max_prob
        self.observed = self.NOT_SEEN

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and x.requires_grad) or random_uniform() > self.prob:
            return x
        return _WhitenGradient.apply(x, self)

    def end_update(self, observed: int) -> None:
        """Set ``prob`` from what the update's passes found (all processes' when combined)."""
        if observed != self.NOT_SEEN:
            self.prob = self.max_prob if observed == self.OVER else self.min_prob
        self.observed = self.NOT_SEEN

    def get_extra_state(self) -> Tensor:
        """``[prob, observed]`` as float64 (a tensor, so fairseq's tools handle it like any weight)."""
        return torch.tensor([self.prob, self.observed], dtype=torch.float64)

    def set_extra_state(self, state: Tensor) -> None:
        self.prob, self.observed = float(state[0]), int(state[1])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # A state dict without this state (icefall's, and the plugin's before it saved it) starts it
        # where a fresh run does. load_state_dict hands modules its own copy of the dict.
        state_dict.setdefault(prefix + EXTRA_STATE, torch.tensor([self.max_prob, self.NOT_SEEN], dtype=torch.float64))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def without_training_state(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """A state dict without the saved training state (``*._extra_state``: the Whiten modules'
    adaptive probabilities), i.e. the tensors an icefall checkpoint holds."""
    return {k: v for k, v in state.items() if not k.endswith("." + EXTRA_STATE)}


def end_whitening_update(module: nn.Module, combine: Optional[Callable[[Tensor], Tensor]] = None) -> None:
    """Close one update for every :class:`Whiten` below ``module``.

    Args:
        combine: makes the per-module findings (an int64 tensor) the same on every process, e.g. an
            all-reduce with MAX; None in a single process.
    """
    whitens = [sub for sub in module.modules() if isinstance(sub, Whiten)]
    if not whitens:
        return
    observed = torch.tensor([w.observed for w in whitens], dtype=torch.int64)
    if combine is not None:
        observed = combine(observed)
    for whiten, found in zip(whitens, observed.tolist()):
        whiten.end_update(int(found))


def whitening_schedule(limit: float, ratio: float = 2.0) -> ScheduledFloat:
    """k2SSL's whitening limit: ``limit`` at batch 0, rising to ``ratio * limit`` by 20000."""
    return ScheduledFloat((0.0, limit), (20000.0, ratio * limit), default=limit)


class _LimitValueGradient(torch.autograd.Function):
    """Identity; backward makes the gradient push out-of-range elements back into range."""

    @staticmethod
    def forward(ctx, x: Tensor, low: float, high: float):
        ctx.save_for_backward(x)
        ctx.low, ctx.high = low, high
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        # A positive gradient lowers x under gradient descent, a negative one raises it.
        wrong_way = ((grad > 0) & (x < ctx.low)) | ((grad < 0) & (x > ctx.high))
        return torch.where(wrong_way, -grad, grad), None, None


def limit_param_value(x: Tensor, low: float, high: float, prob: float = 0.6) -> Tensor:
    """Return ``x`` unchanged; on a random ``prob`` of calls, its gradient is sign-flipped where
    following it would move an element further outside ``[low, high]``.

    Call it in training mode only, on a parameter, each forward pass.
    """
    if high < low:
        raise ValueError(f"limit_param_value: high ({high}) is below low ({low})")
    if not x.requires_grad or random_uniform() >= prob:
        return x
    return _LimitValueGradient.apply(x, low, high)


class _AbsPenaltyGradient(torch.autograd.Function):
    """Identity; backward adds ``penalty * sign(x)`` where ``|x| > limit``."""

    @staticmethod
    def forward(ctx, x: Tensor, limit: float, penalty: float):
        over = (x.abs() > limit).to(torch.int8) * x.sign().to(torch.int8)
        ctx.save_for_backward(over)
        ctx.penalty = penalty
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (over,) = ctx.saved_tensors
        return grad + ctx.penalty * over.to(grad.dtype), None, None


def penalize_abs_values_gt(x: Tensor, limit: float, penalty: float) -> Tensor:
    """Return ``x`` unchanged, but add ``penalty * sum(relu(|x| - limit))`` to the loss's
    gradient (the loss value itself is not reported)."""
    if not x.requires_grad:
        return x
    return _AbsPenaltyGradient.apply(x, limit, penalty)
