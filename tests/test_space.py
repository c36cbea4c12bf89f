"""hydra-optuna-sweeper syntax -> Optuna distributions, through Hydra's own override parser."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from sweeplab.config import ConfigError
from sweeplab.sweep.sampling import make_pruner, make_sampler
from sweeplab.sweep.space import extremes, parse_space, suggest, to_overrides


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("interval(0.1, 1)", FloatDistribution(0.1, 1.0)),
        ("int(interval(1, 10))", IntDistribution(1, 10)),
        ("tag(log, interval(1e-4, 1e-1))", FloatDistribution(1e-4, 1e-1, log=True)),
        ("tag(log, int(interval(1, 1024)))", IntDistribution(1, 1024, log=True)),
        ("range(1, 10, 2)", IntDistribution(1, 9, step=2)),
        ("range(32, 257, 32)", IntDistribution(32, 256, step=32)),
        ("choice(adam, sgd)", CategoricalDistribution(["adam", "sgd"])),
        ("choice(16, 32, 64)", CategoricalDistribution([16, 32, 64])),
    ],
)
def test_every_syntax_form(expression, expected):
    space = parse_space({"some.key": expression})
    assert space.distributions == {"some.key": expected}
    assert space.expressions["some.key"] == expression


def test_float_range_and_plain_values():
    space = parse_space({"a": "range(0.1, 0.5, 0.1)", "b": 7, "c": "relu"})
    dist = space.distributions["a"]
    assert (
        isinstance(dist, FloatDistribution) and dist.low == pytest.approx(0.1) and dist.step == 0.1
    )
    assert space.fixed == {"b": "7", "c": "relu"}


def test_nested_params_are_dotted():
    space = parse_space({"model": {"d_hidden": "int(interval(1, 4))"}})
    assert list(space.distributions) == ["model.d_hidden"]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("interval(1)", "malformed"),
        ("choice()", "malformed"),
        ("interval(5, 1)", "low < high"),
        ("tag(log, interval(0, 1))", "log scale"),
        ("range(5, 1)", "empty"),
    ],
)
def test_bad_expressions_name_the_key(expression, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_space({"optimizer.lr": expression})
    assert str(err.value).startswith("sweep.params.optimizer.lr=")


def test_overrides_round_trip_values():
    assert to_overrides(
        {"optimizer": "sgd", "optimizer.lr": 0.001, "model.d_hidden": 8, "x": True}
    ) == [
        "optimizer=sgd",
        "optimizer.lr=0.001",
        "model.d_hidden=8",
        "x=true",
    ]
    assert to_overrides({"name": "a b"}) == ["name='a b'"]


def test_suggest_stays_inside_the_space():
    space = parse_space(
        {
            "a": "tag(log, interval(1e-3, 1))",
            "b": "int(interval(2, 5))",
            "c": "choice(x, y)",
            "d": "range(0, 10, 5)",
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = suggest(study.ask(), space)
        assert 1e-3 <= values["a"] <= 1 and 2 <= values["b"] <= 5
        assert values["c"] in ("x", "y") and values["d"] in (0, 5, 10)


def test_extremes_touch_every_bound_and_choice():
    space = parse_space({"a": "int(interval(2, 5))", "c": "choice(x, y, z)"})
    sets = extremes(space)
    assert {s["a"] for s in sets} == {2, 5}
    assert {s["c"] for s in sets} == {"x", "y", "z"}


@pytest.mark.parametrize("name", ["tpe", "random", "cmaes", "qmc", "grid"])
def test_every_sampler_builds_with_a_seed(name):
    space = parse_space({"a": "choice(1, 2)", "b": "range(1, 4)"})
    sampler = make_sampler({"name": name, "seed": 3}, space)
    assert type(sampler).__module__.startswith("optuna.samplers")


def test_sampler_by_target_as_in_hydra_optuna_sweeper():
    space = parse_space({"a": "interval(0, 1)"})
    sampler = make_sampler(
        {"_target_": "optuna.samplers.TPESampler", "seed": 1, "n_startup_trials": 3}, space
    )
    assert isinstance(sampler, optuna.samplers.TPESampler)
    with pytest.raises(ConfigError, match="_target_"):
        make_sampler({"_target_": "os.system"}, space)


def test_grid_refuses_continuous_intervals():
    with pytest.raises(ConfigError, match="grid sampler"):
        make_sampler({"name": "grid"}, parse_space({"a": "interval(0, 1)"}))


@pytest.mark.parametrize(
    ("spec", "cls"),
    [
        ({"name": "median", "n_startup_trials": 2}, optuna.pruners.MedianPruner),
        ({"name": "hyperband", "min_resource": 1}, optuna.pruners.HyperbandPruner),
        ({"name": "successive_halving"}, optuna.pruners.SuccessiveHalvingPruner),
        ({"name": "none"}, optuna.pruners.NopPruner),
    ],
)
def test_pruners(spec, cls):
    assert isinstance(make_pruner(spec), cls)


def test_unknown_sampler_is_named():
    with pytest.raises(ConfigError, match="sweep.sampler.name='bayes'"):
        make_sampler({"name": "bayes"}, parse_space({"a": "interval(0, 1)"}))


def test_arguments_a_pruner_does_not_take_are_dropped_with_a_warning(capsys):
    # sweep files merge with the schema default, so {name: none} arrives with median's settings:
    # those are dropped quietly; a value the user wrote is dropped with a warning
    assert isinstance(make_pruner({"name": "none", "n_warmup_steps": 3}), optuna.pruners.NopPruner)
    assert capsys.readouterr().err == ""
    assert isinstance(make_pruner({"name": "none", "n_warmup_steps": 7}), optuna.pruners.NopPruner)
    assert "NopPruner takes no n_warmup_steps; ignored" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="sweep.pruner"):
        make_pruner({"name": "median", "n_startup_trials": -1})


def test_a_wrapping_pruner_is_a_nested_target_node():
    pruner = make_pruner(
        {
            "_target_": "optuna.pruners.PatientPruner",
            "wrapped_pruner": {"_target_": "optuna.pruners.MedianPruner", "n_warmup_steps": 2},
            "patience": 3,
        }
    )
    assert isinstance(pruner, optuna.pruners.PatientPruner)
    assert isinstance(pruner._wrapped_pruner, optuna.pruners.MedianPruner)


def test_a_target_that_is_not_a_pruner_is_refused_before_it_is_called():
    with pytest.raises(ConfigError, match="not a optuna.pruners._base.BasePruner"):
        make_pruner({"_target_": "optuna.samplers.RandomSampler"})
    with pytest.raises(ConfigError, match="sweep.pruner._target_='no.such.Pruner'"):
        make_pruner({"_target_": "no.such.Pruner"})
