"""Which loop trains a run: one decision, made from the config when the run starts.

    loop = choose_loop(cfg, data, device)                  # a run: tracking.train
    loop = choose_loop(cfg, data, device, "single-run")    # inside trainer.run
    loop = choose_loop(cfg, data, device, "stack")         # each member of a stack

| Loop | what makes the steps | where it is chosen |
|---|---|---|
| STACK_NATIVE | C++, `fast/stack_loop.cpp`: the run as a stack of one member (`stack.trainer.run_alone`), or the members of a stack | a small input (at most NATIVE_MAX_INPUTS features) on the CPU, hand-derived gradients, no dropout or augmentation; a run alone also needs an optimizer stacks train with and no checkpoints (a stack writes none) |
| STACK_PYTHON | the stack's Python loop (`stack.trainer.train_stack_epoch`), batched tensor ops | any other stack: dropout (autograd), augmentation, a wide input, CUDA |
| NATIVE | C++, `fast/native_loop.cpp`, whole epochs | a run alone, hand-derived gradients, Adam/AdamW (`LeanAdam`), the CPU, no augmentation |
| MANUAL | the trainer's Python loop with hand-derived gradients (`fast.ManualSteps`) | the other runs without dropout (`trainer.backward=auto` or `manual`) |
| AUTOGRAD | the trainer's Python loop with autograd | dropout, or `trainer.backward=autograd` |

`trainer.native=false` turns both C++ loops off. Only what the machine decides later goes
elsewhere: without a compiler the C++ loops are not built (a warning, then the Python loop of
the same kind), and an optimizer hook or a running profiler sends an epoch of NATIVE to the
Python loop (they need torch's own `step`).
"""

from __future__ import annotations

import enum
from typing import Literal

import torch
from hydra.utils import get_class

from sweeplab.config import Config
from sweeplab.training.data import Dataset
from sweeplab.training.fast.lean_adam import LEAN_CLASSES
from sweeplab.training.stack.optim import unsupported

NATIVE_MAX_INPUTS = 64  # wider inputs are a matrix product, which ATen's path does better


class Loop(enum.Enum):
    STACK_NATIVE = "the stacked C++ loop"
    STACK_PYTHON = "the stacked Python loop"
    NATIVE = "the single-run C++ loop"
    MANUAL = "the single-run Python loop, hand-derived gradients"
    AUTOGRAD = "the single-run Python loop, autograd"


def choose_loop(
    cfg: Config,
    data: Dataset,
    device: torch.device,
    trainer: Literal["either", "single-run", "stack"] = "either",
) -> Loop:
    """The loop that trains `cfg` on `data` and `device`: by the stacked or the single-run
    trainer (`either`: the faster that covers it), or by the one named."""
    settings, model = cfg.trainer, cfg.model
    dropout = bool(model.dropout or model.input_dropout)
    # what both C++ loops leave out: augmentation of each batch, other devices
    compiled = settings.native and device.type == "cpu" and not settings.distorts_images
    stack_compiled = (
        compiled
        and not dropout
        and data.x_train.dtype == torch.float32
        and data.n_features <= NATIVE_MAX_INPUTS
    )
    if trainer == "stack":
        return Loop.STACK_NATIVE if stack_compiled else Loop.STACK_PYTHON
    if (
        trainer == "either"
        and stack_compiled
        and settings.backward != "autograd"
        and not settings.checkpoint_every
        and unsupported(cfg.optimizer) is None
    ):
        return Loop.STACK_NATIVE
    if settings.backward == "autograd" or (settings.backward == "auto" and dropout):
        return Loop.AUTOGRAD
    if compiled and get_class(cfg.optimizer._target_) in LEAN_CLASSES:
        return Loop.NATIVE
    return Loop.MANUAL
