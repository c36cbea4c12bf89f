"""The metric writer: a real helper process writing to a real SQLite MLflow store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sweeplab.training import metric_writer, tracking
from sweeplab.training.metric_writer import MetricWriter
from sweeplab.training.tracking import train_and_track


@pytest.fixture
def client(mlflow_uri):
    return MlflowClient(mlflow_uri)


@pytest.fixture
def run_id(client):
    experiment = client.get_experiment_by_name("writer") or client.create_experiment("writer")
    experiment_id = experiment if isinstance(experiment, str) else experiment.experiment_id
    return client.create_run(experiment_id).info.run_id


@pytest.fixture
def writer():
    started = MetricWriter()
    yield started
    started.close()


def epochs(first, last, key="val/acc"):
    return [Metric(key, step / 100, 1000 + step, step) for step in range(first, last + 1)]


def steps(client, run_id, key="val/acc"):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


class Fallback:
    """Writes what it is given with the client, as MlflowRun does, and keeps count."""

    def __init__(self, client, run_id):
        self.client, self.run_id, self.written = client, run_id, []

    def __call__(self, metrics):
        self.written += metrics
        self.client.log_batch(self.run_id, metrics=metrics)


def test_helper_process_writes_every_batch_by_sync(writer, client, run_id, mlflow_uri):
    fallback = Fallback(client, run_id)
    writer.send(mlflow_uri, run_id, epochs(1, 1500), fallback)  # more than one log_batch call
    writer.send(mlflow_uri, run_id, epochs(1501, 1510), fallback)
    writer.sync()
    assert steps(client, run_id) == list(range(1, 1511))
    assert fallback.written == []  # all written by the helper
    assert writer._process.poll() is None and writer._process.pid != os.getpid()


def test_helper_is_out_of_reach_of_ctrl_c_and_leaves_when_the_pipe_closes(writer):
    # Ctrl-C signals the terminal's foreground process group: the helper is in its own session
    assert os.getsid(writer._process.pid) != os.getsid(0)
    writer.close()
    assert writer._process.returncode == 0


def test_killed_helper_loses_nothing(writer, client, run_id, mlflow_uri):
    fallback = Fallback(client, run_id)
    writer.send(mlflow_uri, run_id, epochs(1, 5), fallback)
    writer._process.kill()
    writer._process.wait()
    writer.send(mlflow_uri, run_id, epochs(6, 10), fallback)
    writer.sync()  # finds the helper dead: writes whatever it had not confirmed here
    writer.send(mlflow_uri, run_id, epochs(11, 12), fallback)  # and from now on writes here
    assert writer.broken
    assert steps(client, run_id) == list(range(1, 13))
    assert {m.step for m in fallback.written} >= set(range(6, 13))


def test_a_batch_the_helper_cannot_write_raises_the_stores_error_here(writer, client, mlflow_uri):
    missing_run = "0" * 32
    fallback = Fallback(client, missing_run)
    writer.send(mlflow_uri, missing_run, epochs(1, 3), fallback)
    with pytest.raises(MlflowException, match=missing_run):
        writer.sync()
    assert [m.step for m in fallback.written] == [1, 2, 3]
    assert not writer.broken  # the helper itself is fine


def test_helper_leaves_when_its_training_process_dies(tmp_path):
    script = (
        "import os, sys\n"
        "from sweeplab.training.metric_writer import MetricWriter\n"
        "print(MetricWriter()._process.pid, flush=True)\n"
        "os._exit(1)\n"  # no close, no atexit: as if killed
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    helper = int(done.stdout.split()[0])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(helper, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(helper, signal.SIGKILL)
    pytest.fail("the helper outlived its training process by 60 s")


@pytest.mark.parametrize("background", [True, False])
def test_training_run_logs_every_epoch_either_way(make_config, client, background, monkeypatch):
    # hand over after every epoch, so that a short test run goes through the helper many times
    monkeypatch.setattr(tracking, "HAND_OVER_EVERY_S", 0.0)
    monkeypatch.setattr(tracking, "WRITE_EVERY_S", 0.0)
    batches_before = metric_writer.shared_writer().batches
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
        h["train/loss"] for h in result.history
    ]
    assert client.get_run(run_id).info.status == "FINISHED"
    handed_over = metric_writer.shared_writer().batches - batches_before
    assert handed_over >= 39 if background else handed_over == 0
