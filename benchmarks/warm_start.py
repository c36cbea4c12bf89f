"""What warm start saves: the trials a sweep needs to reach a target, cold and warm-started.

    python benchmarks/warm_start.py [--earlier 20] [--budget 40] [--target 0.99] [--seeds 0 1 2]
                                    [--out DIR]

First an earlier study: the synthetic sweep on data and weights of another seed (`seed=1`),
`--earlier` trials. Then, for each sampler seed, the same sweep on `seed=0` with `sweep.target`
and a budget of `--budget` trials, once cold and once with `sweep.warm_start=<earlier study>`
(they take turns). Every sweep runs as a user runs it (`python -m sweeplab.sweep ...`), one trial
at a time (`sweep.stack=1`), so that it stops right after the trial that reached the target.
Reported per seed: the sweep's own trials until the target (the budget, marked, if never), its
best value and its wall time.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import optuna
from sweep_command import timed_sweep

from sweeplab.sweep.storage import WARM_FROM

EARLIER = "warm-earlier"


def sweep(out: Path, study_name: str, *extra: str) -> tuple[optuna.Study, float]:
    """The synthetic sweep, a trial at a time, into `out`: its study and wall time."""
    args = ["sweep=synthetic", "sweep.workers=1", "sweep.stack=1", "sweep.timeout=null"]
    return timed_sweep(out, study_name, [*args, "sweep.best_pictures=false", *extra])


def needed(study: optuna.Study, target: float) -> tuple[int | None, float]:
    """The sweep's own trials up to the first that reached `target` (None: none did), and the
    best value of its own trials."""
    own = [t for t in study.trials if WARM_FROM not in t.user_attrs and t.state.is_finished()]
    reached = [i for i, t in enumerate(own, 1) if t.value is not None and t.value >= target]
    best = max((t.value for t in own if t.value is not None), default=float("nan"))
    return (reached[0] if reached else None), best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--earlier", type=int, default=20, help="trials of the earlier study")
    parser.add_argument("--budget", type=int, default=40, help="trials a sweep may take")
    parser.add_argument("--target", type=float, default=0.99, help="val/acc to reach")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler seeds")
    parser.add_argument("--epochs", type=int, default=None, help="instead of the sweep's own")
    parser.add_argument("--out", type=Path, default=None, help="also write warm_start.md here")
    args = parser.parse_args()
    epochs = [f"trainer.epochs={args.epochs}"] if args.epochs else []
    scratch = Path(tempfile.mkdtemp(prefix="sweeplab-warm-start-"))
    earlier, earlier_s = sweep(
        scratch, EARLIER, "seed=1", f"sweep.n_trials={args.earlier}", *epochs
    )
    rows = []
    for seed in args.seeds:
        for kind, extra in (("cold", []), ("warm", [f"sweep.warm_start={EARLIER}"])):
            study, wall = sweep(
                scratch,
                f"warm-{kind}-{seed}",
                "seed=0",
                f"sweep.n_trials={args.budget}",
                f"sweep.target={args.target}",
                f"sweep.sampler.seed={seed}",
                *extra,
                *epochs,
            )
            trials, best = needed(study, args.target)
            copied = sum(WARM_FROM in t.user_attrs for t in study.trials)
            rows.append((seed, kind, trials, best, wall, copied))
    summary = f"{len(earlier.trials)} trials on `seed=1`, best {earlier.best_value:.4f}, {earlier_s:.1f} s"
    shutil.rmtree(scratch, ignore_errors=True)
    report(args, summary, rows)


def report(args: argparse.Namespace, earlier: str, rows: list) -> None:
    budget = f">{args.budget}"
    lines = [
        f"# Warm start: trials to reach val/acc >= {args.target} ({time.ctime()})",
        "",
        f"Earlier study: {earlier}. Sweeps on `seed=0`, budget {args.budget} trials, one at a time.",
        "",
        "| sampler seed | start | trials copied in | own trials to the target | best own val/acc | wall s |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for seed, kind, trials, best, wall, copied in rows:
        shown = budget if trials is None else str(trials)
        lines.append(f"| {seed} | {kind} | {copied} | {shown} | {best:.4f} | {wall:.1f} |")
    for kind in ("cold", "warm"):
        counts = [args.budget + 1 if r[2] is None else r[2] for r in rows if r[1] == kind]
        walls = [r[4] for r in rows if r[1] == kind]
        lines.append(
            f"\n{kind}: median {statistics.median(counts)} trials to the target "
            f"(a sweep that never reached it counted as {args.budget + 1}), "
            f"median wall {statistics.median(walls):.1f} s."
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "warm_start.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
