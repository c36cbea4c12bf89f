"""A worker of a study: claims trials and trains each as an MLflow child run.

A worker repeats: take the study's lock, fail trials whose process died (and queue them once
more), count the budget, start a trial (or the trials of a stack, `stacking`), release the lock
as soon as the trials exist. So any number of workers, started by `sweeplab.sweep` or by hand
on other machines, finish exactly `n_trials` trials between them. A trial alone is
`training.tracking.train_and_track` with the sweep's parent run and a pruning callback.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from sweeplab.config import Config, store_uri
from sweeplab.phases import mark_phase
from sweeplab.sweep import stacking
from sweeplab.sweep.plan import SweepPlan, compose_trial, compose_trials
from sweeplab.sweep.space import describe, extremes, suggest, to_overrides
from sweeplab.sweep.storage import (
    BudgetLock,
    best_or_none,
    is_dead,
    is_rdb,
    mark_owner,
    quiet_experimental,
    worker_id,
)
from sweeplab.training.mlflow_helper import shared_helper
from sweeplab.training.tracking import train_and_track
from sweeplab.training.trainer import Callback, TrainResult, auto_threads

MIN_FINISHED_FOR_FAILURE_RATE = 5
TOO_MANY_FAILED = "too many failed trials"


class PruningCallback(Callback):
    """Reports the objective to Optuna after every epoch and stops a trial it prunes."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        value = metrics[self.metric]
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} with {self.metric}={value:.4g}")


class Worker:
    """Claims trials of one study until its budget, time or failure limit is reached."""

    def __init__(
        self,
        plan: SweepPlan,
        study: optuna.Study,
        parent_run_id: str,
        label: str,
    ) -> None:
        self.plan = plan
        self.study = study
        self.parent_run_id = parent_run_id
        self.label = label
        self.lock = BudgetLock(plan.storage, plan.study_name)
        self.threads = max(1, len(os.sched_getaffinity(0)) // plan.workers)
        self.on_trial_done: list[Callable[[str], None]] = []  # each gets the line of a trial
        self.training = threading.Event()  # set once a trial is about to train
        # the MLflow helper writes the sweep's per-trial tags and its parent's best value
        self.helper = shared_helper(plan.tracking.background_metrics)
        self.parent_key = f"study-{plan.study_name}"
        uri = store_uri(plan.tracking)
        self.helper.send(("adopt", self.parent_key, uri, parent_run_id, False))
        example = plan.example or compose_trials(plan, [extremes(plan.space)[0]])[0]
        self.stack_size = stacking.stack_size(plan, example)

    def run_key(self, number: int) -> str:
        """How the MLflow helper knows trial `number`'s run."""
        return f"{self.plan.study_name}-trial-{number}-{worker_id()}"

    def count(self) -> dict[TrialState, int]:
        count = {state: 0 for state in TrialState}
        for trial in self.study.get_trials(deepcopy=False):
            count[trial.state] += 1
        return count

    def room(self) -> int:
        """Trials the budget still has room for (finished and running ones count)."""
        count = self.count()
        used = count[TrialState.COMPLETE] + count[TrialState.PRUNED] + count[TrialState.RUNNING]
        return self.plan.settings.n_trials - used

    def stop_reason(self, deadline: float | None) -> str | None:
        """Why no further trial may start (budget, failures, timeout), or None."""
        count = self.count()
        used = count[TrialState.COMPLETE] + count[TrialState.PRUNED]
        running = count[TrialState.RUNNING]
        failed = count[TrialState.FAIL]
        finished = used + failed
        # WAITING trials (retries of dead ones) are not claimed yet: the next ask() takes them
        if used + running >= self.plan.settings.n_trials:
            return (
                "budget reached" if running == 0 else "the rest of the budget is running elsewhere"
            )
        if (
            failed
            and finished >= MIN_FINISHED_FOR_FAILURE_RATE
            and failed / finished > self.plan.settings.max_failure_rate
        ) or failed > self.plan.settings.n_trials:
            return (
                f"{TOO_MANY_FAILED}: {failed} of {finished} finished "
                f"(sweep.max_failure_rate={self.plan.settings.max_failure_rate})"
            )
        if deadline is not None and time.time() >= deadline:
            return f"sweep.timeout={self.plan.settings.timeout}s reached"
        return None

    def reconcile(self) -> None:
        """Fail (and retry once) trials whose process died; Optuna's heartbeat does it for RDBs."""
        if is_rdb(self.plan.storage):
            with quiet_experimental():
                optuna.storages.fail_stale_trials(self.study)
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not is_dead(trial.user_attrs.get("worker"), trial.datetime_start):
                continue
            self.study.tell(trial.number, state=TrialState.FAIL)
            print(
                f"trial {trial.number} was left RUNNING by a dead worker: failed", file=sys.stderr
            )
            if "retry_of" not in trial.user_attrs and trial.params:
                self.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
                print(f"  retrying its parameters as a new trial: {trial.params}", file=sys.stderr)

    def objective(self, trial: optuna.Trial) -> float:
        """Train one trial's config; its objective's last value."""
        self.lock.release()  # the trial exists now: other workers count it
        mark_owner(trial)
        values = suggest(trial, self.plan.space)
        cfg = compose_trial(self.plan, values)
        if cfg.trainer.num_threads == 0:
            cfg.trainer.num_threads = auto_threads(cfg, available=self.threads)
        if cfg.tracking.run_name is None:
            cfg.tracking.run_name = f"{self.plan.study_name}-trial-{trial.number}"
        try:
            result, _ = self._train(trial, cfg, values)
        except KeyboardInterrupt:  # Optuna fails the trial: its run says so, as after_trial would
            self._tag_state(trial.number, TrialState.FAIL)
            raise
        value = result.metrics[self.plan.objective]
        if not math.isfinite(value):
            raise FloatingPointError(f"{self.plan.objective}={value}")
        trial.set_user_attr("test/acc", result.metrics.get("test/acc"))
        trial.set_user_attr("test/loss", result.metrics.get("test/loss"))
        return value

    def _train(
        self, trial: optuna.Trial, cfg: Config, values: dict[str, Any]
    ) -> tuple[TrainResult, str]:
        """Train and track one trial's config, reporting to Optuna for its pruner."""
        return train_and_track(
            cfg,
            callbacks=(PruningCallback(trial, self.plan.objective),),
            parent_run_id=self.parent_run_id,
            tags={
                "sweeplab.role": "trial",
                "optuna.study": self.plan.study_name,
                "optuna.trial": str(trial.number),
                "optuna.params": " ".join(to_overrides(values))[:5000],
            },
            finished_on=(optuna.TrialPruned,),
            on_run_start=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id),
            key=self.run_key(trial.number),
        )

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Tag the trial's MLflow run with its state, log the parent's best-so-far, print a line
        (the MLflow writes go through the helper)."""
        self._tag_state(trial.number, trial.state)
        best = best_or_none(study)
        if trial.state == TrialState.COMPLETE and best is not None:
            now = int(time.time() * 1000)
            rows = [
                ("best_value", best.value, now, trial.number),
                ("trial_value", trial.value, now, trial.number),
            ]
            self.helper.send(("metrics", self.parent_key, rows))
        shown = f"{self.plan.objective}={trial.value:.4f}" if trial.value is not None else ""
        std = trial.user_attrs.get(f"{self.plan.objective}_std")  # with sweep.repeats
        shown += f"+-{std:.4f}" if shown and std is not None else ""
        params = describe(trial.params)
        best_text = f"best={best.value:.4f} (trial {best.number})" if best else "best=-"
        line = f"{self.label}trial {trial.number:>3} {trial.state.name:<8} {shown:<16} {best_text}  {params}"
        for hook in self.on_trial_done:
            hook(line)

    def _tag_state(self, number: int, state: TrialState) -> None:
        key = self.run_key(number)
        if key in self.helper.uris:  # its run was started (a trial can fail before)
            self.helper.send(("tags", key, {"optuna.trial_state": state.name}))

    def work(self, deadline: float | None) -> str:
        """Run trials until a stop condition; return why it stopped."""
        while True:
            self.lock.acquire()
            try:
                self.reconcile()
                reason = self.stop_reason(deadline)
                if reason:  # what the helper still writes, the caller waits for (sync)
                    return reason
                if self.stack_size == 1 and self.plan.settings.repeats == 1:
                    self.training.set()
                    with quiet_experimental():
                        self.study.optimize(
                            self.objective,
                            n_trials=1,
                            catch=(Exception,),
                            callbacks=[self.after_trial],
                        )
                    continue
                claimed = stacking.claim(self.study, self.plan, min(self.stack_size, self.room()))
                mark_phase(f"sweep: {len(claimed)} trials claimed")
                self.lock.release()  # the trials exist now: other workers count them
                self.training.set()
                stacking.train_claimed(claimed, self.stacking_context())
            finally:
                self.lock.release()

    def stacking_context(self) -> stacking.Context:
        return stacking.Context(
            self.plan,
            self.study,
            self.parent_run_id,
            self.threads,
            self.run_key,
            self.after_trial,
            announce=lambda line: [hook(f"{self.label}{line}") for hook in self.on_trial_done],
        )
