"""The training loop: metrics returned, mini-batches per epoch, determinism, divergence."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from sweeplab.config import ConfigError
from sweeplab.training import fast, optim, trainer
from sweeplab.training.fast.backprop import ManualBackprop
from sweeplab.training.trainer import Callback, DivergenceError


class Recorder(Callback):
    def __init__(self):
        self.epochs = []

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append((epoch, dict(metrics)))


def test_run_returns_per_epoch_and_final_metrics(make_config):
    cfg = make_config("trainer.epochs=4")
    recorder = Recorder()
    result = trainer.run(cfg, [recorder])
    assert [e for e, _ in recorder.epochs] == [1, 2, 3, 4]
    assert len(result.history) == 4
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "time/epoch_s"):
        assert key in recorder.epochs[0][1]
    assert {"test/loss", "test/acc"} <= result.metrics.keys()
    assert 0 <= result.metrics["test/acc"] <= 1


def test_each_epoch_makes_ceil_n_over_b_steps(make_config):
    cfg = make_config("data.n_train=230", "trainer.batch_size=50", "trainer.epochs=2")
    steps = []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: steps.append(1))
    try:
        trainer.run(cfg)
    finally:
        handle.remove()
    assert len(steps) == 2 * math.ceil(230 / 50)


def test_same_seed_gives_identical_metrics_other_seed_does_not(make_config):
    a = trainer.run(make_config("seed=3")).history
    b = trainer.run(make_config("seed=3")).history
    c = trainer.run(make_config("seed=4")).history
    strip = lambda h: [{k: v for k, v in m.items() if not k.startswith("time/")} for m in h]  # noqa: E731
    assert strip(a) == strip(b)
    assert strip(a) != strip(c)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "rmsprop", "adagrad"])
def test_every_optimizer_learns_the_synthetic_task(make_config, optimizer):
    cfg = make_config(
        f"optimizer={optimizer}",
        "model.d_hidden=16",
        "model.activation=relu",
        "trainer.epochs=15",
        "data.n_train=400",
    )
    result = trainer.run(cfg)
    assert result.history[-1]["train/loss"] < result.history[0]["train/loss"]


def test_optimizer_uses_fast_kernels(make_config):
    cfg = make_config("optimizer=sgd")
    opt = optim.build_optimizer([torch.nn.Parameter(torch.zeros(3))], cfg.optimizer)
    assert opt.defaults.get("fused") or opt.defaults.get("foreach")
    assert opt.defaults["momentum"] == 0.9


def test_regression_task_trains_with_squared_error(make_config):
    result = trainer.run(make_config("data=regression", "model.d_hidden=32", "trainer.epochs=10"))
    assert "train/acc" not in result.history[0]
    assert result.history[-1]["val/loss"] < result.history[0]["val/loss"]
    assert "test/acc" not in result.metrics


def test_divergence_stops_at_that_epoch(make_config):
    cfg = make_config(
        "optimizer=sgd",
        "optimizer.lr=1e6",
        "model.activation=relu",
        "trainer.epochs=20",
        "data=regression",
    )
    recorder = Recorder()
    with pytest.raises(DivergenceError, match="train/loss=(nan|inf)"):
        trainer.run(cfg, [recorder])
    assert len(recorder.epochs) < 20


def test_a_callback_can_stop_training(make_config):
    class Stop(Callback):
        def on_epoch_end(self, epoch, metrics):
            if epoch == 2:
                raise RuntimeError("stop")

    recorder = Recorder()
    with pytest.raises(RuntimeError, match="stop"):
        trainer.run(make_config("trainer.epochs=5"), [recorder, Stop()])
    assert len(recorder.epochs) == 2


def test_device_auto_is_cpu_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert trainer.resolve_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="trainer.device='cuda'"):
        trainer.resolve_device("cuda")


def test_threads_one_for_a_small_step_else_all_available_unless_set(make_config):
    small = make_config("model.d_hidden=4", "trainer.batch_size=50")  # 50 x 4 values
    big = make_config("model.d_hidden=256", "trainer.batch_size=100")  # 100 x 256 >= 16384
    assert trainer.auto_threads(small, available=8) == 1
    assert trainer.auto_threads(big, available=8) == 8
    try:
        trainer.run(small)
        assert torch.get_num_threads() == 1
        small.trainer.num_threads = 2
        trainer.run(small)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(trainer.torch_default_threads())


def test_cosine_schedule_with_warmup_sets_each_epochs_lr(make_config):
    cfg = make_config("trainer.epochs=8", "trainer.lr_schedule=cosine", "trainer.warmup_epochs=2")
    lrs = [h["train/lr"] for h in trainer.run(cfg).history]
    base = cfg.optimizer.lr
    assert lrs[:3] == pytest.approx([base / 2, base, base])  # warm-up, then cosine from lr
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False))  # decreasing
    assert lrs[-1] < 0.1 * base


def test_step_schedule_decays_every_step_size_epochs(make_config):
    cfg = make_config(
        "trainer.epochs=6", "trainer.lr_schedule=step", "trainer.step_size=2", "trainer.gamma=0.5"
    )
    lrs = [h["train/lr"] for h in trainer.run(cfg).history]
    base = cfg.optimizer.lr
    assert lrs == pytest.approx([base, base, base / 2, base / 2, base / 4, base / 4])


def test_no_schedule_logs_no_lr_and_keeps_it(make_config):
    result = trainer.run(make_config())
    assert "train/lr" not in result.history[0]


@pytest.mark.parametrize("kind", ["dropout", "input_dropout"])
def test_dropout_is_active_only_while_training(make_config, kind):
    from sweeplab.training.fast.backprop import supports_manual_backward
    from sweeplab.training.model import TwoLayerNet

    net = TwoLayerNet(2, 64, 1, "relu", **{kind: 0.5})
    x = torch.rand(32, 2)
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))
    assert not supports_manual_backward(net)  # auto falls back to autograd
    result = trainer.run(make_config(f"model.{kind}=0.3", "model.d_hidden=16", "trainer.epochs=6"))
    assert result.history[-1]["train/loss"] < result.history[0]["train/loss"]


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("model.dropout=1.0", "model.dropout=1.0"),
        ("model.input_dropout=-0.1", "model.input_dropout=-0.1"),
        ("trainer.lr_schedule=linear", "trainer.lr_schedule='linear'"),
        ("trainer.warmup_epochs=3", "trainer.warmup_epochs=3"),  # epochs=3 in the tiny config
        ("trainer.gamma=0", "trainer.gamma=0"),
    ],
)
def test_bad_regularisation_and_schedule_values_are_named(make_config, override, named):
    from sweeplab.config import ConfigError

    with pytest.raises(ConfigError) as err:
        make_config(override)
    assert str(err.value).startswith(named)


@pytest.mark.parametrize("kind", ["dropout", "input_dropout"])
def test_manual_backward_with_dropout_is_refused(make_config, kind):
    from sweeplab.config import ConfigError

    with pytest.raises(ConfigError, match="trainer.backward='manual'"):
        make_config(f"model.{kind}=0.2", "trainer.backward=manual")


def test_a_finite_but_exploding_loss_counts_as_divergence(make_config):
    """The issue's example: on the default task, SGD with lr=1e6 keeps the loss finite but huge."""
    recorder = Recorder()
    with pytest.raises(DivergenceError, match="at epoch 1: training diverged"):
        trainer.run(
            make_config("optimizer=sgd", "optimizer.lr=1e6", "trainer.epochs=5"), [recorder]
        )
    assert recorder.epochs == []
    # the check can be turned off
    result = trainer.run(
        make_config(
            "optimizer=sgd", "optimizer.lr=1e6", "trainer.epochs=2", "trainer.divergence_ratio=0"
        )
    )
    assert result.history[-1]["train/loss"] > 100


@pytest.mark.parametrize("task", ["synthetic", "regression"])
@pytest.mark.parametrize("manual", [True, False])
def test_epoch_metrics_are_the_training_set_means(make_config, task, manual):
    """With frozen weights (lr 0), an epoch's loss/accuracy equal those of the whole training set,
    also when the last batch is smaller (200 samples, batches of 64: the last one has 8)."""
    from sweeplab.training.data import load_dataset
    from sweeplab.training.model import TwoLayerNet, loss_for_task

    cfg = make_config(f"data={task}")
    data = load_dataset(cfg.data)
    torch.manual_seed(0)
    net = TwoLayerNet(data.n_features, 5, data.n_outputs, "tanh")
    frozen = torch.optim.SGD(net.parameters(), lr=0.0)
    loss_fn = loss_for_task(data.task)
    steps = (
        fast.ManualSteps(ManualBackprop(net, data.task), frozen)
        if manual
        else trainer.AutogradSteps(net, frozen, loss_fn)
    )
    loss, acc = trainer.train_one_epoch(
        net, steps, loss_fn, data, 64, torch.Generator().manual_seed(0)
    )
    expected_loss, expected_acc = trainer.evaluate(
        net, loss_fn, data.x_train, data.y_train, data.task
    )
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    if data.task == "regression":
        assert math.isnan(acc)
    else:
        assert acc == pytest.approx(expected_acc)
