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
on GPU): the stack is built on the first step and the tensors' data become views of its rows. A stack's state lives in the optimizer state of its first tensor, so ``state_dict()`` has
torch's usual format and holds only tensors and Python numbers (safe for ``weights_only`` loading).
Parameters without a gradient are updated as if their gradient were zero (momentum keeps moving them).

A step never waits for the device: the clip factor is computed and applied there, and what the host
keeps about it (how many steps clipped, the warning naming the dominant parameter) is copied back
without blocking and read when it has arrived, at the latest when the next clipping threshold is
estimated (every ``clipping_update_period`` steps, which reads the device anyway) or the state saved.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

# Steps at which the first clipping thresholds are estimated from the norms seen so far (doubled,
# since norms still move fast), before the regular estimate every ``clipping_update_period`` steps.
EARLY_THRESHOLD_STEPS = (10, 20, 40)


@dataclass
class _Stack:
    """Same-shape tensors of one group, updated as one.

    ``param`` is ``(members, *shape)`` and its rows *are* the members: each member's data is a view
    of its row (``share``), so an update moves them without a copy, and the stack is built once,
    not every step (``still_shared`` tells when something replaced a member's data).
    """

    members: List[Tensor]
    names: List[str]
    param: Tensor  # (members, *shape)
    state: Dict
    grad: Optional[Tensor] = None  # (members, *shape) this step; zeros where a member has no gradient

    @classmethod
    def share(cls, members: List[Tensor], names: List[str], state: Dict) -> "_Stack":
        if len(members) == 1:
            return cls(members, names, members[0].unsqueeze(0), state)
        param = torch.stack(members)
        for member, row in zip(members, param):
            member.data = row
        return cls(members, names, param, state)

    def still_shared(self) -> bool:
        start, row = self.param.data_ptr(), self.param.stride(0) * self.param.element_size()
        return all(member.data_ptr() == start + i * row for i, member in enumerate(self.members))

    def take_gradients(self) -> None:
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in self.members]
        if any(g.is_sparse for g in grads):
            raise RuntimeError(f"ScaledAdam does not support sparse gradients (parameters {self.names})")
        self.grad = grads[0].unsqueeze(0) if len(grads) == 1 else torch.stack(grads)

    @property
    def is_scalar(self) -> bool:
        return self.param.numel() == self.param.shape[0]

    def per_member_sum(self, values: Tensor) -> Tensor:
        """Sum over every dimension but the stacking one, keeping dims: (members, 1, ..., 1)."""
        if values.ndim == 1:
            return values  # a stack of 0-d tensors (torch would read an empty dim list as "all dims")
        return values.sum(dim=tuple(range(1, values.ndim)), keepdim=True)


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
        self._start_bookkeeping()

    def _start_bookkeeping(self) -> None:
        #: The last step's clip factor per group: a float (no clipping yet) or a 0-d device tensor.
        self.clip_factors: List[Union[float, Tensor]] = [1.0] * len(self.param_groups)
        self._unread: List[_ClipRecord] = []  # clip factors on their way to the host
        self._group_stacks: Dict[int, List[_Stack]] = {}

    def __setstate__(self, state: Dict) -> None:
        super().__setstate__(state)
        self._start_bookkeeping()

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every group; returns the closure's loss (or ``None``)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._read_arrived()
        clip_factors = []
        for index, group in enumerate(self.param_groups):
            stacks = self._stacks(index, group)
            clip_factors.append(self._clip_factor(group, stacks))
            kept = clip_factors[-1] > 0 if isinstance(clip_factors[-1], Tensor) else None
            for stack in stacks:
                self._update(group, stack, clip_factors[-1], kept)
                stack.grad = None
        self.clip_factors = clip_factors
        return loss

    @property
    def last_clip_factors(self) -> List[float]:
        """The last step's clip factor per group, as floats (this reads the device)."""
        self._read_arrived(wait=True)
        return [float(factor) for factor in self.clip_factors]

    def state_dict(self) -> Dict:
        self._read_arrived(wait=True)  # the saved clipping counts are complete
        return super().state_dict()

    def clipping_thresholds(self) -> List[Optional[float]]:
        """Current clipping threshold of each group; ``None`` until the first estimate (step 10)."""
        thresholds = []
        for group in self.param_groups:
            anchor = self.state.get(group["params"][0], {})
            thresholds.append(anchor.get("clip_threshold"))
        return thresholds

    def _stacks(self, index: int, group: Dict) -> List[_Stack]:
        """The group's stacks (built on the first step, and again if a member's data was replaced),
        each holding this step's gradients."""
        stacks = self._group_stacks.get(index)
        if stacks is None or not all(stack.still_shared() for stack in stacks):
            names = group.get("param_names") or [f"param{i}" for i in range(len(group["params"]))]
            by_key: Dict[tuple, Tuple[List[Tensor], List[str]]] = {}
            for param, name in zip(group["params"], names):
                members, member_names = by_key.setdefault((str(param.dtype), param.device, *param.shape), ([], []))
                members.append(param)
                member_names.append(name)
            stacks = [_Stack.share(members, member_names, self.state[members[0]]) for members, member_names
                      in by_key.values()]
            self._group_stacks[index] = stacks
        for stack in stacks:
            stack.take_gradients()
        return stacks

    def _clip_factor(self, group: Dict, stacks: Sequence[_Stack]) -> Union[float, Tensor]:
        """Factor (<= 1) for this step's gradients, on the device (1.0 before the first threshold);
        records the norm and, on its period, re-estimates the threshold."""
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
            self._read_arrived(wait=True)
            recent = anchor["clip_norms"][1 : step + 1] if early else anchor["clip_norms"]
            self._estimate_threshold(group, anchor, recent, doubled=early)
        if "clip_threshold" not in anchor:
            return 1.0
        # Non-finite gradients give a factor of 0: they are dropped and the momentum step is kept.
        factor = (anchor["clip_threshold"] / (norm + 1.0e-20)).clamp(max=1.0).nan_to_num(nan=0.0)
        self._unread.append(_ClipRecord(factor, squares, stacks, anchor))
        return factor

    def _read_arrived(self, wait: bool = False) -> None:
        """Count the clipped steps whose factors have reached the host (all of them if ``wait``)
        and warn about heavy clipping, naming the parameter that held most of the norm."""
        while self._unread and (wait or self._unread[0].arrived()):
            record = self._unread.pop(0)
            factor = record.factor()
            if factor < 1.0:
                record.anchor["num_clipped"] += 1
            if factor < 0.5:
                name, share = record.largest_contributor()
                logger.warning(f"ScaledAdam: scaling gradients by {factor:.3g} (threshold "
                               f"{record.anchor['clip_threshold']:.3e}); {name} holds {share:.0%} of the squared norm")

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

    def _update(self, group: Dict, stack: _Stack, clip_factor: Union[float, Tensor], kept: Optional[Tensor]) -> None:
        state = stack.state
        if "step" not in state:
            self._init_state(group, stack)
        step = state["step"]
        if kept is not None:  # a factor of 0 (``kept`` False) drops the gradient, non-finite values too
            grad = torch.where(kept, stack.grad * clip_factor, 0.0)
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


class _ClipRecord:
    """One step's clip factor on its way to the host: copied without blocking (into pinned memory,
    with an event telling when it is there, on a GPU). The step's per-parameter squared norms stay
    where they are until a heavy clip asks for them (that warning alone reads the device)."""

    def __init__(self, factor: Tensor, squares: Sequence[Tensor], stacks: Sequence[_Stack], anchor: Dict) -> None:
        self.event: Optional[torch.cuda.Event] = None
        if factor.is_cuda:
            host = torch.empty((), dtype=factor.dtype, pin_memory=True)
            host.copy_(factor, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
            factor = host
        self.host_factor, self.squares, self.anchor = factor, squares, anchor
        self.names = [name for stack in stacks for name in stack.names]

    def arrived(self) -> bool:
        return self.event is None or self.event.query()

    def factor(self) -> float:
        if self.event is not None:
            self.event.synchronize()
        return self.host_factor.tolist()

    def largest_contributor(self) -> Tuple[str, float]:
        """Name and share of the parameter holding most of the squared (scaled) gradient norm."""
        squares = torch.cat([sq.reshape(-1) for sq in self.squares]).tolist()
        total = sum(squares)
        largest, name = max(zip(squares, self.names))
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
