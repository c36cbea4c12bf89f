"""Whole commands, as a user waits for them: the lecture's demo scripts against
`python -m sweeplab.train experiment=lecture_*`, each a fresh process timed from outside.

    python benchmarks/whole_command.py                 # both demos, 3 rounds
    python benchmarks/whole_command.py --demos mnist --rounds 5 --out outputs/bench

For each demo the commands take turns (A B C D, A B C D, ...; this VM's speed swings for minutes)
and each reports its median wall time:

- the lecture's recipe as one script (`benchmarks/lecture_demo.py`);
- sweeplab into an MLflow store that is already there (the usual case);
- sweeplab into a new store (the first run of a project);
- sweeplab with `tracking.log_plots=false tracking.log_model=false`.

Then one more sweeplab run with `SWEEPLAB_PHASES` set gives where its time goes, phase by
phase, in the training process and in its MLflow helper process (`phases.mark_phase`).
MNIST must be in the cache (`make data`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMOS = {"mnist": "lecture_mnist", "synthetic": "lecture_synthetic"}


def commands(
    demo: str, scratch: Path, baseline: Path | None = None, epochs: int | None = None
) -> dict[str, tuple[list[str], dict[str, str]]]:
    """name -> (argv, extra environment) of each command compared for `demo`; with `baseline`
    (a checkout of an earlier commit) also that commit's sweeplab, into a store of its own;
    `epochs` instead of the demo's own."""
    train = [sys.executable, "-m", "sweeplab.train", f"experiment={DEMOS[demo]}"]
    quiet = ["trainer.progress=false"] + ([f"trainer.epochs={epochs}"] if epochs else [])
    lecture_epochs = ["--epochs", str(epochs)] if epochs else []
    before = {}
    if baseline is not None:
        old_name = DEMOS[demo]
        if not (baseline / "conf" / "experiment" / f"{old_name}.yaml").exists():
            old_name = old_name.replace("lecture_", "seed_")  # its name before the layout
        before["sweeplab before, store there"] = (
            [sys.executable, "-m", "sweeplab.train", f"experiment={old_name}", *quiet],
            {
                "SWEEPLAB_OUTPUT": str(scratch / "store-before"),
                "PYTHONPATH": str(baseline / "src"),
                "TORCH_EXTENSIONS_DIR": str(scratch / "extensions-before"),
            },
        )
    return before | {
        "lecture recipe (script)": (
            [
                sys.executable,
                str(ROOT / "benchmarks" / "lecture_demo.py"),
                demo,
                "--out",
                str(scratch / "lecture"),
                *lecture_epochs,
            ],
            {},
        ),
        "sweeplab, store there": (train + quiet, {"SWEEPLAB_OUTPUT": str(scratch / "store")}),
        "sweeplab, new store": (train + quiet, {"SWEEPLAB_OUTPUT": "{new}"}),
        "sweeplab, no plots/model": (
            train + quiet + ["tracking.log_plots=false", "tracking.log_model=false"],
            {"SWEEPLAB_OUTPUT": str(scratch / "store")},
        ),
    }


def timed(argv: list[str], env: dict[str, str], scratch: Path) -> float:
    env = dict(env)
    if env.get("SWEEPLAB_OUTPUT") == "{new}":
        env["SWEEPLAB_OUTPUT"] = tempfile.mkdtemp(dir=scratch, prefix="new-store-")
    started = time.perf_counter()
    done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return wall


def phases(demo: str, scratch: Path, epochs: int | None) -> list[tuple[str, float]]:
    """(phase, seconds since the command started) of one sweeplab run, both of its processes."""
    log = scratch / f"phases-{demo}.txt"
    log.unlink(missing_ok=True)
    argv, env = commands(demo, scratch, epochs=epochs)["sweeplab, store there"]
    started = time.time()
    timed(argv, {**env, "SWEEPLAB_PHASES": str(log)}, scratch)
    marks = []
    for line in log.read_text().splitlines() if log.exists() else []:
        when, name = line.split(" ", 1)
        marks.append((name, float(when) - started))
    return sorted(marks, key=lambda mark: mark[1])


def epoch_skew(store: Path) -> str:
    """How far the slowest epoch of the store's latest run is above its median `time/epoch_s`."""
    with sqlite3.connect(store / "mlflow.db") as db:
        rows = db.execute(
            "SELECT step, value FROM metrics WHERE key = 'time/epoch_s' AND run_uuid = "
            "(SELECT run_uuid FROM runs ORDER BY start_time DESC LIMIT 1) ORDER BY step"
        ).fetchall()
    steady = statistics.median(value for _, value in rows)
    step, slowest = max(rows, key=lambda row: row[1])
    first = ", ".join(f"{value:.4f}" for _, value in rows[:5])
    return (
        f"`time/epoch_s` of that run: median {steady:.4f} s over {len(rows)} epochs; the slowest, "
        f"epoch {step}, {slowest:.4f} s ({100 * (slowest / steady - 1):+.0f} %); "
        f"the first five: {first}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demos", nargs="+", default=list(DEMOS), choices=list(DEMOS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write whole_command.md here")
    parser.add_argument(
        "--baseline", type=Path, default=None, help="a checkout of an earlier commit to compare"
    )
    parser.add_argument("--epochs", type=int, default=None, help="instead of the demos' own")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="sweeplab-whole-"))
    lines = [f"# Whole commands ({args.rounds} rounds in turns, medians), {time.ctime()}", ""]
    for demo in args.demos:
        cases = commands(demo, scratch, args.baseline, args.epochs)
        for warm_up in ("sweeplab before, store there", "sweeplab, store there"):
            if warm_up in cases:  # creates the store; builds the C++ loop
                timed(*cases[warm_up], scratch)
        walls: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, (command, env) in cases.items():
                walls[name].append(timed(command, env, scratch))
        lecture = statistics.median(walls["lecture recipe (script)"])
        lines += [
            f"## {demo}",
            "",
            "| command | median s | runs (s) | lecture / this |",
            "|---|---:|---|---:|",
        ]
        for name, values in walls.items():
            median = statistics.median(values)
            runs = ", ".join(f"{v:.2f}" for v in values)
            lines.append(f"| {name} | {median:.2f} | {runs} | {lecture / median:.2f}x |")
        marks = phases(demo, scratch, args.epochs)
        lines += [
            "",
            f"Phases of one `sweeplab.train experiment={DEMOS[demo]}` run (seconds since the command started):",
            "",
        ]
        lines += ["| phase | at s |", "|---|---:|"] + [
            f"| {name} | {at:.2f} |" for name, at in marks
        ]
        lines += ["", epoch_skew(scratch / "store")]
        lines.append("")
    shutil.rmtree(scratch, ignore_errors=True)
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "whole_command.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
