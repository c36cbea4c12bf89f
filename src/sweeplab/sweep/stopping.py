"""When a whole study stops improving: `sweep.target` (a trial reached it) and `sweep.patience`
(the best has not improved by more than `sweep.min_delta` in that many finished trials).

    plateau(trials, settings, objective)   # the reason to stop, or None

Finished trials count in the order they finished (several workers finish out of order); a
pruned trial is a finished trial that did not improve the best. Trials copied in by
`sweep.warm_start` reach no target (the sweep is there to find its own), but a plateau is
measured against the best of them too.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from sweeplab.config import SweepConfig
from sweeplab.sweep.storage import WARM_FROM


def plateau(
    trials: list[optuna.trial.FrozenTrial], settings: SweepConfig, objective: str
) -> str | None:
    """Why the study should start no more trials, or None."""
    finished = sorted(
        (t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)),
        key=lambda t: t.datetime_complete,
    )
    sign = 1.0 if settings.direction == "maximize" else -1.0
    if settings.target is not None:
        for t in finished:
            reached = t.state == TrialState.COMPLETE and sign * (t.value - settings.target) >= 0
            if reached and WARM_FROM not in t.user_attrs:
                return f"sweep.target={settings.target:g} reached by trial {t.number} ({objective}={t.value:.4g})"
    if not settings.patience:
        return None
    best, since = None, 0
    for t in finished:
        improved = t.state == TrialState.COMPLETE and (
            best is None or sign * (t.value - best) > settings.min_delta
        )
        best, since = (t.value, 0) if improved else (best, since + 1)
    if since >= settings.patience:
        return (
            f"a plateau: {objective} has not improved by more than "
            f"sweep.min_delta={settings.min_delta:g} in the last {since} finished trials "
            f"(sweep.patience={settings.patience})"
        )
    return None
