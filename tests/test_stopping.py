"""A study's start and end beyond its budget: known configurations queued first (once), and a
whole study stopped on a target or a plateau."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from sweeplab.config import ConfigError, SweepConfig
from sweeplab.sweep.stopping import plateau
from sweeplab.sweep.storage import WARM_FROM, make_storage

from .conftest import run_cli
from .test_sweep import (
    NO_PICTURES,
    SMALL,
    children,
    load,
    plan_and_run,
    sweep_overrides,
    write_sweep_file,
)

START = datetime.datetime(2026, 11, 30)


def finished(values, order=None):
    """Trials with these values (None: pruned), finishing in `order` (default: as numbered)."""
    order = order or range(len(values))
    trials = []
    for rank, number in enumerate(order):
        value = values[number]
        trial = create_trial(
            state=TrialState.PRUNED if value is None else TrialState.COMPLETE,
            value=value,
            params={"x": 0.5},
            distributions={"x": FloatDistribution(0, 1)},
        )
        trial.number = number
        trial.datetime_complete = START + datetime.timedelta(seconds=rank)
        trials.append(trial)
    return trials


@pytest.mark.parametrize(
    ("values", "settings", "stops"),
    [
        ([0.5, 0.6, 0.6, 0.6], {"patience": 2}, True),  # two finished without a gain
        ([0.5, 0.6, 0.6, 0.7], {"patience": 2}, False),  # the last one improved
        ([0.5, 0.6, None, None], {"patience": 2}, True),  # pruned trials improve nothing
        ([0.5, 0.6, 0.605, 0.608], {"patience": 2, "min_delta": 0.01}, True),  # too small a gain
        ([0.5, 0.6, 0.605, 0.608], {"patience": 2}, False),
        ([0.5, 0.6, 0.6, 0.6], {}, False),  # patience 0: off
        ([0.5, 0.91, 0.6], {"target": 0.9}, True),
        ([0.5, 0.89, 0.6], {"target": 0.9}, False),
        ([0.5, 0.3, 0.4], {"target": 0.35, "direction": "minimize"}, True),  # a loss: below it
        ([0.5, 0.4, 0.45], {"patience": 1, "direction": "minimize"}, True),
    ],
)
def test_a_study_stops_on_its_target_or_a_plateau(values, settings, stops):
    assert (plateau(finished(values), SweepConfig(**settings), "val/acc") is not None) == stops


def test_finished_trials_count_in_the_order_they_finished():
    """Trial 3 finished first (workers): the best came last, so there is no plateau."""
    values = [0.5, 0.5, 0.5, 0.9]
    assert plateau(finished(values, order=[3, 0, 1, 2]), SweepConfig(patience=3), "v") is not None
    assert plateau(finished(values, order=[0, 1, 2, 3]), SweepConfig(patience=3), "v") is None


def test_a_target_is_reached_by_the_sweeps_own_trials_not_by_warm_start_copies():
    trials = finished([0.95, 0.5, 0.6])
    trials[0].user_attrs[WARM_FROM] = "earlier trial 7"
    assert plateau(trials, SweepConfig(target=0.9), "val/acc") is None
    assert plateau([*trials, *finished([0.5, 0.5, 0.5, 0.91])[3:]], SweepConfig(target=0.9), "v")


def test_the_reason_names_the_settings():
    why = plateau(finished([0.5, 0.5, 0.5]), SweepConfig(patience=2, min_delta=0.01), "val/acc")
    assert why == (
        "a plateau: val/acc has not improved by more than sweep.min_delta=0.01 in the last 2 "
        "finished trials (sweep.patience=2)"
    )
    why = plateau(finished([0.5, 0.95]), SweepConfig(target=0.9), "val/acc")
    assert why == "sweep.target=0.9 reached by trial 1 (val/acc=0.95)"


def test_a_sweep_stops_once_a_trial_reaches_its_target(mlflow_uri):
    plan, summary = plan_and_run(
        sweep_overrides(
            mlflow_uri,
            "sweep.n_trials=20",
            "sweep.study_name=target",
            "sweep.target=0.0",
            "sweep.stack=1",  # (a stack's trials are claimed together: it stops after its stack)
        )
    )
    assert summary.stop_reason.startswith("sweep.target=0 reached by trial")
    assert len(load(plan).trials) < 20


KNOWN = ["sweep.enqueue=[{optimizer: adam, optimizer.lr: 0.01}, {model.d_hidden: 4}]"]


def test_enqueued_configurations_run_first_and_once_across_a_resume(mlflow_uri):
    args = sweep_overrides(mlflow_uri, "sweep.study_name=known", "sweep.stack=1", *KNOWN)
    plan, _ = plan_and_run([*args, "sweep.n_trials=3"])
    plan_and_run([*args, "sweep.n_trials=5"])  # the resume queues nothing again
    trials = load(plan).trials
    assert len(trials) == 5
    first, second = trials[0].params, trials[1].params
    assert (first["optimizer"], first["optimizer.lr"]) == ("adam", 0.01)
    assert second["model.d_hidden"] == 4
    assert [t.user_attrs.get("enqueued", False) for t in trials] == [
        True,
        True,
        False,
        False,
        False,
    ]


@pytest.mark.slow
def test_two_processes_starting_one_study_queue_its_known_configurations_once(
    mlflow_uri, _isolated_output
):
    """Both processes bootstrap the new study at the same moment; each queues only what the
    study has not queued yet, under the study's lock."""
    args = sweep_overrides(mlflow_uri, "sweep.study_name=race", "sweep.n_trials=4", *KNOWN)
    env = {**os.environ, "SWEEPLAB_OUTPUT": str(_isolated_output)}
    command = [sys.executable, "-m", "sweeplab.sweep", *args]
    procs = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for _ in "ab"
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
    journal = _isolated_output / "optuna" / "race.journal"
    trials = optuna.load_study(study_name="race", storage=make_storage(str(journal))).trials
    assert len(trials) == 4
    enqueued = [t.number for t in trials if t.user_attrs.get("enqueued")]
    assert enqueued == [0, 1], [(t.number, t.params) for t in trials]


@pytest.mark.parametrize(
    ("enqueue", "message"),
    [
        ("[{model.width: 4}]", "sweep.enqueue[0].model.width: not a searched parameter"),
        ("[{model.d_hidden: 400}]", "sweep.enqueue[0].model.d_hidden=400: outside its space"),
        ("[{optimizer: lbfgs}]", "sweep.enqueue[0].optimizer='lbfgs': outside its space"),
        ("[{}]", "sweep.enqueue[0]={}: must map searched parameters to their values"),
    ],
)
def test_a_bad_enqueued_configuration_is_refused_before_any_trial(enqueue, message, mlflow_uri):
    with pytest.raises(ConfigError, match=re.escape(message)):
        plan_and_run(sweep_overrides(mlflow_uri, f"sweep.enqueue={enqueue}"))


def test_warm_start_copies_the_compatible_trials_of_another_study_once(
    mlflow_uri, tmp_path, _isolated_output
):
    first, _ = plan_and_run(
        sweep_overrides(mlflow_uri, "sweep.study_name=wa", "sweep.n_trials=6", "sweep.stack=1")
    )
    earlier = {t.number: t for t in load(first).trials if t.state == TrialState.COMPLETE}
    write_sweep_file(
        tmp_path / "conf",
        "wb",
        {"study_name": "wb", "warm_start": "wa", "params/model.d_hidden": "int(interval(1, 16))"},
    )
    args = ["--config-dir", str(tmp_path / "conf"), "sweep=wb", *SMALL, NO_PICTURES]
    args += [f"tracking.uri={mlflow_uri}", "sweep.stack=1"]
    env = {"SWEEPLAB_OUTPUT": str(_isolated_output)}
    said = []
    for budget in (2, 3):  # then a resume: nothing is copied again
        done = run_cli("sweeplab.sweep", *args, f"sweep.n_trials={budget}", env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        said.append(done.stderr)
    journal = str(_isolated_output / "optuna" / "wb.journal")
    trials = optuna.load_study(study_name="wb", storage=make_storage(journal)).trials
    copied = [t for t in trials if WARM_FROM in t.user_attrs]
    fits = {n: t for n, t in earlier.items() if t.params["model.d_hidden"] <= 16}
    assert sorted(t.user_attrs[WARM_FROM] for t in copied) == sorted(f"wa trial {n}" for n in fits)
    for t in copied:
        source = fits[int(t.user_attrs[WARM_FROM].split()[-1])]
        assert (t.params, t.value) == (source.params, source.value)
    assert len(trials) - len(copied) == 3  # the budget is this study's own trials
    assert f"warm start: {len(copied)} completed trials of study 'wa' copied in" in said[0]
    assert "warm start" not in said[1]


@pytest.mark.parametrize("stack", [1, 0])  # a trial at a time, and stacks
def test_constraints_keep_infeasible_trials_from_the_best_and_mark_them(stack, mlflow_uri):
    """2 inputs, d_H hidden units, 1 output: 4 d_H + 1 weights and biases, so d_H <= 14 fits
    in 60; and a cap on val/acc that good trials break."""
    constraints = "sweep.constraints=['model/n_params <= 60', 'val/acc < 0.9']"
    plan, summary = plan_and_run(
        sweep_overrides(
            mlflow_uri,
            "sweep.n_trials=10",
            f"sweep.stack={stack}",
            f"sweep.study_name=c{stack}",
            constraints,
        )
    )
    complete = [t for t in load(plan).trials if t.state == TrialState.COMPLETE]
    fits = [t for t in complete if t.params["model.d_hidden"] <= 14 and t.value < 0.9]
    assert {t.number for t in fits} == {
        t.number for t in complete if all(v <= 0 for v in t.constraints.values())
    }
    assert len(fits) < len(complete)  # some broke one (TPE starts with random trials)
    for t in complete:
        assert t.user_attrs["model/n_params"] == 4 * t.params["model.d_hidden"] + 1
    assert summary.best_value == max(t.value for t in fits)
    runs = {r.data.tags["optuna.trial"]: r for r in children(mlflow_uri, summary.parent_run_id)}
    for t in complete:
        tags = runs[str(t.number)].data.tags
        assert tags["sweeplab.feasible"] == ("true" if t in fits else "false")
        if t not in fits:
            assert "model/n_params <= 60" in tags["sweeplab.broken_constraints"] or (
                tags["sweeplab.broken_constraints"] == "val/acc < 0.9"
            )


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        ("model/nparams <= 3", "model/nparams is none of val/acc"),
        ("model/n_params = 3", "must read '<metric> <op> <number>'"),
        ("test/acc < inf", "inf is not a finite number"),
    ],
)
def test_a_bad_constraint_is_refused_before_any_trial(constraint, message, mlflow_uri):
    with pytest.raises(
        ConfigError, match=re.escape(f"sweep.constraints[0]='{constraint}': {message}")
    ):
        plan_and_run(sweep_overrides(mlflow_uri, f"sweep.constraints=['{constraint}']"))
