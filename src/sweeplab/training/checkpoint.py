"""Checkpoints of a training run: all it needs to go on as if it had never stopped.

    trainer.run(cfg, callbacks, checkpoint=path)    # writes path every trainer.checkpoint_every
    state = TrainState.load(path)                   # (epochs), e.g. after its process died
    trainer.run(cfg, callbacks, checkpoint=path, resume=state)  # epochs state.epoch+1, ...

A `TrainState` holds what `trainer.Setup.state_dict` gives (the weights, the optimizer's state:
LeanAdam's, which the C++ loop steps, is torch's Adam state; the learning-rate schedule; every
random generator a step draws from), the metrics so far and the untrained network's loss (the
divergence check's reference). The resumed run makes the same steps with the same numbers: its
weights and metrics equal, bit for bit, those of a run never stopped (tests/test_checkpoint.py).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sweeplab.config import Config

# settings a checkpoint may resume under with other values: where the run is tracked (a retried
# trial has its own run name), the progress bar, how often it checkpoints, and its CPU threads (a
# rerun with more workers gives each fewer; matrix products may then round differently)
NOT_COMPUTING = ("tracking", "sweep", "optimized_metric")
NOT_COMPUTING_TRAINER = ("checkpoint_every", "progress", "num_threads")


def computing_config(cfg: Config) -> dict[str, Any]:
    """The settings that decide a run's numbers: a checkpoint resumes only a run of the same."""
    values = {key: value for key, value in asdict(cfg).items() if key not in NOT_COMPUTING}
    for key in NOT_COMPUTING_TRAINER:
        del values["trainer"][key]
    return values


@dataclass
class TrainState:
    """A run at the end of an epoch."""

    history: list[dict[str, float]]  # the metrics of the epochs trained, one dict per epoch
    initial_loss: float  # the untrained network's validation loss (the divergence reference)
    config: dict[str, Any]  # computing_config of the run
    tensors: dict[str, Any]  # the trainer's state_dicts and random generator states

    @classmethod
    def of(
        cls,
        cfg: Config,
        history: list[dict[str, float]],
        initial_loss: float,
        tensors: dict[str, Any],
    ) -> TrainState:
        return cls(list(history), initial_loss, computing_config(cfg), tensors)

    @property
    def epoch(self) -> int:
        return len(self.history)

    def check(self, cfg: Config) -> None:
        """ValueError unless this state can resume a run of `cfg`."""
        if self.config != computing_config(cfg):
            raise ValueError("the checkpoint is of a run with other settings: it cannot resume")

    def save(self, path: Path) -> None:
        """Write atomically: a process killed while writing leaves the previous checkpoint whole
        (and at most a stale `<name>.tmp`, which the next save overwrites); synced to the disk,
        so that after a reboot or a power cut the file a trial resumes from is not empty."""
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = temporary_path(path)
        with temporary.open("wb") as handle:
            torch.save(vars(self), handle)  # (asdict would copy every tensor first)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        folder = os.open(path.parent, os.O_RDONLY)  # the rename itself
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    @classmethod
    def load(cls, path: Path) -> TrainState:
        # weights_only: tensors, numbers, strings and containers; nothing is unpickled as code
        return cls(**torch.load(path, map_location="cpu", weights_only=True))


def temporary_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp")


def remove(path: Path) -> None:
    """Delete a checkpoint and the temporary file a killed save may have left beside it."""
    path.unlink(missing_ok=True)
    temporary_path(path).unlink(missing_ok=True)
