"""Stacked trials against one trial at a time, whole sweeps as a user runs them.

    python benchmarks/stacked_sweeps.py                          # all four parts (~20 min)
    python benchmarks/stacked_sweeps.py --parts budget --trials 64 --stacks 1 16 64

1. budget: the synthetic default sweep (`sweep=synthetic`), `--trials` trials, one worker, the
   same sampler seed, with `sweep.stack` = each of `--stacks`, in turns: the whole command's
   wall time, the sweep's own (from its summary), trials per minute, the best val/acc.
2. time: the same sweeps with `sweep.timeout=--seconds` and no trial budget: how many trials,
   and the best val/acc each reaches in equal wall time.
3. one: a stack of one trial against the single-run trainer (`training.trainer.run`), the same
   config, in turns, median seconds per epoch (`time/epoch_s`): synthetic runs (the lecture's
   demo, SGD, a wide layer) and MNIST d_H=100; the last column says which one a single run (and
   an unstacked trial) trains with (`loops.choose_loop`).
4. mnist: the MNIST sweep's space (`sweep=mnist`, d_H 256-1536), 2 workers,
   `sweep.timeout=--mnist-seconds`, 5 epochs a trial, one trial at a time against stacks of 4:
   epochs trained per minute (every trial's reported epochs, pruned ones included).

Every sweep is a fresh process with its own output folder (a new study, a new MLflow store made
beforehand, so that no sweep pays for creating it). Writes stacked_sweeps.md with --out.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from hydra import compose, initialize_config_dir

from sweeplab.config import CONF_DIR, Config, register_configs, to_config
from sweeplab.sweep.storage import make_storage
from sweeplab.training.data import load_dataset
from sweeplab.training.loops import Loop, choose_loop
from sweeplab.training.stack.trainer import Group, run_stack
from sweeplab.training.trainer import resolve_device, run

ROOT = Path(__file__).resolve().parents[1]


def sweep(output: Path, name: str, *overrides: str) -> dict:
    """`python -m sweeplab.sweep ...` into `output`; its wall time, summary and study."""
    argv = [sys.executable, "-m", "sweeplab.sweep", f"sweep.study_name={name}", *overrides]
    started = time.perf_counter()
    done = subprocess.run(
        argv, env={**os.environ, "SWEEPLAB_OUTPUT": str(output)}, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    own = float(re.search(r"\) in ([0-9.]+)s", done.stdout).group(1))
    best = re.search(r"best \S+ = ([0-9.]+)", done.stdout)
    study = optuna.load_study(
        study_name=name, storage=make_storage(str(output / "optuna" / f"{name}.journal"))
    )
    finished = [t for t in study.trials if t.state.is_finished()]
    return {
        "wall": wall,
        "own": own,
        "trials": len(finished),
        "best": float(best.group(1)) if best else float("nan"),
        "epochs": sum(len(t.intermediate_values) for t in finished),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in finished),
    }


def fresh_output(scratch: Path, label: str) -> Path:
    """An output folder whose MLflow store exists already (made by a one-epoch run)."""
    output = Path(tempfile.mkdtemp(dir=scratch, prefix=f"{label}-"))
    subprocess.run(
        [sys.executable, "-m", "sweeplab.train", "trainer.epochs=1", "tracking.log_plots=false"],
        env={**os.environ, "SWEEPLAB_OUTPUT": str(output)},
        capture_output=True,
        check=True,
    )
    return output


def part_budget(args: argparse.Namespace, scratch: Path) -> list[str]:
    results = {}
    for stack in args.stacks:  # in turns: each sweep once, one after the other
        output = fresh_output(scratch, f"budget{stack}")
        results[stack] = sweep(
            output,
            f"budget{stack}",
            "sweep=synthetic",
            f"sweep.n_trials={args.trials}",
            f"sweep.stack={stack}",
            *args.trial_overrides,
        )
    base = results[args.stacks[0]]
    lines = [
        f"## {args.trials} trials of `sweep=synthetic`, one worker, sampler seed 0",
        "",
        "| sweep.stack | command s | sweep s | trials/min (command) | speed-up (command / sweep) | pruned | best val/acc |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for stack, r in results.items():
        lines.append(
            f"| {stack} | {r['wall']:.1f} | {r['own']:.1f} | {60 * r['trials'] / r['wall']:.0f} "
            f"| {base['wall'] / r['wall']:.1f}x / {base['own'] / r['own']:.1f}x | {r['pruned']} "
            f"| {r['best']:.4f} |"
        )
    return lines


def part_time(args: argparse.Namespace, scratch: Path) -> list[str]:
    lines = [
        "",
        f"## Equal wall time: `sweep=synthetic sweep.timeout={args.seconds}`, one worker",
        "",
        "| sweep.stack | trials | epochs | best val/acc |",
        "|---:|---:|---:|---:|",
    ]
    for stack in args.stacks:
        output = fresh_output(scratch, f"time{stack}")
        r = sweep(
            output,
            f"time{stack}",
            "sweep=synthetic",
            "sweep.n_trials=100000",
            f"sweep.timeout={args.seconds}",
            f"sweep.stack={stack}",
            *args.trial_overrides,
        )
        lines.append(f"| {stack} | {r['trials']} | {r['epochs']} | {r['best']:.4f} |")
    return lines


def config(overrides: list[str]) -> Config:
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return to_config(compose("config", overrides))


def part_one(args: argparse.Namespace, scratch: Path) -> list[str]:
    cases = {
        "synthetic (lecture demo, 300 epochs)": [
            "experiment=lecture_synthetic",
            "trainer.epochs=300",
        ],
        "synthetic, SGD, d_H=16 (300 epochs)": [
            "optimizer=sgd",
            "model.d_hidden=16",
            "trainer.epochs=300",
        ],
        "synthetic, Adam, d_H=1024 (60 epochs)": ["model.d_hidden=1024", "trainer.epochs=60"],
        "MNIST d_H=100, B=100 (3 epochs)": ["experiment=lecture_mnist", "trainer.epochs=3"],
    }
    lines = [
        "",
        "## A stack of one against the single-run trainer (median s per epoch, in turns)",
        "",
        "| case | trainer | stack of 1 | stack / trainer | a single run trains with |",
        "|---|---:|---:|---:|---|",
    ]
    for name, overrides in cases.items():
        cfg = config([*overrides, "trainer.progress=false"])
        single, stacked = [], []
        for _ in range(args.rounds):
            single += [h["time/epoch_s"] for h in run(cfg).history[1:]]
            outcome = run_stack([Group([cfg])])[0]
            stacked += [h["time/epoch_s"] for h in outcome.result.history[1:]]
        a, b = statistics.median(single), statistics.median(stacked)
        loop = choose_loop(cfg, load_dataset(cfg.data), resolve_device(cfg.trainer.device))
        used = "the stack of 1" if loop is Loop.STACK_NATIVE else "the trainer"
        lines.append(f"| {name} | {a:.5f} | {b:.5f} | {b / a:.2f} | {used} |")
    return lines


def part_mnist(args: argparse.Namespace, scratch: Path) -> list[str]:
    lines = [
        "",
        f"## MNIST sweep space, 2 workers, {args.mnist_seconds} s, 5 epochs a trial",
        "",
        "| sweep.stack | trials | epochs | epochs/min | best val/acc |",
        "|---:|---:|---:|---:|---:|",
    ]
    for stack in (1, 4):
        output = fresh_output(scratch, f"mnist{stack}")
        r = sweep(
            output,
            f"mnist{stack}",
            "sweep=mnist",
            "sweep.n_trials=100000",
            "trainer.epochs=5",
            "trainer.warmup_epochs=0",
            f"sweep.timeout={args.mnist_seconds}",
            f"sweep.stack={stack}",
            *args.trial_overrides,
        )
        lines.append(
            f"| {stack} | {r['trials']} | {r['epochs']} | {60 * r['epochs'] / r['own']:.1f} "
            f"| {r['best']:.4f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["budget", "time", "one", "mnist"])
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--stacks", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--mnist-seconds", type=float, default=240)
    parser.add_argument("--rounds", type=int, default=3, help="turns of part one")
    parser.add_argument(
        "--epochs", type=int, default=None, help="per trial, instead of the sweeps'"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.trial_overrides = [f"trainer.epochs={args.epochs}"] if args.epochs else []
    lines = [f"# Stacked sweeps ({time.ctime()})", ""]
    parts = {"budget": part_budget, "time": part_time, "one": part_one, "mnist": part_mnist}
    with tempfile.TemporaryDirectory(prefix="sweeplab-stacked-") as scratch:
        for part in args.parts:
            lines += parts[part](args, Path(scratch))
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "stacked_sweeps.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
