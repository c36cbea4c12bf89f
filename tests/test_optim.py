"""LeanAdam/LeanAdamW take exactly torch's fused Adam/AdamW steps, and stay torch optimizers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from sweeplab.training.fast.lean_adam import LeanAdam, LeanAdamW, step_function


def params(seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (5,), (2, 5), (2,)]
    return [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]


def run_steps(optimizer_cls, steps=6, group_options=None, drop_grad_at=None, **kwargs):
    """Params and optimizer state after `steps` steps on fixed pseudo-random gradients, made
    with the step the trainer calls (`step_function`)."""
    ps = params()
    groups = [{"params": ps[:2]}, {"params": ps[2:], **(group_options or {})}]
    optimizer = optimizer_cls(groups, fused=True, **kwargs)
    step = step_function(optimizer)
    generator = torch.Generator().manual_seed(1)
    for i in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=generator)
        if i == drop_grad_at:
            ps[3].grad = None
        step()
    return ps, optimizer.state_dict()["state"]


@pytest.mark.parametrize(
    ("lean", "torch_cls", "kwargs"),
    [
        (LeanAdam, torch.optim.Adam, {"lr": 1e-2}),
        (LeanAdam, torch.optim.Adam, {"lr": 3e-3, "weight_decay": 0.1, "betas": (0.8, 0.99)}),
        (LeanAdam, torch.optim.Adam, {"lr": 1e-2, "maximize": True, "eps": 1e-6}),
        (LeanAdamW, torch.optim.AdamW, {"lr": 1e-2}),
        (LeanAdamW, torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.5}),
        (LeanAdam, torch.optim.Adam, {"lr": 1e-2, "amsgrad": True}),  # torch's own step
    ],
)
@pytest.mark.parametrize("drop_grad_at", [None, 3])
def test_lean_steps_equal_torch_fused_steps(lean, torch_cls, kwargs, drop_grad_at):
    group_options = {"lr": 5e-3}  # a second group with its own learning rate
    ours, our_state = run_steps(
        lean, group_options=group_options, drop_grad_at=drop_grad_at, **kwargs
    )
    theirs, their_state = run_steps(
        torch_cls, group_options=group_options, drop_grad_at=drop_grad_at, **kwargs
    )
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert our_state.keys() == their_state.keys()
    for key, state in our_state.items():
        for name, value in state.items():
            torch.testing.assert_close(value, their_state[key][name], rtol=0, atol=0, msg=name)


def test_torch_step_runs_only_where_the_lean_path_does_not_apply(monkeypatch):
    torch_steps = []
    original = torch.optim.Adam.step
    monkeypatch.setattr(
        torch.optim.Adam, "step", lambda self, closure=None: torch_steps.append(1) or original(self)
    )
    run_steps(LeanAdamW, steps=5, lr=1e-2)
    assert len(torch_steps) == 1  # the first step initialises the state
    run_steps(LeanAdamW, steps=5, lr=1e-2, drop_grad_at=2)
    assert len(torch_steps) == 1 + 2  # and a step with a parameter lacking a gradient


def test_hooks_and_schedules_see_every_lean_step():
    ps = params()
    optimizer = LeanAdam(ps, lr=0.1, fused=True)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    seen = []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: seen.append(opt))
    try:
        for _ in range(3):
            for p in ps:
                p.grad = torch.ones_like(p)
            optimizer.step()
            schedule.step()
    finally:
        handle.remove()
    assert seen == [optimizer] * 3
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    assert isinstance(optimizer, torch.optim.Adam)


@pytest.mark.parametrize("hook", ["global pre", "global post", "own pre", "own post"])
def test_every_hook_sees_each_step_the_trainer_makes_once(hook):
    ps = params()
    optimizer = LeanAdam(ps, lr=0.1, fused=True)
    seen = []
    register = {
        "global pre": register_optimizer_step_pre_hook,
        "global post": register_optimizer_step_post_hook,
        "own pre": optimizer.register_step_pre_hook,
        "own post": optimizer.register_step_post_hook,
    }[hook]
    handle = register(lambda opt, args, kwargs: seen.append(opt))
    try:
        for _ in range(3):
            for p in ps:
                p.grad = torch.ones_like(p)
            step_function(optimizer)()
    finally:
        handle.remove()
    assert seen == [optimizer] * 3


def test_a_profiler_sees_the_steps_the_trainer_makes():
    ps = params()
    optimizer = LeanAdam(ps, lr=0.1, fused=True)
    step = step_function(optimizer)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for _ in range(3):
            for p in ps:
                p.grad = torch.ones_like(p)
            step()
    labels = [event.name for event in profile.events()]
    assert labels.count("Optimizer.step#LeanAdam.step") == 3


def test_a_loaded_state_and_an_added_group_are_used():
    def train(optimizer_cls, reload):
        ps = params()
        optimizer = optimizer_cls(ps[:2], lr=1e-2, fused=True)
        generator = torch.Generator().manual_seed(2)
        for step in range(8):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=generator)
            if step == 3:
                optimizer.add_param_group({"params": ps[2:], "lr": 2e-2})
            if reload and step == 5:  # a checkpoint restored in place: new state tensors
                optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
            optimizer.step()
        return ps, optimizer.state_dict()["state"]

    for reload in (False, True):
        ours, our_state = train(LeanAdam, reload)
        theirs, their_state = train(torch.optim.Adam, reload)
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        for key, state in our_state.items():
            for name, value in state.items():
                torch.testing.assert_close(value, their_state[key][name], rtol=0, atol=0)
