"""Which loop trains a run: one decision (`loops.choose_loop`), made from the config."""

from __future__ import annotations

import pytest
import torch

from sweeplab.training import trainer
from sweeplab.training.data import Dataset
from sweeplab.training.fast import ManualSteps, NativeSteps
from sweeplab.training.loops import NATIVE_MAX_INPUTS, Loop, choose_loop

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # (a CUDA device is only named here)


def inputs(n_features: int) -> Dataset:
    x, y = torch.zeros(8, n_features), torch.zeros(8, dtype=torch.long)
    return Dataset("shape only", "multiclass", 3, x, y, x, y, x, y)


SMALL, WIDE = inputs(2), inputs(NATIVE_MAX_INPUTS + 1)
MNIST_LIKE = inputs(784)


@pytest.mark.parametrize(
    ("overrides", "data", "device", "either", "single_run", "stack"),
    [
        ([], SMALL, CPU, Loop.STACK_NATIVE, Loop.NATIVE, Loop.STACK_NATIVE),
        (["optimizer=sgd"], SMALL, CPU, Loop.STACK_NATIVE, Loop.MANUAL, Loop.STACK_NATIVE),
        (["optimizer.amsgrad=true"], SMALL, CPU, Loop.NATIVE, Loop.NATIVE, Loop.STACK_NATIVE),
        (["trainer.checkpoint_every=2"], SMALL, CPU, Loop.NATIVE, Loop.NATIVE, Loop.STACK_NATIVE),
        (
            ["trainer.backward=autograd"],
            SMALL,
            CPU,
            Loop.AUTOGRAD,
            Loop.AUTOGRAD,
            Loop.STACK_NATIVE,
        ),
        (["model.dropout=0.2"], SMALL, CPU, Loop.AUTOGRAD, Loop.AUTOGRAD, Loop.STACK_PYTHON),
        (["trainer.native=false"], SMALL, CPU, Loop.MANUAL, Loop.MANUAL, Loop.STACK_PYTHON),
        (["distorted"], SMALL, CPU, Loop.MANUAL, Loop.MANUAL, Loop.STACK_PYTHON),
        ([], SMALL, CUDA, Loop.MANUAL, Loop.MANUAL, Loop.STACK_PYTHON),
        ([], WIDE, CPU, Loop.NATIVE, Loop.NATIVE, Loop.STACK_PYTHON),
        (["optimizer=adamw"], MNIST_LIKE, CPU, Loop.NATIVE, Loop.NATIVE, Loop.STACK_PYTHON),
        (["optimizer=rmsprop"], MNIST_LIKE, CPU, Loop.MANUAL, Loop.MANUAL, Loop.STACK_PYTHON),
    ],
)
def test_one_decision_names_the_loop_of_each_trainer(
    make_config, overrides, data, device, either, single_run, stack
):
    cfg = make_config(*(o for o in overrides if o != "distorted"))
    # (the config's checks allow distortions only on images: the shape of the data is all that
    # matters here)
    cfg.trainer.shift_pixels = int("distorted" in overrides)
    assert choose_loop(cfg, data, device) is either
    assert choose_loop(cfg, data, device, "single-run") is single_run
    assert choose_loop(cfg, data, device, "stack") is stack


@pytest.mark.parametrize(
    ("overrides", "steps"),
    [
        ([], NativeSteps),
        (["optimizer=sgd"], ManualSteps),
        (["trainer.backward=autograd"], trainer.AutogradSteps),
    ],
)
def test_the_single_run_trainer_makes_the_steps_of_the_loop_chosen(make_config, overrides, steps):
    setup = trainer.setup(make_config(*overrides))
    assert type(setup.steps) is steps
