"""The benchmark runs end to end at tiny size (its timings are not checked: they are measured by
`make bench`, never asserted)."""

from __future__ import annotations

import csv
import subprocess
import sys

from sweeplab.config import PROJECT_ROOT

from .test_mnist import tiny_arrays, write_idx_set


def run_benchmark(script, *args):
    """`python benchmarks/<script> ARGS` as a subprocess; its result, checked to exit 0."""
    done = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "benchmarks" / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_bench_smoke(tmp_path):
    write_idx_set(tmp_path / "digits", tiny_arrays(n_train=300, n_test=50))
    done = run_benchmark(
        "bench.py", "--tiny", "--idx-root", tmp_path / "digits", "--out", tmp_path / "out"
    )
    assert "| case | method | s/epoch | vs lecture |" in done.stdout
    with (tmp_path / "out" / "bench.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12  # 3 cases x (lecture recipe, sweeplab manual C++/Python loop, autograd)
    assert {r["method"] for r in rows} == {
        "lecture recipe",
        "sweeplab (manual)",
        "sweeplab (manual, Python loop)",
        "sweeplab (autograd)",
    }
    assert all(float(r["epoch_s"]) > 0 and float(r["matmul_limit_epoch_s"]) > 0 for r in rows)
    assert "matmul rate measured" in (tmp_path / "out" / "bench.md").read_text()


def test_trial_overhead_smoke(tmp_path):
    args = ("--trials", 2, "--epochs", 8, "--rounds", 1, "--out", tmp_path)
    run_benchmark("trial_overhead.py", *args)
    report = (tmp_path / "trial_overhead.md").read_text()
    assert "**fixed cost per trial" in report
    # the parts are timed where a trial runs today (a part never called has no row)
    for part in ("Optuna ask", "sampling", "config", "training epoch", "test evaluation"):
        assert f"| {part}" in report, part
    for label in ("every epoch, MLflow helper", "every epoch, written by", "every 4th epoch"):
        assert f"| {label}" in report


def test_pruning_savings_smoke(tmp_path):
    args = ("--sweep", "synthetic", "--trials", 3, "--epochs", 2, "--out", tmp_path)
    run_benchmark("pruning_savings.py", *args)
    report = (tmp_path / "pruning.md").read_text()
    assert "| shipped | 3 |" in report and "| none | 3 | 0 | 6 |" in report


def test_whole_command_smoke(tmp_path):
    args = ("--demos", "synthetic", "--rounds", 1, "--epochs", 20, "--out", tmp_path)
    run_benchmark("whole_command.py", *args)
    report = (tmp_path / "whole_command.md").read_text()
    for label in ("lecture recipe (script)", "sweeplab, store there", "sweeplab, new store"):
        assert f"| {label} |" in report
    # the phases of both processes, and the epoch times of the run they come from
    assert "| epochs trained |" in report and "| helper: MLflow imported |" in report
    assert "`time/epoch_s` of that run: median" in report and "over 20 epochs" in report


def test_stacked_sweeps_smoke(tmp_path):
    args = ("--parts", "budget", "--trials", 4, "--stacks", 1, 4, "--epochs", 20, "--out", tmp_path)
    run_benchmark("stacked_sweeps.py", *args)
    report = (tmp_path / "stacked_sweeps.md").read_text()
    assert "| 1 |" in report and "| 4 |" in report


def test_warm_start_smoke(tmp_path):
    args = ("--earlier", 3, "--budget", 3, "--seeds", 0, "--epochs", 3, "--target", 0.5)
    run_benchmark("warm_start.py", *args, "--out", tmp_path)
    report = (tmp_path / "warm_start.md").read_text()
    assert "| 0 | cold | 0 |" in report and "| 0 | warm | 3 |" in report  # all 3 lie in the space


def test_pareto_pruning_smoke(tmp_path):
    args = ("--seeds", 1, "--trials", 3, "--epochs", 3, "--out", tmp_path)
    run_benchmark("pareto_pruning.py", *args)
    report = (tmp_path / "pareto_pruning.md").read_text()
    assert "| no pruner | 0 | 9 |" in report
    for label in ("median pruner alone", "median pruner + front guard (shipped)"):
        assert f"| {label} |" in report
