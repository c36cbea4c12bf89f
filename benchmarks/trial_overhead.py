"""Per-trial fixed cost of a sweep and the share of MLflow logging in training time.

    python benchmarks/trial_overhead.py [--trials 12] [--out outputs/bench]
    python benchmarks/trial_overhead.py --experiment lecture_mnist --epochs 20   # MNIST epochs

1. Fixed cost: a synthetic sweep of one-epoch trials in this process, one trial at a time
   (`sweep.stack=1`: each trains as a stack of one, the loop `loops.choose_loop` picks for
   small inputs; imports and the MLflow store are done before the clock starts, as in a long
   sweep); the wall time per trial minus its training epoch and evaluation, split into the
   Optuna ask and sampling, the config, the MLflow run start, the data and network, result
   logging, run end and the sweep's own bookkeeping (with Optuna's tell). The wall time
   includes the wait at the end for the MLflow helper's last writes.
2. Logging share: the lecture's synthetic demo (about 2 ms epochs, the worst case for logging)
   trained alone, then with its MLflow run logging the metrics of every epoch through the metric
   writer process (the default), written by the training process itself
   (`tracking.background_metrics=false`), and of every 4th epoch only
   (`tracking.log_every_n_epochs=4`); the training process's time spent on metrics over the
   training's time, and the run's whole wall time against the training alone.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

TIMES: dict[str, list[float]] = collections.defaultdict(list)


def timed(owner: object, name: str, label: str) -> None:
    """Wrap owner.name so that each call's duration is recorded under `label`."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: object, **kwargs: object) -> object:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            TIMES[label].append(time.perf_counter() - started)

    setattr(owner, name, wrapper)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--experiment", default="lecture_synthetic", help="the logging-share run")
    parser.add_argument("--epochs", type=int, default=2000, help="epochs of the logging-share run")
    parser.add_argument("--rounds", type=int, default=3, help="logging-share runs of each kind")
    parser.add_argument("--out", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the scratch MLflow store")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="sweeplab-overhead-"))
    os.environ["SWEEPLAB_OUTPUT"] = str(workdir)

    import optuna
    from hydra import compose, initialize_config_dir

    from sweeplab.config import CONF_DIR, register_configs, to_config
    from sweeplab.runtime import freeze_long_lived_objects
    from sweeplab.sweep import plan, results, storage, worker
    from sweeplab.training import tracking
    from sweeplab.training.stack.trainer import Stack
    from sweeplab.training.tracking import train_and_track

    register_configs()
    # the names a sweep calls for a trial alone (which trains as a stack of one)
    timed(optuna.Study, "ask", "Optuna ask")
    timed(worker, "suggest", "sampling")
    timed(worker, "compose_trials", "config")
    timed(tracking.TrackedRun, "start", "MLflow run start (handed to the helper)")
    timed(Stack, "build", "data, network, optimizer")
    timed(Stack, "train_and_validate", "training epoch")
    timed(Stack, "result", "test evaluation")
    timed(tracking.TrackedRun, "log_result", "log result (test metrics)")
    timed(tracking.TrackedRun, "end", "MLflow run end (waits for the helper)")
    timed(worker.Worker, "after_trial", "sweep bookkeeping (tags, best value)")

    overrides = [
        "sweep=synthetic",
        "trainer.epochs=1",
        f"sweep.n_trials={args.trials}",
        "sweep.study_name=overhead",
        "sweep.pruner.name=none",
        "sweep.stack=1",  # one trial at a time: the fixed cost of each
    ]
    lines = []
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        sweep_plan = plan.plan_sweep(compose("config", overrides), overrides, "synthetic")
        results.mlflow_client(
            sweep_plan
        )  # the store exists before a long sweep's trials: not counted
        freeze_long_lived_objects()
        TIMES.clear()
        study = storage.open_study(sweep_plan)
        started = time.perf_counter()
        parent = results.find_or_create_parent(sweep_plan, study)
        sweep_worker = worker.Worker(sweep_plan, study, parent, "")
        sweep_worker.work(None)
        sweep_worker.helper.sync()  # the runs' last writes, as the sweep's end waits for them
        wall = time.perf_counter() - started
        trials = study.get_trials()

        cfg = to_config(
            compose(
                "config",
                [
                    f"experiment={args.experiment}",
                    f"trainer.epochs={args.epochs}",
                    "trainer.progress=false",
                ],
            )
        )
    n = len(trials)
    lines.append(f"# Per-trial fixed cost: {n} one-epoch synthetic trials in one process")
    lines.append("")
    lines.append("| part | mean per trial (s) |")
    lines.append("|---|---:|")
    for label, values in TIMES.items():
        lines.append(f"| {label} | {sum(values) / n:.4f} |")
    work = sum(TIMES["training epoch"]) + sum(TIMES["test evaluation"])
    lines.append(f"| wall per trial | {wall / n:.4f} |")
    lines.append(
        f"| **fixed cost per trial (wall - training epoch - test evaluation)** | **{(wall - work) / n:.4f}** |"
    )

    # logging share: the same training alone, then with its MLflow run, in turns (the VM's speed
    # swings); the training process's time spent on per-epoch metrics (building them, handing them
    # to the MLflow helper or writing them itself) over the training alone
    for name in ("log_metrics", "_hand_over"):
        timed(tracking.TrackedRun, name, "metric logging")
    cfg.tracking.log_plots = cfg.tracking.log_model = False
    modes = {  # label: (background_metrics, log_every_n_epochs)
        "every epoch, MLflow helper process (default)": (True, 1),
        "every epoch, written by the training process": (False, 1),
        "every 4th epoch, written by the training process": (False, 4),
    }
    tracking.train(cfg)  # warm-up; the loop train_and_track trains with (choose_loop)
    train_and_track(cfg)  # starts this process's MLflow helper (seconds, on another core)
    alone: list[float] = []
    measured: dict[str, list[tuple[float, float]]] = {label: [] for label in modes}
    for _ in range(args.rounds):
        started = time.perf_counter()
        plain = tracking.train(cfg)
        alone.append(time.perf_counter() - started)
        for label, (background, every) in modes.items():
            cfg.tracking.background_metrics = background
            cfg.tracking.log_every_n_epochs = every
            TIMES["metric logging"].clear()
            started = time.perf_counter()
            train_and_track(cfg)
            wall = time.perf_counter() - started
            measured[label].append((wall, sum(TIMES["metric logging"])))
    base = statistics.median(alone)
    epochs = sum(h["time/epoch_s"] for h in plain.history)
    lines += ["", f"# MLflow logging share: experiment={args.experiment}, {args.epochs} epochs", ""]
    lines.append(
        f"the training alone (tracking.train): {base:.3f} s (median of {args.rounds}), of which training epochs "
        f"{epochs:.3f} s ({epochs / args.epochs * 1e3:.2f} ms each)"
    )
    lines += [
        "",
        "| metrics logged | run wall (s) | wall - alone | metric logging in the training "
        "process (s) | share of training |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, values in measured.items():
        wall = statistics.median(w for w, _ in values)
        logging_s = statistics.median(m for _, m in values)
        lines.append(
            f"| {label} | {wall:.3f} | {(wall - base) / base:+.1%} | {logging_s:.3f} "
            f"| {logging_s / base:.1%} |"
        )
    lines += [
        "",
        "(wall - alone also holds the run's fixed cost: run start, config, end; medians of "
        f"{args.rounds} rounds in turns)",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "trial_overhead.md").write_text(report + "\n")
    if args.keep:
        print(f"(scratch store kept in {workdir})", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
