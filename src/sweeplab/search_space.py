"""Search spaces in hydra-optuna-sweeper syntax, parsed by Hydra's own override parser.

A sweep file's `params` maps config keys to Hydra sweep expressions:

    params:
      model.d_hidden: int(interval(2, 64))            # integer, uniform
      optimizer.lr: tag(log, interval(1e-4, 1e-1))    # float, log scale
      trainer.batch_size: range(32, 257, 32)          # integers 32, 64, ..., 256
      model.activation: choice(sigmoid, tanh, relu)   # categorical
      optimizer: choice(adam, sgd)                    # a config-group choice
      trainer.epochs: 50                              # a plain value: fixed for every trial

`parse_space` turns them into Optuna distributions (the same mapping hydra-optuna-sweeper makes);
`to_overrides` turns a trial's values back into Hydra overrides. Samplers and pruners are built
from their config by name (`tpe`, `random`, `cmaes`, `qmc`, `grid`; `median`, `hyperband`,
`successive_halving`, `none`) or by `_target_: optuna.samplers.TPESampler` as in that plugin.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any

from sweeplab.config import ConfigError

SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "cmaes": "CmaEsSampler",
    "qmc": "QMCSampler",
    "grid": "GridSampler",
}
PRUNERS = {
    "median": "MedianPruner",
    "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "none": "NopPruner",
}


@dataclass
class SearchSpace:
    distributions: dict[str, Any] = field(default_factory=dict)  # key -> optuna distribution
    fixed: dict[str, str] = field(default_factory=dict)  # key -> value for every trial
    expressions: dict[str, str] = field(default_factory=dict)  # key -> the text from the config

    def grid(self) -> dict[str, list]:
        """The values of each parameter, for the grid sampler (choice and range only)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        grid = {}
        for key, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                grid[key] = list(dist.choices)
            elif (
                isinstance(dist, IntDistribution | FloatDistribution) and dist.step and not dist.log
            ):
                count = round((dist.high - dist.low) / dist.step) + 1
                grid[key] = [dist.low + i * dist.step for i in range(count)]
            else:
                raise ConfigError(
                    f"sweep.params.{key}={self.expressions[key]!r}: the grid sampler needs "
                    "choice(...) or range(...), not a continuous interval"
                )
        return grid


def flatten_params(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"model": {"d_hidden": "..."}}` and `{"model.d_hidden": "..."}` both give the dotted form."""
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parse_space(params: dict[str, Any]) -> SearchSpace:
    """Parse every `key: expression`; a malformed one raises ConfigError naming the key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    space = SearchSpace()
    for key, expression in flatten_params(params).items():
        text = _format_value(expression) if not isinstance(expression, str) else expression
        space.expressions[key] = text
        try:
            [override] = parser.parse_overrides([f"{key}={text}"])
        except HydraException as err:
            reason = str(err).splitlines()[-1].strip() if str(err) else "cannot parse"
            raise ConfigError(f"sweep.params.{key}={text!r}: malformed ({reason})") from None
        if not override.is_sweep_override():
            space.fixed[key] = text
            continue
        space.distributions[key] = _distribution(key, text, override)
    return space


def _distribution(key: str, text: str, override: Any) -> Any:
    """hydra-optuna-sweeper's mapping from a sweep override to an Optuna distribution."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    culprit = f"sweep.params.{key}={text!r}"
    if isinstance(value, ChoiceSweep):
        choices = list(value.list)
        if not choices:
            raise ConfigError(f"{culprit}: choice() needs at least one option")
        if any(isinstance(c, dict | list) for c in choices):
            raise ConfigError(f"{culprit}: choices must be plain values")
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"{culprit}: the range is empty")
        if value.shuffle:
            return CategoricalDistribution(values)
        if all(isinstance(v, int) for v in values) and isinstance(value.step, int):
            return IntDistribution(values[0], values[-1], step=value.step)
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(value.step))
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        if low is None or high is None or not low < high:
            raise ConfigError(f"{culprit}: needs interval(low, high) with low < high")
        log = "log" in value.tags
        if log and low <= 0:
            raise ConfigError(f"{culprit}: a log scale needs low > 0")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    raise ConfigError(f"{culprit}: unsupported sweep expression")


_PLAIN = re.compile(r"^[A-Za-z0-9_.+\-/]+$")


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    if _PLAIN.match(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def to_overrides(values: dict[str, Any]) -> list[str]:
    """A trial's `{key: value}` as Hydra overrides (`key=value`, group choices included)."""
    return [f"{key}={_format_value(value)}" for key, value in values.items()]


def describe(values: dict[str, Any]) -> str:
    """A trial's values as overrides for people: floats to 4 significant digits."""
    shown = {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in values.items()}
    return " ".join(to_overrides(shown))


def suggest(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """Ask the trial for a value of every parameter."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    values = {}
    for key, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            values[key] = trial.suggest_categorical(key, dist.choices)
        elif isinstance(dist, FloatDistribution):
            values[key] = trial.suggest_float(
                key, dist.low, dist.high, step=dist.step, log=dist.log
            )
        else:
            values[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return values


def extremes(space: SearchSpace) -> list[dict[str, Any]]:
    """Parameter sets that touch every bound and every choice: composing them checks the space
    against the config schema before any trial runs."""
    from optuna.distributions import CategoricalDistribution

    low = {
        k: (d.choices[0] if isinstance(d, CategoricalDistribution) else d.low)
        for k, d in space.distributions.items()
    }
    high = {
        k: (d.choices[-1] if isinstance(d, CategoricalDistribution) else d.high)
        for k, d in space.distributions.items()
    }
    sets = [low, high]
    for key, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            sets.extend({**low, key: choice} for choice in dist.choices[1:-1])
    return sets


def _build(
    kind: str, table: dict[str, str], spec: dict[str, Any], module: str
) -> tuple[type, dict]:
    """The class a `{name: ...}` or `{_target_: ...}` spec names, and the arguments it accepts.

    Arguments the class does not take are dropped with a warning: sweep files merge with the
    schema's defaults, so `pruner: {name: none}` also carries the median pruner's settings.
    """
    import importlib
    import inspect

    spec = dict(spec)
    target = spec.pop("_target_", None)
    name = spec.pop("name", None)
    if target is not None:
        if not str(target).startswith(f"{module}."):
            raise ConfigError(f"sweep.{kind}._target_={target!r}: must name a class in {module}")
        class_name = str(target).rsplit(".", 1)[1]
    elif name in table:
        class_name = table[name]
    else:
        raise ConfigError(f"sweep.{kind}.name={name!r}: expected one of {', '.join(table)}")
    cls = getattr(importlib.import_module(module), class_name, None)
    if cls is None:
        raise ConfigError(f"sweep.{kind}: {module} has no {class_name}")
    accepted = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        from sweeplab.config import SweepConfig

        schema_default = getattr(SweepConfig(), kind)  # merged in, not written by the user
        ignored = sorted(
            k for k in set(spec) - set(accepted) if spec[k] != schema_default.get(k, object())
        )
        if ignored:
            print(
                f"warning: sweep.{kind}: {class_name} takes no {', '.join(ignored)}; ignored",
                file=sys.stderr,
            )
        spec = {k: v for k, v in spec.items() if k in accepted}
    return cls, spec


def make_sampler(spec: dict[str, Any], space: SearchSpace, seed_offset: int = 0) -> Any:
    """An Optuna sampler from `{name: tpe, seed: 0, ...}`; extra workers shift the seed so that
    they do not all propose the same points. Not the grid sampler's: its seed orders the grid,
    and a trial's grid point is its number in that order, so every worker needs the same one."""
    cls, kwargs = _build("sampler", SAMPLERS, spec, "optuna.samplers")
    is_grid = cls.__name__ == "GridSampler"
    if kwargs.get("seed") is not None:
        kwargs["seed"] = int(kwargs["seed"]) + (0 if is_grid else seed_offset)
    if is_grid:
        kwargs.setdefault("search_space", space.grid())
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, ImportError) as err:
        raise ConfigError(f"sweep.sampler={spec}: {err}") from None


def make_pruner(spec: dict[str, Any]) -> Any:
    cls, kwargs = _build("pruner", PRUNERS, spec, "optuna.pruners")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"sweep.pruner={spec}: {err}") from None
