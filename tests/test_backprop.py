"""The hand-derived back-propagation (the lecture's matrix equations) against autograd."""

from __future__ import annotations

import pytest
import torch

from sweeplab.training import trainer
from sweeplab.training.fast.backprop import ManualBackprop, supports_manual_backward
from sweeplab.training.model import TwoLayerNet, loss_for_task

CASES = [
    (activation, task)
    for activation in ("sigmoid", "tanh", "relu")
    for task in ("binary", "multiclass", "regression")
]


def batch(task, n=37, d_in=6, d_out=4, dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, d_in, generator=generator, dtype=dtype)
    if task == "binary":
        return x, (torch.rand(n, 1, generator=generator) > 0.5).to(dtype), 1
    if task == "multiclass":
        return x, torch.randint(0, d_out, (n,), generator=generator), d_out
    return x, torch.randn(n, d_out, generator=generator, dtype=dtype), d_out


@pytest.mark.parametrize(("activation", "task"), CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_manual_gradients_equal_autograd(activation, task, dtype):
    x, y, d_out = batch(task, dtype=dtype)
    torch.manual_seed(1)
    net = TwoLayerNet(x.shape[1], 9, d_out, activation).to(dtype)
    loss = loss_for_task(task)(net(x), y)
    loss.backward()
    expected = {name: p.grad.clone() for name, p in net.named_parameters()}
    for p in net.parameters():  # stale gradients of another batch: must be overwritten, not summed
        p.grad = torch.full_like(p, 7.0)
    out = torch.full((x.shape[0], d_out), float("nan"), dtype=dtype)
    logits = ManualBackprop(net, task)(x, y, out)
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    assert logits.data_ptr() == out.data_ptr()  # written where the trainer asked
    assert not logits.requires_grad  # no autograd graph recorded, even with grad mode on
    torch.testing.assert_close(logits, net(x).detach(), **tol)
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], **tol, msg=f"d loss / d {name}")


def test_manual_path_covers_the_network():
    assert supports_manual_backward(TwoLayerNet(2, 3, 1, "relu"))
    assert not supports_manual_backward(torch.nn.Sequential(torch.nn.Linear(2, 1)))


@pytest.mark.parametrize("task_overrides", [["data=synthetic"], ["data=regression"]])
def test_training_with_either_gradient_path_gives_the_same_run(make_config, task_overrides):
    manual = trainer.run(
        make_config(*task_overrides, "trainer.backward=manual", "trainer.epochs=5")
    )
    autograd = trainer.run(
        make_config(*task_overrides, "trainer.backward=autograd", "trainer.epochs=5")
    )
    for a, b in zip(manual.history, autograd.history, strict=True):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4)
        assert a["val/loss"] == pytest.approx(b["val/loss"], rel=1e-4)
