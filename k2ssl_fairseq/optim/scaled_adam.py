"""ScaledAdam: Adam with steps relative to each tensor's RMS, a learned tensor scale and median clipping.

This is the optimizer of Zipformer and k2SSL (icefall ``egs/librispeech/ASR/zipformer/optim.py``),
written from its description (``shared/reference/k2ssl-notes.md`` section 9.1). Why it is not Adam:

* the Adam direction of a non-scalar tensor is multiplied by the tensor's RMS (refreshed every
  ``size_update_period`` steps), so ``lr`` is a *relative* change per step (0.045 = 4.5 %);
* the overall scale of each tensor is learned separately, in log space, from ``sum(param * grad)``,
  and kept between ``param_min_rms`` and ``param_max_rms``;
* scalars (``numel() == 1``) get plain Adam with ``lr * scalar_lr_scale`` and are clamped;
* gradients are clipped to ``clipping_scale`` times the median recent gradient norm, measured in the
  same RMS-scaled units as the update. Being relative, it ignores any loss scaling, and it replaces
  fairseq's ``optimization.clip_norm``.

Tensors of the same shape, dtype and device are stacked and updated together (fewer kernel launches
on GPU). A stack's state lives in the optimizer state of its first tensor, so ``state_dict()`` has
torch's usual format and holds only tensors and Python numbers (safe for ``weights_only`` loading).
Parameters without a gradient are updated as if their gradient were zero (momentum keeps moving them).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

# Steps at which the first clipping thresholds are estimated from the norms seen so far (doubled,
# since norms still move fast), before the regular estimate every ``clipping_update_period`` steps.
EARLY_THRESHOLD_STEPS = (10, 20, 40)


@dataclass
class _Stack:
    """Same-shape tensors of one group stacked along a new leading dimension.

    ``param`` is a view of the tensor itself when the stack has one member; otherwise a copy that
    ``write_back`` returns to the members.
    """

    members: List[Tensor]
    names: List[str]
    param: Tensor  # (members, *shape)
    grad: Tensor  # (members, *shape); zeros where a member has no gradient
    state: Dict

    @property
    def is_scalar(self) -> bool:
        return self.param.numel() == self.param.shape[0]

    def per_member_sum(self, values: Tensor) -> Tensor:
        """Sum over every dimension but the stacking one, keeping dims: (members, 1, ..., 1)."""
        if values.ndim == 1:
            return values  # a stack of 0-d tensors (torch would read an empty dim list as "all dims")
        return values.sum(dim=tuple(range(1, values.ndim)), keepdim=True)

    def write_back(self) -> None:
        if len(self.members) > 1:
            for member, value in zip(self.members, self.param):
                member.copy_(value)


class ScaledAdam(torch.optim.Optimizer):
    """ScaledAdam (see the module docstring).

    Args:
        params: tensors, ``(name, tensor)`` pairs (e.g. ``model.named_parameters()``) or groups of
            either, as for any ``torch.optim.Optimizer``. Names are used in clipping diagnostics.
        lr: learning rate: relative change per step for tensors, absolute (times
            ``scalar_lr_scale``) for scalars. k2SSL uses 0.045 under Eden.
        clipping_scale: clip gradients to this times the median norm of the last
            ``clipping_update_period`` steps; ``None`` disables clipping (k2SSL: 2.0).
        betas: (momentum, second-moment decay).
        scalar_lr_scale: learning-rate factor for scalars and for the learned tensor scales.
        eps: added to square roots in denominators.
        param_min_rms: floor of the RMS used to size steps; tensors below it stop shrinking.
        param_max_rms: the learned scale never takes a tensor's RMS above this.
        scalar_max: scalars are clamped to ``[-scalar_max, scalar_max]``.
        size_update_period: steps between RMS refreshes and learned-scale updates.
        clipping_update_period: steps between clipping-threshold estimates (also the history length).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.045,
        clipping_scale: Optional[float] = None,
        betas: Tuple[float, float] = (0.9, 0.98),
        scalar_lr_scale: float = 0.1,
        eps: float = 1.0e-8,
        param_min_rms: float = 1.0e-5,
        param_max_rms: float = 3.0,
        scalar_max: float = 10.0,
        size_update_period: int = 4,
        clipping_update_period: int = 100,
    ):
        _check_hyperparameters(lr, clipping_scale, betas, eps, param_min_rms, param_max_rms,
                               size_update_period, clipping_update_period)
        defaults = dict(
            lr=lr, clipping_scale=clipping_scale, betas=tuple(betas), scalar_lr_scale=scalar_lr_scale,
            eps=eps, param_min_rms=param_min_rms, param_max_rms=param_max_rms, scalar_max=scalar_max,
            size_update_period=size_update_period, clipping_update_period=clipping_update_period,
        )
        super().__init__(params, defaults)
        self.last_clip_factors: List[float] = [1.0] * len(self.param_groups)  # of the last step, per group

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every group; returns the closure's loss (or ``None``)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        clip_factors = []
        for group in self.param_groups:
            stacks = self._stacks(group)
            clip_factors.append(self._clip_factor(group, stacks))
            for stack in stacks:
                self._update(group, stack, clip_factors[-1])
                stack.write_back()
        self.last_clip_factors = clip_factors
        return loss

    def clipping_thresholds(self) -> List[Optional[float]]:
        """Current clipping threshold of each group; ``None`` until the first estimate (step 10)."""
        thresholds = []
        for group in self.param_groups:
            anchor = self.state.get(group["params"][0], {})
            thresholds.append(anchor.get("clip_threshold"))
        return thresholds

    def _stacks(self, group: Dict) -> List[_Stack]:
        names = group.get("param_names") or [f"param{i}" for i in range(len(group["params"]))]
        by_key: Dict[tuple, Tuple[List[Tensor], List[str]]] = {}
        for param, name in zip(group["params"], names):
            members, member_names = by_key.setdefault((str(param.dtype), param.device, *param.shape), ([], []))
            members.append(param)
            member_names.append(name)
        stacks = []
        for members, member_names in by_key.values():
            grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in members]
            if any(g.is_sparse for g in grads):
                raise RuntimeError(f"ScaledAdam does not support sparse gradients (parameters {member_names})")
            if len(members) == 1:
                param, grad = members[0].unsqueeze(0), grads[0].unsqueeze(0)
            else:
                param, grad = torch.stack(members), torch.stack(grads)
            stacks.append(_Stack(members, member_names, param, grad, self.state[members[0]]))
        return stacks

    def _clip_factor(self, group: Dict, stacks: Sequence[_Stack]) -> float:
        """Factor (<= 1) for this step's gradients; records the norm and re-estimates the threshold."""
        anchor = stacks[0].state
        step = anchor.get("step", 0)
        if group["clipping_scale"] is None or step == 0:
            return 1.0  # no param_rms yet to measure the norm with
        squares = self._scaled_grad_squares(group, stacks)
        norm = torch.sqrt(sum(s.sum() for s in squares))
        period = group["clipping_update_period"]
        if "clip_norms" not in anchor:
            anchor["clip_norms"] = torch.zeros(period, device=norm.device)
            anchor["num_clipped"] = 0
        anchor["clip_norms"][step % period] = norm
        early = step in EARLY_THRESHOLD_STEPS and step < period
        if early or step % period == 0:
            recent = anchor["clip_norms"][1 : step + 1] if early else anchor["clip_norms"]
            self._estimate_threshold(group, anchor, recent, doubled=early)
        if "clip_threshold" not in anchor:
            return 1.0
        factor = min(1.0, (anchor["clip_threshold"] / (norm + 1.0e-20)).item())
        if math.isnan(factor):
            factor = 0.0  # non-finite gradients: drop them, keep the momentum step
        if factor < 1.0:
            anchor["num_clipped"] += 1
        if factor < 0.5:
            name, share = _largest_contributor(stacks, squares)
            logger.warning(f"ScaledAdam: scaling gradients by {factor:.3g} (threshold "
                           f"{anchor['clip_threshold']:.3e}); {name} holds {share:.0%} of the squared norm")
        return factor

    def _scaled_grad_squares(self, group: Dict, stacks: Sequence[_Stack]) -> List[Tensor]:
        """Per-member squared gradient norm in update units: (members, 1, ..., 1) per stack."""
        squares = []
        for stack in stacks:
            if stack.is_scalar:
                squares.append(stack.per_member_sum(stack.grad**2) * group["scalar_lr_scale"] ** 2)
            else:
                squares.append(stack.per_member_sum((stack.grad * stack.state["param_rms"]) ** 2))
        return squares

    def _estimate_threshold(self, group: Dict, anchor: Dict, norms: Tensor, doubled: bool) -> None:
        ordered = norms.sort().values.cpu()
        count = ordered.numel()
        quartiles = [ordered[min(count - 1, (count // 4) * q)].item() for q in range(5)]
        median = quartiles[2]
        if not math.isfinite(median):
            raise RuntimeError(f"ScaledAdam: the median gradient norm of the last {count} steps is {median}; "
                               "too many gradients were not finite")
        threshold = group["clipping_scale"] * median * (2.0 if doubled else 1.0)
        percent = 100.0 * anchor["num_clipped"] / count
        anchor["clip_threshold"] = threshold
        anchor["num_clipped"] = 0
        logger.info("ScaledAdam: clipping_scale=%s, grad-norm quartiles %s, threshold=%.3e, "
                    "percent-clipped=%.1f", group["clipping_scale"],
                    " ".join(f"{q:.3e}" for q in quartiles), threshold, percent)

    def _update(self, group: Dict, stack: _Stack, clip_factor: float) -> None:
        state = stack.state
        if "step" not in state:
            self._init_state(group, stack)
        step = state["step"]
        if clip_factor == 0.0:
            grad = torch.zeros_like(stack.grad)
        else:
            grad = stack.grad if clip_factor == 1.0 else stack.grad * clip_factor
        delta = self._adam_step(group, state, grad, step, stack.is_scalar)
        if not stack.is_scalar:
            delta = self._rms_scaled_step(group, stack, grad, delta, step)
        beta1 = group["betas"][0]
        momentum = state["momentum"]
        momentum.mul_(beta1).add_(delta, alpha=1 - beta1)
        stack.param.add_(momentum)
        if stack.is_scalar:
            stack.param.clamp_(min=-group["scalar_max"], max=group["scalar_max"])
        state["step"] = step + 1

    def _init_state(self, group: Dict, stack: _Stack) -> None:
        state = stack.state
        state["step"] = 0
        state["exp_avg_sq"] = torch.zeros_like(stack.param, dtype=torch.float)
        state["momentum"] = torch.zeros_like(stack.param, dtype=torch.float)
        if not stack.is_scalar:
            rms = _rms(stack).to(torch.float)
            state["param_rms"] = rms
            state["scale_exp_avg_sq"] = torch.zeros_like(rms)
            state["scale_grads"] = torch.zeros(group["size_update_period"], *rms.shape, device=rms.device)

    def _adam_step(self, group: Dict, state: Dict, grad: Tensor, step: int, is_scalar: bool) -> Tensor:
        """``-lr * grad / (sqrt(v_hat) + eps)``; bias correction only while it is below 0.99."""
        lr = group["lr"] * (group["scalar_lr_scale"] if is_scalar else 1.0)
        beta2 = group["betas"][1]
        exp_avg_sq = state["exp_avg_sq"]
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        correction = 1 - beta2 ** (step + 1)
        if correction < 0.99:
            exp_avg_sq = exp_avg_sq * (1.0 / correction)
        return -lr * grad / (exp_avg_sq.sqrt() + group["eps"])

    def _rms_scaled_step(self, group: Dict, stack: _Stack, grad: Tensor, delta: Tensor, step: int) -> Tensor:
        """Scale the Adam step by the tensor RMS and, every ``size_update_period`` steps, add the scale step."""
        state = stack.state
        period = group["size_update_period"]
        state["scale_grads"][step % period] = stack.per_member_sum(stack.param * grad)
        period_ends = step % period == period - 1
        if period_ends:
            state["param_rms"].copy_(_rms(stack))
        delta = delta * state["param_rms"].clamp(min=group["param_min_rms"])
        if period_ends and step > 0:
            delta = delta + stack.param * self._scale_step(group, state, step)
        return delta

    def _scale_step(self, group: Dict, state: Dict, step: int) -> Tensor:
        """Relative change of each tensor's scale, from the last ``size_update_period`` sum(param * grad)."""
        period = group["size_update_period"]
        beta2 = group["betas"][1] ** period
        scale_grads, rms = state["scale_grads"], state["param_rms"]
        state["scale_exp_avg_sq"].mul_(beta2).add_((scale_grads**2).mean(dim=0), alpha=1 - beta2)
        correction = 1 - beta2 ** ((step + 1) // period)
        denom = state["scale_exp_avg_sq"].sqrt() + group["eps"]
        size_lr = group["lr"] * group["scalar_lr_scale"]
        scale_step = -size_lr * correction**0.5 * scale_grads.sum(dim=0) / denom
        scale_step = scale_step.masked_fill(rms < group["param_min_rms"], 0.0).clamp(min=-0.1, max=0.1)
        return torch.minimum(scale_step, (group["param_max_rms"] - rms) / rms)


def _rms(stack: _Stack) -> Tensor:
    """RMS of each member: (members, 1, ..., 1)."""
    return (stack.per_member_sum(stack.param**2) / stack.param[0].numel()).sqrt()


def _largest_contributor(stacks: Sequence[_Stack], squares: Sequence[Tensor]) -> Tuple[str, float]:
    """Name and share of the parameter holding most of the squared (scaled) gradient norm."""
    pairs = [(float(s), n) for stack, sq in zip(stacks, squares) for s, n in zip(sq.flatten(), stack.names)]
    total = sum(s for s, _ in pairs)
    largest, name = max(pairs)
    return name, (largest / total if total > 0 else float("nan"))


def _check_hyperparameters(lr: float, clipping_scale: Optional[float], betas: Sequence[float], eps: float,
                           param_min_rms: float, param_max_rms: float, size_update_period: int,
                           clipping_update_period: int) -> None:
    problems = []
    if not lr >= 0:
        problems.append(f"lr must be >= 0, got {lr}")
    if clipping_scale is not None and not clipping_scale > 0:
        problems.append(f"clipping_scale must be > 0 or None (no clipping), got {clipping_scale}")
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        problems.append(f"betas must be two numbers in [0, 1), got {tuple(betas)}")
    if not eps > 0:
        problems.append(f"eps must be > 0, got {eps}")
    if not 0 < param_min_rms < param_max_rms:
        problems.append(f"need 0 < param_min_rms < param_max_rms, got {param_min_rms} and {param_max_rms}")
    if size_update_period < 1 or clipping_update_period < 1:
        problems.append("size_update_period and clipping_update_period must be >= 1, got "
                        f"{size_update_period} and {clipping_update_period}")
    if problems:
        raise ValueError("ScaledAdam: " + "; ".join(problems))
