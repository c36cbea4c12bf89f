"""Per-trial fixed cost of a sweep and the share of MLflow logging in training time.

    python benchmarks/trial_overhead.py [--trials 12] [--out outputs/bench]

1. Fixed cost: a synthetic sweep of one-epoch trials in this process (imports and the MLflow store
   are set up before the clock starts, as in a long sweep); the wall time per trial minus its
   training epochs, split into config compose, MLflow run start, trainer setup (data, model,
   optimizer), result logging (plots, weights), run end and the sweep's own bookkeeping.
2. Logging share: the seed's synthetic demo trained for 300 epochs with and without its MLflow
   run (per-epoch metrics, params, config, plots), same config; the difference over the time.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
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
    parser.add_argument("--epochs", type=int, default=300, help="epochs of the logging-share run")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="sweeplab-overhead-"))
    os.environ["SWEEPLAB_OUTPUT"] = str(workdir)

    from hydra import compose, initialize_config_dir

    from sweeplab import sweep, tracking, trainer
    from sweeplab.config import CONF_DIR, register_configs, to_config
    from sweeplab.train import train_and_track

    register_configs()
    timed(sweep, "compose_trial", "config compose")
    timed(tracking.MlflowRun, "start", "MLflow run start")
    timed(tracking.MlflowRun, "log_result", "log result (test metrics, plots)")
    timed(tracking.MlflowRun, "end", "MLflow run end")
    timed(sweep.Worker, "after_trial", "sweep bookkeeping (tags, best value)")
    timed(trainer, "load_dataset", "data (cached per process)")
    timed(trainer, "build_optimizer", "optimizer build")  # the name trainer.run calls
    timed(trainer, "train_one_epoch", "training epoch")
    timed(trainer, "evaluate", "evaluation (val and test)")

    overrides = [
        "sweep=synthetic",
        "trainer.epochs=1",
        f"sweep.n_trials={args.trials}",
        "sweep.study_name=overhead",
        "sweep.pruner.name=none",
    ]
    lines = []
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        plan = sweep.plan_sweep(compose("config", overrides), overrides, "synthetic")
        sweep._mlflow(plan)  # the store exists before a long sweep's trials: not counted
        TIMES.clear()
        study = sweep.open_study(plan)
        started = time.perf_counter()
        parent = sweep.find_or_create_parent(plan, study)
        worker = sweep.Worker(plan, study, parent, "", sweep.compose_trial)
        worker.work(None)
        wall = time.perf_counter() - started
        trials = study.get_trials()

        cfg = to_config(
            compose(
                "config",
                [
                    "experiment=seed_synthetic",
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
    work = sum(TIMES["training epoch"]) + sum(TIMES["evaluation (val and test)"])
    lines.append(f"| wall per trial | {wall / n:.4f} |")
    lines.append(
        f"| **fixed cost per trial (wall - training epoch - evaluation)** | **{(wall - work) / n:.4f}** |"
    )

    # logging share: the same training alone, with its MLflow run, and with pictures and weights too
    plain = trainer.run(cfg)  # warm-up, then measured
    timings = {}
    for label, extra in (
        ("trainer.run alone", None),
        (
            "with MLflow run (params, config, metrics every epoch)",
            {"log_plots": False, "log_model": False},
        ),
        ("with MLflow run, plots and weights", {"log_plots": True, "log_model": True}),
    ):
        started = time.perf_counter()
        if extra is None:
            plain = trainer.run(cfg)
        else:
            for key, value in extra.items():
                setattr(cfg.tracking, key, value)
            train_and_track(cfg)
        timings[label] = time.perf_counter() - started
    base = timings["trainer.run alone"]
    epochs = sum(h["time/epoch_s"] for h in plain.history)
    lines += ["", f"# MLflow logging share: seed synthetic demo, {args.epochs} epochs", ""]
    lines.append(f"- trainer.run alone: {base:.3f} s (of which training epochs {epochs:.3f} s)")
    for label, seconds in list(timings.items())[1:]:
        lines.append(
            f"- {label}: {seconds:.3f} s, +{seconds - base:.3f} s = +{(seconds - base) / base:.1%}"
        )
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "trial_overhead.md").write_text(report + "\n")
    print(f"(scratch store in {workdir})", file=sys.stderr)


if __name__ == "__main__":
    main()
