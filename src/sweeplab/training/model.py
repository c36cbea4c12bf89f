"""The lecture's 2-layer feed-forward network, and the loss that goes with each task.

    z_H = W_H x + b_H,  a_H = h_H(z_H),  z_O = W_O a_H + b_O   (the network returns the logits z_O)

The loss always takes logits (the lecture's "be careful" page): binary -> BCE with logits on one output
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
        """a_H, the learned features (the lecture's hidden-unit pictures show these)."""
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
