"""What pruning saves: a sweep with its shipped pruner against the same sweep with `pruner=none`.

    python benchmarks/pruning_savings.py [--sweep mnist] [--trials 20] [--epochs 12] [--out DIR]

Both sweeps run as a user would run them (`python -m sweeplab.sweep sweep=<name> ...`), in fresh
output folders, with one worker and no timeout, so that the same sampler seed proposes the same
first trials and both get the same budget of trials. For each it reports the epochs trained in
all (read back from the Optuna study: one intermediate value per epoch), the trials pruned, the
wall time and the best validation value.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import optuna
from sweep_command import timed_sweep


def run(sweep: str, pruner: str | None, trials: int, epochs: int) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(prefix=f"sweeplab-pruning-{pruner or 'shipped'}-"))
    args = [
        f"sweep={sweep}",
        "sweep.workers=1",
        f"sweep.n_trials={trials}",
        "sweep.timeout=null",
        f"trainer.epochs={epochs}",
    ]
    if pruner:
        args.append(f"sweep.pruner.name={pruner}")
    study, wall = timed_sweep(out, f"pruning-{pruner or 'shipped'}", args)
    finished = [t for t in study.trials if t.state.is_finished()]
    result = {
        "trials": len(finished),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in finished),
        "epochs": sum(len(t.intermediate_values) for t in finished),
        "wall_s": wall,
        "best": study.best_value,
    }
    shutil.rmtree(out, ignore_errors=True)  # the study is read: its storage re-reads the file
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default="mnist", help="a conf/sweep/ file")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=12, help="epochs per trial")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    shipped = run(args.sweep, None, args.trials, args.epochs)
    unpruned = run(args.sweep, "none", args.trials, args.epochs)
    lines = [
        f"# Pruning savings: sweep={args.sweep}, {args.trials} trials of up to {args.epochs} "
        "epochs, 1 worker, same sampler seed",
        "",
        "| pruner | trials | pruned | epochs trained | wall (s) | best value |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, r in (("shipped", shipped), ("none", unpruned)):
        lines.append(
            f"| {label} | {r['trials']} | {r['pruned']} | {r['epochs']} | {r['wall_s']:.1f} "
            f"| {r['best']:.4f} |"
        )
    lines += [
        "",
        f"epochs saved: {1 - shipped['epochs'] / unpruned['epochs']:.1%}, "
        f"wall time saved: {1 - shipped['wall_s'] / unpruned['wall_s']:.1%}",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "pruning.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
