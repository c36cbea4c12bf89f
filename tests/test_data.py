"""The synthetic tasks: shapes, seeding, label noise, and the lecture's claim that 4 sigmoid units
solve the quadrilateral task."""

from __future__ import annotations

import numpy as np
import torch

from sweeplab.config import RegressionDataConfig, SyntheticDataConfig
from sweeplab.training.data import QUADRILATERAL, inside_quadrilateral, load_dataset, make_synthetic
from sweeplab.training.model import TwoLayerNet


def test_synthetic_shapes_and_labels():
    ds = load_dataset(SyntheticDataConfig(n_train=300, n_val=50, n_test=70))
    assert ds.task == "binary" and ds.n_outputs == 1 and ds.n_features == 2
    assert ds.x_train.shape == (300, 2) and ds.y_train.shape == (300, 1)
    assert ds.x_val.shape == (50, 2) and ds.x_test.shape == (70, 2)
    assert ds.x_train.dtype == torch.float32
    assert 0 <= ds.x_train.min() and ds.x_train.max() <= 1
    expected = inside_quadrilateral(ds.x_train.numpy().astype(np.float64))
    assert np.array_equal(ds.y_train[:, 0].numpy() == 1, expected)
    # both classes present in a useful proportion (the quadrilateral covers about 36 %)
    assert 0.25 < ds.y_train.mean().item() < 0.5


def test_same_seed_same_data_other_seed_other_data():
    a = make_synthetic(SyntheticDataConfig(n_train=100, seed=1))
    b = make_synthetic(SyntheticDataConfig(n_train=100, seed=1))
    c = make_synthetic(SyntheticDataConfig(n_train=100, seed=2))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_train, c.x_train)


def test_label_noise_flips_about_that_fraction():
    clean = make_synthetic(SyntheticDataConfig(n_train=20000, noise=0.0))
    noisy = make_synthetic(SyntheticDataConfig(n_train=20000, noise=0.1))
    flipped = (clean.y_train != noisy.y_train).float().mean().item()
    assert 0.08 < flipped < 0.12


def test_dataset_is_cached_per_process():
    cfg = SyntheticDataConfig(n_train=123)
    assert load_dataset(cfg) is load_dataset(SyntheticDataConfig(n_train=123))


def test_four_sigmoid_units_solve_the_task_but_no_line_does():
    """Hidden unit l fires on the inner side of edge l; the output fires when all 4 do."""
    ds = make_synthetic(SyntheticDataConfig(n_train=5000))
    net = TwoLayerNet(2, 4, 1, "sigmoid")
    corners, following = QUADRILATERAL, np.roll(QUADRILATERAL, -1, axis=0)
    edges = following - corners
    normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1)  # inward normals (CCW corners)
    sharp = 200.0
    with torch.no_grad():
        net.hidden.weight.copy_(torch.tensor(sharp * normals, dtype=torch.float32))
        net.hidden.bias.copy_(
            torch.tensor(-sharp * (normals * corners).sum(1), dtype=torch.float32)
        )
        net.output.weight.fill_(10.0)
        net.output.bias.fill_(-35.0)  # 4 units on -> +5, 3 on -> -5
        accuracy = ((net(ds.x_train) > 0).float() == ds.y_train).float().mean().item()
    assert accuracy > 0.99
    # while the best linear classifier (least squares on the labels) is far from that
    x = np.c_[ds.x_train.numpy(), np.ones(len(ds.x_train))]
    w, *_ = np.linalg.lstsq(x, ds.y_train.numpy()[:, 0] * 2 - 1, rcond=None)
    linear_accuracy = ((x @ w > 0) == (ds.y_train.numpy()[:, 0] == 1)).mean()
    assert linear_accuracy < 0.8


def test_regression_has_k_dim_targets():
    ds = load_dataset(RegressionDataConfig(n_train=200, n_val=20, n_test=30, n_outputs=3))
    assert ds.task == "regression" and ds.n_outputs == 3
    assert ds.y_train.shape == (200, 3) and ds.y_test.shape == (30, 3)
    assert ds.y_train.dtype == torch.float32


def test_chance_accuracy_is_the_majority_class_share_of_the_validation_set():
    ds = load_dataset(SyntheticDataConfig(n_train=100, n_val=500, n_test=10))
    # the quadrilateral covers about 36 %: answering "outside" everywhere scores the most
    outside = int((ds.y_val == 0).sum()) / 500
    assert ds.chance_accuracy() == outside > 0.5
    assert (
        load_dataset(RegressionDataConfig(n_train=50, n_val=20, n_test=10)).chance_accuracy()
        is None
    )
