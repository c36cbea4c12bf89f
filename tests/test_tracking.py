"""A training run read back from a real MLflow store through the MLflow client."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from sweeplab.provenance import git_commit
from sweeplab.stores import ui_link
from sweeplab.training.mlflow_helper import shared_helper
from sweeplab.training.mlflow_store import as_logged, connect
from sweeplab.training.tracking import param_text, run_params, train_and_track
from sweeplab.training.trainer import Callback, DivergenceError


def artifact_names(client, run_id):
    return {a.path for a in client.list_artifacts(run_id)}


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (4.13276077e-05, "4.133e-05"),
        (1.37891e-06, "1.379e-06"),
        (0.01, "0.01"),
        (0.9, "0.9"),
        (1234.5678, "1235"),
        (100.0, "100"),
        (3, "3"),
        (True, "True"),
        ("adam", "adam"),
    ],
)
def test_params_read_with_four_significant_digits_and_their_exponent(value, shown):
    assert param_text(value) == shown


@pytest.mark.parametrize(
    ("uri", "experiment", "link"),
    [
        ("sqlite:////tmp/x/mlflow.db", None, "http://127.0.0.1:5000/#/runs/RUN"),
        (
            "http://me:secret@mlflow.lab:8080/",
            "3",
            "http://mlflow.lab:8080/#/experiments/3/runs/RUN",
        ),
    ],
)
def test_a_runs_link_opens_its_page_in_the_ui_without_the_password(uri, experiment, link):
    assert ui_link(uri, "RUN", experiment) == link


def test_run_logs_params_metrics_tags_and_artifacts(make_config, mlflow_uri):
    cfg = make_config(
        "trainer.epochs=3", "model.d_hidden=3", "seed=5", "optimizer.weight_decay=4.13276077e-05"
    )
    result, run_id = train_and_track(cfg)
    client = MlflowClient(mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.d_hidden"] == "3"
    assert params["optimizer.name"] == "adam"
    assert params["optimizer.lr"] == "0.01"
    assert params["data.n_train"] == "200"
    assert params["seed"] == "5"
    assert params["optimizer.weight_decay"] == "4.133e-05"  # its exact value: in config.yaml
    # the run's times are the training's, not when the helper process got to write them
    trained_s = sum(h["time/epoch_s"] for h in result.history)
    assert (run.info.end_time - run.info.start_time) / 1000 >= trained_s
    history = client.get_metric_history(run_id, "val/acc")
    assert [m.step for m in history] == [1, 2, 3]
    # as float32 reads them: 0.41, not 0.4099999964237213 (the UI shows every digit)
    assert [m.value for m in history] == [as_logged(h["val/acc"]) for h in result.history]
    assert all(len(repr(m.value)) <= 12 for m in history)
    for key in ("train/loss", "train/acc", "val/loss", "time/epoch_s"):
        assert len(client.get_metric_history(run_id, key)) == 3
    assert run.data.metrics["test/acc"] == pytest.approx(result.metrics["test/acc"])
    assert run.data.tags["dataset"] == "synthetic"
    assert "seed" not in run.data.tags  # a param already: one name, one meaning
    assert run.data.tags["mlflow.source.name"] == "python -m pytest"  # the UI's "Source"
    assert run.data.tags["mlflow.user"]  # its "Created by"
    assert (
        run.data.tags.get("mlflow.source.git.commit") == git_commit()
    )  # None before a first commit
    names = artifact_names(client, run_id)
    assert {
        "config.yaml",
        "learning_curves.png",
        "decision_region.png",
        "hidden_units.png",
        "model_state_dict.pt",
    } <= names


def test_logged_weights_reload_safely(make_config, mlflow_uri, tmp_path):
    cfg = make_config()
    result, run_id = train_and_track(cfg)
    path = MlflowClient(mlflow_uri).download_artifacts(run_id, "model_state_dict.pt", str(tmp_path))
    state = torch.load(path, weights_only=True)
    for key, value in result.model.state_dict().items():
        assert torch.equal(state[key].cpu(), value.cpu())


def test_logged_config_reruns_to_the_same_config(make_config, mlflow_uri, tmp_path):
    import yaml

    from sweeplab.config import to_config

    cfg = make_config("optimizer=sgd", "model.activation=tanh")
    _, run_id = train_and_track(cfg)
    path = MlflowClient(mlflow_uri).download_artifacts(run_id, "config.yaml", str(tmp_path))
    assert to_config(yaml.safe_load(Path(path).read_text())) == cfg


def test_regression_run_has_no_accuracy_and_no_decision_region(make_config, mlflow_uri):
    _, run_id = train_and_track(make_config("data=regression"))
    client = MlflowClient(mlflow_uri)
    assert "val/acc" not in client.get_run(run_id).data.metrics
    names = artifact_names(client, run_id)
    assert "hidden_units.png" in names and "decision_region.png" not in names


def test_failed_training_ends_failed_with_reason_and_traceback(make_config, mlflow_uri):
    cfg = make_config(
        "data=regression",
        "optimizer=sgd",
        "optimizer.lr=1e6",
        "model.activation=relu",
        "trainer.epochs=30",
        "tracking.run_name=diverges",
    )
    with pytest.raises(DivergenceError):
        train_and_track(cfg)
    client = MlflowClient(mlflow_uri)
    [run] = client.search_runs(
        [client.get_experiment_by_name("sweeplab").experiment_id],
        "attributes.run_name = 'diverges'",
    )
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"].startswith("DivergenceError: train/loss=")
    assert "traceback.txt" in artifact_names(client, run.info.run_id)


def test_ctrl_c_ends_the_run_killed(make_config, mlflow_uri):
    class CtrlC(Callback):
        def on_epoch_end(self, epoch, metrics):
            raise KeyboardInterrupt

    cfg = make_config("tracking.run_name=interrupted")
    with pytest.raises(KeyboardInterrupt):
        train_and_track(cfg, callbacks=(CtrlC(),))
    client = MlflowClient(mlflow_uri)
    [run] = client.search_runs(
        [client.get_experiment_by_name("sweeplab").experiment_id],
        "attributes.run_name = 'interrupted'",
    )
    assert run.info.status == "KILLED"
    # what was logged before the interrupt is kept
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 1


def test_default_store_is_under_the_output_folder(make_config, _isolated_output):
    cfg = make_config("tracking.uri=null", "tracking.log_plots=false", "tracking.log_model=false")
    _, run_id = train_and_track(cfg)
    assert (_isolated_output / "mlflow.db").exists()
    client = MlflowClient(f"sqlite:///{_isolated_output / 'mlflow.db'}")
    artifact_uri = client.get_run(run_id).info.artifact_uri
    assert artifact_uri.startswith((_isolated_output / "mlartifacts").as_uri())
    assert "config.yaml" in artifact_names(client, run_id)


def test_params_leave_out_how_a_run_is_carried_out_and_keys_that_change_nothing(make_config):
    synthetic = run_params(make_config())
    assert {"model.d_hidden", "optimizer.lr", "trainer.batch_size", "seed"} <= synthetic.keys()
    mechanics = ("tracking.", "trainer.progress", "trainer.num_threads", "trainer.eval_batch_size")
    assert not [key for key in synthetic if key.startswith(mechanics)]
    # the step schedule's knobs and every distortion change nothing on 2-D points
    idle = {"trainer.step_size", "trainer.gamma", "trainer.shift_pixels", "trainer.elastic_sigma"}
    assert not idle & synthetic.keys()
    stepped = run_params(make_config("trainer.lr_schedule=step"))
    assert {"trainer.step_size", "trainer.gamma"} <= stepped.keys()
    images = run_params(
        make_config("data=idx", "data.root=digits", "trainer.elastic_alpha=0", tiny=False)
    )
    assert {"trainer.shift_pixels", "trainer.elastic_alpha"} <= images.keys()
    assert "trainer.elastic_sigma" not in images  # the elastic distortion is off
    alpha = make_config("data=idx", "data.root=digits", "trainer.elastic_alpha=8", tiny=False)
    assert "trainer.elastic_sigma" in run_params(alpha)
    named = run_params(make_config("tracking.params=[model.d_hidden,trainer.progress]"))
    assert named.keys() == {"model.d_hidden", "trainer.progress"}  # what the user asked for


def test_a_new_sqlite_stores_default_experiment_keeps_its_artifacts_beside_it(
    tmp_path, monkeypatch
):
    elsewhere = tmp_path / "working"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # MLflow's client would put them in ./mlruns here
    store = tmp_path / "store"
    store.mkdir()
    client, _ = connect(f"sqlite:///{store / 'mlflow.db'}", "exp", str(store))
    default = client.get_experiment("0")
    assert default.artifact_location == (store / "mlartifacts" / "0").as_uri()
    assert not (elsewhere / "mlruns").exists()


def test_image_dataset_run_logs_the_mnist_pictures(make_config, mlflow_uri, tmp_path):
    from .test_mnist import tiny_arrays, write_idx_set

    write_idx_set(tmp_path / "digits", tiny_arrays(n_train=60, n_test=20), gz=True)
    cfg = make_config(
        "data=idx",
        f"data.root={tmp_path / 'digits'}",
        "data.n_val=20",
        "model.d_hidden=12",
        "trainer.epochs=2",
        "trainer.progress=false",
        "trainer.elastic_alpha=8",
        tiny=False,
    )
    result, run_id = train_and_track(cfg)
    client = MlflowClient(mlflow_uri)
    names = artifact_names(client, run_id)
    assert {"confusion_matrix.png", "first_layer_weights.png", "misclassified.png"} <= names
    assert "distorted_images.png" in names  # what the run trained on
    assert "decision_region.png" not in names
    metrics = client.get_run(run_id).data.metrics
    assert metrics["test/predict_us_per_sample"] > 0
    assert result.metrics["test/predict_us_per_sample"] == pytest.approx(
        metrics["test/predict_us_per_sample"]
    )
    # 28x28 images, 12 hidden units, 10 classes: weights and biases of both layers
    assert metrics["model/n_params"] == 784 * 12 + 12 + 12 * 10 + 10
    assert metrics["model/flops"] == 2 * (784 * 12 + 12 * 10) + 12 + 10


def test_every_nth_epoch_is_logged_and_always_the_last(make_config, mlflow_uri):
    class StopAfter(Callback):
        def on_epoch_end(self, epoch, metrics):
            if epoch == 5:
                raise RuntimeError("stopped at epoch 5")

    client = MlflowClient(mlflow_uri)
    every_3 = ("tracking.log_every_n_epochs=3", "tracking.log_plots=false")
    result, run_id = train_and_track(make_config("trainer.epochs=7", *every_3))
    history = client.get_metric_history(run_id, "val/acc")
    assert [m.step for m in history] == [3, 6, 7]
    assert [m.value for m in history] == [
        as_logged(result.history[i - 1]["val/acc"]) for i in (3, 6, 7)
    ]
    with pytest.raises(RuntimeError, match="epoch 5"):
        train_and_track(
            make_config("trainer.epochs=7", "tracking.run_name=stops", *every_3),
            callbacks=(StopAfter(),),
        )
    [run] = client.search_runs(
        [client.get_experiment_by_name("sweeplab").experiment_id],
        "attributes.run_name = 'stops'",
    )
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [3, 5]


def test_log_every_n_epochs_must_be_positive(make_config):
    from sweeplab.config import ConfigError

    with pytest.raises(ConfigError, match="tracking.log_every_n_epochs=0"):
        make_config("tracking.log_every_n_epochs=0")


class WaitsForTheStore(Callback):
    """After the first epoch: until the helper has made the run, then `seconds` of 'training'."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_epoch_end(self, epoch, metrics):
        if epoch == 1:
            shared_helper().sync()
            time.sleep(self.seconds)


def test_system_metrics_are_sampled_while_the_run_trains(make_config, mlflow_uri):
    cfg = make_config("trainer.epochs=3", "tracking.system_metrics=true")
    _, run_id = train_and_track(cfg, callbacks=(WaitsForTheStore(2.5),))
    client = MlflowClient(mlflow_uri)
    metrics = client.get_run(run_id).data.metrics
    assert metrics["system/cpu_utilization_percentage"] >= 0
    assert metrics["system/system_memory_usage_megabytes"] > 0
    assert len(client.get_metric_history(run_id, "system/cpu_utilization_percentage")) >= 2
    # and none without it
    _, plain = train_and_track(make_config("trainer.epochs=3"))
    assert not any(k.startswith("system/") for k in client.get_run(plain).data.metrics)
