"""The lecture's back-propagation equations for the 2-layer network, without an autograd graph.

    backprop = ManualBackprop(net, task)       # binds the parameters and their .grad buffers
    logits = backprop(x, y)                    # forward, then every parameter's .grad

At this network's size building the autograd graph costs more than the arithmetic; this path
computes exactly what `loss.backward()` would (tests compare them for every activation and loss).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from sweeplab.training.model import ACTIVATIONS, TwoLayerNet


class ManualBackprop:
    """The back-propagation equations for one TwoLayerNet.

    Each call does the forward pass and writes the gradients of the batch's mean loss for all four
    parameters into their `.grad` buffers (made once, here, and overwritten at every call). The
    loss itself is not needed for the gradients; the trainer computes the epoch's loss from all
    the logits at once. Everything that does not change between steps is looked up once.
    """

    def __init__(self, net: TwoLayerNet, task: str) -> None:
        if not supports_manual_backward(net):
            raise ValueError("the hand-derived gradients cover TwoLayerNet without dropout only")
        self.params = (net.hidden.weight, net.hidden.bias, net.output.weight, net.output.bias)
        for p in self.params:
            if p.grad is None or p.grad.shape != p.shape or not p.grad.is_contiguous():
                p.grad = torch.zeros_like(p, memory_format=torch.contiguous_format)
        self.grads = tuple(p.grad for p in self.params)
        self.activation_name = next(k for k, v in ACTIVATIONS.items() if v is type(net.activation))
        self.activation = _ACTIVATION_FNS[type(net.activation)]
        self.activation_backward = _ACTIVATION_BACKWARD[type(net.activation)]
        self.task = task

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The logits of batch (x, y) (written into `logits` if given); the gradients into .grad."""
        if torch.is_grad_enabled():  # the trainer's loop runs under no_grad: no switch per step
            with torch.no_grad():
                return self._step(x, y, logits)
        return self._step(x, y, logits)

    def _step(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None) -> torch.Tensor:
        w_h, b_h, w_o, b_o = self.params
        grad_w_h, grad_b_h, grad_w_o, grad_b_o = self.grads
        # forward: Z_H = X W_H^T + b_H, A_H = h(Z_H), Z_O = A_H W_O^T + b_O
        z_h = torch.addmm(b_h, x, w_h.t())
        a_h = self.activation(z_h)
        z_o = torch.addmm(b_o, a_h, w_o.t(), out=logits)
        batch = x.shape[0]
        # dJ/dZ_O of the mean loss: softmax - one-hot (CE), sigmoid - y (BCE), 2(Z_O - Y)/nK (MSE)
        if self.task == "multiclass":
            minus_ones = _minus_ones(batch, z_o.dtype, z_o.device)
            d_zo = torch.softmax(z_o, dim=1).scatter_add_(1, y[:, None], minus_ones).div_(batch)
        elif self.task == "binary":
            d_zo = torch.sigmoid(z_o).sub_(y).div_(batch)
        else:
            d_zo = torch.sub(z_o, y).mul_(2.0 / z_o.numel())
        # backward: dW_O = dZ_O^T A_H, db_O = dZ_O^T 1, dZ_H = (dZ_O W_O) * h'(Z_H), dW_H = dZ_H^T X
        d_zh = self.activation_backward(d_zo @ w_o, z_h, a_h)
        torch.mm(d_zo.t(), a_h, out=grad_w_o)
        torch.sum(d_zo, 0, out=grad_b_o)
        torch.mm(d_zh.t(), x, out=grad_w_h)
        torch.sum(d_zh, 0, out=grad_b_h)
        return z_o


_ACTIVATION_FNS: dict[type[nn.Module], Callable[[torch.Tensor], torch.Tensor]] = {
    nn.Sigmoid: torch.sigmoid,
    nn.Tanh: torch.tanh,
    nn.ReLU: torch.relu,
}


# dJ/dZ_H from dJ/dA_H with the kernels autograd itself uses: grad * a(1-a) (sigmoid),
# grad * (1-a^2) (tanh), grad * [z > 0] (ReLU), each one pass over the batch
_ACTIVATION_BACKWARD: dict[type[nn.Module], Callable[..., torch.Tensor]] = {
    nn.Sigmoid: lambda grad, z, a: torch.ops.aten.sigmoid_backward(grad, a),
    nn.Tanh: lambda grad, z, a: torch.ops.aten.tanh_backward(grad, a),
    nn.ReLU: lambda grad, z, a: torch.ops.aten.threshold_backward(grad, z, 0),
}


@functools.lru_cache(maxsize=16)
def _minus_ones(batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(batch, 1) of -1, made once: subtracts the one-hot targets from the softmax in one scatter."""
    return torch.full((batch, 1), -1.0, dtype=dtype, device=device)


def supports_manual_backward(net: nn.Module) -> bool:
    """The hand-derived gradients cover exactly TwoLayerNet with our activations, no dropout."""
    return (
        type(net) is TwoLayerNet
        and type(net.activation) in _ACTIVATION_FNS
        and isinstance(net.dropout, nn.Identity)
        and isinstance(net.input_dropout, nn.Identity)
    )
