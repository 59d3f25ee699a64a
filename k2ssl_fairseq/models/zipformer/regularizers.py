"""Gradient-only regularisers of Zipformer2.

Each of these is the identity in the forward pass and only edits the gradient in the backward
pass: ``Balancer`` keeps per-channel sign balance and magnitude in range, ``Whiten`` keeps a
feature covariance close to a multiple of the identity, ``limit_param_value`` keeps a parameter in
range by flipping gradient signs, ``penalize_abs_values_gt`` adds an L1 penalty on values beyond a
limit. They act only in training mode and only when the input requires a gradient; in eval mode
they return their input untouched (k2SSL also skips them whenever no gradient is needed).

Whether one acts on a pass is random. The caller draws for it (``draw``, U[0, 1)): a Python float
in eager code, which then decides on the host and skips all work when the unit does not act; a
0-d tensor in compiled code, which then computes the unit and selects its effect on the device, so
the compiled graph does not depend on the draw. Their gradients are written out, not
differentiated at run time: a backward pass is a few dozen device ops and never reads the device.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .schedules import Draw, FloatLike, ScheduledFloat, current, own_draw, scheduled

#: Suffix of a module's extra state in a state dict (``torch.nn.Module``'s name for it).
EXTRA_STATE = "_extra_state"


Decision = Union[bool, Tensor]


def _fired(result: Tensor, fire: Decision, otherwise: Tensor) -> Tensor:
    """``result`` where a decision fired: a host decision is known True here (eager code skips a
    False one before doing any work); a tensor decision (compiled code) selects on the device."""
    return result if isinstance(fire, bool) else torch.where(fire, result, otherwise)


def _positive_fraction_to_mean(fraction: Union[float, Tensor]) -> Union[float, Tensor]:
    """Mean/std ratio of a Gaussian that is positive ``fraction`` of the time (k2SSL's
    approximation ``0.8139535143 * atanh(2 p - 1)``, with a small epsilon at p = 0 or 1)."""
    z = 2.0 * fraction - 1.0
    eps = 1.0e-10
    log = math.log if isinstance(z, float) else torch.log
    return 0.8139535143 * 0.5 * (log(1.0 + z + eps) - log(1.0 - z + eps))


def _abs_to_rms(mean_abs: Union[float, Tensor]) -> Union[float, Tensor]:
    """RMS of a zero-mean Gaussian with the given mean absolute value (sqrt(pi / 2) times)."""
    return 1.25331413732 * mean_abs


def _clamp(x: Tensor, low: Union[float, Tensor], high: Union[float, Tensor]) -> Tensor:
    """``x.clamp(low, high)`` for host bounds; for tensor bounds (compiled code) the same by
    minimum/maximum, which take 0-d tensors as tensors (``clamp`` would read them as numbers)."""
    if isinstance(low, Tensor) or isinstance(high, Tensor):
        return torch.maximum(torch.minimum(x, torch.as_tensor(high, dtype=x.dtype)), torch.as_tensor(low, dtype=x.dtype))
    return x.clamp(min=low, max=high)


def balancer_gradient(x: Tensor, limits: Sequence, channel_dim: int) -> Tensor:
    """The gradient of k2SSL's Balancer range-violation loss w.r.t. ``x``, normalised per channel.

    The loss is, per channel (statistics over every other axis, ``n`` values each),
    ``|r - clamp(r, min_mean, max_mean)| + |log(clamp(rms, min_rms, max_rms) / rms)|`` with
    ``r = mean / std``. Its gradient is affine in ``x`` per channel, ``(a + b x) / n`` with
    ``b = s_rms / rms^2 - s_r r / std^2`` and ``a = s_r (1 + r^2) / std`` (``s_r``, ``s_rms``: the
    sign of each violation; a std clamped at 1e-10 passes no gradient, as in autograd, and neither
    does an rms clamped there), so it is written out instead of differentiated at run time. The
    result is scaled to RMS ``grad_scale`` per channel (which also absorbs the ``1 / n``). ``x``
    must be float32 or wider.
    """
    min_mean, max_mean, min_rms, max_rms, grad_scale = limits
    other_dims = [d for d in range(x.ndim) if d != channel_dim]
    n = x.numel() // x.shape[channel_dim]
    var, mean = torch.var_mean(x, dim=other_dims, correction=0, keepdim=True)
    inv_std = var.clamp(min=1.0e-20).rsqrt()
    ratio = mean * inv_std
    ratio_sign = (ratio - _clamp(ratio, min_mean, max_mean)).sign_()
    mean_square = torch.addcmul(var, mean, mean)
    rms_sign = (mean_square - _clamp(mean_square, min_rms * min_rms, max_rms * max_rms)).sign_()
    std_term = ratio_sign * inv_std
    live_std_term = std_term * (var >= 1.0e-20)
    rms_term = rms_sign * (mean_square >= 1.0e-20) / mean_square.clamp(min=1.0e-20)
    slope = rms_term.sub_(live_std_term * ratio * inv_std)
    offset = torch.addcmul(std_term, live_std_term, ratio * ratio)
    loss_grad = torch.addcmul(offset, slope, x)
    norm = torch.linalg.vector_norm(loss_grad, dim=other_dims, keepdim=True)
    return loss_grad.mul_(norm.clamp_(min=1.0e-20).reciprocal_().mul_(grad_scale * n**0.5))


class _BalancerGradient(torch.autograd.Function):
    """Identity; backward adds |grad| times :func:`balancer_gradient` (where ``fire``)."""

    @staticmethod
    def forward(ctx, x: Tensor, limits: Sequence, channel_dim: int, fire: Decision):
        ctx.save_for_backward(x)
        ctx.limits, ctx.channel_dim, ctx.fire = limits, channel_dim, fire
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        loss_grad = balancer_gradient(x.float(), ctx.limits, ctx.channel_dim)
        grad_float = grad.float()
        balanced = torch.addcmul(grad_float, grad_float.abs(), loss_grad).to(grad.dtype)
        return _fired(balanced, ctx.fire, grad), None, None, None


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
        self.register_buffer("limits_tensor", torch.zeros(5), persistent=False)
        self.refresh()

    def refresh(self) -> None:
        """Work out the limits on mean/std and RMS for the current schedule values (``set_batch_count``
        and ``train``/``eval`` call this): host floats for eager code, a tensor for compiled code."""
        limits = (
            _positive_fraction_to_mean(float(self.min_positive)),
            _positive_fraction_to_mean(float(self.max_positive)),
            _abs_to_rms(float(self.min_abs)),
            _abs_to_rms(float(self.max_abs)),
            float(self.grad_scale),
        )
        if limits != getattr(self, "limits", None):
            self.limits = limits
            with torch.no_grad():
                self.limits_tensor.copy_(torch.tensor(limits))

    def train(self, mode: bool = True) -> "Balancer":
        super().train(mode)
        self.refresh()
        return self

    def forward(self, x: Tensor, draw: Optional[Draw] = None) -> Tensor:
        """Args: x: the input; draw: this pass's U[0, 1) draw (it acts when ``draw < prob``)."""
        if not (self.training and x.requires_grad):
            return x
        fire = own_draw(draw) < current(self.prob)
        if fire is False:
            return x
        if x.shape[self.channel_dim] != self.num_channels:
            raise ValueError(
                f"Balancer expects {self.num_channels} channels on dim {self.channel_dim}, "
                f"got input of shape {tuple(x.shape)}"
            )
        limits = self.limits_tensor.unbind() if torch.compiler.is_compiling() else self.limits
        return _BalancerGradient.apply(x, limits, self.channel_dim % x.ndim, fire)


def _whitening_terms(x: Tensor, num_groups: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The centred groups ``(group, frame, group_size)`` (``(frame, channel)`` for one group), their
    covariances, and the mean diagonal entry and mean squared entry (per channel) of the covariances."""
    x = x.reshape(-1, x.shape[-1])
    frames, channels = x.shape
    if num_groups > 1:
        x = x.reshape(frames, num_groups, channels // num_groups).transpose(0, 1)
    centred = x - x.mean(dim=-2, keepdim=True)
    covariance = torch.matmul(centred.transpose(-1, -2), centred)
    mean_diag = centred.square().sum() / channels
    mean_diag_of_square = covariance.square().sum() / channels
    return centred, covariance, mean_diag, mean_diag_of_square


def whitening_metric(x: Tensor, num_groups: int) -> Tensor:
    """How far the centred covariance of each channel group is from a common multiple of I.

    Args:
        x: features, shape ``(*, channel)``; channel must be divisible by ``num_groups``.
        num_groups: number of equal channel groups.

    Returns:
        A scalar >= 1 (1 means perfectly white with equal traces across groups):
        mean(diag(C^2)) / mean(diag(C))^2 over all groups' covariances C.
    """
    _, _, mean_diag, mean_diag_of_square = _whitening_terms(x, num_groups)
    return mean_diag_of_square / (mean_diag * mean_diag + 1.0e-20)


def whitening_gradient(x: Tensor, num_groups: int) -> Tuple[Tensor, Tensor]:
    """:func:`whitening_metric` of ``x`` and its gradient w.r.t. ``x``.

    With ``X`` a centred group, ``C = X^T X``, ``d = mean diag`` and ``m = (sum C^2 / channels) /
    (d^2 + eps)``: ``dm/dX = 4 (X C - m d X) / (channels (d^2 + eps))`` (the centring adds nothing:
    the rows of ``X C`` already sum to zero), written out instead of differentiated at run time.
    """
    centred, covariance, mean_diag, mean_diag_of_square = _whitening_terms(x, num_groups)
    denominator = mean_diag * mean_diag + 1.0e-20
    metric = mean_diag_of_square / denominator
    grad = torch.matmul(centred, covariance).sub_(centred * (metric * mean_diag))
    grad = grad.mul_((4.0 / x.shape[-1]) / denominator)
    return metric, (grad.transpose(0, 1) if num_groups > 1 else grad).reshape(x.shape)


class _WhitenGradient(torch.autograd.Function):
    """Identity; backward adds the whitening metric's gradient where ``fire`` and the metric is
    over ``limit``, and returns what it found as the gradient of ``findings``: ``[1, 0]`` under the
    limit, ``[0, 1]`` over it (autograd sums these over the update's passes)."""

    @staticmethod
    def forward(ctx, x: Tensor, findings: Tensor, fire: Decision, limit, grad_scale, num_groups: int):
        ctx.save_for_backward(x)
        ctx.fire, ctx.limit, ctx.grad_scale, ctx.num_groups = fire, limit, grad_scale, num_groups
        ctx.findings_dtype = findings.dtype
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        metric, penalty_grad = whitening_gradient(x.detach().float(), ctx.num_groups)
        over = metric >= ctx.limit
        grad_float = grad.float()
        scale = ctx.grad_scale * torch.linalg.vector_norm(grad_float) / (
            torch.linalg.vector_norm(penalty_grad) + 1.0e-20)
        whitened = torch.where(over, grad_float + penalty_grad * scale, grad_float).to(grad.dtype)
        found = torch.stack((~over, over)).to(ctx.findings_dtype)
        return (_fired(whitened, ctx.fire, grad), _fired(found, ctx.fire, torch.zeros_like(found)),
                None, None, None, None)


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

    What a backward pass finds stays on the device, as the gradient of the leaf ``findings``
    (counts of passes under and over the limit): the backward never waits for the host, and the
    update's findings are read once, when it closes.

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
        self.register_buffer("prob_tensor", torch.tensor(float(self.max_prob)), persistent=False)
        self._prob = float(self.max_prob)
        self.register_buffer("findings", torch.zeros(2, requires_grad=True), persistent=False)
        self._carried = self.NOT_SEEN  # findings of the update in progress that came from a saved state

    @property
    def prob(self) -> float:
        """Probability of acting on a pass; also kept as ``prob_tensor`` for compiled code."""
        return self._prob

    @prob.setter
    def prob(self, value: float) -> None:
        if float(value) != self._prob:
            self._prob = float(value)
            with torch.no_grad():
                self.prob_tensor.fill_(self._prob)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if not self.findings.is_leaf or not self.findings.requires_grad:  # a device move made it a copy
            self._buffers["findings"] = self.findings.detach().requires_grad_()
        return self

    def forward(self, x: Tensor, draw: Optional[Draw] = None) -> Tensor:
        """Args: x: the input; draw: this pass's U[0, 1) draw (it acts when ``draw <= prob``)."""
        if not (self.training and x.requires_grad):
            return x
        prob = self.prob_tensor if torch.compiler.is_compiling() else self.prob
        fire = own_draw(draw) <= prob
        if fire is False:
            return x
        return _WhitenGradient.apply(x, self.findings, fire, current(self.whitening_limit),
                                     current(self.grad_scale), self.num_groups)

    def found(self) -> Tensor:
        """What this update's backward passes found so far, on the device: ``[under, over]`` counts."""
        return self.findings.grad if self.findings.grad is not None else torch.zeros_like(self.findings)

    @property
    def observed(self) -> int:
        """What the update in progress found so far (reads the device)."""
        if self.findings.grad is None:
            return self._carried
        under, over = self.findings.grad.tolist()
        return max(self._carried, self.OVER if over > 0 else self.UNDER if under > 0 else self.NOT_SEEN)

    @observed.setter
    def observed(self, value: int) -> None:
        self.findings.grad = None
        self._carried = int(value)

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
    """Close one update for every :class:`Whiten` below ``module`` (one read of the device).

    Args:
        combine: makes the per-module findings (an int64 tensor) the same on every process, e.g. an
            all-reduce with MAX; None in a single process.
    """
    whitens = [sub for sub in module.modules() if isinstance(sub, Whiten)]
    if not whitens:
        return
    under, over = torch.stack([whiten.found() for whiten in whitens]).unbind(dim=1)
    found = torch.where(over > 0, Whiten.OVER, torch.where(under > 0, Whiten.UNDER, Whiten.NOT_SEEN))
    carried = torch.tensor([whiten._carried for whiten in whitens], dtype=torch.int64)
    observed = torch.maximum(found.cpu().to(torch.int64), carried)
    if combine is not None:
        observed = combine(observed)
    for whiten, observation in zip(whitens, observed.tolist()):
        whiten.end_update(int(observation))


def whitening_schedule(limit: float, ratio: float = 2.0) -> ScheduledFloat:
    """k2SSL's whitening limit: ``limit`` at batch 0, rising to ``ratio * limit`` by 20000."""
    return ScheduledFloat((0.0, limit), (20000.0, ratio * limit), default=limit)


class _LimitValueGradient(torch.autograd.Function):
    """Identity; backward makes the gradient push out-of-range elements back into range (where ``fire``)."""

    @staticmethod
    def forward(ctx, x: Tensor, low, high, fire: Decision):
        ctx.save_for_backward(x)
        ctx.low, ctx.high, ctx.fire = low, high, fire
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        # A positive gradient lowers x under gradient descent, a negative one raises it.
        wrong_way = ((grad > 0) & (x < ctx.low)) | ((grad < 0) & (x > ctx.high))
        if not isinstance(ctx.fire, bool):
            wrong_way = wrong_way & ctx.fire
        return torch.where(wrong_way, -grad, grad), None, None, None


def limit_param_value(x: Tensor, low: Union[float, Tensor], high: Union[float, Tensor],
                      draw: Optional[Draw] = None, prob: float = 0.6) -> Tensor:
    """Return ``x`` unchanged; on a random ``prob`` of calls (``draw < prob``), its gradient is
    sign-flipped where following it would move an element further outside ``[low, high]``.

    Call it in training mode only, on a parameter, each forward pass.
    """
    if isinstance(low, float) and isinstance(high, float) and high < low:
        raise ValueError(f"limit_param_value: high ({high}) is below low ({low})")
    if not x.requires_grad:
        return x
    fire = own_draw(draw) < prob
    if fire is False:
        return x
    return _LimitValueGradient.apply(x, low, high, fire)


class _AbsPenaltyGradient(torch.autograd.Function):
    """Identity; backward adds ``penalty * sign(x)`` where ``|x| > limit`` (and ``fire``)."""

    @staticmethod
    def forward(ctx, x: Tensor, limit: float, penalty: float, fire: Decision):
        over = (x.abs() > limit).to(torch.int8) * x.sign().to(torch.int8)
        ctx.save_for_backward(over)
        ctx.penalty, ctx.fire = penalty, fire
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (over,) = ctx.saved_tensors
        return _fired(grad + ctx.penalty * over.to(grad.dtype), ctx.fire, grad), None, None, None


def penalize_abs_values_gt(x: Tensor, limit: float, penalty: float, fire: Decision = True) -> Tensor:
    """Return ``x`` unchanged, but add ``penalty * sum(relu(|x| - limit))`` to the loss's
    gradient (the loss value itself is not reported), where ``fire``."""
    if not x.requires_grad or fire is False:
        return x
    return _AbsPenaltyGradient.apply(x, limit, penalty, fire)
