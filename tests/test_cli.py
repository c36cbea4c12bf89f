"""`python -m sweeplab.train` as a user runs it: real subprocesses, a temp output folder."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from .conftest import TINY, run_cli
from .test_mnist import tiny_arrays, write_idx_set
from .test_sweep import SMALL, write_sweep_file


@pytest.mark.slow
def test_train_with_defaults_prints_where_the_run_is(_isolated_output):
    done = run_cli(
        "sweeplab.train",
        "trainer.epochs=5",
        "trainer.progress=false",
        env={"SWEEPLAB_OUTPUT": str(_isolated_output)},
    )
    assert done.returncode == 0, done.stderr
    assert "MLflow run " in done.stdout and "test/acc=" in done.stdout
    assert str(_isolated_output / "mlflow.db") in done.stdout
    assert (_isolated_output / "mlflow.db").exists()


def test_print_config_only(_isolated_output):
    done = run_cli("sweeplab.train", "--cfg", "job", "model.d_hidden=17")
    assert done.returncode == 0, done.stderr
    assert "d_hidden: 17" in done.stdout
    assert not (_isolated_output / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("model.d_hidden=0", "model.d_hidden=0"),
        ("optimizer.lr=-1", "optimizer.lr=-1"),
        ("trainer.batch_size=0", "trainer.batch_size=0"),
        ("trainer.epochs=0", "trainer.epochs=0"),
        ("model.activation=swish", "model.activation='swish'"),
    ],
)
def test_bad_value_exits_nonzero_naming_it_before_any_run(override, named, _isolated_output):
    done = run_cli(
        "sweeplab.train", *TINY, override, env={"SWEEPLAB_OUTPUT": str(_isolated_output)}
    )
    assert done.returncode == 2
    assert named in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (_isolated_output / "mlflow.db").exists()  # no MLflow store, so no run


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("model.width=3", "model.width"),
        ("model.d_hidden=wide", "d_hidden"),
        ("optimizer=adamax", "adamax"),
        ("experiment=lecture_mnits", "Could not find 'experiment/lecture_mnits'"),  # a typo
    ],
)
def test_unknown_key_wrong_type_or_option_fails_at_compose(override, named, _isolated_output):
    done = run_cli(
        "sweeplab.train", *TINY, override, env={"SWEEPLAB_OUTPUT": str(_isolated_output)}
    )
    assert done.returncode == 2  # a bad config, whoever finds it (Hydra itself exits 1)
    assert named in done.stderr
    assert not (_isolated_output / "mlflow.db").exists()


def test_diverging_run_fails_with_one_line_and_a_failed_run(_isolated_output):
    from mlflow.tracking import MlflowClient

    done = run_cli(
        "sweeplab.train",
        *TINY,
        "optimizer=sgd",
        "optimizer.lr=1e6",
        "tracking.run_name=boom",
        env={"SWEEPLAB_OUTPUT": str(_isolated_output)},
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: train/loss=")
    client = MlflowClient(f"sqlite:///{_isolated_output / 'mlflow.db'}")
    [run] = client.search_runs(
        [client.get_experiment_by_name("sweeplab").experiment_id], "attributes.run_name = 'boom'"
    )
    assert run.info.status == "FAILED"
    assert "training diverged" in run.data.tags["failure_reason"]


@pytest.mark.parametrize(
    ("typo", "named"),
    [
        (["sweep=synthtic"], "sweep/synthtic"),
        (["sweep=synthtic", "sweep.n_trials=3"], "sweep/synthtic"),
        (["sweep=synthetic", "experiment=lecture_synthtic"], "experiment/lecture_synthtic"),
    ],
)
def test_a_typo_in_a_sweep_or_experiment_name_is_named_before_any_work(
    typo, named, _isolated_output
):
    done = run_cli("sweeplab.sweep", *typo, env={"SWEEPLAB_OUTPUT": str(_isolated_output)})
    assert done.returncode == 2
    assert f"Could not find '{named}'" in done.stderr and "synthetic" in done.stderr
    assert "AssertionError" not in done.stderr and "sweep=None" not in done.stderr
    assert not (_isolated_output / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("command", "key", "url", "why"),
    [
        (
            "sweep",
            "sweep.storage",
            "postgresql://me:pw@127.0.0.1:9/db",
            "No module named 'psycopg'",
        ),
        (
            "sweep",
            "sweep.storage",
            "postgresql+psycopg2://me:pw@127.0.0.1:9/db",
            "Connection refused",
        ),
        (
            "sweep",
            "tracking.uri",
            "postgresql+psycopg2://me:pw@no-such-host.invalid/db",
            "no-such-host",
        ),
        (
            "train",
            "tracking.uri",
            "postgresql+psycopg2://me:pw@127.0.0.1:9/db",
            "Connection refused",
        ),
        ("train", "tracking.uri", "http://me:pw@127.0.0.1:9", "no MLflow server answers there"),
        ("sweep", "tracking.uri", "http://me:pw@127.0.0.1:9", "no MLflow server answers there"),
        ("sweep", "sweep.storage", "mysql://me:pw@127.0.0.1:9/db", "No module named 'MySQLdb'"),
        ("train", "tracking.uri", "foo://me:pw@127.0.0.1:9/db", "Can't load plugin"),
        # a folder where a file is: a read-only folder too, and also when the tests run as root
        ("train", "tracking.uri", "sqlite:///{a_file}/mlflow.db", "cannot write there"),
        ("sweep", "tracking.uri", "sqlite:///{a_file}/mlflow.db", "cannot write there"),
        ("sweep", "sweep.storage", "sqlite:///{a_file}/optuna.db", "cannot write there"),
    ],
)
def test_a_store_that_cannot_be_opened_is_refused_in_one_line_before_any_work(
    command, key, url, why, _isolated_output, tmp_path
):
    """In seconds: MLflow itself retries a dead database for minutes, after training."""
    (tmp_path / "a-file").write_text("")
    url = url.format(a_file=tmp_path / "a-file")
    sweep = ["sweep=synthetic"] if command == "sweep" else []
    done = run_cli(
        f"sweeplab.{command}",
        *sweep,
        f"{key}={url}",
        env={"SWEEPLAB_OUTPUT": str(_isolated_output)},
    )
    assert done.returncode == 2
    masked = url.replace(":pw@", ":***@")
    assert done.stderr.startswith(f"error: {key}={masked!r}: "), done.stderr
    assert why in done.stderr and ":pw@" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (_isolated_output / "mlflow.db").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_device_this_machine_lacks_is_refused_before_any_run(command, _isolated_output):
    sweep = ["sweep=synthetic"] if command == "sweep" else []
    done = run_cli(
        f"sweeplab.{command}",
        *sweep,
        "trainer.device=cuda",
        env={"SWEEPLAB_OUTPUT": str(_isolated_output)},
    )
    assert done.returncode == 2
    assert done.stderr == "error: trainer.device='cuda': CUDA is not available on this machine\n"
    assert not (_isolated_output / "mlflow.db").exists()


def test_relative_stores_live_in_the_output_folder_wherever_the_command_runs(
    tmp_path, _isolated_output
):
    """A relative SQLite tracking store and sweep storage: in the output folder, so a resume
    from another folder finds them."""
    args = ["tracking.uri=sqlite:///runs.db", "sweep.storage=sqlite:///studies.db"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeplab.sweep",
            "sweep=synthetic",
            *SMALL,
            *args,
            "sweep.n_trials=1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=elsewhere,
        env={**os.environ, "SWEEPLAB_OUTPUT": str(_isolated_output)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (_isolated_output / "runs.db").exists() and (_isolated_output / "studies.db").exists()
    assert list((_isolated_output / "mlartifacts").rglob("config.yaml"))
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize(
    ("key", "name"),
    [("study_name", n) for n in ["../x", "../../x", ".hidden", "a/b", ""]]
    + [("warm_start", "../x"), ("warm_start", "a/b")],
)
def test_a_study_name_that_is_not_a_plain_file_name_is_refused(key, name, _isolated_output):
    done = run_cli(
        "sweeplab.sweep",
        "sweep=synthetic",
        f"sweep.{key}='{name}'",
        env={"SWEEPLAB_OUTPUT": str(_isolated_output)},
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: sweep.{key}={name!r}: must be letters"), done.stderr
    assert not (_isolated_output / "mlflow.db").exists()


def _broken(root, how):
    """An IDX folder as `how` says: missing, fine, truncated, or with test images of 20 x 20."""
    if how == "missing":
        return
    arrays = tiny_arrays()
    if how == "other size":
        arrays["test_images"] = arrays["test_images"][:, :20, :20]
    write_idx_set(root, arrays)
    if how == "truncated":  # as a download cut off would leave it
        path = root / "train-images-idx3-ubyte"
        path.write_bytes(path.read_bytes()[:-100])


@pytest.mark.parametrize("command", ["train", "sweep"])
@pytest.mark.parametrize(
    ("files", "override", "said"),
    [
        ("missing", "data.n_val=5", "train-images-idx3-ubyte(.gz): missing"),
        ("fine", "data.n_val=100", "data.n_val=100: the dataset has only 30 training images"),
        ("truncated", "data.n_val=5", "train-images-idx3-ubyte: size mismatch"),
        ("other size", "data.n_val=5", "t10k-images-idx3-ubyte: images of (20, 20) pixels"),
    ],
)
def test_data_that_cannot_be_used_is_refused_before_any_run(
    command, files, override, said, tmp_path, _isolated_output
):
    """Checked by loading it, once, before any run (the run then reuses what was loaded)."""
    root = tmp_path / "idx"
    _broken(root, files)
    sweep = ["sweep=mnist"] if command == "sweep" else []
    done = run_cli(
        f"sweeplab.{command}",
        *sweep,
        "data=idx",
        f"data.root={root}",
        override,
        env={"SWEEPLAB_OUTPUT": str(_isolated_output)},
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and said in done.stderr, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (_isolated_output / "mlflow.db").exists()


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_network_too_big_for_the_machine_is_refused_before_any_run(
    command, tmp_path, _isolated_output
):
    if command == "sweep":  # one corner of the search space is too big
        write_sweep_file(tmp_path, "huge", {"params/model.d_hidden": "int(interval(4, 4e9))"})
        args = ["--config-dir", str(tmp_path), "sweep=huge"]
    else:
        args = ["model.d_hidden=4000000000"]
    done = run_cli(f"sweeplab.{command}", *args, env={"SWEEPLAB_OUTPUT": str(_isolated_output)})
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: model.d_hidden=4000000000: the network needs about ")
    assert "more than the" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (_isolated_output / "mlflow.db").exists()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_train_ends_its_run_killed_in_one_line_with_130(signum, _isolated_output):
    """Ctrl-C (or SIGTERM) mid-training: exit status 130 as the sweep's, one line, no traceback."""
    from mlflow.tracking import MlflowClient

    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeplab.train", "trainer.epochs=100000", "trainer.progress=false"],
        env={**os.environ, "SWEEPLAB_OUTPUT": str(_isolated_output)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a terminal's Ctrl-C (a background job would inherit SIGINT ignored)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    client = MlflowClient(f"sqlite:///{_isolated_output / 'mlflow.db'}")
    deadline = time.time() + 120
    runs = []
    while not runs and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        with contextlib.suppress(Exception):  # the store may not exist yet
            runs = client.search_runs(
                [e.experiment_id for e in client.search_experiments()], "metrics.`val/acc` > 0"
            )
    assert runs, "the run never logged an epoch"
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "error: interrupted", stderr[-2000:]
    assert "Traceback" not in stderr
    # before the command returns (CI once read RUNNING: this test's client had created the new
    # store meanwhile, the helper's start failed, and the helper dropped the run's end)
    assert client.get_run(runs[0].info.run_id).info.status == "KILLED"
