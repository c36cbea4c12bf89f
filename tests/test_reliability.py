"""Faults lose nothing and repeat nothing: diverging trials, too many failures, concurrent first
starts, unwritable output folders. Real processes, real storages, a real MLflow store."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from sweeplab.config import to_config
from sweeplab.sweep.storage import make_storage
from sweeplab.sweep.worker import count_failed
from sweeplab.training import trainer
from sweeplab.training.mlflow_store import as_logged

from .conftest import PostgresServer, run_cli
from .test_sweep import (
    SMALL,
    children,
    load,
    plan_and_run,
    sweep_in_background,
    sweep_overrides,
    write_sweep_file,
)


def regression_sweep(conf: Path, name: str, lrs: str) -> list[str]:
    """A user sweep on the regression task, where an SGD step of 1e6 overflows to inf."""
    write_sweep_file(
        conf,
        name,
        {
            "study_name": name,
            "objective": "val/loss",
            "direction": "minimize",
            "params": {"optimizer": "sgd", "optimizer.lr": lrs},
            "pruner": {"name": "none"},
            "sampler": {"name": "random", "seed": 0},
        },
    )
    return [
        "--config-dir",
        str(conf),
        f"sweep={name}",
        "data=regression",
        "model.activation=relu",
        "trainer.epochs=30",
        *SMALL[:3],
        "tracking.log_plots=false",
        "tracking.log_model=false",
    ]


def test_diverging_trial_fails_and_the_sweep_goes_on(mlflow_uri, tmp_path, _isolated_output):
    args = [
        *regression_sweep(tmp_path / "conf", "diverge", "choice(0.01, 1000000.0)"),
        f"tracking.uri={mlflow_uri}",
        "sweep.n_trials=2",
    ]
    journal = _isolated_output / "optuna" / "diverge.journal"
    journal.parent.mkdir(parents=True)
    study = optuna.create_study(study_name="diverge", storage=make_storage(str(journal)))
    for lr in (0.01, 1000000.0, 0.01):  # good, diverging, good
        study.enqueue_trial({"optimizer.lr": lr})
    done = run_cli("sweeplab.sweep", *args, env={"SWEEPLAB_OUTPUT": str(_isolated_output)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trial   1 FAIL" in done.stdout
    trials = optuna.load_study(study_name="diverge", storage=make_storage(str(journal))).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    client = MlflowClient(mlflow_uri)
    failed = client.get_run(trials[1].user_attrs["mlflow_run_id"])
    assert failed.info.status == "FAILED"
    assert failed.data.tags["failure_reason"].startswith("DivergenceError: train/loss=")
    assert failed.data.tags["optuna.trial_state"] == "FAIL"
    assert "traceback.txt" in {a.path for a in client.list_artifacts(failed.info.run_id)}
    for good in (trials[0], trials[2]):
        assert client.get_run(good.user_attrs["mlflow_run_id"]).info.status == "FINISHED"


@pytest.mark.parametrize(("stack", "failed"), [(1, 5), (8, 8)])
def test_too_many_failures_stop_the_sweep_with_a_summary(
    stack, failed, mlflow_uri, tmp_path, _isolated_output
):
    """A trial at a time, the sweep stops after 5; in stacks of 8, after the first stack."""
    args = [
        *regression_sweep(tmp_path / "conf", "hopeless", "choice(1000000.0, 10000000.0)"),
        f"tracking.uri={mlflow_uri}",
        "sweep.n_trials=20",
        f"sweep.stack={stack}",
    ]
    done = run_cli("sweeplab.sweep", *args, env={"SWEEPLAB_OUTPUT": str(_isolated_output)})
    assert done.returncode == 1, done.stderr[-2000:]
    assert (
        f"stopped: too many failed trials: {failed} of {failed} finished "
        "(sweep.max_failure_rate=0.5)" in done.stdout
    )
    assert "no trial completed" in done.stdout
    journal = _isolated_output / "optuna" / "hopeless.journal"
    study = optuna.load_study(study_name="hopeless", storage=make_storage(str(journal)))
    assert len(study.trials) == failed and all(t.state == TrialState.FAIL for t in study.trials)
    parent = MlflowClient(mlflow_uri).get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FAILED"  # not FINISHED: the sweep gave up
    assert parent.data.tags["failure_reason"].startswith("too many failed trials: ")


@pytest.mark.slow
def test_trials_the_machine_or_ctrl_c_stopped_or_that_were_retried_are_no_failures():
    """Only a trial's own failure counts towards sweep.max_failure_rate: a full disk that stops
    five trials must not refuse the rerun that resumes them."""
    frozen = optuna.trial.create_trial

    def failed(number, **attrs):
        trial = frozen(state=TrialState.FAIL, user_attrs=attrs)
        trial.number = number
        return trial

    stopped = [failed(n, stopped_by="the machine failed (disk full)") for n in range(5)]
    interrupted = failed(5, stopped_by="interrupted (Ctrl-C or SIGTERM)")
    died, its_retry = failed(6), failed(7, retry_of=6)  # its worker died; the retry failed too
    own = failed(8)
    assert count_failed([*stopped, interrupted]) == 0
    assert count_failed([died, its_retry]) == 1
    assert count_failed([*stopped, interrupted, died, its_retry, own]) == 2


def test_two_processes_starting_the_same_new_sweep_at_once(tmp_path):
    """Both create the MLflow store, the study and the parent run at the same moment."""
    out = tmp_path / "out"
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"  # a store that does not exist yet
    args = [
        "sweep=synthetic",
        *SMALL,
        f"tracking.uri={uri}",
        "sweep.n_trials=6",
        "sweep.study_name=twin",
        "trainer.epochs=40",
        "data.n_train=600",
    ]
    env = {**os.environ, "SWEEPLAB_OUTPUT": str(out)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "sweeplab.sweep", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    for proc, (_, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr[-3000:]
        assert "database is locked" not in stderr
    study = optuna.load_study(
        study_name="twin", storage=make_storage(str(out / "optuna" / "twin.journal"))
    )
    assert len(study.trials) == 6
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    # each process samples its own stream (storage.join_study): no trial repeats another
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 6
    client = MlflowClient(uri)
    [experiment] = [e for e in client.search_experiments() if e.name == "sweep-synthetic"]
    parents = client.search_runs([experiment.experiment_id], "tags.`sweeplab.role` = 'study'")
    assert len(parents) == 1
    assert len(children(uri, parents[0].info.run_id)) == 6

    # a resume with a larger budget proposes new trials, not the first ones again
    more = [a.replace("sweep.n_trials=6", "sweep.n_trials=9") for a in args]
    assert run_cli("sweeplab.sweep", *more, env={"SWEEPLAB_OUTPUT": str(out)}).returncode == 0
    study = optuna.load_study(
        study_name="twin", storage=make_storage(str(out / "optuna" / "twin.journal"))
    )
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == len(study.trials) == 9


@pytest.mark.parametrize("module", ["sweeplab.train", "sweeplab.sweep"])
def test_unwritable_output_folder_fails_at_start(module, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = run_cli(
        module,
        "sweep=synthetic" if module.endswith("sweep") else "trainer.epochs=1",
        env={"SWEEPLAB_OUTPUT": str(blocker / "outputs")},
    )
    assert done.returncode == 2
    assert f"output folder {blocker / 'outputs'} is not writable" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def _worker_pid(trial: optuna.trial.FrozenTrial) -> int:
    return int(trial.user_attrs.get("worker", ":0").rpartition(":")[2])


def _both_train(running: list[optuna.trial.FrozenTrial]) -> bool:
    return len({_worker_pid(t) for t in running if t.intermediate_values}) == 2


TWO_WORKERS_TRAINING = [  # a sweep whose 2 processes each train a trial for seconds
    "sweep=synthetic",
    *SMALL,
    "sweep.workers=2",
    "sweep.stack=1",
    "sweep.n_trials=6",
    "trainer.epochs=3000",
    "data.n_train=400",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "said"),
    [
        (signal.SIGKILL, "was killed (signal 9)"),  # as the OOM killer does
        (signal.SIGTERM, "exited with status 130"),  # a scheduler stopping that process alone
    ],
)
def test_a_killed_worker_child_is_reaped_and_its_trial_retried(
    signum, said, mlflow_uri, _isolated_output
):
    """An extra worker killed alone: the main process notices, fails and retries its trial, and
    the sweep ends with the exact budget, nothing RUNNING."""
    args = [*TWO_WORKERS_TRAINING, f"tracking.uri={mlflow_uri}", "sweep.pruner.name=none"]
    proc, running = sweep_in_background(
        [*args, "sweep.study_name=reaped"], _isolated_output, "reaped", _both_train
    )
    storage = make_storage(str(_isolated_output / "optuna" / "reaped.journal"))
    [victim] = [t for t in running if t.intermediate_values and _worker_pid(t) != proc.pid]
    os.kill(_worker_pid(victim), signum)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert f"{said}; its trials are failed and retried" in stderr
    study = optuna.load_study(study_name="reaped", storage=storage)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 6 and states.count(TrialState.FAIL) == 1
    [retry] = [t for t in study.trials if t.user_attrs.get("retry_of") == victim.number]
    assert retry.params == victim.params
    client = MlflowClient(mlflow_uri)
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    runs = children(mlflow_uri, parent.info.run_id)
    # the dead worker's helper, left behind, writes what it was sent and ends the run KILLED;
    # the sweep waits for it (it had not: the run stayed RUNNING after a busy CI machine's exit)
    [killed] = [r for r in runs if r.data.tags["optuna.trial"] == str(victim.number)]
    assert killed.info.status == "KILLED"
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 6 + ["KILLED"]


@pytest.mark.slow
def test_ctrl_c_with_two_workers_stops_once_and_leaves_optuna_and_mlflow_agreeing(
    mlflow_uri, _isolated_output
):
    """A terminal's Ctrl-C reaches every process of the sweep (SIGINT to its process group), and
    the main process then stops its workers (SIGTERM): each stops once, in a few lines."""
    args = [*TWO_WORKERS_TRAINING, f"tracking.uri={mlflow_uri}", "sweep.study_name=interrupted"]
    proc, running = sweep_in_background(args, _isolated_output, "interrupted", _both_train)
    storage = make_storage(str(_isolated_output / "optuna" / "interrupted.journal"))
    for pid in {_worker_pid(t) for t in running}:  # as a terminal sends it to the foreground job
        os.kill(pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert "interrupted: finished trials are kept" in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) <= 6, stderr[-3000:]
    study = optuna.load_study(study_name="interrupted", storage=storage)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    client = MlflowClient(mlflow_uri)
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "KILLED"
    agreeing = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "KILLED"}
    for trial in study.trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == agreeing[trial.state.name], (trial.number, trial.state)
        assert run.data.tags.get("optuna.trial_state") == trial.state.name


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB file system of its own (a tmpfs; needs root), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        pytest.skip(f"cannot mount a small file system here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    # unbuffered: a buffered file would keep the part of the last write that did not fit and
    # fail again when closed
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * (1 << 20))
        except OSError:
            pass
    return filler


@pytest.mark.slow
def test_a_full_disk_stops_the_sweep_with_a_summary_and_a_rerun_resumes(small_disk):
    output, store = small_disk / "outputs", f"sqlite:///{small_disk / 'mlflow.db'}"
    args = [
        "sweep=synthetic",
        *SMALL,
        f"tracking.uri={store}",
        "sweep.n_trials=4",
        "sweep.stack=1",
        "sweep.study_name=full",
        "trainer.epochs=3000",
    ]
    proc, _ = sweep_in_background(
        args, output, "full", lambda running: any(t.number >= 1 for t in running)
    )
    filler = _fill(small_disk)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 3, stderr[-3000:]
    assert "the machine failed: no space left on device" in stdout + stderr
    assert "Traceback" not in stderr and len(stderr.splitlines()) < 20, stderr[-3000:]

    filler.unlink()
    done = run_cli("sweeplab.sweep", *args, env={"SWEEPLAB_OUTPUT": str(output)})
    assert done.returncode == 0, done.stderr[-3000:]
    journal = str(output / "optuna" / "full.journal")
    study = optuna.load_study(study_name="full", storage=make_storage(journal))
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 4
    assert TrialState.RUNNING not in states
    retried = {t.user_attrs.get("retry_of") for t in study.trials}
    assert all(t.number in retried for t in study.get_trials(states=(TrialState.FAIL,)))
    client = MlflowClient(store)
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED" and "failure_reason" not in parent.data.tags
    assert {r.info.status for r in children(store, parent.info.run_id)} <= {"FINISHED", "KILLED"}


@pytest.mark.slow
def test_a_killed_single_run_ends_killed_not_running(mlflow_uri, _isolated_output):
    """`kill -9` of `python -m sweeplab.train`: its MLflow helper, left behind, ends the run."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sweeplab.train",
            f"tracking.uri={mlflow_uri}",
            "tracking.experiment=killed",
            "trainer.epochs=100000",
        ],
        env={**os.environ, "SWEEPLAB_OUTPUT": str(_isolated_output)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client, run = MlflowClient(mlflow_uri), None
    deadline = time.time() + 120
    while run is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        experiment = client.get_experiment_by_name("killed")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        run = next((r for r in runs if "train/loss" in r.data.metrics), None)  # it trains
    proc.kill()
    proc.wait()
    assert run is not None, "the run never logged an epoch"
    deadline = time.time() + 60  # the helper writes what it was sent, then ends the run
    while time.time() < deadline and client.get_run(run.info.run_id).info.status == "RUNNING":
        time.sleep(0.5)
    assert client.get_run(run.info.run_id).info.status == "KILLED"


@pytest.mark.slow
def test_a_killed_trial_resumes_from_its_checkpoint_as_if_never_killed(
    mlflow_uri, tmp_path, _isolated_output
):
    """kill -9 of the sweep's process group mid-trial; the rerun's retry starts from the trial's
    last checkpoint and ends with the weights and metrics of a run that was never killed."""
    name = "resumed"
    args = [
        "sweep=synthetic",
        *SMALL,
        f"tracking.uri={mlflow_uri}",
        "tracking.log_model=true",  # the trial's weights, compared below
        f"sweep.study_name={name}",
        "sweep.stack=1",
        "sweep.n_trials=1",
        "sweep.pruner.name=none",
        "trainer.epochs=1500",
        "trainer.checkpoint_every=100",
        "data.n_train=400",
    ]
    saved = _isolated_output / "checkpoints" / name / "trial-0.pt"
    proc, [killed] = sweep_in_background(
        args,
        _isolated_output,
        name,
        # a checkpoint exists, and the trial is early enough that it cannot finish before the kill
        lambda running: (
            saved.exists() and len(running) == 1 and len(running[0].intermediate_values) < 1000
        ),
        new_session=True,
    )
    os.killpg(proc.pid, signal.SIGKILL)  # the whole sweep, as a reboot or the OOM killer would
    proc.communicate()

    done = run_cli("sweeplab.sweep", *args, env={"SWEEPLAB_OUTPUT": str(_isolated_output)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "retrying trial 0 from its checkpoint of epoch" in done.stderr
    storage = make_storage(str(_isolated_output / "optuna" / f"{name}.journal"))
    study = optuna.load_study(study_name=name, storage=storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    retry = study.trials[1]
    assert retry.user_attrs["retry_of"] == 0
    client = MlflowClient(mlflow_uri)
    run = client.get_run(retry.user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    resumed_from = int(run.data.tags["sweeplab.resumed_from_epoch"])
    assert resumed_from >= 100 and resumed_from % 100 == 0
    assert client.get_run(killed.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert not [p for p in (_isolated_output / "checkpoints").rglob("*") if p.is_file()]

    # the same config trained in one go, here: the same numbers, bit for bit
    config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    uninterrupted = trainer.run(to_config(yaml.safe_load(Path(config).read_text())))
    weights = client.download_artifacts(run.info.run_id, "model_state_dict.pt", str(tmp_path))
    for key, value in torch.load(weights).items():
        assert torch.equal(value, uninterrupted.model.state_dict()[key]), key
    expected = [epoch["val/acc"] for epoch in uninterrupted.history]
    assert [retry.intermediate_values[e] for e in range(1, 1501)] == expected  # pruner's view
    logged = client.get_metric_history(run.info.run_id, "val/loss")
    assert [m.value for m in sorted(logged, key=lambda m: m.step)] == [
        as_logged(epoch["val/loss"]) for epoch in uninterrupted.history
    ]
    assert retry.value == uninterrupted.metrics["val/acc"]


@pytest.mark.parametrize("stack", [1, 0])
def test_a_trial_the_schema_refuses_fails_with_its_own_failed_run(stack, mlflow_uri, tmp_path):
    """A combination of values no corner of the space has (warm-up epochs not below the
    epochs): its trial fails alone, before training, and its MLflow run says why; the others
    train, one at a time or stacked."""
    write_sweep_file(
        tmp_path,
        "warmup",
        {
            "params": {"trainer.epochs": "choice(2, 6)", "trainer.warmup_epochs": "choice(0, 3)"},
            "sampler": {"name": "grid"},
        },
    )
    overrides = [
        f"hydra.searchpath=[file://{tmp_path}]",
        *[
            o
            for o in sweep_overrides(mlflow_uri)
            if o.partition("=")[0] not in ("sweep", "trainer.epochs")
        ],
        "sweep=warmup",
        "sweep.n_trials=3",
        f"sweep.stack={stack}",
        f"sweep.study_name=warmup{stack}",
        "trainer.lr_schedule=cosine",
    ]
    plan, _ = plan_and_run(overrides, "warmup")
    trials = load(plan).trials
    [refused] = [t for t in trials if t.state == TrialState.FAIL]
    assert refused.params == {"trainer.epochs": 2, "trainer.warmup_epochs": 3}
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    client = MlflowClient(mlflow_uri)
    run = client.get_run(refused.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["mlflow.parentRunId"] == load(plan).user_attrs["mlflow_parent_run_id"]
    assert (
        "trainer.warmup_epochs=3: must be >= 0 and < trainer.epochs=2"
        in (run.data.tags["failure_reason"])
    )
    assert run.info.run_name == f"warmup{stack}-trial-{refused.number} (failed)"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["traceback.txt"]


def test_ctrl_c_after_a_trial_trained_leaves_optuna_and_mlflow_agreeing(mlflow_uri, monkeypatch):
    """Ctrl-C landing after a trial's run ended FINISHED but before Optuna was told (while its
    results are recorded): Optuna fails the trial, so its run ends KILLED, and a resume retries
    it. A signal cannot be timed to that moment: the interrupt is raised there instead."""
    from sweeplab.sweep.plan import SweepPlan

    def interrupted(plan, trial, metrics):
        raise KeyboardInterrupt("signal 2")

    monkeypatch.setattr(SweepPlan, "record_result", interrupted)
    overrides = sweep_overrides(mlflow_uri, "sweep.stack=1", "sweep.study_name=late-ctrl-c")
    with pytest.raises(KeyboardInterrupt):
        plan_and_run(overrides)
    [trial] = optuna.load_study(
        study_name="late-ctrl-c",
        storage=make_storage(
            str(Path(os.environ["SWEEPLAB_OUTPUT"]) / "optuna" / "late-ctrl-c.journal")
        ),
    ).trials
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["stopped_by"] == "interrupted (Ctrl-C or SIGTERM)"  # retried
    run = MlflowClient(mlflow_uri).get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"
    assert run.data.tags["optuna.trial_state"] == "FAIL"


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of this test's own, which it may stop and start."""
    server = PostgresServer()
    yield server
    server.remove()


@pytest.mark.slow
def test_a_store_that_stops_answering_stops_the_sweep_and_a_rerun_resumes(
    own_postgres, mlflow_uri, _isolated_output
):
    """The study's PostgreSQL server goes down mid-trial (as a crash would): the sweep stops
    with a summary, its MLflow parent KILLED, exit 3, instead of failing trial after trial; once
    the server is back, the same command finishes the budget (the trial it was training is
    retried)."""
    args = sweep_overrides(
        mlflow_uri,
        "sweep.n_trials=3",
        "sweep.stack=1",
        "sweep.study_name=gone",
        "sweep.pruner.name=none",
        "trainer.epochs=3000",  # seconds a trial
        f"sweep.storage={own_postgres.url}",
    )
    proc, _ = sweep_in_background(
        args,
        _isolated_output,
        "gone",
        lambda running: any(t.intermediate_values for t in running),
        storage=own_postgres.url,
    )
    own_postgres.stop("immediate")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 3, stderr[-3000:]
    assert "stopped: the machine failed: the store stopped answering" in stdout, stdout + stderr
    assert "Traceback" not in stderr and len(stderr.splitlines()) < 10, stderr[-3000:]
    parent = MlflowClient(mlflow_uri).search_runs(
        [MlflowClient(mlflow_uri).get_experiment_by_name("sweep-synthetic").experiment_id],
        "tags.`optuna.study` = 'gone' and tags.`sweeplab.role` = 'study'",
    )[0]
    assert parent.info.status == "KILLED"  # and FINISHED after the rerun (below)

    own_postgres.start()
    done = run_cli("sweeplab.sweep", *args, env={"SWEEPLAB_OUTPUT": str(_isolated_output)})
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="gone", storage=make_storage(own_postgres.url))
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 3 and TrialState.RUNNING not in states
    assert MlflowClient(mlflow_uri).get_run(parent.info.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_a_full_disk_stops_a_single_run_in_one_line(small_disk):
    """`python -m sweeplab.train` whose store's disk fills up while it trains: exit 3 with one
    line naming the cause, not a traceback."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sweeplab.train",
            f"tracking.uri=sqlite:///{small_disk / 'mlflow.db'}",
            "trainer.epochs=200000",  # minutes: it ends when the disk is full
            "trainer.progress=false",
        ],
        env={**os.environ, "SWEEPLAB_OUTPUT": str(small_disk / "outputs")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = MlflowClient(f"sqlite:///{small_disk / 'mlflow.db'}")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        with contextlib.suppress(Exception):  # the store may not exist yet
            experiment = client.get_experiment_by_name("sweeplab").experiment_id
            if client.search_runs([experiment], "metrics.`val/acc` > 0"):
                break
    filler = _fill(small_disk)
    _, stderr = proc.communicate(timeout=300)
    filler.unlink()
    assert proc.returncode == 3, stderr[-3000:]
    assert "the machine failed (no space left on device)" in stderr, stderr[-3000:]
    assert "Traceback" not in stderr and len(stderr.splitlines()) < 5, stderr[-3000:]
