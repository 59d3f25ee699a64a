"""Swoosh activations and the memory-saving activation + dropout + linear block.

SwooshL(x) = log(1 + e^(x-4)) - 0.08 x - 0.035 and SwooshR(x) = log(1 + e^(x-1)) - 0.08 x -
0.313261687 (k2SSL's formulas). ``ActivationDropoutLinear`` fuses activation, dropout and the
following linear layer in one autograd function that keeps only its input (and a small dropout
mask) for the backward pass, recomputing the activation there: the hidden activation of every
feed-forward and convolution module is the largest tensor of a layer, and this never stores it.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .linear import scaled_linear
from .schedules import FloatLike, current, scheduled

# (offset, constant) of each Swoosh: f(x) = softplus(x - offset) - 0.08 x - constant.
SWOOSH_SHAPES = {"swoosh_l": (4.0, 0.035), "swoosh_r": (1.0, 0.313261687)}
_SWOOSH_SLOPE = 0.08


def swoosh(x: Tensor, kind: str) -> Tensor:
    """Apply ``"swoosh_l"`` or ``"swoosh_r"`` elementwise."""
    offset, constant = SWOOSH_SHAPES[kind]
    return F.softplus(x - offset).add_(x, alpha=-_SWOOSH_SLOPE).sub_(constant)


def swoosh_derivative(x: Tensor, kind: str) -> Tensor:
    """d swoosh / dx = sigmoid(x - offset) - 0.08."""
    offset, _ = SWOOSH_SHAPES[kind]
    return torch.sigmoid(x - offset).sub_(_SWOOSH_SLOPE)


def swoosh_l(x: Tensor) -> Tensor:
    """SwooshL, used in the feed-forward modules."""
    return swoosh(x, "swoosh_l")


def swoosh_r(x: Tensor) -> Tensor:
    """SwooshR, used in the convolution modules."""
    return swoosh(x, "swoosh_r")


class _SwooshDropoutLinear(torch.autograd.Function):
    """``linear(swoosh(x) * mask, weight, bias)`` storing only x, the weight and the mask."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], kind: str, mask: Optional[Tensor]):
        hidden = swoosh(x, kind)
        if mask is not None:
            hidden.mul_(mask)
        ctx.save_for_backward(x, weight, mask)
        ctx.kind = kind
        ctx.has_bias = bias is not None
        return F.linear(hidden, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, mask = ctx.saved_tensors
        hidden = swoosh(x, ctx.kind)
        hidden_grad = torch.matmul(grad, weight.to(grad.dtype))
        if mask is not None:
            hidden.mul_(mask)
            hidden_grad.mul_(mask)
        flat_grad = grad.reshape(-1, grad.shape[-1])
        weight_grad = torch.matmul(flat_grad.t(), hidden.reshape(-1, hidden.shape[-1]).to(grad.dtype))
        bias_grad = flat_grad.sum(dim=0) if ctx.has_bias else None
        x_grad = hidden_grad.mul_(swoosh_derivative(x, ctx.kind))
        return x_grad, weight_grad.to(weight.dtype), bias_grad, None, None


class ActivationDropoutLinear(nn.Module):
    """Swoosh, then dropout, then a linear layer (parameters ``weight`` and ``bias``).

    Args:
        in_features: input channels.
        out_features: output channels.
        activation: ``"swoosh_l"`` or ``"swoosh_r"``.
        dropout: dropout rate (float or schedule), applied in training mode only.
        dropout_shared_dim: axis along which one dropout mask is shared (0 = time for
            ``(time, batch, channel)`` inputs), or None for an independent mask per element.
        bias: whether the linear layer has a bias.
        initial_scale: factor on the default ``nn.Linear`` weight initialisation (and the bias is
            drawn from U(-0.1 s, 0.1 s)), as in k2SSL's ``ScaledLinear``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str,
        dropout: FloatLike = 0.0,
        dropout_shared_dim: Optional[int] = 0,
        bias: bool = True,
        initial_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if activation not in SWOOSH_SHAPES:
            raise ValueError(f"activation must be one of {sorted(SWOOSH_SHAPES)}, got {activation!r}")
        linear = scaled_linear(in_features, out_features, bias=bias, initial_scale=initial_scale)
        self.weight = linear.weight
        self.bias = linear.bias
        self.activation = activation
        self.dropout = scheduled(dropout)
        self.dropout_shared_dim = dropout_shared_dim

    def _dropout_mask(self, x: Tensor, draws: Optional[Tensor] = None) -> Optional[Tensor]:
        """The scaled keep mask (a unit is kept when its draw is ``> rate``, k2SSL's tie rule), or
        None when a host rate is 0. ``draws``: U[0, 1) of the mask's shape (None: drawn here)."""
        rate = current(self.dropout) if self.training else 0.0
        if isinstance(rate, float) and rate == 0.0:
            return None
        if draws is None:
            shape = list(x.shape)
            if self.dropout_shared_dim is not None:
                shape[self.dropout_shared_dim] = 1
            draws = torch.rand(shape, device=x.device)
        return (draws > rate).to(x.dtype) * (1.0 / (1.0 - rate))

    def forward(self, x: Tensor, dropout_draws: Optional[Tensor] = None) -> Tensor:
        """Args: x: ``(..., in_features)``; dropout_draws: U[0, 1) draws of the dropout mask's shape
        (None: drawn here). Returns: ``(..., out_features)``."""
        mask = self._dropout_mask(x, dropout_draws)
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return _SwooshDropoutLinear.apply(x, self.weight, self.bias, self.activation, mask)
        hidden = swoosh(x, self.activation)
        if mask is not None:
            hidden = hidden * mask
        return F.linear(hidden, self.weight, self.bias)
