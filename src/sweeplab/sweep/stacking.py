"""Stacked trials in a sweep: a worker claims up to `sweep.stack` trials at once and trains them
as one stacked network (`training.stack`); each is still its own Optuna trial, pruned on its
own, and its own MLflow child run.

    claimed = claim(study, plan, room)          # under the study's lock: the trials of a stack
    train_stack(claimed, context)               # trains them together; tells Optuna each result

A stack shares what `training.stack.STACKABLE` does not list: the first trial is sampled as
usual, the others with its values of the shared parameters fixed (`PartialFixedSampler` around
the study's sampler; TPE with `constant_liar` spreads them apart), so the sampler does not
scatter a stack across batch sizes or optimizers. A grid sampler keeps its own order, and
trials that cannot share a stack train in stacks of their own. With `sweep.repeats=K` each
trial is K members, one per seed; its value is their mean.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

from sweeplab.config import Config, ConfigError
from sweeplab.phases import mark_phase
from sweeplab.runtime import INTERRUPTED, interrupts_deferred
from sweeplab.sweep.front import front_guard
from sweeplab.sweep.plan import SweepPlan, compose_each, stackable, trial_run_name
from sweeplab.sweep.pruning import StackPruning
from sweeplab.sweep.results import failed_before_training
from sweeplab.sweep.space import suggest, to_overrides
from sweeplab.sweep.storage import (
    HEARTBEAT_S,
    STOPPED_BY,
    mark_owner,
    quiet_experimental,
    write_user_attrs,
)
from sweeplab.training.data import load_dataset
from sweeplab.training.loops import Loop, choose_loop
from sweeplab.training.stack.trainer import (
    Group,
    Outcome,
    run_stack,
    shuffle_seed,
    stack_key,
)
from sweeplab.training.tracking import TrackedRun
from sweeplab.training.trainer import resolve_device

AUTO_STACK = 64  # `sweep.stack=0` where the stacked C++ loop covers the trials (small inputs)
HAND_OVER_EVERY_S = 1.0  # a stack's runs hand their metrics to the MLflow helper this often


@dataclass
class Context:
    """What a stack needs of its worker: where its runs go and what it does after a trial."""

    plan: SweepPlan
    study: optuna.Study
    parent_run_id: str
    threads: int
    run_key: Callable[[int], str]  # a trial's key for the MLflow helper
    after_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None]
    announce: Callable[[str], None] = print


@dataclass
class Claimed:
    trial: optuna.Trial
    values: dict[str, Any]
    configs: list[Config] = field(default_factory=list)  # one per seed


def stack_size(plan: SweepPlan, corners: list[Config]) -> int:
    """`sweep.stack`, or (0) as many as pay: AUTO_STACK where the stacked C++ loop covers every
    trial (`choose_loop` says STACK_NATIVE: a small input on the CPU, no augmentation, no
    dropout, an optimizer stacks train with) at each of the space's `corners` (every bound and
    choice), else 1: a trial of a wide input is matrix products, which a stack does not make
    cheaper, and one stacks cannot train (another optimizer, AMSGrad) must train alone."""
    if plan.settings.stack:
        return plan.settings.stack
    alone = [
        choose_loop(cfg, load_dataset(cfg.data), resolve_device(cfg.trainer.device))
        for cfg in corners
    ]
    return AUTO_STACK if all(loop is Loop.STACK_NATIVE for loop in alone) else 1


def claim(study: optuna.Study, plan: SweepPlan, size: int) -> list[Claimed]:
    """`size` new trials for one stack (call under the study's lock): the first sampled as
    usual, the others with its values of what a stack shares."""
    with quiet_experimental():
        first = study.ask()
        values = suggest(first, plan.space)
        claimed = [Claimed(first, values)]
        shared = {k: v for k, v in values.items() if not stackable(k)}
        sampler = study.sampler
        if shared and not isinstance(sampler, optuna.samplers.GridSampler):
            study.sampler = optuna.samplers.PartialFixedSampler(shared, sampler)
        try:
            for _ in range(size - 1):
                trial = study.ask()
                claimed.append(Claimed(trial, suggest(trial, plan.space)))
        finally:
            study.sampler = sampler
    mark_owner([entry.trial for entry in claimed])
    return claimed


def train_claimed(claimed: list[Claimed], context: Context) -> None:
    """Train the claimed trials, in as few stacks as what they share allows."""
    plan = context.plan
    configs = compose_each(plan, [entry.values for entry in claimed])
    stacks: dict[tuple, list[Claimed]] = {}
    for entry, cfg in zip(claimed, configs, strict=True):
        if isinstance(cfg, ConfigError):  # a combination the schema refuses, not at a corner
            failed_before_training(plan, context.parent_run_id, entry.trial, entry.values, cfg)
            _tell(context, entry, TrialState.FAIL, None, cfg)
            continue
        entry.configs = members(cfg, plan.settings.repeats)
        stacks.setdefault(stack_key(entry.configs[0]), []).append(entry)
    for entries in stacks.values():
        train_stack(entries, context)


def members(cfg: Config, repeats: int) -> list[Config]:
    """A trial's members: its config with seeds seed, seed+1, ... (train_stack gives them the
    stack's batch order)."""
    return [
        replace(
            cfg,
            seed=cfg.seed + i,
            trainer=replace(cfg.trainer),
            model=replace(cfg.model),
            optimizer=replace(cfg.optimizer),
            tracking=replace(cfg.tracking),
        )
        for i in range(repeats)
    ]


def train_stack(entries: list[Claimed], context: Context) -> None:
    """One stack: a run per trial, the stacked training, a result per trial told to Optuna."""
    plan = context.plan
    order = shuffle_seed(entries[0].configs[0])
    for entry in entries:  # one batch order for the whole stack; the trials record it
        for cfg in entry.configs:
            cfg.trainer.shuffle_seed = order
    first = entries[0].trial.number  # names the stack
    write_user_attrs(
        [(e.trial, "trainer.shuffle_seed", order) for e in entries]
        + [(e.trial, "stack", first) for e in entries]
    )
    numbers = ", ".join(str(e.trial.number) for e in entries)
    context.announce(f"stack of {len(entries)} trials ({numbers})")
    runs = [_start_run(entry, context) for entry in entries]
    groups = [Group(entry.configs, [run]) for entry, run in zip(entries, runs, strict=True)]
    guards = [front_guard(plan, entry.configs[0]) for entry in entries]
    pruning = StackPruning(context.study, [e.trial for e in entries], plan.objective, guards)
    mark_phase(f"sweep: stack of {len(entries)} ready to train")
    try:
        with heartbeats(context.study, [e.trial for e in entries]):
            outcomes = run_stack(groups, context.threads, pruning.on_epoch)
    except KeyboardInterrupt:
        with interrupts_deferred():  # a second Ctrl-C must not leave some trials RUNNING
            pruning.write()
            for entry, run in zip(entries, runs, strict=True):
                run.wait_started()  # its run id on the trial while it takes attributes
                run.end("KILLED", INTERRUPTED, wait=False)
                entry.trial.set_user_attr(STOPPED_BY, INTERRUPTED)  # retried on resume
                _tell(context, entry, TrialState.FAIL, None, None)
            runs[0].helper.sync()
        raise
    pruning.write()
    mark_phase(f"sweep: stack of {len(entries)} trained")
    # an interrupt waits until every trial is told: else a run could end FINISHED whose trial
    # Optuna then fails
    with interrupts_deferred():
        for entry, run, outcome in zip(entries, runs, outcomes, strict=True):
            run.wait_started()  # its run id on the trial while it can still take attributes
            _finish(entry, run, outcome, context)


def _start_run(entry: Claimed, context: Context) -> TrackedRun:
    cfg, trial = entry.configs[0], entry.trial
    if cfg.tracking.run_name is None:
        cfg.tracking.run_name = trial_run_name(
            context.plan.study_name, trial.number, TrialState.COMPLETE, None
        )
    tags = {
        "sweeplab.role": "trial",
        "optuna.study": context.plan.study_name,
        "optuna.trial": str(trial.number),
        "optuna.params": " ".join(to_overrides(entry.values))[:5000],
    }
    if len(entry.configs) > 1:
        tags["sweeplab.seeds"] = ", ".join(str(c.seed) for c in entry.configs)
    return TrackedRun.start(
        cfg,
        context.parent_run_id,
        tags,
        on_started=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id),
        key=context.run_key(trial.number),
        hand_over_every_s=HAND_OVER_EVERY_S,
    )


def _finish(entry: Claimed, run: TrackedRun, outcome: Outcome, context: Context) -> None:
    """End the trial's run and tell Optuna how the trial ended."""
    objective = context.plan.objective
    if isinstance(outcome.error, optuna.TrialPruned):
        run.end("FINISHED", wait=False)
        _tell(context, entry, TrialState.PRUNED, None, None)
        return
    error, value = outcome.error, None
    if error is None:
        try:
            value = context.plan.told(outcome.result.metrics)
        except FloatingPointError as err:
            error = err
    if error is not None:
        run.fail(error, wait=False)
        _tell(context, entry, TrialState.FAIL, None, error)
        return
    run.log_result(outcome.result, entry.configs[0])
    run.end("FINISHED", wait=False)
    context.plan.record_result(entry.trial, outcome.result)
    for key in (f"{objective}_std", "test/acc_std"):  # with repeats
        if key in outcome.result.metrics:
            entry.trial.set_user_attr(key, outcome.result.metrics[key])
    _tell(context, entry, TrialState.COMPLETE, value, None)


def _tell(
    context: Context, entry: Claimed, state: TrialState, value: float | None, error: Any
) -> None:
    if error is not None:
        print(
            f"trial {entry.trial.number} failed: {type(error).__name__}: {error}", file=sys.stderr
        )
    try:
        context.study.tell(entry.trial, value, state=state)
    except RuntimeError as err:  # a grid sampler stopping the study once its grid is done:
        if "Study.stop" not in str(err):  # the trial is told all the same, and the budget
            raise  # (the grid's size) stops the sweep
    frozen = context.study.get_trials(deepcopy=False)[entry.trial.number]
    context.after_trial(context.study, frozen)


class heartbeats:  # noqa: N801 - a context manager, used as `with heartbeats(...)`
    """Optuna's heartbeat for each trial of a stack on an RDB storage (what `study.optimize`
    does for one trial), so that a dead worker's trials are found and retried."""

    def __init__(self, study: optuna.Study, trials: list[optuna.Trial]) -> None:
        self.storage = study._storage
        self.trials = trials
        self.stop = threading.Event()

    def __enter__(self) -> heartbeats:
        if is_heartbeat_enabled(self.storage):
            self.thread = threading.Thread(target=self._beat, daemon=True)
            self.thread.start()
        return self

    def _beat(self) -> None:
        while True:
            for trial in self.trials:
                self.storage.record_heartbeat(trial._trial_id)
            if self.stop.wait(HEARTBEAT_S):
                return

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
