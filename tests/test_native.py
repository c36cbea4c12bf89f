"""The C++ training loop (training.fast.native) against the Python loop it replaces: same numbers."""

from __future__ import annotations

import logging

import pytest
import torch

from sweeplab.config import (
    AdamConfig,
    Config,
    ModelConfig,
    SGDConfig,
    SyntheticDataConfig,
    TrackingConfig,
    TrainerConfig,
)
from sweeplab.training import fast, trainer
from sweeplab.training.data import Dataset
from sweeplab.training.fast import native
from sweeplab.training.fast.backprop import ManualBackprop
from sweeplab.training.fast.lean_adam import LeanAdam, LeanAdamW
from sweeplab.training.loops import Loop, choose_loop
from sweeplab.training.model import TwoLayerNet, loss_for_task

CPU = torch.device("cpu")


def dataset(task: str, n: int = 203, d_in: int = 7, k: int = 4) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, d_in, generator=generator)
    if task == "binary":
        y, k = (torch.rand(n, 1, generator=generator) > 0.5).float(), 1
    elif task == "multiclass":
        y = torch.randint(0, k, (n,), generator=generator)
    else:
        y = torch.randn(n, k, generator=generator)
    return Dataset("random", task, k, x, y, x[:10], y[:10], x[:10], y[:10])


def steps_for(net, optimizer, task, native_loop, backward="manual", augmented=False):
    """The steps the trainer would make for these settings (the loop `choose_loop` chooses)."""
    cfg = Config(
        data=SyntheticDataConfig(),
        model=ModelConfig(),
        optimizer=AdamConfig() if isinstance(optimizer, LeanAdam) else SGDConfig(),
        trainer=TrainerConfig(backward=backward, native=native_loop, shift_pixels=int(augmented)),
        tracking=TrackingConfig(),
    )
    loop = choose_loop(cfg, dataset(task), CPU, "single-run")
    if loop is Loop.AUTOGRAD:
        return trainer.AutogradSteps(net, optimizer, loss_for_task(task))
    return fast.fast_steps(net, optimizer, task, native_loop=loop is Loop.NATIVE)


def train(data, activation, optimizer_cls, native_loop, epochs=3, **optimizer_kwargs):
    torch.manual_seed(0)
    net = TwoLayerNet(data.n_features, 9, data.n_outputs, activation)
    optimizer = optimizer_cls(net.parameters(), lr=1e-2, fused=True, **optimizer_kwargs)
    steps = steps_for(net, optimizer, data.task, native_loop)
    assert isinstance(steps, fast.NativeSteps) == native_loop
    order = torch.Generator().manual_seed(0)
    loss_fn = loss_for_task(data.task)
    metrics = [trainer.train_one_epoch(net, steps, loss_fn, data, 32, order) for _ in range(epochs)]
    return net, optimizer, metrics


@pytest.fixture(scope="module")
def built():
    module = native.load()
    assert module is not None, "the C++ loop did not build here (see the warning logged)"
    return module


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
@pytest.mark.parametrize(
    ("optimizer_cls", "kwargs"),
    [(LeanAdam, {}), (LeanAdam, {"weight_decay": 0.01}), (LeanAdamW, {"weight_decay": 0.1})],
)
def test_native_epochs_are_bit_identical_to_the_python_loop(
    built, task, activation, optimizer_cls, kwargs
):
    """203 samples in batches of 32: the last batch has 11."""
    data = dataset(task)
    net_py, opt_py, metrics_py = train(data, activation, optimizer_cls, False, **kwargs)
    net_cc, opt_cc, metrics_cc = train(data, activation, optimizer_cls, True, **kwargs)
    assert metrics_cc == metrics_py
    for p, q in zip(net_py.parameters(), net_cc.parameters(), strict=True):
        assert torch.equal(p, q)
    for p, q in zip(net_py.parameters(), net_cc.parameters(), strict=True):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt_py.state[p][key], opt_cc.state[q][key])
    assert float(opt_cc.state[next(net_cc.parameters())]["step"]) == 3 * 7


def test_native_loop_takes_over_after_the_first_step_and_not_with_hooks(built):
    """203 samples in batches of 32: 7 steps an epoch."""
    data = dataset("multiclass")
    torch.manual_seed(0)
    net = TwoLayerNet(data.n_features, 9, data.n_outputs, "sigmoid")
    backprop = ManualBackprop(net, "multiclass")
    logits = torch.empty(data.x_train.shape[0], data.n_outputs)
    order = torch.arange(data.x_train.shape[0])
    args = (data.x_train, order, data.y_train, logits, 32)
    optimizer = LeanAdam(net.parameters(), lr=1e-2, fused=True)
    steps = steps_for(net, optimizer, "multiclass", native_loop=True)
    calls = []
    handle = optimizer.register_step_post_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        assert not native.train_steps(backprop, optimizer, *args)  # no state until a first step
        assert steps.train_epoch(*args) == 32  # torch's first step; the hook: the Python loop
        assert len(calls) == 1
        handle.remove()
        assert steps.train_epoch(*args) == 203  # the state is there: the whole epoch in C++
        assert len(calls) == 1 and float(optimizer.state[net.hidden.weight]["step"]) == 8
        handle = optimizer.register_step_post_hook(lambda *_: calls.append(1))
        assert not native.train_steps(backprop, optimizer, *args)
        assert steps.train_epoch(*args) == 0
    generator = torch.Generator().manual_seed(0)
    trainer.train_one_epoch(net, steps, loss_for_task("multiclass"), data, 32, generator)
    assert len(calls) == 1 + 7  # the Python loop ran every step, so the hook saw each one
    handle.remove()


def test_a_fresh_optimizers_first_epoch_is_one_torch_step_then_the_native_loop(built):
    """And the C++ loop's steps start where torch's left off: the same weights as the Python
    loop's epoch (the bit-identical test above covers whole runs)."""
    data = dataset("multiclass")
    torch.manual_seed(0)
    net = TwoLayerNet(data.n_features, 9, data.n_outputs, "sigmoid")
    optimizer = LeanAdam(net.parameters(), lr=1e-2, fused=True)
    steps = steps_for(net, optimizer, "multiclass", native_loop=True)
    logits = torch.empty(data.x_train.shape[0], data.n_outputs)
    args = (data.x_train, torch.arange(data.x_train.shape[0]), data.y_train, logits, 32)
    with torch.no_grad():
        assert steps.train_epoch(*args) == 203
    assert float(optimizer.state[net.hidden.weight]["step"]) == 7


def test_what_the_native_loop_does_not_cover_runs_in_python(built):
    """An augmentation of each batch, or autograd: asking for the C++ loop changes nothing."""
    data = dataset("multiclass")
    loss_fn = loss_for_task("multiclass")

    def halve(xb, _generator):
        return xb * 0.5

    results = []
    for native_loop in (False, True):
        for backward, augment in (("manual", halve), ("autograd", None)):
            torch.manual_seed(0)
            net = TwoLayerNet(data.n_features, 9, data.n_outputs, "tanh")
            optimizer = LeanAdam(net.parameters(), lr=1e-2, fused=True)
            steps = steps_for(net, optimizer, "multiclass", native_loop, backward, bool(augment))
            assert not isinstance(steps, fast.NativeSteps)
            generator = torch.Generator().manual_seed(0)
            for _ in range(2):
                trainer.train_one_epoch(net, steps, loss_fn, data, 32, generator, augment)
            results.append([p.detach().clone() for p in net.parameters()])
    for python_loop, asked_native in zip(results[:2], results[2:], strict=True):
        assert all(torch.equal(p, q) for p, q in zip(python_loop, asked_native, strict=True))


def test_run_gives_the_same_result_with_and_without_the_native_loop(built, make_config):
    runs = [
        trainer.run(make_config("trainer.epochs=4", f"trainer.native={flag}"))
        for flag in (True, False)
    ]
    assert runs[0].history[-1]["train/loss"] == runs[1].history[-1]["train/loss"]
    for p, q in zip(runs[0].model.parameters(), runs[1].model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_source_that_does_not_compile_leaves_the_python_loop_and_says_why(
    tmp_path, monkeypatch, caplog
):
    """Also: a build lock left by a killed build is removed (torch would wait for it forever)."""
    import os
    import sys
    import threading
    import time

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    source = tmp_path / "broken_loop.cpp"
    source.write_text("this is not C++;\n")
    name = "sweeplab_broken_loop_test"
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    directory = tmp_path / "extensions" / f"{name}-torch{torch.__version__}-{python}"
    directory.mkdir(parents=True)
    stale = time.time() - native.STALE_LOCK_S - 60
    (directory / "lock").touch()
    os.utime(directory / "lock", (stale, stale))
    built = []
    with caplog.at_level(logging.WARNING, logger="sweeplab.training.fast.native"):
        worker = threading.Thread(
            target=lambda: built.append(native.build(name, source)), daemon=True
        )
        worker.start()
        worker.join(timeout=60)
    assert not worker.is_alive(), "the build waited for the stale lock"
    assert built == [None]
    assert "left by a build that did not finish" in caplog.text
    assert "broken_loop.cpp not built" in caplog.text


INTERRUPTED_EPOCH = """
import signal, sys, torch
from sweeplab.training import fast, trainer
from sweeplab.training.data import Dataset
from sweeplab.training.fast import native
from sweeplab.training.fast.lean_adam import LeanAdam
from sweeplab.training.model import TwoLayerNet, loss_for_task

assert native.load() is not None
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job starts with it ignored
x, y = torch.randn(400_000, 8), torch.randint(0, 3, (400_000,))
data = Dataset("big", "multiclass", 3, x, y, x[:10], y[:10], x[:10], y[:10])
net = TwoLayerNet(8, 16, 3, "relu")
optimizer = LeanAdam(net.parameters(), lr=1e-3, fused=True)
steps = fast.fast_steps(net, optimizer, "multiclass", native_loop=True)
assert isinstance(steps, fast.NativeSteps)
print("training", flush=True)
try:
    trainer.train_one_epoch(net, steps, loss_for_task("multiclass"), data, 2, torch.Generator())
except KeyboardInterrupt:
    print(f"interrupted after {int(optimizer.state[net.hidden.weight]['step'])} steps", flush=True)
    sys.exit(3)
print("not interrupted", flush=True)
"""


def test_ctrl_c_stops_the_native_loop_within_a_few_steps(built):
    """200,000 steps of one epoch: SIGINT reaches Python while the C++ loop runs."""
    import signal
    import subprocess
    import sys
    import time

    child = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_EPOCH], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "training"
    time.sleep(1.0)
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 3, out
    # without the loop's signal checks the interrupt would only land after the whole epoch
    steps = int(out.split("after ")[1].split()[0])
    assert 0 < steps < 200_000
