"""Optuna studies shared by many worker processes: storages, the budget lock, dead-worker
reconciliation, and the `Worker` that claims trials and runs each through `train_and_track`.

A worker repeats: take the study's lock, fail trials whose process died (and queue them once
more), count the budget, start a trial, release the lock as soon as the trial exists. So any
number of workers, started by `sweeplab.sweep` or by hand on other machines, finish exactly
`n_trials` trials between them.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeplab.config import Config, ConfigError
from sweeplab.search_space import describe, make_pruner, make_sampler, suggest, to_overrides

if TYPE_CHECKING:
    import optuna

    from sweeplab.sweep import SweepPlan

HEARTBEAT_S = 10  # RDB storages: a running trial's heartbeat period ...
GRACE_S = 30  # ... and the silence after which the trial counts as dead
ORPHAN_AFTER_S = 300  # journal: a running trial with no recorded worker this old counts as dead
MIN_FINISHED_FOR_FAILURE_RATE = 5
TOO_MANY_FAILED = "too many failed trials"


def is_rdb(storage: str) -> bool:
    return "://" in storage


def redact(storage: str) -> str:
    """The storage URL without its password, for logs and MLflow params."""
    if not is_rdb(storage):
        return storage
    from sqlalchemy.engine import make_url

    return make_url(storage).render_as_string(hide_password=True)


def make_storage(storage: str) -> Any:
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback

    if is_rdb(storage):
        with quiet_experimental():
            return RDBStorage(
                storage,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
    path = Path(storage)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a"):
            pass
    except OSError as err:
        raise ConfigError(f"sweep.storage={storage!r}: cannot write there ({err})") from None
    return JournalStorage(_journal_backend(str(path)))


def _journal_backend(path: str) -> Any:
    """Optuna's journal file, each append done whole before Ctrl-C/SIGTERM is raised: an
    interrupt inside its lock's release turned into a FileNotFoundError (a failed trial, and
    the sweep went on) instead of stopping the sweep."""
    from optuna.storages.journal import JournalFileBackend

    from sweeplab.train import interrupts_deferred

    class InterruptSafeJournalFileBackend(JournalFileBackend):
        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            with interrupts_deferred():
                super().append_logs(logs)

    return InterruptSafeJournalFileBackend(path)


class BudgetLock:
    """Serialises "count the trials, then start one" across the workers of a study."""

    def __init__(self, storage: str, study_name: str) -> None:
        self.storage = storage
        self.study_name = study_name
        self.held = False
        self._file = None
        self._pg = None
        if storage.startswith("postgresql"):
            from sqlalchemy import create_engine

            self._pg = create_engine(storage, pool_size=1, max_overflow=0).connect()
        elif storage.startswith("sqlite:///"):
            self._path = Path(storage.removeprefix("sqlite:///") + ".budget.lock")
        elif not is_rdb(storage):
            self._path = Path(storage + ".budget.lock")
        else:
            raise ConfigError(
                f"sweep.storage={redact(storage)!r}: use a journal file, SQLite or PostgreSQL "
                "(budgets across workers are locked on those)"
            )

    def _key(self) -> int:
        import zlib

        return zlib.crc32(self.study_name.encode())

    def acquire(self) -> None:
        if self._pg is not None:
            from sqlalchemy import text

            self._pg.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self._key()})
            self._pg.commit()
        else:
            import fcntl

            self._file = self._path.open("a")
            fcntl.flock(self._file, fcntl.LOCK_EX)
        self.held = True

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self._pg is not None:
            from sqlalchemy import text

            self._pg.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key()})
            self._pg.commit()
        else:
            import fcntl

            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()

    def __enter__(self) -> BudgetLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _is_dead(owner: str | None, started: Any) -> bool:
    """Whether the process that owns a running trial is gone (known only for this host)."""
    if owner is None:
        return started is not None and time.time() - started.timestamp() > ORPHAN_AFTER_S
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# --- MLflow: the study's parent run ---------------------------------------------------------------


class PruningCallback:
    """Reports the objective to Optuna after every epoch and stops a trial it prunes."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        import optuna

        value = metrics[self.metric]
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} with {self.metric}={value:.4g}")

    def on_train_end(self, result: object) -> None:
        pass


class Worker:
    """Claims trials of one study until its budget, time or failure limit is reached."""

    def __init__(
        self,
        plan: SweepPlan,
        study: optuna.Study,
        parent_run_id: str,
        label: str,
        compose: Callable[[SweepPlan, dict[str, Any]], Config],
    ) -> None:
        self.plan = plan
        self.compose = compose
        self.study = study
        self.parent_run_id = parent_run_id
        self.label = label
        self.lock = BudgetLock(plan.storage, plan.study_name)
        self.threads = max(1, len(os.sched_getaffinity(0)) // plan.workers)
        self.on_trial_done: list = []

    def stop_reason(self, deadline: float | None) -> str | None:
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        count = {state: 0 for state in TrialState}
        for trial in trials:
            count[trial.state] += 1
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
        import optuna
        from optuna.trial import TrialState

        if is_rdb(self.plan.storage):
            with quiet_experimental():
                optuna.storages.fail_stale_trials(self.study)
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not _is_dead(trial.user_attrs.get("worker"), trial.datetime_start):
                continue
            self.study.tell(trial.number, state=TrialState.FAIL)
            print(
                f"trial {trial.number} was left RUNNING by a dead worker: failed", file=sys.stderr
            )
            if "retry_of" not in trial.user_attrs and trial.params:
                self.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
                print(f"  retrying its parameters as a new trial: {trial.params}", file=sys.stderr)

    def objective(self, trial: optuna.Trial) -> float:
        import optuna

        from sweeplab.train import train_and_track
        from sweeplab.trainer import auto_threads

        self.lock.release()  # the trial exists now: other workers count it
        trial.set_user_attr("worker", worker_id())
        values = suggest(trial, self.plan.space)
        cfg = self.compose(self.plan, values)
        if cfg.trainer.num_threads == 0:
            cfg.trainer.num_threads = auto_threads(cfg, available=self.threads)
        if cfg.tracking.run_name is None:
            cfg.tracking.run_name = f"{self.plan.study_name}-trial-{trial.number}"
        result, _ = train_and_track(
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
        )
        value = result.metrics[self.plan.objective]
        if not math.isfinite(value):
            raise FloatingPointError(f"{self.plan.objective}={value}")
        trial.set_user_attr("test/acc", result.metrics.get("test/acc"))
        trial.set_user_attr("test/loss", result.metrics.get("test/loss"))
        return value

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Tag the trial's MLflow run with its state, log the parent's best-so-far, print a line."""
        from optuna.trial import TrialState

        from sweeplab.tracking import client_for

        client, _ = client_for(self.plan.tracking)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            client.set_tag(run_id, "optuna.trial_state", trial.state.name)
        best = best_or_none(study)
        if trial.state == TrialState.COMPLETE and best is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            client.log_batch(
                self.parent_run_id,
                metrics=[
                    Metric("best_value", best.value, now, trial.number),
                    Metric("trial_value", trial.value, now, trial.number),
                ],
            )
        shown = f"{self.plan.objective}={trial.value:.4f}" if trial.value is not None else ""
        params = describe(trial.params)
        best_text = f"best={best.value:.4f} (trial {best.number})" if best else "best=-"
        line = f"{self.label}trial {trial.number:>3} {trial.state.name:<8} {shown:<16} {best_text}  {params}"
        for hook in self.on_trial_done:
            hook(line)

    def work(self, deadline: float | None) -> str:
        """Run trials until a stop condition; return why it stopped."""
        while True:
            self.lock.acquire()
            try:
                self.reconcile()
                reason = self.stop_reason(deadline)
                if reason:
                    return reason
                with quiet_experimental():
                    self.study.optimize(
                        self.objective, n_trials=1, catch=(Exception,), callbacks=[self.after_trial]
                    )
            finally:
                self.lock.release()


@contextlib.contextmanager
def quiet_experimental() -> Any:
    import warnings

    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def best_or_none(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None


def open_study(plan: SweepPlan, seed_offset: int = 0) -> optuna.Study:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler_spec = dict(plan.settings.sampler)
    if plan.workers > 1 and sampler_spec.get("name", "") == "tpe":
        sampler_spec.setdefault("constant_liar", True)  # spreads out the trials running at once
    with quiet_experimental():
        return optuna.create_study(
            study_name=plan.study_name,
            storage=make_storage(plan.storage),
            sampler=make_sampler(sampler_spec, plan.space, seed_offset),
            pruner=make_pruner(plan.settings.pruner),
            direction=plan.settings.direction,
            load_if_exists=True,
        )


def check_resumable(plan: SweepPlan, study: optuna.Study) -> None:
    """A study resumes only with the same objective, space and trial overrides."""
    stored = study.user_attrs.get("sweeplab_identity")
    if stored is None:
        study.set_user_attr("sweeplab_identity", plan.identity)
    elif stored != plan.identity:
        changed = sorted(k for k in plan.identity if plan.identity[k] != stored.get(k))
        raise ConfigError(
            f"sweep.study_name={plan.study_name!r}: the study in {redact(plan.storage)} was run with "
            f"a different {', '.join(changed)} (was {[stored.get(k) for k in changed]}); "
            "choose another sweep.study_name or remove the old study to start afresh"
        )


# --- the whole sweep ------------------------------------------------------------------------------
