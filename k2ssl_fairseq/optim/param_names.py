"""Parameter names for optimizers that fairseq builds from unnamed tensors.

fairseq's trainer hands an optimizer a plain list of tensors (``Trainer._build_optimizer``), but
ScaledAdam's clipping diagnostics want names. ``tag_parameter_names(model)`` records each
parameter's qualified name on the tensor itself; the ``scaled_adam`` wrapper reads it back. Call it
where the model is built (for example in a task's ``build_model``). Untagged tensors, including the
fp32 copies fairseq's ``FP16Optimizer`` makes, are named by position: ``param<i>``.
"""
from __future__ import annotations

from typing import Iterable, List

import torch

PARAM_NAME_ATTR = "k2ssl_param_name"


def tag_parameter_names(module: torch.nn.Module, prefix: str = "") -> None:
    """Store ``prefix + name`` on every parameter of ``module`` (shared tensors keep their first name)."""
    for name, param in module.named_parameters(prefix=prefix.rstrip(".")):
        setattr(param, PARAM_NAME_ATTR, name)


def parameter_names(params: Iterable[torch.Tensor]) -> List[str]:
    """The tagged name of each tensor, or ``param<i>`` by position when it has none."""
    return [getattr(p, PARAM_NAME_ATTR, f"param{i}") for i, p in enumerate(params)]
