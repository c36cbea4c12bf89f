"""A worker of a study: claims trials and trains each as an MLflow child run.

A worker repeats: take the study's lock, fail trials whose process died (and queue them once
more), count the budget, start a trial (or the trials of a stack, `stacking`), release the lock
as soon as the trials exist. So any number of workers, started by `sweeplab.sweep` or by hand
on other machines, finish exactly `n_trials` trials between them. A trial alone is
`training.tracking.train_and_track` with the sweep's parent run and a pruning callback; it
checkpoints into the output folder (`trainer.checkpoint_every`), and the retry of a trial whose
process died resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from sweeplab.config import Config, ConfigError, output_dir, store_uri
from sweeplab.machine import machine_failure
from sweeplab.phases import mark_phase
from sweeplab.runtime import INTERRUPTED, stopping
from sweeplab.sweep import stacking
from sweeplab.sweep.front import front_guard
from sweeplab.sweep.plan import (
    AT_CHANCE,
    SweepPlan,
    compose_trials,
    trial_note,
    trial_run_name,
)
from sweeplab.sweep.pruning import PruningCallback
from sweeplab.sweep.results import failed_before_training
from sweeplab.sweep.space import describe, extremes, suggest, to_overrides
from sweeplab.sweep.stopping import plateau
from sweeplab.sweep.storage import (
    STOPPED_BY,
    WARM_FROM,
    BudgetLock,
    best_or_none,
    is_dead,
    is_rdb,
    mark_owner,
    quiet_experimental,
    retry,
    retry_once,
    stop_trials,
    worker_id,
)
from sweeplab.training import checkpoint
from sweeplab.training.mlflow_helper import shared_helper
from sweeplab.training.tracking import NOTE_TAG, RUN_NAME_TAG, train_and_track
from sweeplab.training.trainer import TrainResult, auto_threads

MIN_FINISHED_FOR_FAILURE_RATE = 5
TOO_MANY_FAILED = "too many failed trials"
MACHINE_FAILED = "the machine failed"  # a stop reason: a full disk, a store gone (sweeplab.machine)


def feasibility(trial: optuna.trial.FrozenTrial) -> dict[str, str]:
    """Tags of a trial `sweep.constraints` were told of: whether it is feasible, which it broke."""
    if not trial.constraints:
        return {}
    broken = [name for name, excess in trial.constraints.items() if excess > 0]
    tags = {"sweeplab.feasible": "false" if broken else "true"}
    return tags | ({"sweeplab.broken_constraints": ", ".join(broken)} if broken else {})


def count_failed(trials: list[optuna.trial.FrozenTrial]) -> int:
    """The failed trials that count towards sweep.max_failure_rate: not one stopped by Ctrl-C or
    the machine (a full disk, a store gone), nor one retried after its worker died (its retry
    counts)."""
    retried = {t.user_attrs.get("retry_of") for t in trials}
    return sum(
        t.state == TrialState.FAIL and STOPPED_BY not in t.user_attrs and t.number not in retried
        for t in trials
    )


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
        self.failed_by_machine: str | None = None  # why, once the machine failed a write
        uri = store_uri(plan.tracking)
        self.helper.send(("adopt", self.parent_key, uri, parent_run_id, False))
        corners = plan.corners or compose_trials(plan, [extremes(plan.space)[0]])
        self.stack_size = stacking.stack_size(plan, corners)

    def run_key(self, number: int) -> str:
        """How the MLflow helper knows trial `number`'s run."""
        return f"{self.plan.study_name}-trial-{number}-{worker_id()}"

    def count(self, trials: list[optuna.trial.FrozenTrial] | None = None) -> dict[TrialState, int]:
        """How many of `trials` (default: the study's) are in each state; trials copied from
        another study (sweep.warm_start) use none of the budget and are not counted."""
        count = {state: 0 for state in TrialState}
        for trial in self.study.get_trials(deepcopy=False) if trials is None else trials:
            count[trial.state] += WARM_FROM not in trial.user_attrs
        return count

    def room(self) -> int:
        """Trials the budget still has room for (finished and running ones count)."""
        count = self.count()
        used = count[TrialState.COMPLETE] + count[TrialState.PRUNED] + count[TrialState.RUNNING]
        return self.plan.settings.n_trials - used

    def stop_reason(self, deadline: float | None) -> str | None:
        """Why no further trial may start (budget, failures, timeout, a target or a plateau), or
        None."""
        trials = self.study.get_trials(deepcopy=False)  # (read once: a query on a database)
        trials = [t for t in trials if WARM_FROM not in t.user_attrs]  # copied: not this budget's
        count = self.count(trials)
        used = count[TrialState.COMPLETE] + count[TrialState.PRUNED]
        running = count[TrialState.RUNNING]
        failed = count_failed(trials)
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
        return plateau(trials, self.plan.settings, self.plan.objective)

    def reconcile(self) -> None:
        """Fail (and retry once) trials whose process died, Optuna's heartbeat does it for RDBs;
        retry the trials that Ctrl-C or the machine stopped."""
        if is_rdb(self.plan.storage):
            with quiet_experimental():
                optuna.storages.fail_stale_trials(self.study)
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if is_dead(trial.user_attrs.get("worker"), trial.datetime_start):
                self.study.tell(trial.number, state=TrialState.FAIL)
                # (a trial Ctrl-C or the machine stopped is retried below)
                retried = STOPPED_BY not in trial.user_attrs and retry_once(self.study, trial)
                print(
                    f"trial {trial.number} was left RUNNING by a dead worker: failed"
                    + (", its parameters retried as a new trial" if retried else ""),
                    file=sys.stderr,
                )
                if not retried and STOPPED_BY not in trial.user_attrs:  # nothing resumes it:
                    # its checkpoint (and the one it resumed from) can go
                    self.remove_checkpoints(trial.number, trial.user_attrs.get("retry_of"))
        trials = self.study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get("retry_of") for t in trials}
        for trial in trials:
            if (
                trial.state == TrialState.FAIL
                and STOPPED_BY in trial.user_attrs
                and trial.number not in retried
                and trial.params
            ):
                retry(self.study, trial)
                print(
                    f"trial {trial.number} was stopped ({trial.user_attrs[STOPPED_BY]}): "
                    "its parameters are retried as a new trial",
                    file=sys.stderr,
                )

    def objective(self, trial: optuna.Trial) -> float | list[float]:
        """Train one trial's config; its objective's last value (each objective's)."""
        self.lock.release()  # the trial exists now: other workers count it
        mark_owner([trial])
        values = suggest(trial, self.plan.space)
        try:
            [cfg] = compose_trials(self.plan, [values])
        except ConfigError as err:  # a combination the schema refuses, not at a corner
            failed_before_training(self.plan, self.parent_run_id, trial, values, err)
            raise
        if cfg.trainer.num_threads == 0:
            cfg.trainer.num_threads = auto_threads(cfg, available=self.threads)
        if cfg.tracking.run_name is None:
            cfg.tracking.run_name = trial_run_name(
                self.plan.study_name, trial.number, TrialState.COMPLETE, None
            )
        retry_of = trial.user_attrs.get("retry_of")  # (queued by reconcile or the heartbeat)
        resume = self.resumable(cfg, retry_of)
        try:
            result, _ = self._train(trial, cfg, values, resume)
            value = self.plan.told(result.metrics)
            self.plan.record_result(trial, result)
        except KeyboardInterrupt:  # Optuna fails the trial: its run says so, as after_trial would
            self._stopped_by_interrupt(trial)
            raise  # (its checkpoint stays, for its retry: stopped, it did not end)
        except Exception as err:
            if (why := machine_failure(err)) is not None:  # this sweep stops; the trial is
                self.failed_by_machine = why  # retried (from its checkpoint) when it resumes
                with contextlib.suppress(Exception):  # (the storage may be what failed)
                    trial.set_user_attr(STOPPED_BY, why)
            else:  # pruned, or failed by its own error: nothing will resume it
                self.remove_checkpoints(trial.number, retry_of)
            raise
        self.remove_checkpoints(trial.number, retry_of)
        return value

    def _stopped_by_interrupt(self, trial: optuna.Trial) -> None:
        """Ctrl-C or SIGTERM stopped `trial`, which Optuna then fails and a resume retries: its
        MLflow run ends KILLED, also when the interrupt came after its run had ended FINISHED
        (while its results were being recorded), so that Optuna and MLflow agree."""
        self._tag_state(trial.number, TrialState.FAIL)
        trial.set_user_attr(STOPPED_BY, INTERRUPTED)
        key = self.run_key(trial.number)
        if key in self.helper.uris:
            now = int(time.time() * 1000)
            self.helper.send(("end", key, "KILLED", INTERRUPTED, None, now))
        self.helper.sync()

    def _train(
        self,
        trial: optuna.Trial,
        cfg: Config,
        values: dict[str, Any],
        resume: checkpoint.TrainState | None,
    ) -> tuple[TrainResult, str]:
        """Train and track one trial's config, reporting to Optuna for its pruner (from
        `resume`, a state of the killed trial it retries, where there is one)."""
        tags = {
            "sweeplab.role": "trial",
            "optuna.study": self.plan.study_name,
            "optuna.trial": str(trial.number),
            "optuna.params": " ".join(to_overrides(values))[:5000],
        }
        if resume is not None:
            tags["sweeplab.resumed_from_epoch"] = str(resume.epoch)
        return train_and_track(
            cfg,
            callbacks=(PruningCallback(trial, self.plan.objective, front_guard(self.plan, cfg)),),
            parent_run_id=self.parent_run_id,
            tags=tags,
            finished_on=(optuna.TrialPruned,),
            on_run_start=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id),
            key=self.run_key(trial.number),
            checkpoint=self.checkpoint_file(trial.number),
            resume=resume,
        )

    def checkpoint_file(self, number: int) -> Path:
        """Where trial `number` keeps its last checkpoint (`trainer.checkpoint_every`)."""
        return output_dir() / "checkpoints" / self.plan.study_name / f"trial-{number}.pt"

    def resumable(self, cfg: Config, retry_of: int | None) -> checkpoint.TrainState | None:
        """The last checkpoint of the killed trial `retry_of`, if it can resume `cfg`."""
        if retry_of is None or not self.checkpoint_file(retry_of).exists():
            return None
        try:
            state = checkpoint.TrainState.load(self.checkpoint_file(retry_of))
            state.check(cfg)
        except Exception as err:  # unreadable or of other settings: trained from the start
            print(f"trial {retry_of}'s checkpoint is not resumed: {err}", file=sys.stderr)
            return None
        print(
            f"retrying trial {retry_of} from its checkpoint of epoch {state.epoch}", file=sys.stderr
        )
        return state

    def remove_checkpoints(self, *numbers: int | None) -> None:
        for number in numbers:
            if number is not None:
                checkpoint.remove(self.checkpoint_file(number))

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Tag the trial's MLflow run with its state, log the parent's best-so-far, print a line
        (the MLflow writes go through the helper)."""
        last = trial.values[0] if trial.values else trial.intermediate_values.get(trial.last_step)
        chance = trial.user_attrs.get(AT_CHANCE)
        self._tag_state(
            trial.number, trial.state, trial.last_step, last, feasibility(trial), chance
        )
        best = best_or_none(study)
        if trial.state == TrialState.COMPLETE and best is not None:
            now = int(time.time() * 1000)
            rows = [
                ("best_value", best.value, now, trial.number),
                ("trial_value", trial.value, now, trial.number),
            ]
            self.helper.send(("metrics", self.parent_key, rows))
        shown = self._values_text(trial)
        shown += " (infeasible)" if any(v > 0 for v in trial.constraints.values()) else ""
        params = describe(trial.params)
        if self.plan.multi:
            best_text = f"front={len(study.best_trials)}"
        else:
            best_text = f"best={best.value:.4f} (trial {best.number})" if best else "best=-"
        line = f"{self.label}trial {trial.number:>3} {trial.state.name:<8} {shown:<16} {best_text}  {params}"
        for hook in self.on_trial_done:
            hook(line)

    def _values_text(self, trial: optuna.trial.FrozenTrial) -> str:
        """ "val/acc=0.9700" (with repeats "+-0.0040"), or each objective's value."""
        if not trial.values:
            return ""
        if self.plan.multi:
            pairs = zip(self.plan.objectives, trial.values, strict=True)
            return " ".join(f"{metric}={value:.4g}" for (metric, _), value in pairs)
        std = trial.user_attrs.get(f"{self.plan.objective}_std")  # with sweep.repeats
        shown = f"{self.plan.objective}={trial.value:.4f}"
        return shown + (f"+-{std:.4f}" if std is not None else "")

    def _tag_state(
        self,
        number: int,
        state: TrialState,
        last_epoch: int | None = None,
        value: float | None = None,
        more_tags: dict[str, str] | None = None,
        chance: float | None = None,
    ) -> None:
        """The trial's state on its MLflow run, where the UI's runs table shows it without a
        column added: in its name ("synthetic-trial-5 (pruned at epoch 88)") and description,
        and the epochs it ran as the metric `epochs_run`."""
        key = self.run_key(number)
        if key not in self.helper.uris:  # its run was not started (a trial can fail before)
            return
        tags = {"optuna.trial_state": state.name, **(more_tags or {})}
        tags[NOTE_TAG] = trial_note(self.plan, number, state, last_epoch, value, chance)
        if self.plan.tracking.run_name is None:
            tags[RUN_NAME_TAG] = trial_run_name(
                self.plan.study_name, number, state, last_epoch, chance is not None
            )
        self.helper.send(("tags", key, tags))
        if last_epoch is not None:
            now = int(time.time() * 1000)
            self.helper.send(("metrics", key, [("epochs_run", last_epoch, now, last_epoch)]))

    def work(self, deadline: float | None) -> str:
        """Run trials until a stop condition; return why it stopped."""
        # Optuna logs a warning and a traceback for each trial an interrupt or the machine's
        # failure stops, in every worker: the command says it once instead
        optuna_log = logging.getLogger("optuna.study._optimize")
        optuna_log.addFilter(self._quiet_when_stopped)
        try:
            return self._work(deadline)
        finally:
            optuna_log.removeFilter(self._quiet_when_stopped)

    def _quiet_when_stopped(self, _: logging.LogRecord) -> bool:
        return not (stopping() or self.failed_by_machine)

    def _work(self, deadline: float | None) -> str:
        try:
            while self.failed_by_machine is None:
                if (reason := self._claim_and_train(deadline)) is not None:
                    return reason
        except Exception as err:
            self.failed_by_machine = machine_failure(err)
            if self.failed_by_machine is None:
                raise
        mine = [
            t
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("worker") == worker_id()
        ]
        stop_trials(self.study, mine, self.failed_by_machine)
        return f"{MACHINE_FAILED}: {self.failed_by_machine}"

    def _claim_and_train(self, deadline: float | None) -> str | None:
        """Claim a trial (or a stack's) under the study's lock and train it; or why not."""
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
                return None
            claimed = stacking.claim(self.study, self.plan, min(self.stack_size, self.room()))
            mark_phase(f"sweep: {len(claimed)} trials claimed")
            self.lock.release()  # the trials exist now: other workers count them
            self.training.set()
            stacking.train_claimed(claimed, self.stacking_context())
            return None
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
