"""torch.optim's update rules for a stack, with each member's own hyperparameters.

    optimizer = StackedOptimizer(net, [cfg.optimizer for cfg in member_configs])
    optimizer.step()                       # one update of every member (net.flat from net.grad)
    optimizer.set_lrs([0.01, 0.003, ...])  # each member's learning rate, e.g. from its schedule

The rules are those of torch.optim's single-tensor implementations (Adam, AdamW, SGD with
momentum and Nesterov, RMSprop, Adagrad), applied to the stack's flat buffer at once. A
hyperparameter that all members share stays a Python number (torch's scalar kernels); one that
differs becomes a tensor with each element's member's value, so a step costs a few element-wise
operations whatever the number of members.

`LrSchedules` runs torch's own schedulers (training.optim.build_schedule) for each member.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict

import torch

from sweeplab.config import OptimizerConfig, TrainerConfig
from sweeplab.training.fast.lean_adam import LeanAdam
from sweeplab.training.optim import build_schedule
from sweeplab.training.stack.model import StackedNet

RULES = ("adam", "adamw", "sgd", "rmsprop", "adagrad")  # the optimizers a stack can train with
# the settings that change the rule itself: every member of a stack must share them
SHARED = ("name", "_target_", "nesterov", "amsgrad", "centered")
STATE = {  # each rule's buffers, shaped like the parameters
    "adam": ("exp_avg", "exp_avg_sq"),
    "adamw": ("exp_avg", "exp_avg_sq"),
    "sgd": ("momentum_buffer",),
    "rmsprop": ("square_avg", "grad_avg", "momentum_buffer"),
    "adagrad": ("sum",),
}


# the per-member table of fast/stack_loop.cpp: its rule codes and its columns
RULE_CODES = {"adam": 0, "adamw": 1, "sgd": 2, "rmsprop": 3, "adagrad": 4}
COLUMNS = (
    "lr",
    "weight_decay",
    "beta1",
    "beta2",
    "eps",
    "momentum",
    "dampening",
    "alpha",
    "lr_decay",
)


def unsupported(cfg: OptimizerConfig) -> str | None:
    """Why a stack cannot train with this optimizer (one of another family, AMSGrad), or None."""
    if cfg.name not in RULES:
        return f"optimizer={cfg.name}: stacks train with {', '.join(RULES)}"
    if getattr(cfg, "amsgrad", False):
        return "optimizer.amsgrad=true: stacks do not train with AMSGrad"
    return None


class StackedOptimizer:
    """One optimizer for all members of a stack; hyperparameters may differ between members."""

    def __init__(self, net: StackedNet, configs: Sequence[OptimizerConfig]) -> None:
        self.rule = configs[0].name
        if (reason := unsupported(configs[0])) is not None:
            raise ValueError(reason)
        self.settings = [
            {k: v for k, v in asdict(cfg).items() if k not in SHARED} for cfg in configs
        ]
        self.flags = {k: getattr(configs[0], k) for k in SHARED if hasattr(configs[0], k)}
        self.steps = 0
        self.bind(net, {name: None for name in STATE[self.rule]})

    def bind(self, net: StackedNet, state: dict[str, torch.Tensor | None]) -> None:
        """Work on `net` (after the stack lost members) with `state` (the buffers, laid out
        like net.flat; None = not made yet)."""
        self.net = net
        self.state = state
        owner = self.owner = net.layout.member_of_element(net.flat.device)
        self.values: dict[str, float | torch.Tensor] = {}
        for key in self.settings[0]:
            if key == "betas":
                for i, name in enumerate(("beta1", "beta2")):
                    self.values[name] = self._per_element([s[key][i] for s in self.settings], owner)
            else:
                self.values[key] = self._per_element([s[key] for s in self.settings], owner)
        if self.rule == "adagrad" and state.get("sum") is None:
            init = self.values["initial_accumulator_value"]
            self.state["sum"] = torch.zeros_like(net.flat).add_(init)

    def _per_element(self, values: list[float], owner: torch.Tensor) -> float | torch.Tensor:
        """The members' values of one setting: a number if they agree, else a tensor with the
        value of each element's member."""
        if all(v == values[0] for v in values):
            return float(values[0])
        table = torch.tensor(values, dtype=self.net.flat.dtype, device=owner.device)
        return table[owner]

    def forget(self, leaving: set[int]) -> None:
        """Drop the settings of the members that leave the stack (before `bind`)."""
        self.settings = [s for m, s in enumerate(self.settings) if m not in leaving]

    def set_lrs(self, lrs: list[float]) -> None:
        """Each member's learning rate from now on (a schedule's value for the next epoch)."""
        for settings, lr in zip(self.settings, lrs, strict=True):
            settings["lr"] = lr
        owner = self.net.layout.member_of_element(self.net.flat.device)
        self.values["lr"] = self._per_element(lrs, owner)

    def table(self) -> torch.Tensor:
        """(M, len(COLUMNS)) float64: each member's hyperparameters (0 where its rule has none),
        for the C++ loop."""
        rows = []
        for settings in self.settings:
            values = dict(settings)
            if "betas" in values:
                values["beta1"], values["beta2"] = values.pop("betas")
            rows.append([float(values.get(column, 0.0)) for column in COLUMNS])
        return torch.tensor(rows, dtype=torch.float64)

    def full_state(self) -> list[torch.Tensor]:
        """Every buffer of the rule, made now where it is not yet (zeros), in STATE's order."""
        for name, buffer in self.state.items():
            if buffer is None:
                self.state[name] = torch.zeros_like(self.net.flat)
        return list(self.state.values())

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        getattr(self, f"_{self.rule}")(self.net.flat, self.net.grad, self.values)

    def _adam(self, p: torch.Tensor, g: torch.Tensor, h: dict) -> None:
        self._adam_rule(p, g, h, decoupled=False)

    def _adamw(self, p: torch.Tensor, g: torch.Tensor, h: dict) -> None:
        self._adam_rule(p, g, h, decoupled=True)

    def _adam_rule(self, p: torch.Tensor, g: torch.Tensor, h: dict, decoupled: bool) -> None:
        """torch.optim.adam._single_tensor_adam, AdamW's decoupled weight decay included."""
        lr, b1, b2, wd, eps = h["lr"], h["beta1"], h["beta2"], h["weight_decay"], h["eps"]
        if self.state["exp_avg"] is None:
            self.state["exp_avg"] = torch.zeros_like(p)
            self.state["exp_avg_sq"] = torch.zeros_like(p)
        m, v = self.state["exp_avg"], self.state["exp_avg_sq"]
        if decoupled and _nonzero(wd):
            p.mul_(1 - lr * wd)
        elif _nonzero(wd):
            g = g + wd * p
        m.lerp_(g, 1 - b1)
        v.mul_(b2).add_(g.square().mul_(1 - b2))
        bias1, bias2 = 1 - b1**self.steps, 1 - b2**self.steps
        denom = v.sqrt().div_(bias2**0.5 if isinstance(bias2, float) else bias2.sqrt()).add_(eps)
        p.sub_(m.div(denom).mul_(lr / bias1))

    def _sgd(self, p: torch.Tensor, g: torch.Tensor, h: dict) -> None:
        """torch.optim.sgd._single_tensor_sgd (a member with momentum 0 makes plain steps)."""
        lr, wd, momentum = h["lr"], h["weight_decay"], h["momentum"]
        if _nonzero(wd):
            g = g + wd * p
        if _nonzero(momentum):
            buffer = self.state["momentum_buffer"]
            if buffer is None:
                buffer = self.state["momentum_buffer"] = g.clone()
            else:  # dampening only where there is momentum, as in torch
                dampening = h["dampening"]
                if isinstance(momentum, torch.Tensor):
                    dampening = dampening * (momentum > 0)
                buffer.mul_(momentum).add_(g * (1 - dampening))
            g = g + momentum * buffer if self.flags["nesterov"] else buffer
        p.sub_(g * lr)

    def _rmsprop(self, p: torch.Tensor, g: torch.Tensor, h: dict) -> None:
        """torch.optim.rmsprop._single_tensor_rmsprop."""
        lr, wd, alpha, eps, momentum = (
            h[k] for k in ("lr", "weight_decay", "alpha", "eps", "momentum")
        )
        if self.state["square_avg"] is None:
            self.state["square_avg"] = torch.zeros_like(p)
            self.state["grad_avg"] = torch.zeros_like(p) if self.flags["centered"] else None
            self.state["momentum_buffer"] = torch.zeros_like(p) if _nonzero(momentum) else None
        if _nonzero(wd):
            g = g + wd * p
        square_avg = self.state["square_avg"].mul_(alpha).add_(g.square().mul_(1 - alpha))
        if self.flags["centered"]:
            grad_avg = self.state["grad_avg"].lerp_(g, 1 - alpha)
            avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_().add_(eps)
        else:
            avg = square_avg.sqrt().add_(eps)
        if self.state["momentum_buffer"] is not None:
            buffer = self.state["momentum_buffer"].mul_(momentum).add_(g / avg)
            p.sub_(buffer * lr)
        else:
            p.sub_(g.div(avg).mul_(lr))

    def _adagrad(self, p: torch.Tensor, g: torch.Tensor, h: dict) -> None:
        """torch.optim.adagrad._single_tensor_adagrad."""
        lr, wd, lr_decay, eps = h["lr"], h["weight_decay"], h["lr_decay"], h["eps"]
        if _nonzero(wd):
            g = g + wd * p
        decayed_lr = lr / (1 + (self.steps - 1) * lr_decay)
        state_sum = self.state["sum"].addcmul_(g, g, value=1)
        p.sub_(g.div(state_sum.sqrt().add_(eps)).mul_(decayed_lr))


def _nonzero(value: float | torch.Tensor) -> bool:
    return bool(value != 0) if isinstance(value, float) else True


class LrSchedules:
    """Each member's learning-rate schedule, made by torch's own schedulers (build_schedule) on
    an optimizer that only holds the member's learning rate."""

    def __init__(self, optimizers: Sequence[OptimizerConfig], trainers: Sequence[TrainerConfig]):
        self.holders, self.schedules = [], []
        for optimizer, trainer in zip(optimizers, trainers, strict=True):
            holder = LeanAdam([torch.zeros(1, requires_grad=True)], lr=optimizer.lr)
            self.holders.append(holder)
            self.schedules.append(build_schedule(holder, trainer))

    def lrs(self) -> list[float]:
        return [holder.param_groups[0]["lr"] for holder in self.holders]

    def step(self) -> None:
        with warnings.catch_warnings():  # the holders never step: torch warns about the order
            warnings.simplefilter("ignore", UserWarning)
            for schedule in self.schedules:
                if schedule is not None:
                    schedule.step()

    def forget(self, leaving: set[int]) -> None:
        self.holders = [h for m, h in enumerate(self.holders) if m not in leaving]
        self.schedules = [s for m, s in enumerate(self.schedules) if m not in leaving]

    @property
    def any(self) -> bool:
        return any(schedule is not None for schedule in self.schedules)
