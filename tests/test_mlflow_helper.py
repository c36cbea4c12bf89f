"""The MLflow helper process: a real helper writing to a real SQLite MLflow store, while the
training process never imports MLflow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sweeplab.config import output_dir
from sweeplab.training import tracking
from sweeplab.training.mlflow_helper import STORE_MODULE, Helper, shared_helper
from sweeplab.training.mlflow_store import ORPHANED, as_logged
from sweeplab.training.tracking import train_and_track


@pytest.fixture
def client(mlflow_uri):
    return MlflowClient(mlflow_uri)


@pytest.fixture
def helper():
    started = Helper()
    yield started
    started.close()


def spec(uri, name="helper-test"):
    return {
        "uri": uri,
        "experiment": "helper",
        "output": str(output_dir()),
        "run_name": name,
        "tags": {"purpose": "test"},
        "params": {"model.d_hidden": "4"},
        "config_yaml": "model:\n  d_hidden: 4\n",
    }


def rows(first, last, key="val/acc"):
    return [(key, step / 100, 1000 + step, step) for step in range(first, last + 1)]


def steps(client, run_id, key="val/acc"):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def start(helper, uri, name="helper-test"):
    key = uuid.uuid4().hex
    helper.send(("start", key, spec(uri, name)))
    return key


def test_helper_creates_the_run_and_writes_every_batch_by_sync(helper, client, mlflow_uri):
    told = []
    key = uuid.uuid4().hex
    helper.on_started[key] = told.append
    helper.send(("start", key, spec(mlflow_uri)))
    helper.send(("metrics", key, rows(1, 1500)))  # more than one log_batch call
    helper.send(("metrics", key, rows(1501, 1510)))
    helper.send(("end", key, "FINISHED", None, None))
    helper.sync()
    run_id = helper.run_ids[key]
    assert told == [run_id]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["model.d_hidden"] == "4"
    assert run.data.tags["purpose"] == "test"
    assert steps(client, run_id) == list(range(1, 1511))
    assert helper._local is None  # all of it written by the helper process
    assert helper._process.poll() is None and helper._process.pid != os.getpid()


def test_messages_are_pipelined_within_the_pipes_room_and_applied_in_order(
    helper, client, mlflow_uri
):
    helper._pipe_bytes = 4096  # a small pipe: many hand-overs must queue here, never block
    key = start(helper, mlflow_uri)
    helper.sync()
    for first in range(1, 2001, 20):
        helper.send(("metrics", key, rows(first, first + 19)))
        # queued beyond the room, yet more than one message at a time reaches the helper
        assert helper._bytes_in_flight <= helper._pipe_bytes
    assert len(helper._in_flight) > 1 or not helper._waiting
    helper.send(("end", key, "FINISHED", None, None))
    helper.sync()
    assert not helper._in_flight and helper._bytes_in_flight == 0 and not helper._waiting
    assert steps(client, helper.run_ids[key]) == list(range(1, 2001))


def test_helper_runs_below_the_training_process_once_training_begins(helper):
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, helper._process.pid) == mine  # importing MLflow
    helper.stay_below()
    assert os.getpriority(os.PRIO_PROCESS, helper._process.pid) == min(19, mine + 10)
    # its own session is niced too where the kernel groups by session and lets us (best effort)
    group = Path(f"/proc/{helper._process.pid}/autogroup")
    if helper.session_niced:
        assert group.read_text().split()[-1] == str(min(19, mine + 10))


def test_a_helper_that_was_sent_nothing_is_stopped_at_once():
    started = Helper()  # as a sweep starts it before its config is checked
    began = time.monotonic()
    started.close()  # a bad config's error must not wait for the helper's MLflow import
    assert time.monotonic() - began < 1.0
    assert started._process.returncode is not None


def test_helper_is_out_of_reach_of_ctrl_c_and_leaves_when_the_pipe_closes(helper, mlflow_uri):
    # Ctrl-C signals the terminal's foreground process group: the helper is in its own session
    assert os.getsid(helper._process.pid) != os.getsid(0)
    start(helper, mlflow_uri)
    helper.sync()
    helper.close()
    assert helper._process.returncode == 0


def test_killed_helper_loses_nothing(helper, client, mlflow_uri):
    key = start(helper, mlflow_uri)
    helper.send(("metrics", key, rows(1, 5)))
    helper.sync()
    helper._process.kill()
    helper._process.wait()
    helper.send(("metrics", key, rows(6, 10)))
    helper.sync()  # finds the helper dead: applies here whatever it had not confirmed
    helper.send(("metrics", key, rows(11, 12)))  # and from now on writes here
    helper.send(("end", key, "FINISHED", None, None))
    assert helper.broken and helper._local is not None
    run_id = helper.run_ids[key]
    assert steps(client, run_id) == list(range(1, 13))
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_message_the_helper_cannot_apply_raises_the_stores_error_here(helper, tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):  # root writes anywhere
        folder = tmp_path / "a-file"
        folder.write_text("not a folder")
    uri = f"sqlite:///{folder / 'sub' / 'mlflow.db'}"
    key = start(helper, uri)
    with pytest.raises(RuntimeError, match="cannot write"):
        helper.sync()
    assert not helper.broken  # the helper itself is fine
    helper.send(("end", key, "FAILED", "no store", None))  # a run that never started: nothing


def start_where_the_helper_fails(helper, tmp_path):
    """A run whose start the helper cannot apply, and this process can, a moment later (in CI:
    another process was creating the same new store). Here the store's folder is a file until
    the helper has answered."""
    folder = tmp_path / "store"
    folder.write_text("not a folder yet")
    db = folder / "mlflow.db"
    key = start(helper, f"sqlite:///{db}")
    while not helper._ready:  # the start goes out once the helper has imported MLflow
        helper.poll()
        time.sleep(0.05)
    assert helper._from_helper.poll(120), "no answer to the start"
    folder.unlink()
    helper.send(("metrics", key, rows(1, 3)))  # the start, applied here, then this
    helper.sync()
    return key, MlflowClient(f"sqlite:///{db}")


@pytest.mark.parametrize("ended_by", ["this process", "the helper"])
def test_a_run_started_here_when_the_helper_failed_still_ends(ended_by, helper, tmp_path):
    """Its later messages reach the run, its end included, and the helper adopts it: it ends
    the run KILLED when this process goes without ending it."""
    key, client = start_where_the_helper_fails(helper, tmp_path)
    run_id = helper.run_ids[key]
    if ended_by == "this process":
        helper.send(("end", key, "KILLED", "interrupted", None))
        helper.sync()
    else:
        helper.close()
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert steps(client, run_id) == [1, 2, 3]
    assert run.data.tags["failure_reason"] == (
        "interrupted" if ended_by == "this process" else ORPHANED
    )


ORPHAN = """
import os, sys, uuid
from sweeplab.training.mlflow_helper import Helper
helper = Helper()
key = uuid.uuid4().hex
helper.send(("start", key, {spec!r}))
helper.sync()
print(helper.run_ids[key], helper._process.pid, flush=True)
os._exit(1)  # no end, no close, no atexit: as if killed
"""


def test_helper_ends_the_runs_of_a_dead_training_process_killed_and_leaves(client, mlflow_uri):
    done = subprocess.run(
        [sys.executable, "-c", ORPHAN.format(spec=spec(mlflow_uri, "orphan"))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    run_id, helper = done.stdout.split()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(int(helper), 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(int(helper), signal.SIGKILL)
        pytest.fail("the helper outlived its training process by 60 s")
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["failure_reason"] == ORPHANED


@pytest.mark.parametrize("background", [True, False])
def test_training_run_logs_every_epoch_either_way(make_config, client, background, monkeypatch):
    # hand over after every epoch, so that a short test run goes through the helper many times
    monkeypatch.setattr(tracking, "HAND_OVER_EVERY_S", 0.0)
    monkeypatch.setattr(tracking, "WRITE_EVERY_S", 0.0)
    before = shared_helper(background).sent
    cfg = make_config(
        "trainer.epochs=40",
        f"tracking.background_metrics={str(background).lower()}",
        "tracking.log_plots=false",
        "tracking.log_model=false",
    )
    result, run_id = train_and_track(cfg)
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 41))
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [
        as_logged(h["train/loss"]) for h in result.history
    ]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert shared_helper(background).sent - before >= 40  # start, 40 hand-overs at least, end
    assert shared_helper(background).broken == (not background)


TRAIN_AND_LIST_MODULES = """
import atexit, sys
atexit.register(lambda: print("modules:", *sorted(
    m for m in sys.modules if m.split(".")[0] == "mlflow" or m == "torch._dynamo"
)))
sys.argv = ["train", *{args!r}]
from sweeplab.train import main
main()
"""


@pytest.mark.parametrize(
    "args", [["experiment=lecture_synthetic"], ["data=regression", "trainer.lr_schedule=cosine"]]
)
def test_the_training_process_imports_neither_mlflow_nor_torch_dynamo(args, mlflow_uri, tmp_path):
    args = [*args, "trainer.epochs=3", "trainer.progress=false", f"tracking.uri={mlflow_uri}"]
    phases = tmp_path / "phases.txt"
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_AND_LIST_MODULES.format(args=args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "SWEEPLAB_OUTPUT": str(tmp_path), "SWEEPLAB_PHASES": str(phases)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "MLflow run " in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "modules:"  # none of them
    # one helper process, started first thing, wrote it all
    assert phases.read_text().count("helper: MLflow imported") == 1


def test_the_helper_process_imports_neither_hydra_nor_torch():
    """It imports MLflow while the training process composes its config: seconds on the path to
    a run's first write, not to be spent on libraries it does not use."""
    listed = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, {STORE_MODULE}; "
            "print(*sorted({m.split('.')[0] for m in sys.modules} & {'hydra', 'omegaconf', 'torch'}))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert listed.stdout.strip() == ""
