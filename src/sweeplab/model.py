"""The 2-layer feed-forward network of the seed, and the loss that goes with each task.

    z_H = W_H x + b_H,  a_H = h_H(z_H),  z_O = W_O a_H + b_O   (the network returns the logits z_O)

The loss always takes logits (the seed's "be careful" page): binary -> BCE with logits on one output
unit, multiclass -> cross-entropy, regression -> squared error. Probabilities are computed only at
prediction time, by `predict_proba`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}

LossFn = Callable[..., torch.Tensor]  # (logits, targets, reduction=...) -> loss
LOSSES: dict[str, LossFn] = {
    "binary": F.binary_cross_entropy_with_logits,
    "multiclass": F.cross_entropy,
    "regression": F.mse_loss,
}


class TwoLayerNet(nn.Module):
    """One hidden layer of `d_hidden` units with activation `activation`, linear output (logits),
    and optional dropout on the hidden units and on the inputs while training."""

    def __init__(
        self,
        d_in: int,
        d_hidden: int,
        d_out: int,
        activation: str,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_dropout = nn.Dropout(input_dropout) if input_dropout > 0 else nn.Identity()
        self.hidden = nn.Linear(d_in, d_hidden)
        self.activation = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.output = nn.Linear(d_hidden, d_out)

    def hidden_features(self, x: torch.Tensor) -> torch.Tensor:
        """a_H, the learned features (the seed's hidden-unit pictures show these)."""
        return self.activation(self.hidden(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.dropout(self.hidden_features(self.input_dropout(x))))


def loss_for_task(task: str) -> LossFn:
    """The loss on logits that matches the task's likelihood."""
    return LOSSES[task]


def predict_proba(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Output probabilities from logits: sigmoid (binary), softmax (multiclass); regression as is."""
    if task == "binary":
        return torch.sigmoid(logits)
    if task == "multiclass":
        return torch.softmax(logits, dim=-1)
    return logits


def hard_decisions(logits: torch.Tensor, task: str) -> torch.Tensor:
    """The predicted class, shaped like the targets: 0./1. (binary) or the argmax (multiclass)."""
    if task == "binary":
        return (logits > 0).to(logits.dtype)
    return logits.argmax(dim=-1)


def count_correct(logits: torch.Tensor, targets: torch.Tensor, task: str) -> torch.Tensor:
    """Number of correct hard decisions, as a tensor (no host sync)."""
    return (hard_decisions(logits, task) == targets).sum()


@torch.no_grad()
def manual_loss_and_grads(
    net: TwoLayerNet, x: torch.Tensor, y: torch.Tensor, task: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's back-propagation equations, without an autograd graph: forward, mean loss, and
    the gradients of all four parameters written into their `.grad`. Returns (loss, logits).

    At this network's size building the autograd graph costs more than the arithmetic; this path
    computes exactly what `loss.backward()` would (tests compare them for every activation/loss).
    """
    w_h, b_h, w_o, b_o = net.hidden.weight, net.hidden.bias, net.output.weight, net.output.bias
    # forward: Z_H = X W_H^T + b_H, A_H = h(Z_H), Z_O = A_H W_O^T + b_O
    z_h = torch.addmm(b_h, x, w_h.t())
    a_h = _ACTIVATION_FNS[type(net.activation)](z_h)
    z_o = torch.addmm(b_o, a_h, w_o.t())
    batch = x.shape[0]
    # dJ/dZ_O for the mean loss: softmax - one-hot (CE), sigmoid - y (BCE), 2 (Z_O - Y) / nK (MSE)
    if task == "multiclass":
        log_probs = torch.log_softmax(z_o, dim=1)
        loss = F.nll_loss(log_probs, y)
        d_zo = log_probs.exp_().scatter_add_(1, y[:, None], _minus_ones(batch, z_o)).div_(batch)
    elif task == "binary":
        loss = F.binary_cross_entropy_with_logits(z_o, y)
        d_zo = (torch.sigmoid(z_o) - y) / batch
    else:
        diff = z_o - y
        loss = diff.square().mean()
        d_zo = diff * (2.0 / diff.numel())
    # backward: dW_O = dZ_O^T A_H, db_O = dZ_O^T 1, dZ_H = (dZ_O W_O) * h'(Z_H), dW_H = dZ_H^T X
    d_zh = (d_zo @ w_o).mul_(_activation_derivative(net.activation, z_h, a_h))
    _write_grad(w_o, torch.mm, d_zo.t(), a_h)
    _write_grad(b_o, torch.sum, d_zo, 0)
    _write_grad(w_h, torch.mm, d_zh.t(), x)
    _write_grad(b_h, torch.sum, d_zh, 0)
    return loss, z_o


def _write_grad(param: nn.Parameter, op: Callable[..., torch.Tensor], *args: object) -> None:
    """param.grad = op(*args), written into the existing .grad buffer when there is one."""
    grad = param.grad
    if grad is not None and grad.shape == param.shape and grad.is_contiguous():
        op(*args, out=grad)
    else:
        param.grad = op(*args)


_ACTIVATION_FNS: dict[type[nn.Module], Callable[[torch.Tensor], torch.Tensor]] = {
    nn.Sigmoid: torch.sigmoid,
    nn.Tanh: torch.tanh,
    nn.ReLU: torch.relu,
}


def _activation_derivative(activation: nn.Module, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """h'(z) from the stored activation a = h(z): a(1-a) (sigmoid), 1-a^2 (tanh), [z > 0] (ReLU)."""
    if isinstance(activation, nn.Sigmoid):
        return torch.addcmul(a, a, a, value=-1.0)  # a - a^2, one kernel
    if isinstance(activation, nn.Tanh):
        return torch.addcmul(torch.ones_like(a), a, a, value=-1.0)
    return (z > 0).to(z.dtype)


def _minus_ones(batch: int, like: torch.Tensor) -> torch.Tensor:
    """(batch, 1) of -1: subtracts the one-hot targets from the softmax in one scatter."""
    return torch.full((batch, 1), -1.0, dtype=like.dtype, device=like.device)


def supports_manual_backward(net: nn.Module) -> bool:
    """The hand-derived gradients cover exactly TwoLayerNet with our activations, no dropout."""
    return (
        type(net) is TwoLayerNet
        and type(net.activation) in _ACTIVATION_FNS
        and isinstance(net.dropout, nn.Identity)
        and isinstance(net.input_dropout, nn.Identity)
    )
