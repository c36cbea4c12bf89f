"""Sweeps of several objectives: the Pareto front kept, written and printed; trials pruned on the
first objective; bad objective specs refused before any trial."""

from __future__ import annotations

import csv
import re

import optuna
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from optuna.study import StudyDirection
from optuna.trial import TrialState

from sweeplab.config import CONF_DIR, ConfigError, register_configs
from sweeplab.sweep.cli import print_summary
from sweeplab.sweep.front import FrontGuard
from sweeplab.sweep.plan import plan_sweep
from sweeplab.sweep.results import FRONT_TAG, sweep_folder

from .conftest import run_cli
from .test_sweep import children, load, plan_and_run, sweep_overrides

# accuracy against size; trials pruned on val/acc from their second epoch on
PARETO = [
    "sweep=synthetic_pareto",
    "trainer.epochs=12",
    "sweep.pruner.n_startup_trials=2",
    "sweep.pruner.n_warmup_steps=1",
    "sweep.sampler.n_startup_trials=4",
]


def dominates(a: list[float], b: list[float], directions: list[StudyDirection]) -> bool:
    """`a` at least as good as `b` on every objective, and better on one."""
    return at_least_as_good(a, b, directions) and a != b


def at_least_as_good(a: list[float], b: list[float], directions: list[StudyDirection]) -> bool:
    signs = [1 if d == StudyDirection.MAXIMIZE else -1 for d in directions]
    return all(s * (x - y) >= 0 for s, x, y in zip(signs, a, b, strict=True))


@pytest.mark.parametrize("stack", [1, 4])  # a trial at a time, and stacks
def test_a_two_objective_sweep_keeps_prunes_and_writes_its_pareto_front(
    stack, mlflow_uri, capsys, _isolated_output
):
    overrides = [*sweep_overrides(mlflow_uri)[1:], *PARETO]  # (sweep_overrides' own sweep=...)
    name = f"pareto{stack}"
    plan, summary = plan_and_run(
        [*overrides, f"sweep.stack={stack}", f"sweep.study_name={name}", "sweep.n_trials=16"]
    )
    study = load(plan)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert any(t.state == TrialState.PRUNED for t in study.trials)  # on val/acc, per epoch
    front = {p.number for p in summary.front}
    assert front == {t.number for t in study.best_trials}
    for t in complete:  # the front is exactly the trials no other trial dominates
        beaten = any(dominates(o.values, t.values, study.directions) for o in complete)
        assert beaten == (t.number not in front), t.number
    # 2 inputs, d_H hidden units, 1 output: 4 d_H + 1 weights and biases
    assert all(t.values[1] == 4 * t.params["model.d_hidden"] + 1 for t in complete)
    for t in study.trials:  # each pruned trial was behind the front when it was pruned: a
        if t.state == TrialState.PRUNED:  # trial done by then was as accurate at that epoch,
            epoch = t.last_step  # and is no bigger
            shown = [t.intermediate_values[epoch], 4 * t.params["model.d_hidden"] + 1]
            assert any(
                o.datetime_complete < t.datetime_complete
                and at_least_as_good(
                    [o.intermediate_values[epoch], o.values[1]], shown, study.directions
                )
                for o in complete
            ), t.number
    runs = {t.number: t.user_attrs["mlflow_run_id"] for t in complete}
    client = MlflowClient(mlflow_uri)
    tagged = {n for n, run in runs.items() if client.get_run(run).data.tags.get(FRONT_TAG)}
    assert tagged == front
    # the runs table's search box takes the README's filter (the UI sends it to this search);
    # (the other parametrisation's study shares the experiment: its parent tells them apart)
    parent = f"tags.mlflow.parentRunId = '{summary.parent_run_id}'"
    found = client.search_runs([summary.experiment_id], f'tags.{FRONT_TAG} = "true" and {parent}')
    assert {int(r.data.tags["optuna.trial"]) for r in found} == front

    folder = sweep_folder(name)
    with (folder / "pareto.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["number"]) for r in rows] == [p.number for p in summary.front]
    assert [float(r["val/acc"]) for r in rows] == sorted(
        (float(r["val/acc"]) for r in rows), reverse=True
    )
    print_summary(summary, plan)  # what the command prints at its end
    printed = capsys.readouterr().out
    assert f"Pareto front ({len(front)} trials), val/acc vs model/n_params:" in printed
    for point in summary.front:
        assert f"--config-name pareto-{point.number}" in printed
    client = MlflowClient(mlflow_uri)
    parent = client.get_run(summary.parent_run_id)
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    assert f"pareto/pareto-{summary.front[0].number}.yaml" in logged
    assert "pareto/pareto.csv" in logged
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")} >= {
        "optuna/pareto_front.png"
    }
    assert f"{len(front)} trials on the Pareto front" in parent.data.tags["mlflow.note.content"]
    assert len(children(mlflow_uri, summary.parent_run_id)) == 16

    # a point of the front reruns to its values
    point = summary.front[-1]
    done = run_cli(
        "sweeplab.train",
        "--config-path",
        str(folder),
        "--config-name",
        f"pareto-{point.number}",
        f"tracking.uri={mlflow_uri}",
        env={"SWEEPLAB_OUTPUT": str(_isolated_output)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"val/acc={point.values[0]:.4f}" in done.stdout


@pytest.mark.parametrize(
    ("objectives", "message"),
    [
        (
            "[{metric: val/acc, direction: maximize}]",
            "sweep.objectives=[{'metric': 'val/acc', 'direction': 'maximize'}]: needs two or more",
        ),
        (
            "[{metric: model/n_params, direction: minimize}, {metric: val/acc, direction: maximize}]",
            "sweep.objectives[0].metric='model/n_params': must be the first is pruned on",
        ),
        (
            "[{metric: val/acc, direction: maximize}, {metric: val/loss, direction: maximize}]",
            "sweep.objectives[1].direction='maximize': val/loss is a loss, minimize it",
        ),
        (
            "[{metric: val/acc, direction: maximize}, {metric: model/size, direction: minimize}]",
            "sweep.objectives[1].metric='model/size': must be a logged metric",
        ),
        (
            "[{metric: val/acc, direction: maximize}, {metric: val/acc, direction: minimize}]",
            "names a metric twice",
        ),
        (
            "[{metric: val/acc, direction: up}, {metric: val/loss, direction: minimize}]",
            "sweep.objectives[0].direction='up': must be one of",
        ),
    ],
)
def test_bad_objectives_are_refused_before_any_trial(objectives, message, mlflow_uri):
    with pytest.raises(ConfigError, match=re.escape(message)):
        plan_and_run(sweep_overrides(mlflow_uri, f"+sweep.objectives={objectives}"))


def test_several_objectives_take_no_target(mlflow_uri):
    objectives = (
        "[{metric: val/acc, direction: maximize}, {metric: model/n_params, direction: minimize}]"
    )
    with pytest.raises(ConfigError, match=re.escape("sweep.target=0.9: takes one objective")):
        plan_and_run(
            sweep_overrides(mlflow_uri, f"sweep.objectives={objectives}", "sweep.target=0.9")
        )


def test_a_constraint_keeps_infeasible_trials_off_the_front(mlflow_uri):
    overrides = [*sweep_overrides(mlflow_uri)[1:], *PARETO, "sweep.n_trials=10", "sweep.stack=4"]
    overrides.append("sweep.pruner.name=none")  # every trial completes: feasible or not
    constraint = "sweep.constraints=['model/n_params <= 60']"  # d_H <= 14
    plan, summary = plan_and_run([*overrides, "sweep.study_name=pareto-c", constraint])
    complete = [t for t in load(plan).trials if t.state == TrialState.COMPLETE]
    feasible = [t for t in complete if t.values[1] <= 60]
    assert len(feasible) < len(complete)  # some broke it
    assert summary.front and all(p.values[1] <= 60 for p in summary.front)
    for t in feasible:  # the front: the feasible trials no feasible trial dominates
        beaten = any(dominates(o.values, t.values, load(plan).directions) for o in feasible)
        assert beaten == (t.number not in {p.number for p in summary.front})


@pytest.mark.parametrize(
    ("val_acc", "finished", "spared"),
    [  # a trial of 8 hidden units (33 weights and biases) at epoch 5; finished trials: their
        # val/acc at epoch 5, their n_params (and a constraint's excess)
        (0.70, [(0.90, 33)], False),  # as small as a finished trial, and behind it at epoch 5
        (0.70, [(0.90, 41)], True),  # smaller than every finished trial
        (0.95, [(0.90, 33)], True),  # ahead of every finished trial at epoch 5
        (0.70, [(0.90, 41), (0.80, 21)], False),  # behind one of them
        (0.70, [(0.90, 33, 1.0)], True),  # the only one ahead broke a constraint
        (0.70, [], True),  # nothing finished yet
    ],
)
def test_pruning_spares_a_trial_no_finished_trial_was_ahead_of(
    val_acc, finished, spared, make_config
):
    """Accuracy against size: what the pruner would stop goes on where it may be on the front."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    for acc, n_params, *excess in finished:
        constraints = {"model/n_params <= 40": excess[0]} if excess else None
        study.add_trial(
            optuna.trial.create_trial(  # (its final val/acc is 0.99: epoch 5's is compared)
                values=[0.99, n_params], intermediate_values={5: acc}, constraints=constraints
            )
        )
    objectives = [("val/acc", "maximize"), ("model/n_params", "minimize")]
    guard = FrontGuard(objectives, make_config("data=synthetic", "model.d_hidden=8"))
    assert guard.known == {"model/n_params": 33, "model/flops": 57}  # 4 d_H + 1; 7 d_H + 1
    assert guard.spares(study, 5, {"val/acc": val_acc, "val/loss": 0.5}) == spared


def test_pruning_spares_every_trial_while_an_objective_is_unknown(make_config, capsys):
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[0.99, 1e-6], intermediate_values={5: 0.9}))
    objectives = [("val/acc", "maximize"), ("test/predict_us_per_sample", "minimize")]
    guard = FrontGuard(objectives, make_config("data=synthetic"))
    assert guard.spares(study, 5, {"val/acc": 0.1})
    register_configs()  # and the sweep says so before it starts
    late = (
        "sweep.objectives=[{metric: val/acc, direction: maximize},"
        " {metric: test/predict_us_per_sample, direction: minimize}]"
    )
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        overrides = ["sweep=synthetic_pareto", late]
        plan_sweep(compose("config", overrides), overrides, None)
    note = "note: test/predict_us_per_sample is known only at a trial's end, so no trial is pruned"
    assert note in capsys.readouterr().err
