"""The network returns logits and the loss matches the task (the lecture's formulas, from logits)."""

from __future__ import annotations

import pytest
import torch

from sweeplab.training.model import TwoLayerNet, count_correct, loss_for_task, predict_proba


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
def test_shapes_and_hidden_features(activation):
    net = TwoLayerNet(2, 5, 3, activation)
    x = torch.rand(7, 2)
    assert net(x).shape == (7, 3)
    hidden = net.hidden_features(x)
    assert hidden.shape == (7, 5)
    if activation == "sigmoid":
        assert 0 <= hidden.min() and hidden.max() <= 1


def test_binary_loss_is_the_seed_bce_on_logits():
    z = torch.tensor([[2.0], [-1.0], [0.5]])
    y = torch.tensor([[1.0], [0.0], [0.0]])
    seed_formula = (torch.log1p(torch.exp(z)) - y * z).mean()
    assert torch.allclose(loss_for_task("binary")(z, y), seed_formula)


def test_multiclass_loss_is_the_seed_cross_entropy_on_logits():
    z = torch.tensor([[2.0, 0.1, -1.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([0, 2])
    seed_formula = (torch.logsumexp(z, dim=1) - z[torch.arange(2), y]).mean()
    assert torch.allclose(loss_for_task("multiclass")(z, y), seed_formula)


def test_regression_loss_is_squared_error():
    z = torch.tensor([[1.0, 2.0]])
    y = torch.tensor([[0.0, 4.0]])
    assert torch.allclose(loss_for_task("regression")(z, y), torch.tensor(2.5))


def test_probabilities_only_at_prediction_time():
    z = torch.tensor([[0.0], [100.0]])
    assert torch.allclose(predict_proba(z, "binary")[:, 0], torch.tensor([0.5, 1.0]))
    zm = torch.randn(4, 10)
    assert torch.allclose(predict_proba(zm, "multiclass").sum(1), torch.ones(4))


def test_count_correct():
    assert count_correct(torch.tensor([[1.0], [-1.0]]), torch.tensor([[1.0], [1.0]]), "binary") == 1
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    assert count_correct(logits, torch.tensor([1, 1]), "multiclass") == 1
