"""Stacked training: M networks as one wide network give what M single runs give (same initial
seeds, same batch order), member by member, in the C++ loop and in the Python loop."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
import torch

from sweeplab.training import tracking, trainer
from sweeplab.training.data import load_dataset
from sweeplab.training.loops import Loop, choose_loop
from sweeplab.training.stack.model import StackedNet, StackLayout
from sweeplab.training.stack.trainer import Group, Stack, run_alone, run_stack
from sweeplab.training.trainer import Callback, DivergenceError

from .test_mnist import write_idx_set

SMALL = ["trainer.epochs=3", "trainer.batch_size=32", "trainer.shuffle_seed=7"]
OPTIMIZERS = {
    "adam": [],
    "adamw": [],
    "sgd": ["optimizer.momentum=0.5"],
    "sgd-nesterov": ["optimizer=sgd", "optimizer.nesterov=true"],
    "rmsprop": ["optimizer.momentum=0.3"],
    "adagrad": [],
}
MEMBERS = [  # what differs between the members of the stacks below
    ["model.d_hidden=3", "model.activation=tanh", "optimizer.lr=0.01", "seed=1"],
    [
        "model.d_hidden=5",
        "model.activation=relu",
        "optimizer.lr=0.03",
        "optimizer.weight_decay=0.001",
        "seed=2",
    ],
    ["model.d_hidden=2", "model.activation=sigmoid", "optimizer.lr=0.02", "seed=3"],
]


@pytest.fixture(scope="module")
def small_images(tmp_path_factory):
    """An IDX dataset of 4x4 images in 3 classes: a multiclass task the C++ loop covers."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400).astype(np.uint8)
    centres = rng.integers(0, 256, (3, 4, 4))
    images = np.clip(centres[labels] + rng.normal(0, 40, (400, 4, 4)), 0, 255).astype(np.uint8)
    root = tmp_path_factory.mktemp("small-images")
    arrays = {
        "train_images": images[:300],
        "train_labels": labels[:300],
        "test_images": images[300:],
        "test_labels": labels[300:],
    }
    write_idx_set(root, arrays)
    return ["data=idx", f"data.root={root}", "data.n_val=60"]


def tasks(small_images):
    return {
        "binary": ["data=synthetic"],
        "regression": ["data=regression"],
        "multiclass": small_images,
    }


def task_config(make_config, small_images, task, *overrides):
    """A config of the task: the synthetic ones tiny, the image one as it is (it is small)."""
    if task == "multiclass":
        return make_config(*small_images, "trainer.progress=false", *overrides, tiny=False)
    return make_config(*tasks(small_images)[task], *overrides)


def assert_member_equals_single_run(outcome, cfg, tol=1e-5):
    single = trainer.run(cfg)
    assert outcome.error is None, outcome.error
    for p, q in zip(single.model.parameters(), outcome.result.model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=tol, atol=tol)
    for ours, theirs in zip(outcome.result.history, single.history, strict=True):
        for key, value in theirs.items():
            if key != "time/epoch_s":
                assert ours[key] == pytest.approx(value, rel=tol, abs=tol), key


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("task", ["binary", "regression", "multiclass"])
def test_stacked_members_equal_single_runs(make_config, small_images, task, optimizer, native):
    name = optimizer.split("-")[0]
    configs = [
        task_config(
            make_config,
            small_images,
            task,
            f"optimizer={name}",
            *OPTIMIZERS[optimizer],
            *SMALL,
            f"trainer.native={str(native).lower()}",
            *member,
        )
        for member in MEMBERS
    ]
    stack = Stack.build(configs)
    assert (stack.loop is not None) == native  # the C++ loop where asked, the Python one else
    outcomes = run_stack([Group([cfg]) for cfg in configs])
    for outcome, cfg in zip(outcomes, configs, strict=True):
        assert_member_equals_single_run(outcome, cfg)


def test_stacked_members_of_distorted_images_equal_single_runs(make_config, small_images):
    """Every member sees the same distortions of each batch, as its own single run does."""
    distortions = ["trainer.affine_degrees=10", "trainer.elastic_alpha=6", "trainer.shift_pixels=1"]
    configs = [
        task_config(make_config, small_images, "multiclass", *SMALL, *distortions, *member)
        for member in MEMBERS
    ]
    outcomes = run_stack([Group([cfg]) for cfg in configs])
    for outcome, cfg in zip(outcomes, configs, strict=True):
        assert_member_equals_single_run(outcome, cfg)


def test_members_follow_their_own_learning_rate_schedules(make_config):
    configs = [
        make_config(*SMALL, "trainer.epochs=6", "trainer.lr_schedule=cosine", "seed=1"),
        make_config(*SMALL, "trainer.epochs=6", "trainer.lr_schedule=step", "trainer.step_size=2"),
        make_config(*SMALL, "trainer.epochs=6", "trainer.warmup_epochs=2", "optimizer.lr=0.05"),
    ]
    outcomes = run_stack([Group([cfg]) for cfg in configs])
    for outcome, cfg in zip(outcomes, configs, strict=True):
        assert_member_equals_single_run(outcome, cfg)
    assert outcomes[1].result.history[3]["train/lr"] == pytest.approx(0.01 * 0.1)


def test_the_layout_splits_and_joins_every_member():
    layout = StackLayout(3, 2, (4, 1, 2), ("relu", "sigmoid", "relu"))
    pieces = [
        (torch.randn(w, 3), torch.randn(w), torch.randn(2, w), torch.randn(2))
        for w in layout.widths
    ]
    flat = layout.join(pieces)
    for got, want in zip(layout.split(flat), pieces, strict=True):
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w)
    assert [name for name, _ in layout.activation_ranges()] == ["sigmoid", "relu"]  # grouped
    owner = layout.member_of_element(torch.device("cpu"))
    for member, member_pieces in enumerate(layout.split(owner)):
        assert all(bool((piece == member).all()) for piece in member_pieces)
    smaller = layout.without({0})
    assert smaller.widths == (1, 2) and smaller.units == 3


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_hand_derived_gradients_equal_autograd(task, make_config, small_images):
    cfg = task_config(make_config, small_images, task, *SMALL, *MEMBERS[0])
    stack = Stack.build([task_config(make_config, small_images, task, *SMALL, *m) for m in MEMBERS])
    net, data = stack.net, stack.data
    x, y = data.x_train[:17], data.y_train[:17]
    logits = torch.empty(17, net.layout.members * data.n_outputs)
    net.step_gradients(x, y, logits)
    manual = net.grad.clone()
    net.autograd = True  # the path dropout takes: autograd through the same forward pass
    net.step_gradients(x, y, logits)
    torch.testing.assert_close(net.grad, manual, rtol=1e-5, atol=1e-6)
    assert cfg.model.d_hidden == 3


class StopAt(Callback):
    """Raises `error` at `epoch` (a pruned trial, a failed callback)."""

    def __init__(self, epoch, error):
        self.epoch, self.error = epoch, error

    def on_epoch_end(self, epoch, metrics):
        if epoch == self.epoch:
            raise self.error


def test_a_group_that_stops_leaves_and_the_stack_shrinks(make_config):
    configs = [make_config(*SMALL, "trainer.epochs=5", *m) for m in MEMBERS]
    sizes = []

    def watch(epoch, metrics):
        sizes.append(len(metrics))
        return {}

    groups = [
        Group([configs[0]]),
        Group([configs[1]], [StopAt(2, optuna.TrialPruned("hopeless"))]),
        Group([configs[2]]),
    ]
    outcomes = run_stack(groups, on_epoch=watch)
    assert isinstance(outcomes[1].error, optuna.TrialPruned)
    assert len(outcomes[1].history) == 2 and outcomes[1].result is None
    assert sizes == [3, 2, 2, 2, 2]  # the pruned trial is gone from the third epoch on
    for g in (0, 2):  # the others train on, unchanged by the compaction
        assert_member_equals_single_run(outcomes[g], configs[g])


def test_a_diverging_member_fails_alone(make_config):
    configs = [
        make_config(*SMALL, "optimizer=sgd", "optimizer.lr=0.05", "seed=1"),
        make_config(*SMALL, "optimizer=sgd", "optimizer.lr=1e6", "model.activation=relu"),
        make_config(*SMALL, "optimizer=sgd", "optimizer.lr=0.02", "seed=3"),
    ]
    outcomes = run_stack([Group([cfg]) for cfg in configs])
    assert isinstance(outcomes[1].error, DivergenceError)
    assert "training diverged" in str(outcomes[1].error)
    for g in (0, 2):
        assert_member_equals_single_run(outcomes[g], configs[g])


def test_repeats_give_the_mean_and_the_spread_of_their_seeds(make_config):
    seeds = [make_config(*SMALL, "model.d_hidden=6", f"seed={s}") for s in (0, 1, 2)]
    [outcome] = run_stack([Group(seeds)])
    singles = [trainer.run(cfg) for cfg in seeds]
    for epoch, summary in enumerate(outcome.result.history):
        values = [s.history[epoch]["val/acc"] for s in singles]
        assert summary["val/acc"] == pytest.approx(np.mean(values), abs=1e-6)
        assert summary["val/acc_std"] == pytest.approx(np.std(values, ddof=1), abs=1e-6)
    final = outcome.result.metrics
    for seed, single in zip((0, 1, 2), singles, strict=True):
        assert final[f"test/acc_seed{seed}"] == pytest.approx(single.metrics["test/acc"], abs=1e-6)
    assert final["test/acc"] == pytest.approx(np.mean([s.metrics["test/acc"] for s in singles]))


def test_members_that_cannot_share_a_stack_are_refused(make_config):
    with pytest.raises(ValueError, match="trainer.batch_size differs"):
        run_stack(
            [Group([make_config(*SMALL)]), Group([make_config(*SMALL, "trainer.batch_size=8")])]
        )


def test_dropout_members_train_through_autograd(make_config):
    configs = [
        make_config(*SMALL, "model.dropout=0.3", "model.d_hidden=8"),
        make_config(*SMALL, "model.input_dropout=0.2", "model.d_hidden=8", "seed=4"),
    ]
    stack = Stack.build(configs)
    assert stack.net.autograd and stack.loop is None
    outcomes = run_stack([Group([cfg]) for cfg in configs])
    for outcome in outcomes:
        assert outcome.error is None
        assert all(math.isfinite(h["train/loss"]) for h in outcome.result.history)


def test_a_single_member_stack_is_a_single_run(make_config):
    cfg = make_config(*SMALL, *MEMBERS[1])
    [outcome] = run_stack([Group([cfg])])
    assert_member_equals_single_run(outcome, cfg)


def test_stacked_net_forward_matches_each_members_network(make_config):
    configs = [make_config(*SMALL, *m) for m in MEMBERS]
    stack = Stack.build(configs)
    x = stack.data.x_val
    logits = stack.net.forward(x).view(len(x), 3, -1)
    for m in range(3):
        own = stack.member_model(m)(x)
        torch.testing.assert_close(
            logits[:, stack.net.layout.positions[m]], own, rtol=1e-5, atol=1e-6
        )
    assert isinstance(stack.net, StackedNet)


@pytest.mark.parametrize(
    ("overrides", "alone"),
    [
        (["optimizer=sgd"], True),  # the single-run C++ loop covers Adam only
        (["model.d_hidden=512"], True),
        (["trainer.native=false"], False),
        (["trainer.backward=autograd"], False),
        (["model.dropout=0.2"], False),
        (["trainer.checkpoint_every=2"], False),  # a stack writes no checkpoints
    ],
)
def test_a_single_run_of_a_small_input_trains_as_a_stack_of_one(
    make_config, monkeypatch, overrides, alone
):
    cfg = make_config(*SMALL, *overrides)
    loop = choose_loop(cfg, load_dataset(cfg.data), torch.device("cpu"))
    assert (loop is Loop.STACK_NATIVE) == alone
    used = []
    monkeypatch.setattr(tracking, "run_alone", lambda *a: used.append("stack") or run_alone(*a))
    monkeypatch.setattr(
        trainer, "run", lambda *a, _run=trainer.run: used.append("single") or _run(*a)
    )
    result, _ = tracking.train_and_track(cfg)
    assert used == ["stack" if alone else "single"]
    single = trainer.run(cfg)
    assert result.metrics.keys() == single.metrics.keys()
    assert [h.keys() for h in result.history] == [h.keys() for h in single.history]
    assert result.metrics["val/acc"] == pytest.approx(single.metrics["val/acc"], abs=1e-5)


def test_a_single_run_alone_raises_what_ended_it(make_config):
    cfg = make_config(*SMALL, "optimizer=sgd", "optimizer.lr=1e6", "trainer.divergence_ratio=2")
    with pytest.raises(DivergenceError):
        run_alone(cfg)
