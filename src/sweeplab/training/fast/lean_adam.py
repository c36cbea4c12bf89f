"""Adam and AdamW with less overhead per step: torch's classes and fused kernel, called directly.

`LeanAdam` / `LeanAdamW` are torch.optim.Adam / AdamW with `fused=True`, whose `step` calls the
kernel directly in the common case (every parameter has a dense gradient, state initialised,
float learning rate, no AMSGrad). For a 2-layer network a training step takes a few hundred
microseconds, and `torch.optim.Adam.step`'s per-call bookkeeping (grouping tensors by device,
building lists, scalar checks) is a fair part of it; the kernel and the results are the same. A
group's step counts are views of one tensor, so one add counts a step for all its parameters.
Anything else goes through torch's own `step`; torch's step hooks and LR schedulers see both
paths alike. A training loop calls `step_function(optimizer)`, which also skips torch's wrapper
around `step` while no hook or profiler needs it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks


class FusedStep(NamedTuple):
    """The fused kernel's arguments for one step of a single parameter group, in the order of
    native_loop.cpp's `train_steps`."""

    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    exp_avgs: list[torch.Tensor]
    exp_avg_sqs: list[torch.Tensor]
    steps: list[torch.Tensor]
    counter: torch.Tensor  # every parameter's step count; `steps` are views of it
    lr: float
    beta1: float
    beta2: float
    weight_decay: float
    eps: float
    maximize: bool
    decoupled_weight_decay: bool


class LeanAdam(torch.optim.Adam):
    """torch.optim.Adam(fused=True), with a direct call of the fused kernel in the common case."""

    # torch wraps these in torch._disable_dynamo, which imports torch._dynamo (a second of a
    # command's start-up, or of a trial's first checkpoint) on the first call; sweeplab never
    # compiles, so the plain ones serve
    add_param_group = inspect.unwrap(torch.optim.Optimizer.add_param_group)
    zero_grad = inspect.unwrap(torch.optim.Optimizer.zero_grad)
    state_dict = inspect.unwrap(torch.optim.Optimizer.state_dict)
    load_state_dict = inspect.unwrap(torch.optim.Optimizer.load_state_dict)

    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's signature
        if closure is not None or not self._lean_step():
            # torch's step without its hook wrapper: our own step is wrapped already, and the
            # hooks must run once per step
            return inspect.unwrap(torch.optim.Adam.step)(self, closure)
        return None

    def step_unhooked(self) -> None:
        """`step()` without torch's step wrapper while nothing needs it: the wrapper labels the
        step for a profiler and looks up step hooks, a tenth of a small network's step. With a hook registered, a profiler running or a case the fused call
        does not cover, this is `step()` itself."""
        if self._step_wrapper_needed() or not self._lean_step():
            self.step()

    def fused_step_arguments(self) -> FusedStep | None:
        """What one step's kernel call takes, for a loop that makes the steps itself
        (fast.native), or None where steps must go through `step_unhooked`: a hook or a
        profiler to serve, no state yet (first step), several groups, an unusual case."""
        if self._step_wrapper_needed():
            return None
        plan = self._lean_plan()
        if plan is None or len(plan) != 1:
            return None
        return _kernel_arguments(*plan[0])

    def _step_wrapper_needed(self) -> bool:
        """A step hook is registered or a profiler runs: steps must go through `step`."""
        return bool(
            self._optimizer_step_pre_hooks
            or self._optimizer_step_post_hooks
            or _global_optimizer_pre_hooks
            or _global_optimizer_post_hooks
            or torch.autograd._profiler_enabled()
        )

    def _lean_step(self) -> bool:
        """One fused-kernel call per parameter group; False (nothing done) if a case is unusual."""
        plan = self._lean_plan()
        if plan is None:
            return False
        calls = [_kernel_arguments(*entry) for entry in plan]
        if any(call is None for call in calls):
            return False
        for call in calls:
            call.counter.add_(1)  # every parameter's step count: one op instead of a foreach op
            kernel = torch._fused_adamw_ if call.decoupled_weight_decay else torch._fused_adam_
            kernel(
                call.params,
                call.grads,
                call.exp_avgs,
                call.exp_avg_sqs,
                [],
                call.steps,
                amsgrad=False,
                lr=call.lr,
                beta1=call.beta1,
                beta2=call.beta2,
                weight_decay=call.weight_decay,
                eps=call.eps,
                maximize=call.maximize,
                grad_scale=None,
                found_inf=None,
            )
        return True

    def _lean_plan(self) -> list[tuple] | None:
        """Per group: (group, params, exp_avgs, exp_avg_sqs, steps, step counter), or None if a
        group needs torch's step. Remade when the state or the groups change (first step,
        load_state_dict, add_param_group), so that a step only looks at what changes every step;
        the kernel options (fused, amsgrad, ...) are fixed when the optimizer is made."""
        cached = getattr(self, "_lean_cache", None)
        # compared by identity, and the cache holds them: a freed dict's id could come back
        if (
            cached is not None
            and cached[0] is self.state
            and cached[1] == len(self.state)
            and cached[2] is self.param_groups
            and cached[3] == len(self.param_groups)
        ):
            return cached[4]
        plan: list[tuple] | None = []
        for group in self.param_groups:
            params = group["params"]
            if (
                not group["fused"]
                or group["amsgrad"]
                or group["capturable"]
                or group["differentiable"]
                or any(p not in self.state for p in params)  # first step: torch makes the state
                or len({(p.device, p.dtype) for p in params}) > 1
            ):
                plan = None
                break
            states = [self.state[p] for p in params]
            # the group's step counts become views of one tensor, so one add counts a step
            counter = torch.stack([s["step"] for s in states])
            for i, state in enumerate(states):
                state["step"] = counter[i]
            plan.append(
                (
                    group,
                    params,
                    [s["exp_avg"] for s in states],
                    [s["exp_avg_sq"] for s in states],
                    [s["step"] for s in states],
                    counter,
                )
            )
        self._lean_cache = (
            self.state,
            len(self.state),
            self.param_groups,
            len(self.param_groups),
            plan,
        )
        return plan


def _kernel_arguments(
    group: dict,
    params: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
    counter: torch.Tensor,
) -> FusedStep | None:
    """One entry of LeanAdam's plan with this step's gradients, or None if the fused call does
    not cover it (a missing or sparse gradient, a tensor learning rate)."""
    grads = [p.grad for p in params]
    if any(g is None or g.is_sparse for g in grads) or isinstance(group["lr"], torch.Tensor):
        return None
    beta1, beta2 = group["betas"]
    return FusedStep(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        steps,
        counter,
        group["lr"],
        beta1,
        beta2,
        group["weight_decay"],
        group["eps"],
        group["maximize"],
        group["decoupled_weight_decay"],
    )


class LeanAdamW(LeanAdam, torch.optim.AdamW):
    """torch.optim.AdamW(fused=True) with LeanAdam's step (decoupled weight decay)."""


def step_function(optimizer: torch.optim.Optimizer) -> Callable[[], object]:
    """What a training loop calls to make `optimizer` step: `step`, or LeanAdam's
    `step_unhooked` (the same step, hooks and profilers included, less overhead)."""
    return optimizer.step_unhooked if isinstance(optimizer, LeanAdam) else optimizer.step


LEAN_CLASSES: dict[type[torch.optim.Optimizer], type[torch.optim.Optimizer]] = {
    torch.optim.Adam: LeanAdam,
    torch.optim.AdamW: LeanAdamW,
}
