"""Pruning during a sweep: each epoch's objective reported to Optuna and the pruner's word on
each trial, for a trial alone (`PruningCallback`, a trainer callback) and for the members of a
stack at once (`StackPruning`, the stack's epoch hook).

    callbacks = (PruningCallback(trial, "val/acc", guard),)     # train_and_track(cfg, callbacks)
    pruning = StackPruning(study, trials, "val/acc", guards)    # run_stack(groups, threads,
                                                                #           pruning.on_epoch)

Both ask the study's own pruner, as `Trial.should_prune` does, on a view of the study whose
trial list is re-read at most every REPORT_EVERY_S: a pruner reads the whole list for every
decision, on an RDB storage a query per trial and epoch. With several objectives, a trial's
guard (`front.FrontGuard`) spares it where it may be on the Pareto front.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Container
from typing import Any

import optuna
from optuna.pruners._percentile import (
    _get_percentile_intermediate_result_over_trials,
    _is_first_in_interval_step,
)
from optuna.study import StudyDirection
from optuna.trial import TrialState

from sweeplab.sweep.front import FrontGuard
from sweeplab.sweep.sampling import FirstObjective
from sweeplab.sweep.storage import keep_reports, write_reports
from sweeplab.training.trainer import Callback

REPORT_EVERY_S = 0.5  # a stack writes its intermediate values to the Optuna storage this often
# the pruners whose decisions a stack makes for all its members at once (`percentile_says`)
PERCENTILE_PRUNERS = (optuna.pruners.MedianPruner, optuna.pruners.PercentilePruner)


class StudyView(FirstObjective):
    """The study, its `get_trials` answered from what it returned last until `forget()`, its
    `direction` the first objective's (what a pruner compares)."""

    def __init__(self, study: optuna.Study) -> None:
        super().__init__(study)
        self._trials: dict[Any, list[optuna.trial.FrozenTrial]] = {}

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[optuna.trial.FrozenTrial]:
        key = tuple(states) if states is not None else None
        if key not in self._trials:
            self._trials[key] = self._study.get_trials(deepcopy=False, states=states)
        return copy.deepcopy(self._trials[key]) if deepcopy else self._trials[key]

    def forget(self) -> None:
        self._trials = {}


class PruningCallback(Callback):
    """Reports the objective to Optuna after every epoch and stops a trial it prunes."""

    def __init__(self, trial: optuna.Trial, metric: str, guard: FrontGuard | None) -> None:
        self.trial = trial
        self.metric = metric
        self.guard = guard
        self.view = StudyView(trial.study)
        self.read_at = time.monotonic()

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        value = metrics[self.metric]
        # what Trial.report does, which Optuna refuses in a study of several objectives: there
        # the first one's values are what its trials are pruned on
        keep_reports([(self.trial, value, epoch)])
        write_reports([(self.trial, value, epoch)])
        if time.monotonic() - self.read_at >= REPORT_EVERY_S:
            self.view.forget()
            self.read_at = time.monotonic()
        if prunes(self.view, self.trial, self.guard, epoch, metrics):
            raise optuna.TrialPruned(f"pruned at epoch {epoch} with {self.metric}={value:.4g}")


def prunes(
    view: StudyView,
    trial: optuna.Trial,
    guard: FrontGuard | None,
    epoch: int,
    metrics: dict[str, float],
) -> bool:
    """The pruner's word on `trial` (as `Trial.should_prune`), unless its guard spares it."""
    if not view.pruner.prune(view, trial._get_latest_trial()):
        return False
    return not spared(guard, view, epoch, metrics)


def spared(
    guard: FrontGuard | None, view: StudyView, epoch: int, metrics: dict[str, float]
) -> bool:
    """Whether a trial the pruner would prune may be on the Pareto front (several objectives)."""
    return guard is not None and guard.spares(view, epoch, metrics)


class StackPruning:
    """After every epoch of a stack: each member's objective reported (as `Trial.report` does,
    written to the storage for all members at once, at most every REPORT_EVERY_S and before
    the trials end), then the pruner's word on each. A median or percentile pruner's decisions
    are made for all members at once (`percentile_says`: its percentile is the same for every
    member at a step); any other pruner is asked member by member."""

    def __init__(
        self,
        study: optuna.Study,
        trials: list[optuna.Trial],
        metric: str,
        guards: list[FrontGuard | None],
    ) -> None:
        self.view = StudyView(study)
        self.trials = trials
        self.metric = metric
        self.guards = guards
        self.unwritten: list[tuple[optuna.Trial, float, int]] = []
        self.written_at = time.monotonic()
        self.best = [math.nan] * len(trials)  # each member's best value so far (nanmax/nanmin)

    def on_epoch(
        self, epoch: int, metrics: dict[int, dict[str, float]]
    ) -> dict[int, BaseException]:
        reports = [(self.trials[g], values[self.metric], epoch) for g, values in metrics.items()]
        keep_reports(reports)
        self.unwritten += reports
        if time.monotonic() - self.written_at >= REPORT_EVERY_S:
            self.write()
        says = self.pruner_says(epoch, {g: values[self.metric] for g, values in metrics.items()})
        pruned = {}
        for g, values in metrics.items():
            if says[g] and not spared(self.guards[g], self.view, epoch, values):
                value = values[self.metric]
                pruned[g] = optuna.TrialPruned(
                    f"pruned at epoch {epoch} with {self.metric}={value:.4g}"
                )
        return pruned

    def pruner_says(self, epoch: int, values: dict[int, float]) -> dict[int, bool]:
        """Whether the pruner prunes each member (by its index) after `epoch`."""
        pruner = self.view.pruner
        if type(pruner) not in PERCENTILE_PRUNERS:
            return {g: pruner.prune(self.view, self.trials[g]._get_latest_trial()) for g in values}
        better = max if self.view.direction == StudyDirection.MAXIMIZE else min
        for g, value in values.items():
            best = self.best[g]
            self.best[g] = (
                value if math.isnan(best) else best if math.isnan(value) else better(best, value)
            )
        steps = self.trials[next(iter(values))]._cached_frozen_trial.intermediate_values.keys()
        return percentile_says(pruner, self.view, epoch, steps, {g: self.best[g] for g in values})

    def write(self) -> None:
        write_reports(self.unwritten)
        self.unwritten = []
        self.written_at = time.monotonic()
        self.view.forget()


def percentile_says(
    pruner: optuna.pruners.PercentilePruner,
    view: StudyView,
    step: int,
    steps: Container[int],
    best: dict[int, float],
) -> dict[int, bool]:
    """`pruner.prune` (a PercentilePruner's, MedianPruner's) for trials that reported the same
    `steps`, the last `step`, each with its `best` value so far: the same decisions (tested),
    with the completed trials' percentile at `step` computed once for all of them."""
    no = dict.fromkeys(best, False)
    completed = view.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed or len(completed) < pruner._n_startup_trials or step < pruner._n_warmup_steps:
        return no
    if not _is_first_in_interval_step(step, steps, pruner._n_warmup_steps, pruner._interval_steps):
        return no
    direction = view.direction
    p = _get_percentile_intermediate_result_over_trials(
        completed, direction, step, pruner._percentile, pruner._n_min_trials
    )
    maximize = direction == StudyDirection.MAXIMIZE
    return {
        g: math.isnan(b) or (not math.isnan(p) and (b < p if maximize else b > p))
        for g, b in best.items()
    }
