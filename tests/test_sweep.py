"""Sweeps end to end: real Optuna storages, a real MLflow SQLite store, real worker processes."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow.pyfunc
import optuna
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from sweeplab.config import CONF_DIR, CONFIG_GROUPS, ConfigError, register_configs
from sweeplab.sweep import run as sweep_run
from sweeplab.sweep.plan import compose_each, compose_trial, plan_sweep, trial_run_name
from sweeplab.sweep.run import run_sweep
from sweeplab.sweep.space import suggest
from sweeplab.sweep.storage import make_storage, quiet_experimental
from sweeplab.training.data import load_dataset

from .conftest import run_cli

SMALL = [
    "data.n_train=200",
    "data.n_val=100",
    "data.n_test=100",
    "trainer.epochs=4",
    "tracking.log_plots=false",
    "tracking.log_model=false",
]
NO_PICTURES = "sweep.best_pictures=false"  # (retraining the best trial is tested once, below)


def sweep_overrides(mlflow_uri, *extra):
    pictures = [] if any(x.startswith("sweep.best_pictures=") for x in extra) else [NO_PICTURES]
    return ["sweep=synthetic", *SMALL, *pictures, f"tracking.uri={mlflow_uri}", *extra]


def plan_and_run(overrides, sweep_name="synthetic"):
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        plan = plan_sweep(compose("config", overrides), overrides, sweep_name)
        return plan, run_sweep(plan)


def load(plan):
    return optuna.load_study(study_name=plan.study_name, storage=make_storage(plan.storage))


def children(mlflow_uri, parent_run_id):
    client = MlflowClient(mlflow_uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent_run_id}'",
        max_results=1000,
    )


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml")))
def test_every_shipped_sweep_plans(name):
    """Each shipped sweep file composes and its whole space passes the schema (no trial runs)."""
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        plan = plan_sweep(compose("config", [f"sweep={name}"]), [f"sweep={name}"], name)
    assert plan.study_name == name and plan.space.distributions
    assert plan.storage.endswith(f"optuna/{name}.journal")


def composed(plan, values: dict) -> object:
    """Hydra's config of a trial with `values`, or the first line of why it refuses them."""
    try:
        return compose_trial(plan, values)
    except ConfigError as err:
        return str(err).splitlines()[0]


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml")))
def test_trial_configs_set_on_a_composed_choice_of_groups_equal_hydras(name):
    """compose_each composes each choice of config groups once and sets the other values on a
    copy: every trial's config is the one Hydra composes from all its values."""
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        plan = plan_sweep(compose("config", [f"sweep={name}"]), [f"sweep={name}"], name)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        values = [suggest(study.ask(), plan.space) for _ in range(12)]
        expected = [composed(plan, v) for v in values]
        made = compose_each(plan, values)
    for trial_values, hydras, ours in zip(values, expected, made, strict=True):
        if isinstance(hydras, str):  # a combination the schema refuses: refused alike
            assert isinstance(ours, ConfigError) and hydras in str(ours), trial_values
        else:
            assert ours == hydras, trial_values
    choices = {
        tuple(sorted((k, repr(x)) for k, x in v.items() if k in CONFIG_GROUPS)) for v in values
    }
    assert len(plan.composed) == len(choices)  # Hydra composed each choice of groups once


def test_a_key_the_chosen_option_lacks_refuses_the_trial(mlflow_uri):
    overrides = sweep_overrides(mlflow_uri)
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        plan = plan_sweep(compose("config", overrides), overrides, "synthetic", check_trials=False)
        [adam, sgd] = compose_each(
            plan,
            [
                {"optimizer": "adam", "optimizer.momentum": 0.5},
                {"optimizer": "sgd", "optimizer.momentum": 0.5},
            ],
        )
        hydras = composed(plan, {"optimizer": "adam", "optimizer.momentum": 0.5})
    assert "momentum" in hydras  # Hydra refuses it too
    assert isinstance(adam, ConfigError) and "'optimizer.momentum'" in str(adam)
    assert sgd.optimizer.momentum == 0.5


@pytest.mark.parametrize(
    ("state", "last_epoch", "name"),
    [
        (TrialState.COMPLETE, 100, "mnist-trial-7"),
        (TrialState.PRUNED, 3, "mnist-trial-7 (pruned at epoch 3)"),
        (TrialState.PRUNED, None, "mnist-trial-7 (pruned)"),
        (TrialState.FAIL, 2, "mnist-trial-7 (failed)"),
    ],
)
def test_a_trials_run_name_says_how_it_ended(state, last_epoch, name):
    assert trial_run_name("mnist", 7, state, last_epoch) == name
    assert trial_run_name("mnist", 7, state, last_epoch, at_chance=True) == (
        "mnist-trial-7 (no better than chance)" if state == TrialState.COMPLETE else name
    )


def test_sweep_runs_its_budget_with_one_child_run_per_trial(mlflow_uri, monkeypatch):
    plan, summary = plan_and_run(
        sweep_overrides(
            mlflow_uri,
            "sweep.n_trials=5",
            "sweep.study_name=e2e",
            "sweep.best_pictures=true",
            "sweep.register_model=e2e-best",
        )
    )
    study = load(plan)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 5 == len(study.trials)
    assert summary.best_value == study.best_value
    client = MlflowClient(mlflow_uri)
    parent = client.get_run(summary.parent_run_id)
    assert parent.info.status == "FINISHED"
    # the space in one param (`space.<key>` params came up beside the trials' in column search)
    assert (
        "model.d_hidden=int(interval(1, 32)) model.activation="
        in parent.data.params["sweep.params"]
    )
    assert not any(key.startswith("space.") for key in parent.data.params)
    # what every trial shares is the parent's: the command line's values and the defaults
    assert parent.data.params["data.n_train"] == "200" and parent.data.params["seed"] == "0"
    assert not {"model.d_hidden", "optimizer.name", "optimizer.momentum"} & set(parent.data.params)
    # one name, one meaning: the resolved objective, the best value a tag apart from the metric
    assert (
        parent.data.params["sweep.objective"] == "val/acc" and "objective" not in parent.data.params
    )
    assert parent.data.params["sweep.storage"] == plan.storage  # resolved: the journal file
    assert not {"storage", "sweep.n_jobs", "optimized_metric"} & set(parent.data.params)
    # neither settings left unset nor how runs are carried out crowd the UI's column list
    assert not {"sweep.timeout", "sweep.objectives", "sweep.study_name"} & set(parent.data.params)
    assert not any(k.startswith(("tracking.", "trainer.progress")) for k in parent.data.params)
    assert parent.data.tags["best_trial_value"] == f"{study.best_value:.6g}"
    assert "best_value" not in parent.data.tags
    assert parent.data.tags["mlflow.note.content"].startswith(
        "Optuna study `e2e`: 5 complete trials (budget reached). The best val/acc is"
    )
    runs = children(mlflow_uri, summary.parent_run_id)
    assert len(runs) == 5
    chance = load_dataset(plan.example.data).chance_accuracy()
    by_trial = {int(r.data.tags["optuna.trial"]): r for r in runs}
    for trial in study.trials:
        run = by_trial[trial.number]
        assert run.info.run_id == trial.user_attrs["mlflow_run_id"]
        assert run.data.tags["optuna.trial_state"] == trial.state.name
        assert run.data.params["model.d_hidden"] == str(trial.params["model.d_hidden"])
        assert run.data.params["optimizer.name"] == trial.params["optimizer"]
        # 4 significant digits: the UI's runs table cuts longer values before their exponent
        assert run.data.params["optimizer.lr"] == f"{trial.params['optimizer.lr']:.4g}"
        # what the sweep searches, and the keys every optimizer has: the columns line up
        assert set(run.data.params) == {
            "model.d_hidden",
            "model.activation",
            "optimizer.name",
            "optimizer.lr",
            "optimizer.weight_decay",
            "trainer.batch_size",
        }
        assert run.data.metrics["epochs_run"] == trial.last_step
        # a network that learned nothing says so: val/acc of always answering the majority class
        at_chance = trial.state == TrialState.COMPLETE and trial.value <= chance
        assert run.info.run_name.endswith(" (no better than chance)") == at_chance, (
            run.info.run_name
        )
        assert ("it learned nothing" in run.data.tags["mlflow.note.content"]) == at_chance
        assert (
            f"Trial {trial.number} of the Optuna study `e2e`"
            in run.data.tags["mlflow.note.content"]
        )
    # the parent tracks the best value by trial number and holds Optuna's pictures and a CSV
    best_history = client.get_metric_history(summary.parent_run_id, "best_value")
    assert best_history[-1].value == pytest.approx(study.best_value)
    names = {a.path for a in client.list_artifacts(summary.parent_run_id)}
    assert {"trials.csv", "best.yaml", "optuna"} <= names
    plots = {a.path for a in client.list_artifacts(summary.parent_run_id, "optuna")}
    assert "optuna/optimization_history.png" in plots
    # the best trial's own run holds its pictures and weights, from a retraining that agrees
    best = client.get_run(summary.best_run_id)
    pictures = {a.path for a in client.list_artifacts(summary.best_run_id)}
    assert {"learning_curves.png", "decision_region.png", "model_state_dict.pt"} <= pictures
    assert best.data.tags["sweeplab.pictures"] == (
        f"retrained: val/acc={study.best_value:.6g} (the trial: {study.best_value:.6g})"
    )
    others = [r for r in runs if r.info.run_id != summary.best_run_id]
    assert not any(client.list_artifacts(r.info.run_id, "learning_curves.png") for r in others)
    # its MLflow model, registered, scores on the test set what the trial measured
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)  # where "models:/" looks
    model = mlflow.pyfunc.load_model("models:/e2e-best/1")
    data = load_dataset(plan.example.data)  # (the space searches no data key)
    predicted = model.predict(data.x_test.numpy())[:, 0] > 0.5
    accuracy = float((predicted == data.y_test[:, 0].numpy().astype(bool)).mean())
    assert accuracy == pytest.approx(best.data.metrics["test/acc"])


def test_trials_that_checkpoint_leave_no_checkpoint_behind(mlflow_uri, _isolated_output):
    """Completed and pruned trials wrote checkpoints (their folder exists) and removed them."""
    plan, _ = plan_and_run(
        sweep_overrides(
            mlflow_uri,
            "sweep.n_trials=3",
            "sweep.study_name=saved",
            "trainer.checkpoint_every=1",
            "sweep.pruner.n_startup_trials=1",
            "sweep.pruner.n_warmup_steps=0",
        )
    )
    assert len(load(plan).trials) == 3
    folder = _isolated_output / "checkpoints" / "saved"
    assert folder.is_dir() and not list(folder.iterdir())


def test_best_config_reruns_with_train(mlflow_uri, _isolated_output):
    plan, summary = plan_and_run(
        sweep_overrides(mlflow_uri, "sweep.n_trials=2", "sweep.study_name=best")
    )
    text = summary.best_config_path.read_text()
    assert f"model:\n  d_hidden: {summary.best_params['model.d_hidden']}\n" in text
    assert "log_plots: true" in text and "log_model: true" in text  # the rerun is for them
    done = run_cli(
        "sweeplab.train",
        "--config-path",
        str(summary.best_config_path.parent),
        "--config-name",
        "best",
        "trainer.epochs=2",
        env={"SWEEPLAB_OUTPUT": str(_isolated_output)},
    )
    assert done.returncode == 0, done.stderr
    [run_id] = re.findall(r"http://127\.0\.0\.1:5000/#/runs/([0-9a-f]{32})", done.stdout)
    client = MlflowClient(mlflow_uri)
    tags = client.get_run(run_id).data.tags
    logged = {a.path for a in client.list_artifacts(run_id)}
    assert {"learning_curves.png", "decision_region.png", "model_state_dict.pt"} <= logged
    best_trial = str(load(plan).best_trial.number)
    assert (tags["optuna.study"], tags["optuna.trial"], tags["sweeplab.role"]) == (
        "best",
        best_trial,
        "rerun",
    )


def test_rerun_continues_the_study_without_rerunning(mlflow_uri):
    first_plan, first = plan_and_run(
        sweep_overrides(mlflow_uri, "sweep.n_trials=3", "sweep.study_name=resume")
    )
    before = {t.number: t.value for t in load(first_plan).trials}
    plan, second = plan_and_run(
        sweep_overrides(mlflow_uri, "sweep.n_trials=5", "sweep.study_name=resume")
    )
    trials = load(plan).trials
    assert len(trials) == 5
    assert {t.number: t.value for t in trials[:3]} == before
    # the resume samples a stream of its own, not the first start's again
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 5
    assert second.parent_run_id == first.parent_run_id
    assert len(children(mlflow_uri, first.parent_run_id)) == 5
    # and a third run with the budget already spent starts nothing
    plan, third = plan_and_run(
        sweep_overrides(mlflow_uri, "sweep.n_trials=5", "sweep.study_name=resume")
    )
    assert len(load(plan).trials) == 5 and third.stop_reason == "budget reached"
    tags = MlflowClient(mlflow_uri).get_run(first.parent_run_id).data.tags
    assert tags["sweeplab.invocations"] == "3"  # reports say the wall time spans a resume


def test_the_first_start_of_a_study_is_reproducible_from_the_sampler_seed(mlflow_uri):
    proposed = []
    for name in ("again1", "again2"):
        plan, _ = plan_and_run(
            sweep_overrides(mlflow_uri, "sweep.n_trials=3", f"sweep.study_name={name}")
        )
        proposed.append([t.params for t in load(plan).trials])
    assert proposed[0] == proposed[1]


def test_a_failing_report_ends_the_parent_run_failed_with_its_reason(mlflow_uri, monkeypatch):
    def broken_report(*args):
        raise OSError("disk full")

    monkeypatch.setattr(sweep_run, "report", broken_report)
    overrides = sweep_overrides(mlflow_uri, "sweep.n_trials=1", "sweep.study_name=badreport")
    with pytest.raises(OSError, match="disk full"):
        plan_and_run(overrides)
    [parent] = MlflowClient(mlflow_uri).search_runs(
        [MlflowClient(mlflow_uri).get_experiment_by_name("sweep-synthetic").experiment_id],
        "tags.`sweeplab.role` = 'study' and tags.`optuna.study` = 'badreport'",
    )
    assert parent.info.status == "FAILED"
    assert parent.data.tags["failure_reason"] == "report failed: OSError: disk full"


def test_a_journal_with_a_torn_last_line_resumes(mlflow_uri, capfd):
    plan, _ = plan_and_run(sweep_overrides(mlflow_uri, "sweep.n_trials=2", "sweep.study_name=torn"))
    journal = Path(plan.storage)
    with journal.open("ab") as f:  # what a writer killed mid-append leaves
        f.write(b'{"op_code":5,"worker_id":"dead","trial_id":1,"param_na')
    for budget in (3, 4):  # the resume drops the torn line; the start after it reads the rest
        plan, summary = plan_and_run(
            sweep_overrides(mlflow_uri, f"sweep.n_trials={budget}", "sweep.study_name=torn")
        )
        assert summary.stop_reason == "budget reached"
    assert "dropped a last line cut off mid-write" in capfd.readouterr().err
    assert len(load(plan).trials) == 4
    assert journal.read_bytes().endswith(b"\n")


def test_resume_with_a_changed_space_is_refused(mlflow_uri):
    plan_and_run(sweep_overrides(mlflow_uri, "sweep.n_trials=1", "sweep.study_name=changed"))
    with pytest.raises(ConfigError, match="different overrides"):
        plan_and_run(
            sweep_overrides(mlflow_uri, "sweep.n_trials=2", "sweep.study_name=changed", "seed=9")
        )


def test_pruning_stops_a_hopeless_trial(mlflow_uri):
    overrides = sweep_overrides(
        mlflow_uri,
        "sweep.study_name=prune",
        "sweep.n_trials=3",
        "sweep.stack=1",  # a trial at a time (test_stack_sweep prunes in stacks)
        "trainer.epochs=12",
        "sweep.pruner.n_startup_trials=2",
        "sweep.pruner.n_warmup_steps=2",
        "model.activation=relu",
        "model.d_hidden=16",
    )
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        plan = plan_sweep(compose("config", overrides), overrides, "synthetic")
        study = optuna.create_study(
            study_name=plan.study_name,
            storage=make_storage(plan.storage),
            direction="maximize",
        )
        good = {
            "optimizer": "adam",
            "optimizer.lr": 0.03,
            "optimizer.weight_decay": 1e-6,
            "trainer.batch_size": 16,
        }
        study.enqueue_trial(good)
        study.enqueue_trial({**good, "optimizer.lr": 0.02})
        study.enqueue_trial(
            {**good, "optimizer": "sgd", "optimizer.lr": 1e-4, "trainer.batch_size": 128}
        )
        summary = run_sweep(plan)
    trials = load(plan).trials
    assert [t.state for t in trials] == [
        TrialState.COMPLETE,
        TrialState.COMPLETE,
        TrialState.PRUNED,
    ]
    hopeless = trials[2]
    assert max(hopeless.intermediate_values) < 12  # stopped before the last epoch
    client = MlflowClient(mlflow_uri)
    run = client.get_run(hopeless.user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["optuna.trial_state"] == "PRUNED"
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == max(
        hopeless.intermediate_values
    )
    # the runs table says it without a column added: its name, and the epochs it ran
    pruned_at = max(hopeless.intermediate_values)
    assert run.info.run_name == f"{plan.study_name}-trial-2 (pruned at epoch {pruned_at})"
    assert run.data.metrics["epochs_run"] == pruned_at
    assert summary.counts == {"COMPLETE": 2, "PRUNED": 1}


def write_sweep_file(folder: Path, name: str, changes: dict) -> None:
    """A user's own sweep file (for --config-dir): the shipped synthetic one with `changes`."""
    import yaml

    text = (CONF_DIR / "sweep" / "synthetic.yaml").read_text()
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("# @package"))
    data = yaml.safe_load(text)
    for key, value in changes.items():
        node = data["sweep"]
        *path, last = key.split("/")
        for part in path:
            node = node[part]
        node[last] = value
    (folder / "sweep").mkdir(parents=True, exist_ok=True)
    (folder / "sweep" / f"{name}.yaml").write_text(header + yaml.safe_dump(data))


def run_own_sweep(conf_dir: Path, mlflow_uri: str, output: Path):
    """`python -m sweeplab.sweep --config-dir conf_dir sweep=mine` with the small overrides."""
    args = [a for a in sweep_overrides(mlflow_uri) if a != "sweep=synthetic"]
    return run_cli(
        "sweeplab.sweep",
        "--config-dir",
        str(conf_dir),
        "sweep=mine",
        *args,
        env={"SWEEPLAB_OUTPUT": str(output)},
    )


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"params/model.widht": "int(interval(1, 4))"}, "widht"),
        ({"params/optimizer.lr": "interval(1)"}, "sweep.params.optimizer.lr='interval(1)'"),
        ({"params/model.activation": "choice()"}, "sweep.params.model.activation='choice()'"),
        ({"direction": "up"}, "sweep.direction='up'"),
        ({"params/model.d_hidden": "int(interval(0, 4))"}, "model.d_hidden=0"),
        ({"objective": "test/acc"}, "sweep.objective='test/acc'"),
        ({"n_trials": 0}, "sweep.n_trials=0"),
        ({"sampler": {"name": "bayes"}}, "sweep.sampler.name='bayes'"),
        ({"params/optimizer": "choice(adam, adamax)"}, "adamax"),
    ],
)
def test_bad_sweep_configs_fail_before_any_trial(
    changes, named, mlflow_uri, tmp_path, _isolated_output
):
    write_sweep_file(tmp_path / "conf", "mine", changes)
    done = run_own_sweep(tmp_path / "conf", mlflow_uri, _isolated_output)
    assert done.returncode == 2, done.stderr
    assert named in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (_isolated_output / "optuna").exists()  # no study, so no trial


def test_own_sweep_file_from_config_dir_runs(mlflow_uri, tmp_path, _isolated_output):
    write_sweep_file(
        tmp_path / "conf", "mine", {"n_trials": 2, "params": {"model.d_hidden": "choice(2, 3)"}}
    )
    done = run_own_sweep(tmp_path / "conf", mlflow_uri, _isolated_output)
    assert done.returncode == 0, done.stderr
    assert "stopped: budget reached" in done.stdout
    assert "model.d_hidden=" in done.stdout


def test_sweep_without_a_sweep_file_says_how(_isolated_output):
    done = run_cli("sweeplab.sweep", *SMALL, env={"SWEEPLAB_OUTPUT": str(_isolated_output)})
    assert done.returncode == 2 and "sweep=<name>" in done.stderr and "synthetic" in done.stderr


def storage_for(kind, request, output):
    """The storage of a parametrised test: the default journal file, or a PostgreSQL URL."""
    if kind == "postgres":
        return request.getfixturevalue("postgres_url")
    return str(output / "optuna" / "study.journal")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("storage_kind", "stack", "trials", "epochs"),
    [  # stacks on PostgreSQL (their trials' heartbeats), a trial at a time in a journal file
        ("postgres", 4, 16, 1500),  # (test_two_workers_cover_a_grid_exactly_once: stacks in a
        ("journal", 1, 6, 600),  # journal file)
    ],
)
def test_two_workers_share_one_storage_and_finish_exactly_the_budget(
    storage_kind, stack, trials, epochs, request, mlflow_uri, _isolated_output
):
    """One trial at a time, or in stacks of 4: exactly the budget, each trial one child run."""
    storage = storage_for(storage_kind, request, _isolated_output)
    study_name = f"parallel-{storage_kind}-{stack}"
    done = run_cli(
        "sweeplab.sweep",
        # trials long enough that the second worker (seconds to start) gets some
        *sweep_overrides(
            mlflow_uri,
            f"sweep.n_trials={trials}",
            "sweep.workers=2",
            f"sweep.stack={stack}",
            f"sweep.study_name={study_name}",
            f"trainer.epochs={epochs}",  # about 1 s per trial, or per stack
            "data.n_train=1000",
            f"sweep.storage={storage}",
        ),
        env={"SWEEPLAB_OUTPUT": str(_isolated_output)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[w1] trial" in done.stdout  # the second worker ran trials too
    assert "database is locked" not in done.stderr
    study = optuna.load_study(study_name=study_name, storage=make_storage(storage))
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers)) == trials
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2
    # each worker samples from its own stream: no parameter set proposed twice (a continuous
    # learning rate repeats only if two samplers share a seed)
    proposed = {tuple(sorted(t.params.items())) for t in study.trials}
    assert len(proposed) == trials
    # every epoch's value reached the storage, for the pruners of later trials
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete and all(len(t.intermediate_values) == epochs for t in complete)
    parent = study.user_attrs["mlflow_parent_run_id"]
    tags = sorted(int(r.data.tags["optuna.trial"]) for r in children(mlflow_uri, parent))
    assert tags == list(range(trials))


def two_worker_sweep(mlflow_uri, output, study_name, *extra, sweep="synthetic"):
    """`python -m sweeplab.sweep ... sweep.workers=2` as a subprocess; (its result, the study)."""
    overrides = sweep_overrides(mlflow_uri, "sweep.workers=2", f"sweep.study_name={study_name}")
    done = run_cli(
        "sweeplab.sweep",
        f"sweep={sweep}",
        *overrides[1:],  # all but sweep_overrides' own sweep=synthetic
        *extra,
        env={"SWEEPLAB_OUTPUT": str(output)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    storage = make_storage(str(output / "optuna" / f"{study_name}.journal"))
    return done, optuna.load_study(study_name=study_name, storage=storage)


@pytest.mark.slow
def test_two_workers_cover_a_grid_exactly_once(mlflow_uri, _isolated_output):
    """Every worker must order the grid alike: 45 trials of the 5 x 3 x 3 grid, no point twice."""
    done, study = two_worker_sweep(
        mlflow_uri,
        _isolated_output,
        "grid2",
        # a grid point at a time, long enough (about 0.2 s) that the second worker, seconds to
        # start, gets some
        "trainer.epochs=150",
        "data.n_train=1000",
        "sweep.stack=1",
        sweep="synthetic_widths",
    )
    assert "[w1] trial" in done.stdout
    points = {tuple(sorted(t.params.items())) for t in study.trials}
    assert len(study.trials) == 45 and len(points) == 45


@pytest.mark.slow
def test_timeout_stops_every_worker(mlflow_uri, _isolated_output):
    """sweep.timeout is one moment for all workers: the extra ones stop starting trials too."""
    done, study = two_worker_sweep(
        mlflow_uri,
        _isolated_output,
        "timed",
        "sweep.n_trials=1000",
        "sweep.timeout=10",
        "trainer.epochs=30",
    )
    assert "[w1] stopped: sweep.timeout=10.0s reached" in done.stdout
    assert "stopped: sweep.timeout=10.0s reached" in done.stdout.replace("[w1] stopped", "")
    assert 0 < len(study.trials) < 1000
    assert {t.user_attrs["worker"] for t in study.trials} and all(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials
    )


@pytest.mark.slow
@pytest.mark.parametrize("storage_kind", ["journal", "postgres"])
def test_killed_sweep_resumes_failing_and_retrying_the_orphan(
    storage_kind, request, mlflow_uri, _isolated_output
):
    storage = storage_for(storage_kind, request, _isolated_output)
    study_name = f"killed-{storage_kind}"
    args = sweep_overrides(
        mlflow_uri,
        "sweep.n_trials=4",
        "sweep.stack=1",  # a trial at a time (test_stack_sweep kills a stacked worker)
        f"sweep.study_name={study_name}",
        "trainer.epochs=1200",  # the helper (niced) must create its run before the kill
        "data.n_train=400",
        f"sweep.storage={storage}",
    )
    env = {**os.environ, "SWEEPLAB_OUTPUT": str(_isolated_output)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeplab.sweep", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    study = None
    while time.time() < deadline:
        time.sleep(0.5)
        with contextlib.suppress(KeyError, ValueError):  # until the study exists
            study = optuna.load_study(study_name=study_name, storage=make_storage(storage))
            running = study.get_trials(states=(TrialState.RUNNING,))
            if (
                study.get_trials(states=(TrialState.COMPLETE,))
                and running
                # early in the trial: it cannot finish before the kill lands
                and 0 < len(running[0].intermediate_values) < 800
                and "mlflow_run_id" in running[0].user_attrs
            ):
                break
    else:
        proc.kill()
        pytest.fail("the sweep never got into its second trial")
    proc.send_signal(signal.SIGKILL)  # kill -9: no handler runs, the trial stays RUNNING
    proc.wait()
    killed = study.get_trials(states=(TrialState.RUNNING,))[0]
    finished_before = {t.number: t.value for t in study.get_trials(states=(TrialState.COMPLETE,))}

    done = run_cli("sweeplab.sweep", *args, env={"SWEEPLAB_OUTPUT": str(_isolated_output)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"trial {killed.number} was left RUNNING by a dead worker" in done.stderr
    study = optuna.load_study(study_name=study_name, storage=make_storage(storage))
    states = [t.state for t in study.trials]
    assert states.count(TrialState.FAIL) == 1
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 4
    after = {t.number: t.value for t in study.trials if t.number in finished_before}
    assert after == finished_before  # nothing finished was rerun or changed
    [retry] = [t for t in study.trials if t.user_attrs.get("retry_of") == killed.number]
    assert retry.params == killed.params
    orphan = MlflowClient(mlflow_uri).get_run(killed.user_attrs["mlflow_run_id"])
    assert orphan.info.status == "KILLED"


def sweep_in_background(args, output, study_name, ready, new_session=False, storage=None):
    """`python -m sweeplab.sweep ARGS` as a subprocess, returned with its running trials once
    `ready(running trials)` holds and each has its MLflow run; with `new_session`, in a process
    group of its own (that a test may kill). The study is in `storage` (default: its journal
    file in `output`)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeplab.sweep", *args],
        env={**os.environ, "SWEEPLAB_OUTPUT": str(output)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a terminal's Ctrl-C: a process started in the background (as CI runs us) inherits
        # SIGINT ignored, and Python then never raises KeyboardInterrupt for it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        start_new_session=new_session,
    )
    storage = storage or str(output / "optuna" / f"{study_name}.journal")
    deadline = time.time() + 180
    seen: list[tuple[int, str, int, bool]] = []  # (trial, state, epochs reported, has a run)
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)  # each look replays the whole journal: not too often, on 2 cores
        with contextlib.suppress(KeyError, ValueError):
            study = optuna.load_study(study_name=study_name, storage=make_storage(storage))
            running = study.get_trials(states=(TrialState.RUNNING,))
            if ready(running) and all("mlflow_run_id" in t.user_attrs for t in running):
                return proc, running
            seen = [
                (
                    t.number,
                    t.state.name,
                    len(t.intermediate_values),
                    "mlflow_run_id" in t.user_attrs,
                )
                for t in study.trials
            ]
    proc.kill()
    _, stderr = proc.communicate()
    pytest.fail(f"the sweep's trials never got going; last seen {seen}; stderr:\n{stderr[-3000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_sweep_ends_runs_killed_and_resumes(signum, mlflow_uri, _isolated_output):
    study_name = f"interrupted-{signum.name}"
    args = sweep_overrides(
        mlflow_uri,
        "sweep.n_trials=3",
        "sweep.stack=1",  # a trial at a time (test_stack_sweep interrupts a stacked worker)
        f"sweep.study_name={study_name}",
        "trainer.epochs=1000",  # seconds a trial: the test sees one running (reports come in batches)
        "data.n_train=400",
    )
    proc, _ = sweep_in_background(
        args,
        _isolated_output,
        study_name,
        # early in the trial: it cannot finish before the signal lands
        lambda running: len(running) == 1 and 0 < len(running[0].intermediate_values) < 500,
    )
    storage = str(_isolated_output / "optuna" / f"{study_name}.journal")
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "rerun the same command to resume" in stderr
    study = optuna.load_study(study_name=study_name, storage=make_storage(storage))
    [stopped] = study.get_trials(states=(TrialState.FAIL,))
    client = MlflowClient(mlflow_uri)
    assert client.get_run(stopped.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    # every epoch it reported to Optuna is in MLflow too (the metric writer had them in hand)
    logged = client.get_metric_history(stopped.user_attrs["mlflow_run_id"], "val/acc")
    assert set(stopped.intermediate_values) <= {m.step for m in logged}
    parent = study.user_attrs["mlflow_parent_run_id"]
    assert client.get_run(parent).info.status == "KILLED"

    done = run_cli("sweeplab.sweep", *args, env={"SWEEPLAB_OUTPUT": str(_isolated_output)})
    assert done.returncode == 0, done.stderr[-2000:]
    study = optuna.load_study(study_name=study_name, storage=make_storage(storage))
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 3
    # the interrupted trial was not at fault: its parameters were trained first, on resume
    assert stopped.user_attrs["stopped_by"] == "interrupted (Ctrl-C or SIGTERM)"
    [retry] = [t for t in study.trials if t.user_attrs.get("retry_of") == stopped.number]
    assert retry.params == stopped.params and retry.state != TrialState.FAIL
    assert f"trial {stopped.number} was stopped (interrupted" in done.stderr
    assert study.user_attrs["mlflow_parent_run_id"] == parent
    parent_run = client.get_run(parent)
    assert parent_run.info.status == "FINISHED"
    assert "failure_reason" not in parent_run.data.tags  # the interrupted start's is gone


def test_a_trial_whose_heartbeat_stopped_is_retried_once_and_said(tmp_path, capfd):
    """RDB storages: Optuna's heartbeat finds a trial whose process went silent (on any host);
    sweeplab's callback retries its parameters once and says so."""
    storage = make_storage(f"sqlite:///{tmp_path / 'study.db'}")
    storage.grace_period = 1  # (HEARTBEAT_S / GRACE_S are seconds long)
    study = optuna.create_study(study_name="silent", storage=storage)
    with quiet_experimental():  # (asking beside study.optimize: as a stack does)
        silent = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    storage.record_heartbeat(silent._trial_id)
    time.sleep(2.5)
    with quiet_experimental():
        optuna.storages.fail_stale_trials(study)
    [failed, retry] = study.get_trials()
    assert failed.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert retry.system_attrs["fixed_params"] == silent.params
    assert retry.user_attrs["retry_of"] == silent.number
    assert f"trial {silent.number} stopped beating" in capfd.readouterr().err
    with quiet_experimental():  # the retry is claimed, and its process goes silent too
        again = study.ask()
    assert again.number == retry.number
    storage.record_heartbeat(again._trial_id)
    time.sleep(2.5)
    with quiet_experimental():
        optuna.storages.fail_stale_trials(study)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL] * 2  # retried once only
