"""What pruning does to a sweep of several objectives: the synthetic accuracy-against-size sweep
(`sweep=synthetic_pareto`) with no pruner, with the median pruner alone, and with the median
pruner and sweeplab's guard of the Pareto front (what `make sweep SWEEP=synthetic_pareto` runs).

    python benchmarks/pareto_pruning.py [--seeds 3] [--trials 60] [--epochs 100] [--out DIR]

Each sweep runs as a user runs it, in a fresh process and output folder; "pruner alone" is the
same command with the guard switched off in that process (`FrontGuard.spares` answering False:
for this comparison only). The arms take turns for each sampler seed. For each it reports the
epochs trained (one intermediate value per epoch, read back from the study), the trials pruned,
the wall time, and the front's hypervolume: the area of (val/acc, model/n_params) the front
dominates, up to val/acc 0.5 and the space's largest network (higher is better).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import optuna
from optuna._hypervolume import compute_hypervolume
from sweep_command import timed_sweep

# the largest network of the space (d_H = 32: 4 d_H + 1 weights and biases), and chance accuracy
REFERENCE = np.array([-0.5, 4 * 32 + 1 + 1])
GUARD_OFF = (
    "import runpy, sweeplab.sweep.front as front; front.FrontGuard.spares = lambda *a: False; "
    "runpy.run_module('sweeplab.sweep', run_name='__main__')"
)
ARMS = {  # label: (extra overrides, python arguments before the overrides)
    "no pruner": (["sweep.pruner.name=none"], ["-m", "sweeplab.sweep"]),
    "median pruner alone": ([], ["-c", GUARD_OFF]),
    "median pruner + front guard (shipped)": ([], ["-m", "sweeplab.sweep"]),
}


def hypervolume(study: optuna.Study) -> float:
    losses = np.array([[-t.values[0], t.values[1]] for t in study.best_trials])
    return float(compute_hypervolume(losses, REFERENCE))


def run(label: str, seed: int, trials: int, epochs: int) -> dict[str, float]:
    overrides, python = ARMS[label]
    out = Path(tempfile.mkdtemp(prefix="sweeplab-pareto-"))
    args = [
        "sweep=synthetic_pareto",
        f"sweep.n_trials={trials}",
        f"sweep.sampler.seed={seed}",
        f"trainer.epochs={epochs}",
        "sweep.best_pictures=false",
        *overrides,
    ]
    study, wall = timed_sweep(out, f"pareto-{seed}", args, python)
    finished = [t for t in study.trials if t.state.is_finished()]
    result = {
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in finished),
        "epochs": sum(len(t.intermediate_values) for t in finished),
        "wall_s": wall,
        "front": len(study.best_trials),
        "hypervolume": hypervolume(study),
    }
    shutil.rmtree(out, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="sampler seeds, 0..N-1")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=100, help="per trial (the sweep's own)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {label: [] for label in ARMS}
    for seed in range(args.seeds):
        for label in ARMS:  # in turns: the machine's speed drifts
            results[label].append(run(label, seed, args.trials, args.epochs))
            print(f"seed {seed}, {label}: {results[label][-1]}", file=sys.stderr, flush=True)
    lines = [
        f"# Pruning a sweep of several objectives: sweep=synthetic_pareto, {args.trials} trials "
        f"of {args.epochs} epochs, sampler seeds 0..{args.seeds - 1}, medians over the seeds",
        "",
        "| arm | pruned | epochs trained | wall (s) | front size | hypervolume |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, runs in results.items():
        median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        lines.append(
            f"| {label} | {median['pruned']:.0f} | {median['epochs']:.0f} | "
            f"{median['wall_s']:.1f} | {median['front']:.0f} | {median['hypervolume']:.2f} |"
        )
    lines += ["", "hypervolume per seed:"]
    for label, runs in results.items():
        lines.append(f"- {label}: " + ", ".join(f"{r['hypervolume']:.2f}" for r in runs))
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "pareto_pruning.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
