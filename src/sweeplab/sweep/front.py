"""Pruning in a study of several objectives, which must not cost it its Pareto front.

The pruner judges a trial on the first objective alone (its per-epoch values against its peers'
at the same epoch). That is not enough here: a trial hopeless on accuracy may be the smallest
network of the sweep, a point of the front. So a trial the pruner would stop is stopped only
where a finished trial was at least as good at the same epoch on the first objective, and is on
every other objective the trial has shown: the network's size, known before it trains, and any
other metric logged each epoch. A trial with an objective measured only at its end (`test/...`)
is never pruned.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from sweeplab.config import Config
from sweeplab.sweep.plan import SweepPlan
from sweeplab.training.trainer import size_before_training


class FrontGuard:
    """Whether pruning must spare one trial of a study of several objectives."""

    def __init__(self, objectives: list[tuple[str, str]], cfg: Config) -> None:
        self.objectives = objectives
        self.signs = [1 if d == "maximize" else -1 for _, d in objectives]  # larger is better
        self.known = size_before_training(cfg)

    def spares(self, study: optuna.Study, epoch: int, metrics: dict[str, float]) -> bool:
        """True unless a finished feasible trial of `study` was at least as good at `epoch` on
        the first objective as this trial's `metrics`, and is on every other objective."""
        shown = self.known | metrics
        if any(metric not in shown for metric, _ in self.objectives):
            return True  # (an objective it has not shown yet)
        signs = self.signs
        own = [s * shown[metric] for s, (metric, _) in zip(signs, self.objectives, strict=True)]
        for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if epoch not in other.intermediate_values or any(
                v > 0 for v in other.constraints.values()
            ):
                continue  # (it stopped before that epoch, or it is infeasible: on no front)
            theirs = [other.intermediate_values[epoch], *other.values[1:]]
            if all(s * t >= o for s, t, o in zip(signs, theirs, own, strict=True)):
                return False
        return True


def front_guard(plan: SweepPlan, cfg: Config) -> FrontGuard | None:
    """The guard of a trial of `cfg` in a study of several objectives; None with one."""
    return FrontGuard(plan.objectives, cfg) if plan.multi else None
