"""Where a study lives and how its workers share it: the Optuna storage (a journal file, SQLite
or PostgreSQL), the lock that makes "count the budget, then start a trial" atomic across
processes and machines, and how a trial left RUNNING by a dead process is recognised.

    study = open_study(plan)                      # created, or loaded to resume
    with BudgetLock(plan.storage, plan.study_name):
        ...                                       # one worker at a time
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
import warnings
import zlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._rdb import models
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file
from optuna.storages.journal._storage import JournalOperation
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import create_engine, insert, text
from sqlalchemy.exc import SQLAlchemyError

from sweeplab.config import ConfigError
from sweeplab.redaction import without_secrets
from sweeplab.runtime import interrupts_deferred
from sweeplab.stores import why
from sweeplab.sweep.plan import SweepPlan
from sweeplab.sweep.sampling import PrunedTrialsAware, make_pruner, make_sampler
from sweeplab.sweep.space import inside
from sweeplab.training.mlflow_helper import shared_helper

HEARTBEAT_S = 10  # RDB storages: a running trial's heartbeat period ...
GRACE_S = 30  # ... and the silence after which the trial counts as dead
HELPER_GRACE_S = 60  # how long the end of a sweep waits for a dead worker's helper to finish
ORPHAN_AFTER_S = 300  # journal: a running trial with no recorded worker this old counts as dead
# a failed trial's user attr saying what stopped it when it was not its fault (Ctrl-C, a full
# disk): such a trial is retried and does not count towards sweep.max_failure_rate
STOPPED_BY = "stopped_by"
WARM_FROM = "warm_start_from"  # a trial copied from another study (sweep.warm_start): its origin


def is_rdb(storage: str) -> bool:
    return "://" in storage


def make_storage(storage: str) -> optuna.storages.BaseStorage:
    if is_rdb(storage):
        try:
            with quiet_experimental():
                return RDBStorage(
                    storage,
                    heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S,
                    heartbeat_stale_trial_callback=_retry_silent_trial,
                )
        except (ImportError, SQLAlchemyError) as err:
            raise ConfigError(
                f"sweep.storage={without_secrets(storage)!r}: cannot open it ({why(err)})"
            ) from None
    path = Path(storage)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a"):
            pass
    except OSError as err:
        raise ConfigError(f"sweep.storage={storage!r}: cannot write there ({err})") from None
    return SweepJournalStorage(InterruptSafeJournalFileBackend(str(path)))


class SweepJournalStorage(JournalStorage):
    """Optuna's journal storage, which can also write many trials' intermediate values or user
    attributes at once: a stack's members report every epoch and take the same attributes, and
    one write (a lock, an append, a sync) for all of them costs what one `Trial.report` or
    `Trial.set_user_attr` does. The log lines are those Optuna's own calls write."""

    def set_intermediate_values(self, values: list[tuple[int, int, float]]) -> None:
        """(trial id, step, value) of many trials, in one append to the journal."""
        self._append(
            JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE,
            [{"trial_id": t, "step": step, "intermediate_value": v} for t, step, v in values],
        )

    def set_user_attrs(self, attrs: list[tuple[int, str, Any]]) -> None:
        """(trial id, key, value) of many trials, in one append to the journal."""
        self._append(
            JournalOperation.SET_TRIAL_USER_ATTR,
            [{"trial_id": t, "user_attr": {key: value}} for t, key, value in attrs],
        )

    def _append(self, operation: JournalOperation, logs: list[dict[str, Any]]) -> None:
        worker = self._replay_result.worker_id
        with self._thread_lock:
            self._backend.append_logs(
                [{"op_code": operation, "worker_id": worker, **log} for log in logs]
            )
            self._sync_with_backend()


def write_user_attrs(attrs: list[tuple[optuna.Trial, str, Any]]) -> None:
    """`trial.set_user_attr(key, value)` for each (trial, key, value), in one journal append."""
    if not attrs:
        return
    storage = attrs[0][0].storage
    if not isinstance(storage, SweepJournalStorage):
        for trial, key, value in attrs:
            trial.set_user_attr(key, value)
        return
    storage.set_user_attrs([(trial._trial_id, key, value) for trial, key, value in attrs])
    for trial, key, value in attrs:  # what Trial.set_user_attr keeps in the trial object
        trial._cached_frozen_trial.user_attrs[key] = value


def keep_reports(reports: list[tuple[optuna.Trial, float, int]]) -> None:
    """What `Trial.report` keeps in the trial object: each value for its `should_prune`."""
    for trial, value, step in reports:
        trial._cached_frozen_trial.intermediate_values[step] = value


def write_reports(reports: list[tuple[optuna.Trial, float, int]]) -> None:
    """What `Trial.report` writes to the storage, for many trials and steps: in one journal
    append, or one SQL insert (a stack reports each trial's step once, so every row is new),
    where Optuna's own calls would take a transaction per value."""
    if not reports:
        return
    storage = reports[0][0].storage
    values = [(trial._trial_id, step, value) for trial, value, step in reports]
    if isinstance(storage, SweepJournalStorage):
        storage.set_intermediate_values(values)
        return
    rdb = storage._backend if isinstance(storage, _CachedStorage) else storage
    if not isinstance(rdb, RDBStorage):
        for trial_id, step, value in values:
            storage.set_trial_intermediate_value(trial_id, step, value)
        return
    row = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr
    rows = [
        dict(
            zip(
                ("trial_id", "step", "intermediate_value", "intermediate_value_type"),
                (trial_id, step, *row(value)),
                strict=True,
            )
        )
        for trial_id, step, value in values
    ]
    with rdb.engine.begin() as connection:
        connection.execute(insert(models.TrialIntermediateValueModel), rows)


class InterruptSafeJournalFileBackend(JournalFileBackend):
    """Optuna's journal file, each append done whole before Ctrl-C/SIGTERM is raised: an
    interrupt inside its lock's release turned into a FileNotFoundError (a failed trial, and
    the sweep went on) instead of stopping the sweep. A last line cut off by a writer that died
    mid-append (kill -9, power loss, disk full) is dropped before the next append: appended
    onto, it became a line no start could read, and the study could never be resumed."""

    torn_lines_dropped = 0

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        with interrupts_deferred():
            if _last_byte(self._file_path) not in (b"", b"\n"):  # torn, or being written
                with get_lock_file(self._lock):  # no writer now: what is cut stays cut
                    dropped = _drop_torn_tail(self._file_path)
                if dropped and not self.torn_lines_dropped:  # (a full disk tears every write)
                    print(
                        f"sweeplab: {self._file_path}: dropped a last line cut off mid-write "
                        f"({dropped} bytes)",
                        file=sys.stderr,
                    )
                self.torn_lines_dropped += bool(dropped)
            super().append_logs(logs)


def _last_byte(path: str) -> bytes:
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        return os.pread(f.fileno(), 1, size - 1) if size else b""


def _drop_torn_tail(path: str, chunk: int = 1 << 16) -> int:
    """Truncate the journal after its last complete line (a complete line ends with \\n); the
    bytes dropped."""
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        position = end
        while position > 0:
            start = max(0, position - chunk)
            newline = os.pread(f.fileno(), position - start, start).rfind(b"\n")
            if newline >= 0:
                position = start + newline + 1
                break
            position = start
        if position < end:
            f.truncate(position)
        return end - position


class BudgetLock:
    """Serialises "count the trials, then start one" across the workers of a study."""

    def __init__(self, storage: str, study_name: str) -> None:
        self.storage = storage
        self.study_name = study_name
        self.held = False
        self._file = None
        self._pg = None
        if storage.startswith("postgresql"):
            self._pg = create_engine(storage, pool_size=1, max_overflow=0).connect()
        elif storage.startswith("sqlite:///"):
            self._path = Path(storage.removeprefix("sqlite:///") + ".budget.lock")
        elif not is_rdb(storage):
            self._path = Path(storage + ".budget.lock")
        else:
            raise ConfigError(
                f"sweep.storage={without_secrets(storage)!r}: use a journal file, SQLite or PostgreSQL "
                "(budgets across workers are locked on those)"
            )

    def _key(self) -> int:
        return zlib.crc32(self.study_name.encode())

    def acquire(self) -> None:
        if self._pg is not None:
            self._pg.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self._key()})
            self._pg.commit()
        else:
            self._file = self._path.open("a")
            fcntl.flock(self._file, fcntl.LOCK_EX)
        self.held = True

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self._pg is not None:
            self._pg.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key()})
            self._pg.commit()
        else:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()

    def __enter__(self) -> BudgetLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue `trial`'s parameters as a new trial (the next one claimed)."""
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def retry_once(study: optuna.Study, trial: FrozenTrial) -> bool:
    """`retry`, unless the trial was a retry already (its parameters may be what kills it)."""
    if "retry_of" in trial.user_attrs or not trial.params:
        return False
    retry(study, trial)
    return True


def _retry_silent_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's callback for a trial whose heartbeat stopped (RDB storages): retried once."""
    retried = retry_once(study, trial)
    print(
        f"trial {trial.number} stopped beating (its process died or lost the storage): failed"
        + (", its parameters retried as a new trial" if retried else ""),
        file=sys.stderr,
    )


def stop_trials(study: optuna.Study, trials: list[FrozenTrial], reason: str) -> None:
    """Fail `trials`, recording that `reason`, not the trial, stopped them (retried later); best
    effort: the storage may be what failed."""
    for trial in trials:
        with contextlib.suppress(Exception):
            study._storage.set_trial_user_attr(trial._trial_id, STOPPED_BY, reason)
            if trial.state == TrialState.RUNNING:
                study.tell(trial.number, state=TrialState.FAIL)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def mark_owner(trials: list[optuna.Trial]) -> None:
    """Record on each trial the process that trains it and that process's MLflow helper."""
    owner = {"worker": worker_id()}
    if (helper := shared_helper().pid) is not None:
        owner["mlflow_helper"] = f"{socket.gethostname()}:{helper}"
    write_user_attrs([(trial, key, value) for trial in trials for key, value in owner.items()])


def wait_for_orphaned_helpers(trials: list[optuna.trial.FrozenTrial]) -> None:
    """A worker killed by a signal leaves its MLflow helper behind, which writes what it was
    sent and then ends the worker's open runs KILLED: wait (a while) until those have."""
    helpers = {
        t.user_attrs["mlflow_helper"]
        for t in trials
        if "mlflow_helper" in t.user_attrs and is_dead(t.user_attrs.get("worker"), None)
    }
    deadline = time.time() + HELPER_GRACE_S
    while any(not is_dead(h, None) for h in helpers) and time.time() < deadline:
        time.sleep(0.2)


def is_dead(owner: str | None, started: datetime | None) -> bool:
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
    return _is_zombie(int(pid))  # killed, and its parent has not reaped it yet


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone meanwhile (the next look sees it), or no /proc (not Linux)
        return False
    return stat.rpartition(")")[2].split()[0] == "Z"  # the state follows "(command name)"


@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    """Optuna's heartbeat, journal and metric-name features warn that they are experimental,
    and `Study.ask` that heartbeats are for `Study.optimize` (a stack beats for its trials)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with")
        yield


def best_or_none(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best finished trial, or None while no trial has completed."""
    try:
        return study.best_trial
    except (ValueError, RuntimeError):  # RuntimeError: several objectives (a Pareto front)
        return None


def open_study(plan: SweepPlan) -> optuna.Study:
    """The plan's study, created on the first start and loaded on every later one; its sampler
    is seeded with `sweep.sampler.seed` until `join_study` gives this process its own stream."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with quiet_experimental():
        return optuna.create_study(
            study_name=plan.study_name,
            storage=make_storage(plan.storage),
            sampler=_sampler(plan, seed_offset=0),
            pruner=make_pruner(plan.settings.pruner),
            directions=[direction for _, direction in plan.objectives],
            load_if_exists=True,
        )


def join_study(plan: SweepPlan, study: optuna.Study) -> int:
    """Count this process among the study's (call under the study's lock) and seed its sampler
    with `sweep.sampler.seed` + the processes that came before: the first start of a study is
    reproducible from its seed, and a resume, an extra worker or a process on another machine
    proposes new points instead of replaying the first ones. Returns that number."""
    joined = int(study.user_attrs.get("sweeplab_processes", 0))
    study.set_user_attr("sweeplab_processes", joined + 1)
    if study.metric_names is None:  # Optuna's plots and optuna-dashboard name the objective
        with quiet_experimental():
            study.set_metric_names([metric for metric, _ in plan.objectives])
    study.sampler = _sampler(plan, seed_offset=joined)
    return joined


def enqueue_once(plan: SweepPlan, study: optuna.Study) -> None:
    """`sweep.enqueue`'s configurations, queued on the study's first start only (call under the
    study's lock): a resume, an extra worker or another machine does not queue them again."""
    if plan.settings.enqueue and "sweeplab_enqueued" not in study.user_attrs:
        for params in plan.settings.enqueue:
            study.enqueue_trial(params, user_attrs={"enqueued": True})
        study.set_user_attr("sweeplab_enqueued", len(plan.settings.enqueue))


def warm_start_once(plan: SweepPlan, study: optuna.Study) -> int:
    """On the study's first start (under its lock), copy in the completed trials of the study
    `sweep.warm_start` (in this sweep's database, or the journal beside this one) whose
    parameters lie in this space: the sampler starts informed. They use none of the budget and
    have no MLflow run here (`WARM_FROM` names their origin). Returns how many were copied."""
    name = plan.settings.warm_start
    if not name or "sweeplab_warm_started" in study.user_attrs:
        return 0
    where = (
        plan.storage
        if is_rdb(plan.storage)
        else str(Path(plan.storage).with_name(f"{name}.journal"))
    )
    try:
        source = optuna.load_study(study_name=name, storage=make_storage(where))
    except KeyError:
        raise ConfigError(
            f"sweep.warm_start={name!r}: no such study in {without_secrets(where)}"
        ) from None
    theirs = source.user_attrs.get("sweeplab_identity", {})
    if (
        source.direction != study.direction
        or theirs.get("objective", plan.objective) != plan.objective
    ):
        raise ConfigError(
            f"sweep.warm_start={name!r}: it {source.direction.name.lower()}s "
            f"{theirs.get('objective')}, this sweep {plan.settings.direction}s {plan.objective}"
        )
    dists = plan.space.distributions
    copied = 0
    for trial in source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if not all(key in dists and inside(dists[key], v) for key, v in trial.params.items()):
            continue
        study.add_trial(
            optuna.trial.create_trial(
                params=trial.params,
                distributions={key: dists[key] for key in trial.params},
                value=trial.value,
                intermediate_values=trial.intermediate_values,
                user_attrs={WARM_FROM: f"{name} trial {trial.number}"},
            )
        )
        copied += 1
    study.set_user_attr("sweeplab_warm_started", copied)
    print(f"warm start: {copied} completed trials of study {name!r} copied in", file=sys.stderr)
    return copied


def _sampler(plan: SweepPlan, seed_offset: int) -> optuna.samplers.BaseSampler:
    spec = dict(plan.settings.sampler)
    if plan.workers > 1 and spec.get("name", "") == "tpe":
        spec.setdefault("constant_liar", True)  # spreads out the trials running at once
    sampler = make_sampler(spec, plan.space, seed_offset)
    return PrunedTrialsAware(sampler) if plan.multi else sampler


def check_resumable(plan: SweepPlan, study: optuna.Study) -> None:
    """A study resumes only with the same objective, space and trial overrides."""
    stored = study.user_attrs.get("sweeplab_identity")
    if stored is None:
        study.set_user_attr("sweeplab_identity", plan.identity)
    elif stored != plan.identity:
        changed = sorted(k for k in plan.identity if plan.identity[k] != stored.get(k))
        raise ConfigError(
            f"sweep.study_name={plan.study_name!r}: the study in {without_secrets(plan.storage)} was run with "
            f"a different {', '.join(changed)} (was {[stored.get(k) for k in changed]}); "
            "choose another sweep.study_name or remove the old study to start afresh"
        )
