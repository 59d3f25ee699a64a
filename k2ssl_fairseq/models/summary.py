"""A parameter table instead of torch's module tree when a model is printed.

fairseq's trainer logs ``str(model)`` at start; for a Zipformer that is over a thousand lines of
schedules and balancers that say nothing about the model's size. The table shows each block and
its repeated members (the elements of any ``ModuleList``) with their parameter counts, a few levels
deep. ``K2SSL_MODEL_SUMMARY=full`` (or :func:`full_description`) gives torch's tree back.
"""
from __future__ import annotations

import os
from typing import Iterator, List, Tuple

from torch import nn

#: Environment variable that restores torch's full module tree in ``repr(model)``.
FULL_SUMMARY_ENV = "K2SSL_MODEL_SUMMARY"
#: Levels of nested blocks shown below the model's own children.
DEFAULT_DEPTH = 1


def parameter_count(module: nn.Module, trainable_only: bool = False) -> int:
    """Parameters of a module and its children (each shared tensor counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _holds_list(module: nn.Module) -> bool:
    return any(isinstance(child, nn.ModuleList) for child in module.children())


def _rows(module: nn.Module, depth: int, max_depth: int) -> Iterator[Tuple[int, str, nn.Module]]:
    """(depth, name relative to the parent row, module) of every block worth a row: children with
    parameters, the members of a ModuleList as ``name.i``, and the blocks inside those that hold
    repeated members themselves or are models of their own (a CTC model's encoder), down to
    ``max_depth``."""
    for name, child in module.named_children():
        members = list(child.named_children()) if isinstance(child, nn.ModuleList) else [(None, child)]
        for index, member in members:
            if parameter_count(member) == 0:
                continue
            yield depth, name if index is None else f"{name}.{index}", member
            if depth < max_depth and (_holds_list(member) or isinstance(member, ParameterTableRepr)):
                yield from _rows(member, depth + 1, max_depth)


def model_summary(model: nn.Module, max_depth: int = DEFAULT_DEPTH) -> str:
    """The model's class and parameter total, then one row per block: name, class, parameters."""
    total, trainable = parameter_count(model), parameter_count(model, trainable_only=True)
    rows = [("  " * depth + name, type(block).__name__, f"{parameter_count(block):,}")
            for depth, name, block in _rows(model, 0, max_depth)]
    own = dict(model.named_parameters(recurse=False))
    if own:
        rows.append((", ".join(own), "Parameter", f"{sum(p.numel() for p in own.values()):,}"))
    widths = [max([len(row[column]) for row in rows] + [len(title)])
              for column, title in enumerate(("block", "class", "parameters"))]
    lines: List[str] = [
        f"{type(model).__name__}: {total:,} parameters ({trainable:,} trainable); "
        f"{FULL_SUMMARY_ENV}=full prints every module",
        f"  {'block':<{widths[0]}}  {'class':<{widths[1]}}  {'parameters':>{widths[2]}}",
    ]
    lines += [f"  {name:<{widths[0]}}  {cls:<{widths[1]}}  {count:>{widths[2]}}" for name, cls, count in rows]
    return "\n".join(lines)


def full_description(model: nn.Module) -> str:
    """torch's own module tree, whatever the environment says."""
    return nn.Module.__repr__(model)


class ParameterTableRepr:
    """Mixin for models: ``repr`` is :func:`model_summary` unless ``K2SSL_MODEL_SUMMARY=full``."""

    def __repr__(self) -> str:
        if os.environ.get(FULL_SUMMARY_ENV, "").lower() == "full":
            return full_description(self)
        return model_summary(self)
