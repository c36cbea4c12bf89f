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
`to_overrides` turns a trial's values back into Hydra overrides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.errors import HydraException
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from sweeplab.config import ConfigError


@dataclass
class SearchSpace:
    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)  # key -> value for every trial
    expressions: dict[str, str] = field(default_factory=dict)  # key -> the text from the config

    def grid(self) -> dict[str, list]:
        """The values of each parameter, for the grid sampler (choice and range only)."""
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


def inside(dist: BaseDistribution, value: Any) -> bool:
    """Whether `value` is one of the values `dist` can propose."""
    try:
        return dist._contains(dist.to_internal_repr(value))
    except (ValueError, TypeError):  # e.g. a choice it does not have
        return False


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


def _distribution(key: str, text: str, override: Any) -> BaseDistribution:
    """hydra-optuna-sweeper's mapping from a sweep override to an Optuna distribution."""
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


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Ask the trial for a value of every parameter."""
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
