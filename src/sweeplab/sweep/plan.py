"""A sweep's plan: its settings, search space and storage, checked before any trial starts.

plan = plan_sweep(composed, overrides, "synthetic")   # raises ConfigError, naming the key
cfg = compose_trial(plan, {"model.d_hidden": 8})        # one trial's typed config, by Hydra
configs = compose_each(plan, [values_0, values_1])     # many, Hydra once per choice of groups
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

import optuna
from hydra import compose
from hydra.errors import HydraException
from omegaconf import DictConfig
from optuna.trial import TrialState

from sweeplab.config import (
    CONF_DIR,
    CONFIG_GROUPS,
    EPOCH_METRICS,
    SIZE_METRICS,
    Config,
    ConfigError,
    Constraint,
    OptimizerConfig,
    SweepConfig,
    TrackingConfig,
    in_output_dir,
    output_dir,
    parse_constraints,
    sweep_objectives,
    to_config,
    validate,
)
from sweeplab.redaction import without_secrets
from sweeplab.sweep.sampling import make_pruner, make_sampler
from sweeplab.sweep.space import (
    SearchSpace,
    extremes,
    flatten_params,
    inside,
    parse_space,
    to_overrides,
)
from sweeplab.training.stack.trainer import STACKABLE
from sweeplab.training.trainer import TrainResult

# on a trial that did no better than always answering the most common class: that class's share
AT_CHANCE = "val/acc_chance"


@dataclass
class SweepPlan:
    """Everything a sweep needs, checked before any trial starts."""

    study_name: str
    settings: SweepConfig
    space: SearchSpace
    objectives: list[tuple[str, str]]  # (metric, direction) of each: the first is `objective`
    overrides: list[str]  # the command line's overrides, sweep=<name> included
    storage: str  # an RDB URL, or the path of a journal file
    tracking: TrackingConfig
    config_name: str = "config"
    constraints: list[Constraint] = field(default_factory=list)  # `sweep.constraints`, parsed
    # trial configs at every bound and choice of the space, made when the space was checked
    corners: list[Config] = field(default_factory=list)
    # trials' configs composed by Hydra, by their choice of config groups (`compose_each`)
    composed: dict[tuple, Config | ConfigError] = field(default_factory=dict, repr=False)

    @property
    def example(self) -> Config | None:
        """A trial's config (None in a worker, which does not check the space again)."""
        return self.corners[0] if self.corners else None

    @property
    def objective(self) -> str:
        """The metric Optuna optimises (the first, with several objectives)."""
        return self.objectives[0][0]

    def record_result(self, trial: optuna.Trial, result: TrainResult) -> None:
        """What a completed trial keeps in Optuna beside its value: its test accuracy and loss,
        whether it did no better than chance, the metrics `sweep.constraints` bound, and by how
        much it breaks each of them (Optuna's best trial and samplers take the feasible ones,
        where every value is <= 0)."""
        metrics = result.metrics
        bound = [c.metric for c in self.constraints]
        for key in dict.fromkeys(["test/acc", "test/loss", *bound]):
            trial.set_user_attr(key, metrics.get(key))
        chance = result.dataset.chance_accuracy() if result.dataset else None
        # (val/acc comes back through float32: 0.59 reads 0.58999997, 0.726 may read 0.72600001)
        if chance is not None and metrics.get("val/acc", math.inf) <= chance + 1e-6:
            trial.set_user_attr(AT_CHANCE, chance)
        for c in self.constraints:
            value = metrics.get(c.metric)
            trial.set_constraint(str(c), math.inf if value is None else c.violation(value))

    @property
    def multi(self) -> bool:
        """Several objectives: the study keeps a Pareto front, not one best trial."""
        return len(self.objectives) > 1

    def told(self, metrics: dict[str, float]) -> float | list[float]:
        """What Optuna is told a completed trial reached: its objective's value, or each
        objective's; FloatingPointError where one is not finite (a trial that diverged)."""
        values = [metrics.get(metric, math.nan) for metric, _ in self.objectives]
        for (metric, _), value in zip(self.objectives, values, strict=True):
            if not math.isfinite(value):
                raise FloatingPointError(f"{metric}={value}")
        return values if self.multi else values[0]

    @property
    def workers(self) -> int:
        return self.settings.n_jobs or self.settings.workers

    @property
    def identity(self) -> dict[str, Any]:
        """What makes trials of one study comparable; a resumed study must match it."""
        return {
            "objective": self.objective,
            "direction": self.settings.direction,
            "params": self.space.expressions,
            "overrides": sorted(
                without_secrets(o) for o in self.overrides if not o.startswith("sweep")
            ),
        } | ({"objectives": [list(o) for o in self.objectives]} if self.multi else {})


def plan_sweep(
    composed: DictConfig, overrides: list[str], sweep_name: str | None, check_trials: bool = True
) -> SweepPlan:
    """Check the sweep config, its search space and (with `check_trials`) trial configs that
    touch every bound and choice of the space; raise ConfigError."""
    cfg = to_config(composed)
    settings = cfg.sweep
    if settings is None:
        available = ", ".join(sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml")))
        raise ConfigError(f"sweep=None: choose a sweep with sweep=<name> (shipped: {available})")
    space = parse_space(settings.params)
    # a key fixed on the command line wins over the search space (as in hydra-optuna-sweeper)
    fixed_by_user = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    for key in fixed_by_user & space.distributions.keys():
        print(f"note: {key} is fixed on the command line, so it is not searched", file=sys.stderr)
        del space.distributions[key]
    if not space.distributions:
        raise ConfigError("sweep.params: nothing to search (every parameter is fixed)")
    make_sampler(settings.sampler, space)
    pruner = make_pruner(settings.pruner)

    study_name = settings.study_name or sweep_name or "sweep"
    plan = SweepPlan(
        study_name=study_name,
        settings=settings,
        space=space,
        objectives=sweep_objectives(cfg),  # checked by to_config with the other sweep values
        constraints=parse_constraints(settings.constraints),
        overrides=list(overrides),
        storage=in_output_dir(
            settings.storage or str(output_dir() / "optuna" / f"{study_name}.journal")
        ),
        tracking=cfg.tracking,
    )
    settings.enqueue = [
        checked_enqueued(plan, i, params) for i, params in enumerate(settings.enqueue)
    ]
    late = [m for m, _ in plan.objectives if m not in (*EPOCH_METRICS, *SIZE_METRICS)]
    if late and not isinstance(pruner, optuna.pruners.NopPruner):
        print(
            f"note: {', '.join(late)} is known only at a trial's end, so no trial is pruned"
            " (it could have been on the Pareto front)",
            file=sys.stderr,
        )
    if not check_trials:
        return plan
    for values in extremes(space):
        try:
            plan.corners.append(compose_trial(plan, values))
        except ConfigError as err:
            raise ConfigError(f"{err} (from sweep.params: {values})") from None
    return plan


def checked_enqueued(plan: SweepPlan, index: int, params: Any) -> dict[str, Any]:
    """`sweep.enqueue[index]` as dotted keys, each a searched parameter with a value in its
    space; ConfigError otherwise."""
    where = f"sweep.enqueue[{index}]"
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{where}={params!r}: must map searched parameters to their values")
    params = flatten_params(params)
    for key, value in params.items():
        dist = plan.space.distributions.get(key)
        if dist is None:
            searched = ", ".join(plan.space.distributions)
            raise ConfigError(f"{where}.{key}: not a searched parameter (searched: {searched})")
        if not inside(dist, value):
            raise ConfigError(
                f"{where}.{key}={value!r}: outside its space {plan.space.expressions[key]}"
            )
    return params


def stackable(key: str) -> bool:
    """Whether trials that differ in `key` (a sweep parameter) can share a stack."""
    return key.startswith(STACKABLE) and (key == "seed" or "." in key)


def compose_trials(plan: SweepPlan, values: list[dict[str, Any]]) -> list[Config]:
    """The typed configs of many trials (`compose_each`); ConfigError for the first that the
    schema refuses."""
    configs = compose_each(plan, values)
    if refused := [cfg for cfg in configs if isinstance(cfg, ConfigError)]:
        raise refused[0]
    return [cfg for cfg in configs if isinstance(cfg, Config)]


def compose_each(plan: SweepPlan, values: list[dict[str, Any]]) -> list[Config | ConfigError]:
    """Each trial's typed config, or why the schema refuses it. Hydra composes each distinct
    choice of config groups (`optimizer=sgd`) once per process (`SweepPlan.composed`); the other
    values are set on a copy and checked (config.validate), a fraction of a composition's cost.
    The space's corners were composed whole (`plan_sweep`), so every value's type is the
    schema's."""
    configs: list[Config | ConfigError] = []
    for trial_values in values:
        groups = {k: v for k, v in trial_values.items() if k in CONFIG_GROUPS}
        key = tuple(sorted((k, repr(v)) for k, v in groups.items()))
        if key not in plan.composed:
            try:
                plan.composed[key] = compose_trial(plan, groups)
            except ConfigError as err:
                plan.composed[key] = err
        base = plan.composed[key]
        try:
            if isinstance(base, ConfigError):
                raise base
            cfg = copy.deepcopy(base)
            for dotted, value in trial_values.items():
                if dotted not in groups:
                    _set(cfg, dotted, value)
            validate(cfg)
        except ConfigError as err:
            configs.append(ConfigError(f"{err} (from sweep.params: {trial_values})"))
            continue
        configs.append(cfg)
    return configs


def _set(cfg: Config, dotted: str, value: Any) -> None:
    """cfg.<dotted> = value, in the type the schema has there (an int sampled for a float);
    ConfigError where the schema has no such key (an option of a group lacks it)."""
    *path, name = dotted.split(".")
    node = cfg
    for part in path:
        node = getattr(node, part, None)
    if not is_dataclass(node) or name not in {f.name for f in fields(node)}:
        raise ConfigError(
            f"sweep.params: Could not override '{dotted}': no key '{name}' in {type(node).__name__}"
        )
    current = getattr(node, name)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    setattr(node, name, value)


def compose_trial(plan: SweepPlan, values: dict[str, Any]) -> Config:
    """The typed config of one trial: the command line, the fixed params, the sampled values."""
    overrides = [*plan.overrides, *to_overrides(plan.space.fixed), *to_overrides(values)]
    try:
        composed = compose(config_name=plan.config_name, overrides=overrides)
    except HydraException as err:
        raise ConfigError(f"sweep.params: {str(err).splitlines()[0]}") from None
    cfg = replace(to_config(composed), sweep=None, optimized_metric=None)
    cfg.tracking.params = trial_param_keys(plan.space)
    return cfg


# every optimizer has these: logged by every trial, so that the runs table's columns line up
COMMON_OPTIMIZER_KEYS = [f"optimizer.{f.name}" for f in fields(OptimizerConfig) if f.name[0] != "_"]


def trial_param_keys(space: SearchSpace) -> list[str]:
    """The params a trial logs: what its sweep searches (a config group by its option,
    `optimizer.name`) and, when the optimizer is searched, the keys every optimizer has, so
    that their columns line up; the constants are on the sweep's run, so the compare view
    offers only what differs."""
    searched = [f"{key}.name" if key in CONFIG_GROUPS else key for key in space.distributions]
    common = COMMON_OPTIMIZER_KEYS if "optimizer.name" in searched else []
    return list(dict.fromkeys([*searched, *common]))


def trial_run_name(
    study: str, number: int, state: TrialState, last_epoch: int | None, at_chance: bool = False
) -> str:
    """A trial's MLflow run name, which says how it ended: "mnist-trial-7",
    "mnist-trial-7 (pruned at epoch 3)", "mnist-trial-7 (failed)", "mnist-trial-7 (no better than chance)"."""
    name = f"{study}-trial-{number}"
    if state == TrialState.PRUNED:
        return f"{name} (pruned at epoch {last_epoch})" if last_epoch else f"{name} (pruned)"
    if state == TrialState.COMPLETE:
        return f"{name} (no better than chance)" if at_chance else name
    return f"{name} ({_ended(state)})"


def _ended(state: TrialState) -> str:
    return {TrialState.FAIL: "failed", TrialState.COMPLETE: "completed"}.get(
        state, state.name.lower()
    )


def trial_note(
    plan: SweepPlan,
    number: int,
    state: TrialState,
    last_epoch: int | None,
    value: float | None,
    chance: float | None = None,
) -> str:
    """A trial's MLflow run description: how it ended, and where its study's run is."""
    epochs = f" after {last_epoch} epochs" if last_epoch else ""
    result = f": {plan.objective}={value:.4g}" if value is not None else ""
    if chance is not None:
        result += (
            f". Its val/acc is no better than always answering the most common class"
            f" ({chance:.4g} of the validation set): it learned nothing"
        )
    return (
        f"Trial {number} of the Optuna study `{plan.study_name}`, {_ended(state)}{epochs}"
        f"{result}. Its parent run `sweep-{plan.study_name}` holds the study's plots, "
        "trials.csv and best.yaml."
    )
