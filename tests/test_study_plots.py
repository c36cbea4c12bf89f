"""Optuna's plots in a sweep's run read at a glance (issue 17): the objective named on their value
axis, no tick labels on top of each other, a panel or axis per parameter."""

from __future__ import annotations

import itertools

import optuna
import pytest

from sweeplab.sweep.results import study_figures

# Every lr needs an exponent and none is a power of ten: over 1.5e-5..9e-5 matplotlib labels the
# minor ticks; over 4.3e-5..8.7e-5 (a sweep's few trials) it draws ten linear ticks.
LR_RANGES = [(1.5e-5, 9e-5), (4.3e-5, 8.7e-5)]


def space(lr_range: tuple[float, float]) -> dict[str, optuna.distributions.BaseDistribution]:
    return {
        "model.activation": optuna.distributions.CategoricalDistribution(["sigmoid", "relu"]),
        "model.d_hidden": optuna.distributions.IntDistribution(1, 16),
        "optimizer.lr": optuna.distributions.FloatDistribution(*lr_range, log=True),
        "optimizer.weight_decay": optuna.distributions.FloatDistribution(1e-7, 1e-2, log=True),
    }


@pytest.fixture(scope="module", params=LR_RANGES, ids=lambda r: f"lr{r[0]:g}-{r[1]:g}")
def figures(request):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for number in range(20):
        trial = study.ask(space(request.param))
        study.tell(trial, 0.5 + 0.02 * number)
    figures = study_figures(study, ["val/acc"])
    for fig in figures.values():
        fig.canvas.draw()
    return figures


def tick_labels(axis):
    """The labels drawn on `axis` (of its major and minor ticks inside its view)."""
    low, high = sorted(axis.get_view_interval())
    ticks = axis.get_major_ticks() + axis.get_minor_ticks()
    return [
        tick.label1
        for tick in ticks
        if low <= tick.get_loc() <= high and tick.label1.get_visible() and tick.label1.get_text()
    ]


def test_the_plots_name_the_objective(figures):
    assert {"optimization_history", "parallel_coordinate", "slice"} <= figures.keys()
    history = figures["optimization_history"].axes[0]
    assert history.get_ylabel() == "val/acc"
    assert figures["slice"].axes[0].get_ylabel() == "val/acc"


@pytest.mark.parametrize("name", ["slice", "parallel_coordinate", "optimization_history"])
def test_no_tick_label_covers_another(figures, name):
    fig = figures[name]
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            boxes = [
                (label.get_text(), label.get_window_extent(renderer)) for label in tick_labels(axis)
            ]
            for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
                assert not box_a.overlaps(box_b), f"{name}: tick labels {a!r} and {b!r} overlap"


def test_a_log_axis_within_a_decade_still_has_labels(figures):
    lr_panel = next(ax for ax in figures["slice"].axes if ax.get_xlabel() == "optimizer.lr")
    assert len(tick_labels(lr_panel.xaxis)) >= 2
