"""The study's sampler and pruner: `_target_` nodes built by `hydra.utils.instantiate`.

    sampler: {name: tpe, seed: 0, n_startup_trials: 10}           # a short name, as before
    sampler: {_target_: optuna.samplers.NSGAIISampler, seed: 0}   # any importable sampler class
    pruner:                                                        # nested nodes, e.g. a wrapper
      _target_: optuna.pruners.PatientPruner
      wrapped_pruner: {_target_: optuna.pruners.MedianPruner, n_warmup_steps: 5}
      patience: 3

A short `name` stands for its class in optuna.samplers / optuna.pruners; a `_target_` may name
any sampler (pruner) class, which any package may provide (OptunaHub's included, once
installed). Arguments the class does not take are dropped, with a warning unless they came from
the schema's default: sweep files merge with it, so `pruner: {name: none}` also carries the
median pruner's settings.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import optuna
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from optuna.trial import FrozenTrial

from sweeplab.config import ConfigError, SweepConfig
from sweeplab.sweep.space import SearchSpace

SAMPLERS = {
    "tpe": "optuna.samplers.TPESampler",
    "random": "optuna.samplers.RandomSampler",
    "cmaes": "optuna.samplers.CmaEsSampler",
    "qmc": "optuna.samplers.QMCSampler",
    "grid": "optuna.samplers.GridSampler",
}
PRUNERS = {
    "median": "optuna.pruners.MedianPruner",
    "hyperband": "optuna.pruners.HyperbandPruner",
    "successive_halving": "optuna.pruners.SuccessiveHalvingPruner",
    "none": "optuna.pruners.NopPruner",
}


def make_sampler(
    spec: dict[str, Any], space: SearchSpace, seed_offset: int = 0
) -> optuna.samplers.BaseSampler:
    """An Optuna sampler from its node, its seed shifted by `seed_offset` (each process that
    joins a study, `storage.join_study`) so that they do not all propose the same points. Not
    the grid sampler's: its seed orders the grid, and a trial's grid point is its number in
    that order, so every process needs the same one."""
    node = _target_node("sampler", spec, SAMPLERS, optuna.samplers.BaseSampler)
    is_grid = get_object(node["_target_"]) is optuna.samplers.GridSampler
    if node.get("seed") is not None and not is_grid:
        node["seed"] = int(node["seed"]) + seed_offset
    if is_grid:
        node.setdefault("search_space", space.grid())
    return _instantiate("sampler", node)


def make_pruner(spec: dict[str, Any]) -> optuna.pruners.BasePruner:
    """An Optuna pruner from its node."""
    return _instantiate("pruner", _target_node("pruner", spec, PRUNERS, optuna.pruners.BasePruner))


def _target_node(kind: str, spec: dict[str, Any], short: dict[str, str], base: type) -> dict:
    """The `_target_` node that `spec` states, or that its short `name` stands for; the target
    must be a subclass of `base` (checked before anything is called)."""
    arguments = dict(spec)
    name = arguments.pop("name", None)
    target = arguments.pop("_target_", None)
    if target is None:
        if name not in short:
            raise ConfigError(f"sweep.{kind}.name={name!r}: expected one of {', '.join(short)}")
        target = short[name]
    try:
        cls = get_object(str(target))
    except Exception as err:  # hydra says ImportError or ValueError, with the reason
        raise ConfigError(f"sweep.{kind}._target_={target!r}: {err}") from None
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise ConfigError(
            f"sweep.{kind}._target_={target!r}: not a {base.__module__}.{base.__name__}"
        )
    return {"_target_": target, **_accepted(kind, cls, arguments)}


def _accepted(kind: str, cls: type, arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments `cls` takes; the others are dropped, with a warning for those the user
    wrote (not merged in from the schema's default)."""
    accepted = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return arguments
    schema_default = getattr(SweepConfig(), kind)
    ignored = sorted(
        k for k in set(arguments) - set(accepted) if arguments[k] != schema_default.get(k, object())
    )
    if ignored:
        print(
            f"warning: sweep.{kind}: {cls.__name__} takes no {', '.join(ignored)}; ignored",
            file=sys.stderr,
        )
    return {k: v for k, v in arguments.items() if k in accepted}


def _instantiate(kind: str, node: dict[str, Any]) -> Any:
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as err:
        reason = str(err.__cause__ or err).splitlines()[0]
        raise ConfigError(f"sweep.{kind}={node}: {reason}") from None


class FirstObjective:
    """A study seen as its first objective's where one direction is asked for: a study of
    several objectives prunes its trials on the first (Optuna's own refuses to name one)."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    @property
    def direction(self) -> optuna.study.StudyDirection:
        return self._study.directions[0]


class PrunedTrialsAware(optuna.samplers.BaseSampler):
    """A sampler of a study of several objectives that has pruned trials (which Optuna's
    samplers do not expect there): TPE ranks a pruned trial by its last intermediate value, in
    the study's one direction, here the first objective's (`FirstObjective`)."""

    def __init__(self, sampler: optuna.samplers.BaseSampler) -> None:
        self.sampler = sampler

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> Any:
        return self.sampler.infer_relative_search_space(FirstObjective(study), trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, space: Any) -> Any:
        return self.sampler.sample_relative(FirstObjective(study), trial, space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, name: str, distribution: Any
    ) -> Any:
        return self.sampler.sample_independent(FirstObjective(study), trial, name, distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.sampler.before_trial(FirstObjective(study), trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: Any, values: Any) -> None:
        self.sampler.after_trial(FirstObjective(study), trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()
