"""python -m sweeplab.sweep: an Optuna sweep over the Hydra config.

    python -m sweeplab.sweep sweep=synthetic                      # conf/sweep/synthetic.yaml
    python -m sweeplab.sweep sweep=synthetic sweep.workers=2      # 2 processes, one study
    python -m sweeplab.sweep sweep=mnist trainer.epochs=10        # overrides apply to every trial
    python -m sweeplab.sweep sweep=synthetic sweep.n_trials=60    # rerun: continues to 60 trials

Each trial composes the same config as `python -m sweeplab.train` with the sweep file's overrides,
the command line's and the trial's sampled values. Hydra stays here at the edge: the plan is
checked, then `run.run_sweep` runs it.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sweeplab import runtime
from sweeplab.config import CONF_DIR, ConfigError, store_uri
from sweeplab.phases import mark_phase
from sweeplab.stores import check_reachable, ui_link
from sweeplab.sweep.plan import SweepPlan, plan_sweep
from sweeplab.sweep.results import SweepSummary, runs_view
from sweeplab.sweep.run import run_sweep, worker_index
from sweeplab.sweep.space import describe
from sweeplab.sweep.worker import MACHINE_FAILED, TOO_MANY_FAILED
from sweeplab.training.data import load_dataset
from sweeplab.training.trainer import check_memory, resolve_device


def print_summary(summary: SweepSummary, plan: SweepPlan) -> None:
    counts = ", ".join(f"{n} {s.lower()}" for s, n in summary.counts.items())
    counts = counts or "trial counts unknown: the study's store did not answer"
    trials, stacks = summary.stacked
    if stacks:
        counts += f"; {trials} trials in {stacks} stack{'s' if stacks > 1 else ''}"
    print(
        f"\nstudy '{summary.study_name}' stopped: {summary.stop_reason} ({counts}) in {summary.wall_s:.1f}s"
    )
    uri = store_uri(plan.tracking)
    if summary.parent_run_id is not None:
        link = ui_link(uri, summary.parent_run_id, summary.experiment_id)
        print(f"the sweep in MLflow: {link}  (`make ui` serves a local store)")
        table = ui_link(uri, None, summary.experiment_id, runs_view(plan))
        print(f"its runs table:      {table}")
    if plan.multi:
        print_front(summary, plan)
        return
    if summary.best_value is None:
        print("no trial completed")
        return
    std = summary.best_test.get(f"{plan.objective}_std") if summary.best_test else None
    shown = f"{summary.best_value:.4f}" + (f" +- {std:.4f}" if std is not None else "")
    print(f"best {plan.objective} = {shown}  {describe(summary.best_params)}")
    test = {k: v for k, v in (summary.best_test or {}).items() if k.startswith("test/")}
    if test:
        print(
            "its test metrics: "
            + ", ".join(f"{k}={v:.4f}" for k, v in test.items() if v is not None)
        )
    if summary.best_run_id is not None:
        print(f"best trial's run:    {ui_link(uri, summary.best_run_id, summary.experiment_id)}")
    if summary.best_config_path is not None:
        folder = summary.best_config_path.parent
        print(f"best config: {summary.best_config_path}")
        print(f"rerun it:    python -m sweeplab.train --config-path {folder} --config-name best")


def print_front(summary: SweepSummary, plan: SweepPlan) -> None:
    """The Pareto front as a small table, each point with the command that reruns it."""
    if not summary.front:
        print("no trial completed")
        return
    metrics = [metric for metric, _ in plan.objectives]
    n = len(summary.front)
    print(f"Pareto front ({n} trial{'s' if n > 1 else ''}), {' vs '.join(metrics)}:")
    print("  trial  " + "  ".join(f"{m:>16}" for m in metrics) + "  rerun")
    for point in summary.front:
        values = "  ".join(f"{v:>16.6g}" for v in point.values)
        rerun = "-"
        if point.config_path is not None:
            folder, name = point.config_path.parent, point.config_path.stem
            rerun = f"python -m sweeplab.train --config-path {folder} --config-name {name}"
        print(f"  {point.number:>5}  {values}  {rerun}")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(composed: DictConfig) -> None:
    runtime.config_composed()
    mark_phase("sweep: imported, config composed")
    hydra_config = HydraConfig.get()
    overrides = list(hydra_config.overrides.task)
    try:
        plan = plan_sweep(
            composed,
            overrides,
            hydra_config.runtime.choices.get("sweep"),
            check_trials=not worker_index(),  # the process that started this one checked them
        )
        plan.config_name = hydra_config.job.config_name
        resolve_device(composed.trainer.device)
        for cfg in plan.corners:  # the main process: data and memory checked before any trial
            check_memory(cfg, load_dataset(cfg.data))  # (the data is kept for its trials)
        check_reachable("sweep.storage", plan.storage)
        check_reachable("tracking.uri", store_uri(plan.tracking))
        mark_phase("sweep: planned (trial configs checked)")
    except ConfigError as err:
        runtime.exit_with_error(err)
    runtime.raise_keyboard_interrupt_on_signals()
    runtime.freeze_long_lived_objects()
    try:
        summary = run_sweep(plan, argv=sys.argv[1:])
    except ConfigError as err:
        runtime.exit_with_error(err)
    except Exception as err:  # outside a trial (a trial's stops the sweep with a summary)
        runtime.exit_if_machine_failed(err)
        raise
    except KeyboardInterrupt:
        if not worker_index():  # the main process speaks for its workers
            print(
                "\ninterrupted: finished trials are kept; rerun the same command to resume",
                file=sys.stderr,
            )
        sys.exit(runtime.EXIT_INTERRUPTED)
    if not worker_index():
        print_summary(summary, plan)
    if summary.stop_reason.startswith(MACHINE_FAILED):
        if not worker_index():
            print("fix it and rerun the same command: the trials it stopped are retried")
        sys.exit(runtime.EXIT_MACHINE_FAILED)
    if summary.stop_reason.startswith(TOO_MANY_FAILED):
        sys.exit(runtime.EXIT_WORK_FAILED)


def main() -> None:
    runtime.run_cli(_hydra_main)
