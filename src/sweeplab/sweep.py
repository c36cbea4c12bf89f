"""Optuna sweeps over the Hydra config: pruning, asynchronous workers, true resume, MLflow nesting.

    python -m sweeplab.sweep sweep=synthetic                      # conf/sweep/synthetic.yaml
    python -m sweeplab.sweep sweep=synthetic sweep.workers=2      # 2 processes, one study
    python -m sweeplab.sweep sweep=mnist trainer.epochs=10        # overrides apply to every trial
    python -m sweeplab.sweep sweep=synthetic sweep.n_trials=60    # rerun: continues to 60 trials

Each trial composes the same config as `python -m sweeplab.train` with the sweep file's overrides,
the command line's and the trial's sampled values, and trains it through the same
`train_and_track`: a trial is a run with a parent (the study's MLflow run) and a pruning callback.

Budget: `n_trials` counts COMPLETE, PRUNED and running trials of the study across invocations and
workers. Each worker claims a trial under a lock (a file lock beside a journal or SQLite storage, an
advisory lock on PostgreSQL), so N workers finish exactly `n_trials`. A trial left RUNNING by a dead
process is failed and retried once: RDB storages detect it by Optuna's heartbeat, journal files by
the worker's host and pid recorded on the trial. Failed trials do not use the budget;
`max_failure_rate` stops a sweep in which too many fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sweeplab.config import (
    CONF_DIR,
    Config,
    ConfigError,
    SweepConfig,
    TrackingConfig,
    output_dir,
    run_cli,
    to_config,
    to_yaml,
)
from sweeplab.search_space import (
    SearchSpace,
    describe,
    extremes,
    make_pruner,
    make_sampler,
    parse_space,
    to_overrides,
)
from sweeplab.study import (
    TOO_MANY_FAILED,
    BudgetLock,
    Worker,
    best_or_none,
    check_resumable,
    open_study,
    redact,
)

if TYPE_CHECKING:
    import optuna

EPOCH_METRICS = ("val/acc", "val/loss", "train/acc", "train/loss")
WORKER_ENV = "SWEEPLAB_SWEEP_WORKER"  # set in the processes a sweep starts for its extra workers
DEADLINE_ENV = "SWEEPLAB_SWEEP_DEADLINE"  # the main process's sweep.timeout, as a Unix time


@dataclass
class SweepPlan:
    """Everything a sweep needs, checked before any trial starts."""

    study_name: str
    settings: SweepConfig
    objective: str
    space: SearchSpace
    overrides: list[str]  # the command line's overrides, sweep=<name> included
    storage: str  # an RDB URL, or the path of a journal file
    tracking: TrackingConfig
    config_name: str = "config"

    @property
    def workers(self) -> int:
        return self.settings.n_jobs or self.settings.workers

    @property
    def identity(self) -> dict[str, Any]:
        """What makes trials of one study comparable; a resumed study must match it."""
        return {
            "objective": self.objective,
            "direction": self.settings.direction,
            "params": self.space.expressions,
            "overrides": sorted(o for o in self.overrides if not o.startswith("sweep")),
        }


# --- planning: everything checked before any trial ------------------------------------------------


def plan_sweep(composed: DictConfig, overrides: list[str], sweep_name: str | None) -> SweepPlan:
    """Check the sweep config, its search space and sample trial configs; raise ConfigError."""
    cfg = to_config(composed)
    settings = cfg.sweep
    if settings is None:
        available = ", ".join(sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml")))
        raise ConfigError(f"sweep=None: choose a sweep with sweep=<name> (shipped: {available})")
    if settings.direction not in ("maximize", "minimize"):
        raise ConfigError(f"sweep.direction={settings.direction!r}: must be maximize or minimize")
    objective = settings.objective or cfg.optimized_metric or "val/acc"
    if objective not in EPOCH_METRICS:
        raise ConfigError(
            f"sweep.objective={objective!r}: must be a per-epoch metric: {', '.join(EPOCH_METRICS)}"
            " (sweeps select on validation; test metrics are reported, never optimised)"
        )
    if objective.endswith("/loss") and settings.direction == "maximize":
        raise ConfigError(f"sweep.direction='maximize': {objective} is a loss, minimize it")
    if objective.endswith("/acc") and cfg.data.name == "regression":
        raise ConfigError(f"sweep.objective={objective!r}: the regression task has no accuracy")
    for key, low in (("n_trials", 1), ("workers", 1)):
        if getattr(settings, key) < low:
            raise ConfigError(f"sweep.{key}={getattr(settings, key)}: must be >= {low}")
    if settings.n_jobs is not None and settings.n_jobs < 1:
        raise ConfigError(f"sweep.n_jobs={settings.n_jobs}: must be >= 1")
    if not 0 <= settings.max_failure_rate <= 1:
        raise ConfigError(f"sweep.max_failure_rate={settings.max_failure_rate}: must be in [0, 1]")
    if settings.timeout is not None and settings.timeout <= 0:
        raise ConfigError(f"sweep.timeout={settings.timeout}: must be > 0 seconds (or null)")

    space = parse_space(settings.params)
    # a key fixed on the command line wins over the search space (as in hydra-optuna-sweeper)
    fixed_by_user = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    for key in fixed_by_user & space.distributions.keys():
        print(f"note: {key} is fixed on the command line, so it is not searched", file=sys.stderr)
        del space.distributions[key]
    if not space.distributions:
        raise ConfigError("sweep.params: nothing to search (every parameter is fixed)")
    make_sampler(settings.sampler, space)
    make_pruner(settings.pruner)

    study_name = settings.study_name or sweep_name or "sweep"
    plan = SweepPlan(
        study_name=study_name,
        settings=settings,
        objective=objective,
        space=space,
        overrides=list(overrides),
        storage=settings.storage or str(output_dir() / "optuna" / f"{study_name}.journal"),
        tracking=cfg.tracking,
    )
    if os.environ.get(WORKER_ENV):
        return plan  # the process that started this worker has checked the space
    for values in extremes(space):
        try:
            compose_trial(plan, values)
        except ConfigError as err:
            raise ConfigError(f"{err} (from sweep.params: {values})") from None
    return plan


def compose_trial(plan: SweepPlan, values: dict[str, Any]) -> Config:
    """The typed config of one trial: the command line, the fixed params, the sampled values."""
    from hydra import compose
    from hydra.errors import HydraException

    overrides = [*plan.overrides, *to_overrides(plan.space.fixed), *to_overrides(values)]
    try:
        composed = compose(config_name=plan.config_name, overrides=overrides)
    except HydraException as err:
        raise ConfigError(f"sweep.params: {str(err).splitlines()[0]}") from None
    cfg = to_config(composed)
    return replace(cfg, sweep=None, optimized_metric=None)


# --- storage, locks, worker identity --------------------------------------------------------------


def _mlflow(plan: SweepPlan) -> tuple[Any, str]:
    from sweeplab.tracking import client_for

    return client_for(plan.tracking)


def find_or_create_parent(plan: SweepPlan, study: optuna.Study) -> str:
    """The study's MLflow run: created on the first start, reused (set RUNNING) on resume."""
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException

    client, experiment_id = _mlflow(plan)
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if run_id:
        try:
            client.update_run(run_id, status="RUNNING")
            return run_id
        except MlflowException:
            print(
                f"note: the study's MLflow run {run_id} is gone; starting a new one",
                file=sys.stderr,
            )
    created = client.create_run(
        experiment_id,
        run_name=f"sweep-{plan.study_name}",
        tags={"sweeplab.role": "study", "optuna.study": plan.study_name},
    )
    run_id = created.info.run_id
    params = {f"sweep.{k}": v for k, v in to_flat_dict_sweep(plan.settings).items()}
    params |= {f"space.{k}": v for k, v in plan.space.expressions.items()}
    params |= {
        "objective": plan.objective,
        "storage": redact(plan.storage),
        "overrides": " ".join(plan.overrides),
    }
    batch = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(batch), 100):
        client.log_batch(run_id, params=batch[i : i + 100])
    study.set_user_attr("mlflow_parent_run_id", run_id)
    return run_id


def count_invocation(plan: SweepPlan, parent_run_id: str) -> None:
    """Tag the study's run with how many times the sweep was started (resumes included)."""
    client, _ = _mlflow(plan)
    before = client.get_run(parent_run_id).data.tags.get("sweeplab.invocations", "0")
    client.set_tag(parent_run_id, "sweeplab.invocations", str(int(before) + 1))


def to_flat_dict_sweep(settings: SweepConfig) -> dict[str, Any]:
    flat = {}
    for key, value in OmegaConf.to_container(OmegaConf.structured(settings)).items():
        if key == "params":
            continue
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def close_orphan_runs(plan: SweepPlan, study: optuna.Study) -> None:
    """MLflow runs of trials that died with their process: RUNNING -> KILLED."""
    from optuna.trial import TrialState

    client, _ = _mlflow(plan)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id and client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "failure_reason", "its worker died (trial failed on resume)")
            client.set_tag(run_id, "optuna.trial_state", "FAIL")
            client.set_terminated(run_id, "KILLED")


# --- the trials ------------------------------------------------------------------------------------


@dataclass
class SweepSummary:
    study_name: str
    stop_reason: str
    counts: dict[str, int]
    best_value: float | None = None
    best_params: dict[str, Any] | None = None
    best_run_id: str | None = None
    best_test: dict[str, float] | None = None
    best_config_path: Path | None = None
    parent_run_id: str | None = None
    wall_s: float = 0.0


def run_sweep(plan: SweepPlan, argv: list[str] | None = None) -> SweepSummary:
    """Run the study to its budget with `plan.workers` processes; report into the parent run.

    `argv` (the command line) is what extra worker processes are started with; without it the
    sweep runs in this process alone.
    """
    started = time.time()
    worker_index = int(os.environ.get(WORKER_ENV, "0"))
    _mlflow(plan)  # create the MLflow store once, before any worker starts
    study = open_study(plan, seed_offset=worker_index)
    bootstrap = BudgetLock(plan.storage, plan.study_name)
    with bootstrap:
        check_resumable(plan, study)
        parent_run_id = find_or_create_parent(plan, study)
    label = f"[w{worker_index}] " if worker_index else ""
    worker = Worker(plan, study, parent_run_id, label, compose_trial)
    if worker_index:  # a worker started by the main process: trials only
        worker.on_trial_done.append(lambda line: print(line, flush=True))
        deadline = os.environ.get(DEADLINE_ENV)
        reason = worker.work(float(deadline) if deadline else None)
        print(f"[w{worker_index}] stopped: {reason}", flush=True)
        return SweepSummary(plan.study_name, reason, {}, parent_run_id=parent_run_id)

    with bootstrap:
        worker.reconcile()
        close_orphan_runs(plan, study)
        count_invocation(plan, parent_run_id)
    deadline = started + plan.settings.timeout if plan.settings.timeout else None
    procs = _start_workers(plan, argv, deadline) if argv is not None else []
    bar = _progress(plan, study)
    worker.on_trial_done.append(lambda line: _echo(bar, line, study))
    client, _ = _mlflow(plan)
    try:
        reason = worker.work(deadline)
        for proc in procs:
            proc.wait()
    except KeyboardInterrupt:
        _stop_workers(procs)
        client.set_tag(parent_run_id, "failure_reason", "interrupted; rerun the command to resume")
        client.set_terminated(parent_run_id, "KILLED")
        raise
    finally:
        if bar is not None:
            bar.close()
    try:
        close_orphan_runs(plan, study)
        summary = report(plan, study, parent_run_id, reason)
    except BaseException as err:
        client.set_tag(
            parent_run_id, "failure_reason", f"report failed: {type(err).__name__}: {err}"
        )
        client.set_terminated(parent_run_id, "FAILED")
        raise
    summary.wall_s = time.time() - started
    client.set_terminated(parent_run_id, "FINISHED")
    return summary


def _used_budget(study: optuna.Study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _progress(plan: SweepPlan, study: optuna.Study) -> Any:
    """A bar for the whole study (all workers' trials) on a terminal; None otherwise."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=plan.settings.n_trials, initial=_used_budget(study), desc=plan.study_name)


def _echo(bar: Any, line: str, study: optuna.Study) -> None:
    if bar is None:
        print(line, flush=True)
        return
    bar.write(line)
    bar.n = _used_budget(study)
    bar.refresh()


def _start_workers(
    plan: SweepPlan, argv: list[str], deadline: float | None
) -> list[subprocess.Popen]:
    procs = []
    for index in range(1, plan.workers):
        env = {**os.environ, WORKER_ENV: str(index)}
        if deadline is not None:  # every worker stops starting trials at the same moment
            env[DEADLINE_ENV] = repr(deadline)
        procs.append(subprocess.Popen([sys.executable, "-m", "sweeplab.sweep", *argv], env=env))
    return procs


def _stop_workers(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def report(plan: SweepPlan, study: optuna.Study, parent_run_id: str, reason: str) -> SweepSummary:
    """Trials CSV, Optuna's plots and the best trial's config, into the parent run and outputs/."""
    from optuna.trial import TrialState

    client, _ = _mlflow(plan)
    trials = study.get_trials(deepcopy=False)
    counts = {
        s.name: sum(t.state == s for t in trials)
        for s in TrialState
        if any(t.state == s for t in trials)
    }
    summary = SweepSummary(plan.study_name, reason, counts, parent_run_id=parent_run_id)
    folder = output_dir() / "sweeps" / plan.study_name
    folder.mkdir(parents=True, exist_ok=True)
    study.trials_dataframe().to_csv(folder / "trials.csv", index=False)
    client.log_artifact(parent_run_id, str(folder / "trials.csv"))
    from sweeplab.plots import save_study_plots

    for path in save_study_plots(study, folder):
        client.log_artifact(parent_run_id, str(path), "optuna")
    best = best_or_none(study)
    if best is not None:
        try:
            cfg = compose_trial(plan, best.params)
        except ConfigError as err:  # e.g. conf/ changed under a long sweep
            print(f"warning: the best trial's config no longer composes: {err}", file=sys.stderr)
        else:
            path = folder / "best.yaml"
            path.write_text(best_config_yaml(plan, best, cfg, folder))
            client.log_artifact(parent_run_id, str(path))
            summary.best_config_path = path
        summary.best_value = best.value
        summary.best_params = dict(best.params)
        summary.best_run_id = best.user_attrs.get("mlflow_run_id")
        summary.best_test = {k: v for k, v in best.user_attrs.items() if k.startswith("test/")}
        for key, value in {
            "best_trial": str(best.number),
            "best_value": f"{best.value:.6g}",
            "best_run_id": str(summary.best_run_id),
        }.items():
            client.set_tag(parent_run_id, key, value)
    for state, count in counts.items():
        client.log_metric(parent_run_id, f"trials/{state.lower()}", count)
    return summary


def best_config_yaml(plan: SweepPlan, best: Any, cfg: Config, folder: Path) -> str:
    header = (
        f"# Best trial {best.number} of study '{plan.study_name}': {plan.objective}={best.value:.6g}\n"
        f"# params: {' '.join(to_overrides(best.params))}\n"
        f"# rerun:  python -m sweeplab.train --config-path {folder} --config-name best\n"
    )
    hydra_section = (
        "hydra:\n  run:\n    dir: ${sweeplab_output:}/hydra/${now:%Y-%m-%d}/${now:%H-%M-%S}\n"
    )
    return header + to_yaml(cfg) + hydra_section


def print_summary(summary: SweepSummary, plan: SweepPlan) -> None:
    counts = ", ".join(f"{n} {s.lower()}" for s, n in summary.counts.items())
    print(
        f"\nstudy '{summary.study_name}' stopped: {summary.stop_reason} ({counts}) in {summary.wall_s:.1f}s"
    )
    if summary.best_value is None:
        print("no trial completed")
        return
    print(f"best {plan.objective} = {summary.best_value:.4f}  {describe(summary.best_params)}")
    test = summary.best_test or {}
    if test:
        print(
            "its test metrics: "
            + ", ".join(f"{k}={v:.4f}" for k, v in test.items() if v is not None)
        )
    print(f"best trial's MLflow run: {summary.best_run_id} (parent run {summary.parent_run_id})")
    if summary.best_config_path is not None:
        folder = summary.best_config_path.parent
        print(f"best config: {summary.best_config_path}")
        print(f"rerun it:    python -m sweeplab.train --config-path {folder} --config-name best")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(composed: DictConfig) -> None:
    from sweeplab.train import freeze_long_lived_objects, raise_keyboard_interrupt_on_signals

    runtime = HydraConfig.get()
    overrides = list(runtime.overrides.task)
    try:
        plan = plan_sweep(composed, overrides, runtime.runtime.choices.get("sweep"))
        plan.config_name = runtime.job.config_name
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    raise_keyboard_interrupt_on_signals()
    freeze_long_lived_objects()
    try:
        summary = run_sweep(plan, argv=sys.argv[1:])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(
            "\ninterrupted: finished trials are kept; rerun the same command to resume",
            file=sys.stderr,
        )
        sys.exit(130)
    if not os.environ.get(WORKER_ENV):
        print_summary(summary, plan)
    if summary.stop_reason.startswith(TOO_MANY_FAILED):
        sys.exit(1)


def main() -> None:
    run_cli(_hydra_main)


if __name__ == "__main__":
    main()
