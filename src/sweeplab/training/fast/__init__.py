"""The optional speed path of the trainer, behind one entry: `fast_steps`.

    steps = fast_steps(model, optimizer, task, cfg.trainer, augmented, device)  # or None

decides once, when a run starts, how its training steps are made:

- `ManualSteps`: the lecture's back-propagation equations (`backprop.ManualBackprop`) instead of
  an autograd graph, in the trainer's Python loop over the batches, where the network is the
  plain TwoLayerNet (`trainer.backward=auto`, or `manual`);
- `NativeSteps`: the same steps, with Adam/AdamW (`lean_adam.LeanAdam`) on the CPU and no
  augmentation, made by the C++ loop of `native` for whole epochs (`trainer.native=true`): the
  same ATen calls in the same order, so the same weights bit for bit;
- None: the trainer's plain autograd steps.

Each kind of steps is a callable making one step (`steps(xb, yb, logits_b)`) plus
`train_epoch(...)`, which makes an epoch's steps where it can and returns how many samples it
trained on: the trainer's Python loop makes the rest (all of them for ManualSteps; for
NativeSteps while an optimizer hook or a profiler needs torch's `step`). Anything a step must do
on every path goes into all of them.
"""

from __future__ import annotations

import torch
from torch import nn

from sweeplab.config import TrainerConfig
from sweeplab.training.fast import native
from sweeplab.training.fast.backprop import ManualBackprop, supports_manual_backward
from sweeplab.training.fast.lean_adam import LeanAdam, step_function


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
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    task: str,
    trainer: TrainerConfig,
    augmented: bool,
    device: torch.device,
) -> ManualSteps | None:
    """The steps of the fastest path that covers this run, or None for the autograd steps."""
    manual = trainer.backward == "manual" or (
        trainer.backward == "auto" and supports_manual_backward(model)
    )
    if not manual:
        return None
    backprop = ManualBackprop(model, task)
    if (
        trainer.native
        and not augmented  # the C++ loop has no augmentation
        and device.type == "cpu"
        and isinstance(optimizer, LeanAdam)
        and native.load() is not None  # built here on a machine's first run, else a warning
    ):
        return NativeSteps(backprop, optimizer)
    return ManualSteps(backprop, optimizer)
