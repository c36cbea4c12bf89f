"""A stack's members are pruned as Optuna's own pruner prunes each of them alone."""

from __future__ import annotations

import math
import random

import optuna
import pytest
from optuna.trial import create_trial

from sweeplab.sweep.pruning import PERCENTILE_PRUNERS, StackPruning

PRUNERS = {
    "median": lambda: optuna.pruners.MedianPruner(),
    "median, startup, warm-up, interval, minimum": lambda: optuna.pruners.MedianPruner(
        n_startup_trials=3, n_warmup_steps=2, interval_steps=3, n_min_trials=4
    ),
    "percentile 25": lambda: optuna.pruners.PercentilePruner(25.0),
    "percentile 75, warm-up": lambda: optuna.pruners.PercentilePruner(75.0, n_warmup_steps=3),
    "threshold (asked member by member)": lambda: optuna.pruners.ThresholdPruner(lower=0.3),
}
EPOCHS = 8


def completed_study(direction: str, pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """Twelve completed trials, some missing a step or reporting NaN at one."""
    rng = random.Random(1)
    study = optuna.create_study(direction=direction, pruner=pruner)
    for _ in range(12):
        values = {s: rng.random() for s in range(1, EPOCHS + 1) if rng.random() > 0.15}
        values[rng.randint(1, EPOCHS)] = math.nan if rng.random() < 0.3 else rng.random()
        study.add_trial(create_trial(value=rng.random(), intermediate_values=values))
    return study


@pytest.mark.filterwarnings("ignore:All-NaN slice")  # Optuna's own nanmax of member 0
@pytest.mark.parametrize("direction", ["maximize", "minimize"])
@pytest.mark.parametrize("pruner", PRUNERS.values(), ids=PRUNERS.keys())
def test_a_stack_prunes_each_member_as_optuna_would_prune_it_alone(pruner, direction):
    study = completed_study(direction, pruner())
    trials = [study.ask() for _ in range(16)]
    pruning = StackPruning(study, trials, "val/acc", [None] * len(trials))
    rng = random.Random(2)
    training, pruned_any = set(range(len(trials))), False
    for epoch in range(1, EPOCHS + 1):
        # member 0 diverged at once (NaN at every epoch), member 1 at epoch 2 only
        metrics = {
            g: {"val/acc": math.nan if g == 0 or (g == 1 and epoch == 2) else rng.random()}
            for g in sorted(training)
        }
        pruned = pruning.on_epoch(epoch, metrics)
        alone = {g for g in training if study.pruner.prune(study, trials[g]._get_latest_trial())}
        assert set(pruned) == alone, f"epoch {epoch}"
        pruned_any |= bool(pruned)
        training -= set(pruned)
    assert pruned_any and training  # decisions both ways were compared


def test_only_optunas_own_percentile_pruners_are_decided_for_a_whole_stack():
    class Stricter(optuna.pruners.MedianPruner):  # a subclass may decide otherwise
        pass

    assert type(Stricter()) not in PERCENTILE_PRUNERS
    assert type(optuna.pruners.MedianPruner()) in PERCENTILE_PRUNERS
