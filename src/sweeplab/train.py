"""Train one 2-layer network from the Hydra config and track it in MLflow.

    python -m sweeplab.train                                   # the synthetic task, defaults
    python -m sweeplab.train model.d_hidden=8 model.activation=relu optimizer=sgd optimizer.lr=0.1
    python -m sweeplab.train experiment=seed_synthetic         # the lecture's first demo
    python -m sweeplab.train --cfg job                         # print the composed config only

Hydra stays here at the edge: the `@hydra.main` function turns the composed config into typed
dataclasses and calls `train_and_track`, a plain function that sweeps and tests call too.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from sweeplab.config import (
    CONF_DIR,
    Config,
    ConfigError,
    run_cli,
    to_config,
)

if TYPE_CHECKING:
    from sweeplab.trainer import Callback, TrainResult


def train_and_track(
    cfg: Config,
    callbacks: tuple[Callback, ...] = (),
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    finished_on: tuple[type[BaseException], ...] = (),
    on_run_start: Callable[[str], None] | None = None,
) -> tuple[TrainResult, str]:
    """Train `cfg` inside one MLflow run; return the result and the run id.

    A sweep trial is the same call with a parent run, its pruning callback,
    `finished_on=(TrialPruned,)` so that a pruned trial's run still ends FINISHED, and
    `on_run_start` to record the run id on the trial before training starts.
    """
    from sweeplab import tracking, trainer

    with tracking.tracked_run(cfg, parent_run_id, tags, finished_on) as run:
        if on_run_start is not None:
            on_run_start(run.run_id)
        progress = trainer.ProgressBar(cfg.trainer.epochs, cfg.trainer.progress)
        try:
            result = trainer.run(cfg, callbacks=(run, *callbacks, progress))
        finally:
            progress.close()
        run.log_result(result, cfg)
    return result, run.run_id


class _Interrupts:
    """What the signal handler needs to know: inside how many `interrupts_deferred` blocks we
    are, and the signal that arrived meanwhile."""

    depth = 0
    pending: int | None = None


def raise_keyboard_interrupt_on_signals() -> None:
    """Let SIGTERM unwind like Ctrl-C, so runs end KILLED and storages stay consistent; both wait
    for the end of an `interrupts_deferred` block. (SIGINT keeps being ignored where the process
    was started with it ignored, as background jobs are.)"""

    def handler(signum: int, frame: object) -> None:
        if _Interrupts.depth:
            _Interrupts.pending = signum
            return
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, handler)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """A block that Ctrl-C/SIGTERM must not cut in half (a write to a study's journal file under
    its lock): the interrupt is raised when the block ends."""
    _Interrupts.depth += 1
    try:
        yield
    finally:
        _Interrupts.depth -= 1
        if not _Interrupts.depth and _Interrupts.pending is not None:
            signum, _Interrupts.pending = _Interrupts.pending, None
            raise KeyboardInterrupt(f"signal {signum}")


def freeze_long_lived_objects() -> None:
    """Import the heavy libraries a run uses, then `gc.freeze()` everything alive: the ~0.5 M
    objects of torch, MLflow, SQLAlchemy, Hydra and Optuna are then skipped by the garbage
    collector's full collections, which MLflow's metric writes set off (they were 30 % of the
    writing time). For processes that run one job, i.e. the command-line entry points."""
    import gc

    import mlflow.tracking  # noqa: F401 - imported to be frozen
    import torch._dynamo  # noqa: F401 - torch.optim imports it when it makes the first optimizer

    from sweeplab import tracking, trainer  # noqa: F401

    gc.freeze()


def summary(cfg: Config, result: TrainResult, run_id: str) -> str:
    from sweeplab.tracking import store_uri

    shown = ", ".join(
        f"{key}={value:.4f}"
        for key, value in result.metrics.items()
        if key.startswith(("test/", "val/"))
    )
    return (
        f"{len(result.history)} epochs: {shown}\n"
        f"MLflow run {run_id} in experiment '{cfg.tracking.experiment}' "
        f"(store {store_uri(cfg.tracking)}); browse it with `make ui`"
    )


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(composed: DictConfig) -> None:
    try:
        cfg = to_config(composed)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    raise_keyboard_interrupt_on_signals()
    freeze_long_lived_objects()
    from sweeplab.trainer import DivergenceError

    try:
        result, run_id = train_and_track(cfg)
    except DivergenceError as err:  # the run is FAILED in MLflow with this reason
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(summary(cfg, result, run_id))


def main() -> None:
    run_cli(_hydra_main)


if __name__ == "__main__":
    main()
