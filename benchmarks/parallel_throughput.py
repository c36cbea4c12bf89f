"""Sweep throughput with 1 and with N worker processes on this machine (trials per minute).

    python benchmarks/parallel_throughput.py [--trials 48] [--epochs 120] [--workers 2] [--out outputs/bench]

Runs the shipped synthetic sweep twice as a user would (`python -m sweeplab.sweep`), in fresh
output folders, with the trial cost held constant (fixed width and batch size, no pruning) so that
only the parallelism differs. Each worker gets cores/N torch threads.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def run(workers: int, trials: int, epochs: int) -> float:
    out = Path(tempfile.mkdtemp(prefix=f"sweeplab-parallel-{workers}-"))
    args = [
        "sweep=synthetic",
        f"sweep.workers={workers}",
        f"sweep.n_trials={trials}",
        "sweep.pruner.name=none",
        "model.d_hidden=16",
        "trainer.batch_size=32",
        f"trainer.epochs={epochs}",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "sweeplab.sweep", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "SWEEPLAB_OUTPUT": str(out)},
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    shutil.rmtree(out, ignore_errors=True)
    match = re.search(r"stopped: .* in ([0-9.]+)s", done.stdout)
    return float(match.group(1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    one = run(1, args.trials, args.epochs)
    many = run(args.workers, args.trials, args.epochs)
    lines = [
        f"# Sweep throughput, synthetic task, {args.trials} trials of {args.epochs} epochs, "
        f"{len(os.sched_getaffinity(0))} cores",
        "",
        "| workers | wall (s) | trials/min |",
        "|---:|---:|---:|",
        f"| 1 | {one:.1f} | {args.trials / one * 60:.1f} |",
        f"| {args.workers} | {many:.1f} | {args.trials / many * 60:.1f} |",
        "",
        f"speed-up: {one / many:.2f}x",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "parallel.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
