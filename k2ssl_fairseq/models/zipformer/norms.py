"""BiasNorm: Zipformer2's replacement for LayerNorm.

``y = x * exp(log_scale) / sqrt(mean_c((x - bias)^2))``: the learned bias only enters the scale, so
a channel stuck at a large constant cannot dominate the normalisation, and there is no per-channel
output gain. A custom autograd function keeps only the input and one scale per frame for backward.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .regularizers import limit_param_value
from .schedules import Draw


class _BiasNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, bias: Tensor, log_scale: Tensor) -> Tensor:
        inv_rms = (x - bias).pow(2).mean(dim=-1, keepdim=True).rsqrt()
        ctx.save_for_backward(x, bias, log_scale, inv_rms)
        return x * (inv_rms * log_scale.exp())

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, bias, log_scale, inv_rms = ctx.saved_tensors
        scale = inv_rms * log_scale.exp()
        centred = x - bias
        grad_dot_x = (grad * x).sum(dim=-1, keepdim=True)
        # d scale / d centred_j = -scale * inv_rms^2 * centred_j / C
        coeff = grad_dot_x * scale * inv_rms.pow(2) / x.shape[-1]
        x_grad = grad * scale - coeff * centred
        bias_grad = (coeff * centred).reshape(-1, x.shape[-1]).sum(dim=0)
        log_scale_grad = (grad_dot_x * scale).sum().reshape(log_scale.shape)
        return x_grad, bias_grad, log_scale_grad


class BiasNorm(nn.Module):
    """Normalise the last axis by the RMS of ``x - bias``, then scale by ``exp(log_scale)``.

    In training, ``log_scale`` is kept within ``[log_scale_min, log_scale_max]`` through its
    gradient only (``limit_param_value``); the forward pass never clamps it.

    Args:
        num_channels: size of the last axis.
        log_scale: initial log of the output scale.
        log_scale_min, log_scale_max: range enforced on ``log_scale`` during training.
    """

    def __init__(
        self,
        num_channels: int,
        log_scale: float = 1.0,
        log_scale_min: float = -1.5,
        log_scale_max: float = 1.5,
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.log_scale = nn.Parameter(torch.tensor(log_scale))
        self.bias = nn.Parameter(torch.empty(num_channels).normal_(mean=0.0, std=1.0e-4))
        self.log_scale_min = log_scale_min
        self.log_scale_max = log_scale_max

    def forward(self, x: Tensor, limit_draw: Optional[Draw] = None) -> Tensor:
        """Args: x: ``(..., num_channels)``; limit_draw: the draw for ``limit_param_value``.
        Returns: same shape."""
        if x.shape[-1] != self.num_channels:
            raise ValueError(f"BiasNorm expects {self.num_channels} channels, got shape {tuple(x.shape)}")
        log_scale = self.log_scale
        if self.training:
            log_scale = limit_param_value(log_scale, self.log_scale_min, self.log_scale_max, limit_draw)
        return _BiasNormFunction.apply(x, self.bias, log_scale)
