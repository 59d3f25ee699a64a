"""Linear layers with k2SSL's initial scaling."""

from __future__ import annotations

import torch
from torch import nn


def scaled_linear(
    in_features: int, out_features: int, bias: bool = True, initial_scale: float = 1.0
) -> nn.Linear:
    """``nn.Linear`` whose initial weight is scaled by ``initial_scale`` and whose bias is drawn
    from U(-0.1 s, 0.1 s) (k2SSL's ``ScaledLinear``; only the initialisation differs)."""
    linear = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        linear.weight.mul_(initial_scale)
        if linear.bias is not None:
            linear.bias.uniform_(-0.1 * initial_scale, 0.1 * initial_scale)
    return linear
