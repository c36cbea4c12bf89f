"""The optional speed path of the trainer, behind one entry: `fast_steps`.

    steps = fast_steps(model, optimizer, task, native_loop)

makes the steps of the single-run loop that `loops.choose_loop` chose for a run (for
Loop.AUTOGRAD the trainer makes its plain autograd steps):

- `ManualSteps` (Loop.MANUAL): the lecture's back-propagation equations
  (`backprop.ManualBackprop`) instead of an autograd graph, in the trainer's Python loop over
  the batches;
- `NativeSteps` (Loop.NATIVE): the same steps, with Adam/AdamW (`lean_adam.LeanAdam`), made by
  the C++ loop of `native` for whole epochs: the same ATen calls in the same order, so the same
  weights bit for bit; where the C++ loop did not build here, ManualSteps.

Each kind of steps is a callable making one step (`steps(xb, yb, logits_b)`) plus
`train_epoch(...)`, which makes an epoch's steps where it can and returns how many samples it
trained on: the trainer's Python loop makes the rest (all of them for ManualSteps; for
NativeSteps while an optimizer hook or a profiler needs torch's `step`). Anything a step must do
on every path goes into all of them.
"""

from __future__ import annotations

import torch
from torch import nn

from sweeplab.training.fast import native
from sweeplab.training.fast.backprop import ManualBackprop
from sweeplab.training.fast.lean_adam import step_function


class ManualSteps:
    """Steps with the hand-derived gradients, made one by one in the trainer's Python loop."""

    needs_grad = False  # no autograd graph: the loop runs under no_grad

    def __init__(self, backprop: ManualBackprop, optimizer: torch.optim.Optimizer) -> None:
        self.backprop = backprop
        self.optimizer = optimizer
        self.optimizer_step = step_function(optimizer)

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, logits_b: torch.Tensor) -> None:
        self.backprop(xb, yb, logits_b)
        self.optimizer_step()

    def train_epoch(
        self,
        x: torch.Tensor,
        order: torch.Tensor,
        y_shuffled: torch.Tensor,
        logits: torch.Tensor,
        batch_size: int,
    ) -> int:
        return 0


class NativeSteps(ManualSteps):
    """ManualSteps whose epochs run in the C++ loop (`native.train_steps`), all but the run's
    first step: torch's own step makes the optimizer's state (and tells LR schedulers that the
    optimizer has stepped)."""

    def train_epoch(
        self,
        x: torch.Tensor,
        order: torch.Tensor,
        y_shuffled: torch.Tensor,
        logits: torch.Tensor,
        batch_size: int,
    ) -> int:
        args = (self.backprop, self.optimizer, x, order, y_shuffled, logits, batch_size)
        if native.train_steps(*args):
            return len(x)
        if self.optimizer.state:  # a hook or a profiler: the Python loop makes the epoch
            return 0
        first = slice(0, batch_size)  # the run's first step, torch's own: then the C++ loop
        with torch.no_grad():
            self(x.index_select(0, order[first]), y_shuffled[first], logits[first])
        done = min(batch_size, len(x))
        return len(x) if native.train_steps(*args, start=done) else done


def fast_steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, task: str, native_loop: bool
) -> ManualSteps:
    """The hand-derived steps of Loop.MANUAL, or with `native_loop` of Loop.NATIVE (which
    `loops.choose_loop` chose): NativeSteps where the C++ loop is built here, else ManualSteps."""
    backprop = ManualBackprop(model, task)
    if native_loop and native.load() is not None:  # built on a machine's first run, else a warning
        return NativeSteps(backprop, optimizer)
    return ManualSteps(backprop, optimizer)
