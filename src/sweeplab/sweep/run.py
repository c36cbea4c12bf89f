"""Run a sweep: one study, `sweep.workers` processes, every trial an MLflow child run.

Budget: `n_trials` counts COMPLETE, PRUNED and running trials of the study across invocations and
workers. The main process starts the extra workers (the same command with `SWEEPLAB_SWEEP_WORKER`
set), works itself, waits for them, and writes the study's results into its parent run. A trial
left RUNNING by a dead process is failed and retried once: RDB storages detect it by Optuna's
heartbeat, journal files by the worker's host and pid recorded on the trial. Failed trials do
not use the budget; `max_failure_rate` stops a sweep in which too many fail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from tqdm import tqdm

from sweeplab.machine import machine_failure
from sweeplab.phases import mark_phase
from sweeplab.redaction import without_secrets
from sweeplab.runtime import EXIT_MACHINE_FAILED
from sweeplab.sweep.plan import SweepPlan
from sweeplab.sweep.results import (
    SweepSummary,
    close_orphan_runs,
    count_invocation,
    find_or_create_parent,
    load_plotting,
    mlflow_client,
    picture_best_trial,
    report,
    save_study_plots,
    state_counts,
)
from sweeplab.sweep.storage import (
    WARM_FROM,
    BudgetLock,
    best_or_none,
    check_resumable,
    enqueue_once,
    join_study,
    open_study,
    warm_start_once,
)
from sweeplab.sweep.worker import MACHINE_FAILED, TOO_MANY_FAILED, Worker

WORKER_ENV = "SWEEPLAB_SWEEP_WORKER"  # set in the processes a sweep starts for its extra workers
DEADLINE_ENV = "SWEEPLAB_SWEEP_DEADLINE"  # the main process's sweep.timeout, as a Unix time
WORKER_POLL_S = 0.5  # how often the main process, its own trials done, looks at its workers


def worker_index() -> int:
    """0 in the process the user started; 1, 2, ... in the extra workers it starts."""
    return int(os.environ.get(WORKER_ENV, "0"))


def run_sweep(plan: SweepPlan, argv: list[str] | None = None) -> SweepSummary:
    """Run the study to its budget with `plan.workers` processes; report into the parent run.

    `argv` (the command line) is what extra worker processes are started with; without it the
    sweep runs in this process alone.
    """
    started = time.time()
    index = worker_index()
    study = open_study(plan)  # a storage that cannot be opened is refused before MLflow is touched
    mlflow_client(plan)  # create the MLflow store once, before any worker starts
    mark_phase("sweep: MLflow store ready")
    bootstrap = BudgetLock(plan.storage, plan.study_name)
    with bootstrap:
        check_resumable(plan, study)
        join_study(plan, study)
        enqueue_once(plan, study)
        warm_start_once(plan, study)
        parent_run_id = find_or_create_parent(plan, study)
    mark_phase("sweep: study and parent run ready")
    label = f"[w{index}] " if index else ""
    worker = Worker(plan, study, parent_run_id, label)
    if index:  # a worker started by the main process: trials only
        worker.on_trial_done.append(lambda line: print(line, flush=True))
        deadline = os.environ.get(DEADLINE_ENV)
        reason = worker.work(float(deadline) if deadline else None)
        worker.helper.sync()
        print(f"[w{index}] stopped: {reason}", flush=True)
        return SweepSummary(plan.study_name, reason, {}, parent_run_id=parent_run_id)

    with bootstrap:
        worker.reconcile()
        close_orphan_runs(plan, study)
        count_invocation(plan, parent_run_id)
    deadline = started + plan.settings.timeout if plan.settings.timeout else None
    # the extra workers stack as this one chose from every corner of the space (they check none)
    argv = None if argv is None else [*argv, f"sweep.stack={worker.stack_size}"]
    procs = _start_workers(plan, argv, deadline) if argv is not None else []
    bar = _progress(plan, study)
    worker.on_trial_done.append(lambda line: _echo(bar, line, study))
    client, experiment_id = mlflow_client(plan)
    try:
        reason = _trials(worker, procs, deadline, client, parent_run_id)
    finally:
        if bar is not None:
            bar.close()
    mark_phase("sweep: trials done")
    if reason.startswith(MACHINE_FAILED):
        summary = _stopped_by_machine(plan, study, parent_run_id, reason, started)
        summary.experiment_id = experiment_id
        return summary
    summary = _end_of_sweep(plan, study, worker, parent_run_id, reason)
    summary.wall_s, summary.experiment_id = time.time() - started, experiment_id
    mark_phase("sweep: reported")
    if reason.startswith(TOO_MANY_FAILED):  # the command exits 1: the parent says why
        client.set_tag(parent_run_id, "failure_reason", without_secrets(reason))
        client.set_terminated(parent_run_id, "FAILED")
    else:
        client.set_terminated(parent_run_id, "FINISHED")
    return summary


def _trials(
    worker: Worker,
    procs: list[subprocess.Popen],
    deadline: float | None,
    client: MlflowClient,
    parent_run_id: str,
) -> str:
    """Every worker's trials, until the sweep stops: why it stopped. Ctrl-C stops the workers
    and ends the parent KILLED; the machine's failure outside a trial (the study's store gone)
    stops them too, as one inside a trial does."""
    try:
        with _plotting_loaded_while_training(worker):
            return _work_while_workers_run(worker, procs, deadline)
    except KeyboardInterrupt:
        _stop_workers(procs)
        client.set_tag(parent_run_id, "failure_reason", "interrupted; rerun the command to resume")
        client.set_terminated(parent_run_id, "KILLED")
        raise
    except Exception as err:
        if (why := machine_failure(err)) is None:
            raise
        _stop_workers(procs)
        return f"{MACHINE_FAILED}: {why}"


def _end_of_sweep(
    plan: SweepPlan, study: optuna.Study, worker: Worker, parent_run_id: str, reason: str
) -> SweepSummary:
    """The trials' last writes, Optuna's plots and the report; the parent FAILED if it fails."""
    try:
        # the plots are drawn while this thread feeds the helper the trials' last writes
        with ThreadPoolExecutor(1) as pool:
            drawing = pool.submit(
                save_study_plots, study, plan.study_name, [m for m, _ in plan.objectives]
            )
            worker.helper.sync()
            mark_phase("sweep: the trials' runs written")
            plots = drawing.result()
        mark_phase("sweep: study plots drawn")
        close_orphan_runs(plan, study)
        summary = report(plan, study, parent_run_id, reason, plots)
    except BaseException as err:
        client, _ = mlflow_client(plan)
        client.set_tag(
            parent_run_id,
            "failure_reason",
            without_secrets(f"report failed: {type(err).__name__}: {err}"),
        )
        client.set_terminated(parent_run_id, "FAILED")
        raise
    if plan.settings.best_pictures and not reason.startswith(TOO_MANY_FAILED):
        try:
            picture_best_trial(plan, study, worker.helper, summary)
        except Exception as err:  # the sweep's results stand without them
            print(f"warning: no pictures of the best trial: {type(err).__name__}: {err}")
    return summary


@contextlib.contextmanager
def _plotting_loaded_while_training(worker: Worker) -> Iterator[None]:
    """The plots at the end need matplotlib and scikit-learn (seconds to import): a thread
    imports them while the trials train (with the GIL released), not while they are claimed.

    The thread is joined on the way out, an interrupt included: a daemon thread that the
    interpreter's exit cuts off inside an extension module's import aborts the whole process
    (`terminate called without an active exception`, exit status -6 instead of 130).
    """
    ended = threading.Event()

    def load() -> None:
        while not worker.training.wait(0.1):
            if ended.is_set():  # no trial trained here: the report imports them if it needs them
                return
        with contextlib.suppress(Exception):  # a head start only: the report imports them anyway
            load_plotting()

    thread = threading.Thread(target=load, name="import-plotting")
    thread.start()
    try:
        yield
    finally:
        ended.set()
        thread.join()


def _stopped_by_machine(
    plan: SweepPlan, study: optuna.Study, parent_run_id: str, reason: str, started: float
) -> SweepSummary:
    """No report (it would be written where the machine failed); the parent run KILLED with the
    reason where that can still be written. A rerun resumes: the stopped trials are retried."""
    with contextlib.suppress(Exception):
        client, _ = mlflow_client(plan)
        client.set_tag(
            parent_run_id,
            "failure_reason",
            without_secrets(f"{reason}; rerun the command to resume"),
        )
        client.set_terminated(parent_run_id, "KILLED")
    summary = SweepSummary(plan.study_name, reason, {}, parent_run_id=parent_run_id)
    summary.wall_s = time.time() - started
    with contextlib.suppress(Exception):  # (the study's store may be what failed)
        summary.counts = state_counts(study.get_trials(deepcopy=False))
        if (best := best_or_none(study)) is not None:
            summary.best_value, summary.best_params = best.value, dict(best.params)
            summary.best_run_id = best.user_attrs.get("mlflow_run_id")
    return summary


def _used_budget(study: optuna.Study) -> int:
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return sum(WARM_FROM not in t.user_attrs for t in finished)


def _progress(plan: SweepPlan, study: optuna.Study) -> tqdm | None:
    """A bar for the whole study (all workers' trials) on a terminal; None otherwise."""
    if not sys.stderr.isatty():
        return None
    return tqdm(total=plan.settings.n_trials, initial=_used_budget(study), desc=plan.study_name)


def _echo(bar: tqdm | None, line: str, study: optuna.Study) -> None:
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


def _work_while_workers_run(
    worker: Worker, procs: list[subprocess.Popen], deadline: float | None
) -> str:
    """This process's trials; then, until the extra workers end, the trials of any worker that
    died (kill -9, the OOM killer, a SIGTERM of its own, a bug), failed and retried here; a
    worker that met the machine's failure stops them all."""
    reason = worker.work(deadline)
    if reason.startswith(MACHINE_FAILED):  # the other workers cannot write either
        _stop_workers(procs)
        return reason
    running = list(procs)
    while running:
        time.sleep(WORKER_POLL_S)
        ended = [proc for proc in running if proc.poll() is not None]
        running = [proc for proc in running if proc not in ended]
        if any(proc.returncode == EXIT_MACHINE_FAILED for proc in ended):
            _stop_workers(running)
            return f"{MACHINE_FAILED} in a worker process (its message is above)"
        died = [proc for proc in ended if proc.returncode != 0]
        for proc in died:
            code = proc.returncode
            how = f"was killed (signal {-code})" if code < 0 else f"exited with status {code}"
            print(
                f"worker process {proc.pid} {how}; its trials are failed and retried",
                file=sys.stderr,
                flush=True,
            )
        if died:
            reason = worker.work(deadline)
    return reason


def _stop_workers(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
