"""Optimizers and learning-rate schedules: torch.optim's, built from the typed config.

`build_optimizer` makes the torch.optim class that the config's `_target_` names, with its fused or
multi-tensor kernel (Adam and AdamW as `fast.LeanAdam`, the same kernel called with less
overhead); `build_schedule` chains warm-up and the per-epoch schedule from
torch.optim.lr_scheduler.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict

import torch
from hydra.utils import get_class
from torch.optim import lr_scheduler

from sweeplab.config import OptimizerConfig, TrainerConfig
from sweeplab.training.fast.lean_adam import LEAN_CLASSES


def build_optimizer(
    params: list[torch.nn.Parameter], cfg: OptimizerConfig
) -> torch.optim.Optimizer:
    """The torch.optim class named by `cfg._target_`, with its fastest multi-tensor kernel."""
    optimizer_cls = get_class(cfg._target_)
    optimizer_cls = LEAN_CLASSES.get(optimizer_cls, optimizer_cls)
    kwargs = {key: value for key, value in asdict(cfg).items() if key not in ("name", "_target_")}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    accepted = inspect.signature(optimizer_cls).parameters
    # fused kernels exist on CPU and CUDA for Adam/AdamW/SGD/Adagrad in torch >= 2.4
    kwargs["fused" if "fused" in accepted else "foreach"] = True
    return optimizer_cls(params, **kwargs)


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: TrainerConfig
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-epoch learning-rate schedule, from torch.optim.lr_scheduler; None if constant."""
    after_warmup = cfg.epochs - cfg.warmup_epochs
    if cfg.lr_schedule == "cosine":
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=after_warmup)
    elif cfg.lr_schedule == "step":
        main = lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    else:
        main = None
    if cfg.warmup_epochs == 0:
        return main
    # epoch 1 runs at lr / warmup_epochs, epoch warmup_epochs at lr, then the schedule starts
    warmup = lr_scheduler.LinearLR(
        optimizer, start_factor=1 / cfg.warmup_epochs, total_iters=cfg.warmup_epochs - 1
    )
    then = main or lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    return lr_scheduler.SequentialLR(optimizer, [warmup, then], milestones=[cfg.warmup_epochs])
