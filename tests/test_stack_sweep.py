"""Stacked trials in sweeps: each member a full trial (Optuna trial, MLflow child run, best.yaml),
pruned alone, within the exact budget; seed repeats."""

from __future__ import annotations

import os
import signal
import socket

import optuna
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from sweeplab.config import CONF_DIR, register_configs
from sweeplab.sweep.plan import plan_sweep
from sweeplab.sweep.run import run_sweep
from sweeplab.sweep.storage import make_storage

from .conftest import run_cli
from .test_sweep import (
    children,
    load,
    plan_and_run,
    sweep_in_background,
    sweep_overrides,
    write_sweep_file,
)


def test_a_stacked_sweep_runs_its_budget_with_one_child_run_per_trial(mlflow_uri, capsys):
    plan, summary = plan_and_run(
        sweep_overrides(mlflow_uri, "sweep.n_trials=6", "sweep.stack=4", "sweep.study_name=st6")
    )
    out = capsys.readouterr().out
    assert "stack of 4 trials (0, 1, 2, 3)" in out and "stack of 2 trials (4, 5)" in out
    assert summary.stacked == (6, 2)  # the summary's "6 trials in 2 stacks"
    study = load(plan)
    assert len(study.trials) == 6
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    client = MlflowClient(mlflow_uri)
    runs = {
        int(r.data.tags["optuna.trial"]): r for r in children(mlflow_uri, summary.parent_run_id)
    }
    assert sorted(runs) == list(range(6))
    for trial in study.trials:
        run = runs[trial.number]
        assert run.info.run_id == trial.user_attrs["mlflow_run_id"]
        assert run.info.status == "FINISHED"
        assert run.data.tags["optuna.trial_state"] == trial.state.name
        assert run.data.params["model.d_hidden"] == str(trial.params["model.d_hidden"])
        assert run.data.params["optimizer.lr"] == f"{trial.params['optimizer.lr']:.4g}"
        history = client.get_metric_history(run.info.run_id, "val/acc")
        assert [m.step for m in history] == sorted(trial.intermediate_values)
        assert [m.value for m in history] == [
            pytest.approx(trial.intermediate_values[m.step]) for m in history
        ]
    # what a stack shares, its trials share; what may differ, the sampler spreads
    for stack in (study.trials[:4], study.trials[4:]):
        assert len({(t.params["optimizer"], t.params["trainer.batch_size"]) for t in stack}) == 1
        assert len({t.params["optimizer.lr"] for t in stack}) == len(stack)
        # what each member records, written for the whole stack at once, read back from storage
        owners = {
            (t.user_attrs["stack"], t.user_attrs["trainer.shuffle_seed"], t.user_attrs["worker"])
            for t in stack
        }
        assert owners == {
            (
                stack[0].number,
                stack[0].user_attrs["trainer.shuffle_seed"],
                f"{socket.gethostname()}:{os.getpid()}",
            )
        }
        assert all(t.user_attrs["mlflow_helper"].startswith(socket.gethostname()) for t in stack)
    best = client.get_metric_history(summary.parent_run_id, "best_value")
    assert best[-1].value == pytest.approx(study.best_value)


def test_pruning_stops_a_hopeless_trial_of_a_later_stack(mlflow_uri):
    overrides = sweep_overrides(
        mlflow_uri,
        "sweep.study_name=stprune",
        "sweep.n_trials=6",
        "sweep.stack=3",
        "trainer.epochs=12",
        "sweep.pruner.n_startup_trials=2",
        "sweep.pruner.n_warmup_steps=2",
        "model.activation=relu",
        "model.d_hidden=16",
    )
    register_configs()
    good = {
        "optimizer": "adam",
        "optimizer.lr": 0.03,
        "optimizer.weight_decay": 1e-6,
        "trainer.batch_size": 16,
    }
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        plan = plan_sweep(compose("config", overrides), overrides, "synthetic")
        study = optuna.create_study(
            study_name=plan.study_name, storage=make_storage(plan.storage), direction="maximize"
        )
        for lr in (0.03, 0.02, 0.025, 0.03, 0.03):  # a first stack, then the best of it again
            study.enqueue_trial({**good, "optimizer.lr": lr})
        study.enqueue_trial({**good, "optimizer.lr": 1e-4})  # beside them: learns nothing
        summary = run_sweep(plan)
    trials = load(plan).trials
    assert [t.state for t in trials[:5]] == [TrialState.COMPLETE] * 5
    assert trials[3].value == trials[0].value  # the same trial again, in another stack
    hopeless = trials[5]
    assert hopeless.state == TrialState.PRUNED
    assert max(hopeless.intermediate_values) < 12
    run = MlflowClient(mlflow_uri).get_run(hopeless.user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["optuna.trial_state"] == "PRUNED"
    assert run.info.run_name.endswith(f"-trial-5 (pruned at epoch {hopeless.last_step})")
    assert run.data.metrics["epochs_run"] == hopeless.last_step
    assert summary.counts == {"COMPLETE": 5, "PRUNED": 1}


def test_best_yaml_of_a_stacked_trial_reruns_alone_to_its_value(mlflow_uri, _isolated_output):
    plan, summary = plan_and_run(
        sweep_overrides(
            mlflow_uri,
            "sweep.n_trials=4",
            "sweep.stack=4",
            "sweep.study_name=stbest",
            "sweep.pruner.name=none",
            "trainer.epochs=6",
            "seed=3",
        )
    )
    text = summary.best_config_path.read_text()
    assert "shuffle_seed: 3" in text  # the stack's batch order, which the rerun takes again
    done = run_cli(
        "sweeplab.train",
        "--config-path",
        str(summary.best_config_path.parent),
        "--config-name",
        "best",
        env={"SWEEPLAB_OUTPUT": str(_isolated_output)},
    )
    assert done.returncode == 0, done.stderr
    rerun = float(done.stdout.split("val/acc=")[1].split(",")[0])
    assert rerun == pytest.approx(summary.best_value, abs=0.004)  # 2 of 500 validation points


def test_repeats_train_each_trial_with_several_seeds_and_log_their_spread(mlflow_uri, capsys):
    plan, summary = plan_and_run(
        sweep_overrides(
            mlflow_uri,
            "sweep.n_trials=2",
            "sweep.stack=2",
            "sweep.repeats=3",
            "sweep.study_name=strepeat",
            "sweep.pruner.name=none",
        )
    )
    client = MlflowClient(mlflow_uri)
    runs = children(mlflow_uri, summary.parent_run_id)
    assert len(runs) == 2
    for run in runs:
        assert run.data.tags["sweeplab.seeds"] == "0, 1, 2"
        metrics = run.data.metrics
        seeds = [metrics[f"val/acc_seed{s}"] for s in (0, 1, 2)]
        assert metrics["val/acc"] == pytest.approx(sum(seeds) / 3)
        assert len(client.get_metric_history(run.info.run_id, "val/acc_std")) == 4
    study = load(plan)
    out = capsys.readouterr().out
    for trial in study.trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert trial.value == pytest.approx(run.data.metrics["val/acc"])
        std = trial.user_attrs["val/acc_std"]
        assert std == pytest.approx(run.data.metrics["val/acc_std"])
        assert f"val/acc={trial.value:.4f}+-{std:.4f}" in out  # the trial's line: mean +- std


def start_stacked_sweep(mlflow_uri, output, study_name):
    """A stacked sweep of 4 long trials as a subprocess, returned once all 4 train."""
    args = sweep_overrides(
        mlflow_uri,
        "sweep.n_trials=4",
        "sweep.stack=4",
        f"sweep.study_name={study_name}",
        "sweep.pruner.name=none",
        # seconds: the stack is killed while it trains (a shorter one could end between two
        # looks at it); few epochs of more data, as each look replays every epoch's report
        "trainer.epochs=750",
        "data.n_train=4000",
    )
    proc, running = sweep_in_background(
        args,
        output,
        study_name,
        lambda running: len(running) == 4 and all(t.intermediate_values for t in running),
    )
    return proc, args, running


@pytest.mark.slow
def test_a_killed_stacked_worker_resumes_failing_and_retrying_every_member(
    mlflow_uri, _isolated_output
):
    proc, args, killed = start_stacked_sweep(mlflow_uri, _isolated_output, "stkill")
    proc.send_signal(signal.SIGKILL)  # kill -9: every trial of the stack stays RUNNING
    proc.communicate()
    done = run_cli("sweeplab.sweep", *args, env={"SWEEPLAB_OUTPUT": str(_isolated_output)})
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(
        study_name="stkill",
        storage=make_storage(str(_isolated_output / "optuna" / "stkill.journal")),
    )
    states = [t.state for t in study.trials]
    assert states.count(TrialState.FAIL) == 4 and states.count(TrialState.COMPLETE) == 4
    runs = {
        int(r.data.tags["optuna.trial"]): r
        for r in children(mlflow_uri, study.user_attrs["mlflow_parent_run_id"])
    }
    for trial in killed:
        [retry] = [t for t in study.trials if t.user_attrs.get("retry_of") == trial.number]
        assert retry.params == trial.params and retry.state == TrialState.COMPLETE
        # no run left RUNNING: the MLflow helper ends the runs of its dead training process
        # KILLED (a run it had not yet made, kill -9 took with the process)
        assert trial.number not in runs or runs[trial.number].info.status == "KILLED"
        assert runs[retry.number].info.status == "FINISHED"


@pytest.mark.slow
def test_ctrl_c_ends_a_stacks_runs_killed_and_the_sweep_resumes(mlflow_uri, _isolated_output):
    proc, args, running = start_stacked_sweep(mlflow_uri, _isolated_output, "stint")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "rerun the same command to resume" in stderr
    storage = make_storage(str(_isolated_output / "optuna" / "stint.journal"))
    study = optuna.load_study(study_name="stint", storage=storage)
    client = MlflowClient(mlflow_uri)
    for trial in study.trials:
        assert trial.state == TrialState.FAIL, stderr[-3000:]
        run = client.get_run(trial.user_attrs["mlflow_run_id"])  # told before the trial ended
        assert run.info.status == "KILLED"
        logged = client.get_metric_history(run.info.run_id, "val/acc")
        assert set(trial.intermediate_values) <= {m.step for m in logged}
    parent = study.user_attrs["mlflow_parent_run_id"]
    assert client.get_run(parent).info.status == "KILLED"
    done = run_cli("sweeplab.sweep", *args, env={"SWEEPLAB_OUTPUT": str(_isolated_output)})
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="stint", storage=storage)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    assert client.get_run(parent).info.status == "FINISHED"


def test_a_space_with_trials_stacks_cannot_train_trains_every_trial_alone(mlflow_uri, tmp_path):
    """AMSGrad is one choice of the space, and stacks cannot train it: the default
    (`sweep.stack=0`) looks at every corner of the space, not the first, and trains each trial
    alone; every trial completes."""
    write_sweep_file(
        tmp_path,
        "amsgrad",
        {
            "params": {
                "optimizer.amsgrad": "choice(false, true)",
                "optimizer.lr": "interval(0.01, 0.1)",
            }
        },
    )
    overrides = [
        f"hydra.searchpath=[file://{tmp_path}]",
        *[o for o in sweep_overrides(mlflow_uri) if o != "sweep=synthetic"],
        "sweep=amsgrad",
        "sweep.n_trials=4",
        "sweep.study_name=amsgrad",
        "sweep.pruner.name=none",
    ]
    plan, _ = plan_and_run(overrides, "amsgrad")
    trials = load(plan).trials
    assert {t.params["optimizer.amsgrad"] for t in trials} == {False, True}
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert all("stack" not in t.user_attrs for t in trials)  # none trained in a stack
