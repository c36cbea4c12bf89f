"""Datasets as in-memory tensors: the seed's synthetic 2-D task and a small regression task.

`load_dataset(cfg)` returns a `Dataset` (train/val/test tensors plus the task kind that decides the
loss). Datasets are built once per process and reused across the trials of a sweep:

    ds = load_dataset(SyntheticDataConfig(n_train=1000))
    ds.task, ds.x_train.shape       # ("binary", (1000, 2))
"""

from __future__ import annotations

import functools
from dataclasses import astuple, dataclass

import numpy as np
import torch

from sweeplab.config import DataConfig, RegressionDataConfig, SyntheticDataConfig

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

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    def to(self, device: torch.device) -> Dataset:
        """A copy on `device` (the trainer moves data once, then only slices it)."""
        moved = {
            key: value.to(device) if isinstance(value, torch.Tensor) else value
            for key, value in vars(self).items()
        }
        return Dataset(**moved)


def load_dataset(cfg: DataConfig) -> Dataset:
    """Build (or reuse, within this process) the dataset that `cfg` describes."""
    return _load_cached(type(cfg), astuple(cfg))


@functools.lru_cache(maxsize=8)
def _load_cached(schema: type[DataConfig], values: tuple) -> Dataset:
    cfg = schema(*values)
    if isinstance(cfg, SyntheticDataConfig):
        return make_synthetic(cfg)
    if isinstance(cfg, RegressionDataConfig):
        return make_regression(cfg)
    raise ValueError(f"data.name={cfg.name!r}: no loader for this dataset")


def inside_quadrilateral(x: np.ndarray) -> np.ndarray:
    """True where a point of `x` (n, 2) lies inside QUADRILATERAL (all 4 half-plane tests pass)."""
    corners, following = QUADRILATERAL, np.roll(QUADRILATERAL, -1, axis=0)
    edges = following - corners
    # z-component of edge x (point - corner): >= 0 means left of the edge, i.e. inside.
    rel = x[:, None, :] - corners[None, :, :]
    cross = edges[None, :, 0] * rel[:, :, 1] - edges[None, :, 1] * rel[:, :, 0]
    return np.all(cross >= 0, axis=1)


def make_synthetic(cfg: SyntheticDataConfig) -> Dataset:
    """The seed's task: x uniform in [0,1]^2, y = 1 inside the quadrilateral, labels flipped with
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


def _split(
    name: str,
    task: str,
    n_outputs: int,
    x: np.ndarray,
    y: np.ndarray,
    cfg: SyntheticDataConfig | RegressionDataConfig,
) -> Dataset:
    a, b = cfg.n_train, cfg.n_train + cfg.n_val
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    return Dataset(name, task, n_outputs, xt[:a], yt[:a], xt[a:b], yt[a:b], xt[b:], yt[b:])
