"""The training loop: plain PyTorch, read top to bottom.

`run(cfg, callbacks)` builds the data, the network and the optimizer from a typed `Config`, trains
for `trainer.epochs` epochs and returns a `TrainResult` (final metrics, per-epoch history, model).
Side effects (MLflow logging, Optuna pruning, progress) happen in callbacks, which see each epoch's
metrics; the loop itself knows nothing about them. A callback may stop training by raising.

Speed by design: the data sits on the device as tensors and each epoch gathers its batches with
one random permutation (no DataLoader collation), optimizers use fused/foreach kernels, the inner
loop never syncs with the host (`.item()` once per epoch), evaluation runs in large chunks in
inference mode. How the steps are made is decided once per run, from its config, by
`loops.choose_loop`: the lecture's hand-derived gradients, in C++ for whole epochs where that
applies, else autograd (`fast.fast_steps` makes the steps it names).
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from sweeplab.config import Config, ConfigError
from sweeplab.phases import mark_phase
from sweeplab.training.augment import Augment, image_distortions
from sweeplab.training.checkpoint import TrainState
from sweeplab.training.data import Dataset, load_dataset
from sweeplab.training.fast import ManualSteps, fast_steps
from sweeplab.training.fast.lean_adam import step_function
from sweeplab.training.loops import Loop, choose_loop
from sweeplab.training.model import LossFn, TwoLayerNet, count_correct, loss_for_task
from sweeplab.training.optim import build_optimizer, build_schedule


class Callback:
    """Hooks the loop calls; override what you need. Raising from a hook stops training."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def on_train_end(self, result: TrainResult) -> None:
        pass


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite, or far above the untrained network's."""


@dataclass
class TrainResult:
    metrics: dict[str, float]  # last epoch's train/val metrics plus test/loss, test/acc
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch
    model: TwoLayerNet | None = None
    dataset: Dataset | None = None


def resolve_device(name: str) -> torch.device:
    """The device `trainer.device` names; a ConfigError where this machine has no such device
    (the commands ask before any run is created)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r}: CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"trainer.device={name!r}: this machine has {torch.cuda.device_count()} CUDA devices"
        )
    return device


def check_memory(cfg: Config, data: Dataset) -> None:
    """Refuse a network that cannot fit in its device's memory: its weights, their gradients and
    the optimizer's state, and the activations of a training batch and an evaluation chunk (a
    typo such as model.d_hidden=10000000 would otherwise end in the kernel's OOM killer)."""
    device = resolve_device(cfg.trainer.device)
    width = cfg.model.d_hidden
    parameters = (data.n_features + 1) * width + (width + 1) * data.n_outputs
    rows = cfg.trainer.batch_size + min(cfg.trainer.eval_batch_size, len(data.x_val))
    need = 4 * (4 * parameters + 2 * rows * (width + data.n_outputs))  # float32, 2 per unit
    if device.type == "cuda":
        have = torch.cuda.get_device_properties(device).total_memory
    else:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise ConfigError(
            f"model.d_hidden={width}: the network needs about {need / 2**30:.1f} GiB (weights, "
            f"gradients, optimizer state, activations), more than the {have / 2**30:.1f} GiB "
            f"of {device}"
        )


class AutogradSteps:
    """The plain step: forward, loss, backward, optimizer step, as pytorch/examples make it."""

    needs_grad = True

    def __init__(self, model: TwoLayerNet, optimizer: torch.optim.Optimizer, loss_fn: LossFn):
        self.model = model
        self.optimizer = optimizer
        self.optimizer_step = step_function(optimizer)
        self.loss_fn = loss_fn

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, logits_b: torch.Tensor) -> None:
        out = self.model(xb)
        self.optimizer.zero_grad(set_to_none=True)
        self.loss_fn(out, yb).backward()
        self.optimizer_step()
        logits_b.copy_(out.detach())

    def train_epoch(self, *batches: object) -> int:
        return 0  # every step goes through the loop below


Steps = AutogradSteps | ManualSteps


def train_one_epoch(
    model: TwoLayerNet,
    steps: Steps,
    loss_fn: LossFn,
    data: Dataset,
    batch_size: int,
    generator: torch.Generator,
    augment: Augment | None = None,
) -> tuple[float, float]:
    """One pass over a fresh shuffle of the training set; returns (mean loss, accuracy).

    `steps` makes each batch's step (see `fast`); where it can make the epoch's steps at once
    (the C++ loop), it does and the Python loop below makes only the rest, if any: a line added
    to the loop must be added to the steps too. `augment` (`augment.image_distortions`) distorts
    each batch of inputs.
    """
    model.train()
    x, y = data.x_train, data.y_train
    n = x.shape[0]
    order = torch.randperm(n, generator=generator).to(x.device)
    y_shuffled = y.index_select(0, order)  # the labels are small: shuffled once per epoch
    # every step's logits land in one tensor; the epoch's loss and accuracy come from it at the
    # end, in a few ops over the whole epoch instead of several small ops per step
    logits = torch.empty((n, data.n_outputs), dtype=x.dtype, device=x.device)
    done = steps.train_epoch(x, order, y_shuffled, logits, batch_size)
    if done < n:
        # each batch of inputs is gathered into one reused buffer: no allocation per step
        x_buffer = torch.empty((min(batch_size, n), *x.shape[1:]), dtype=x.dtype, device=x.device)
        with torch.set_grad_enabled(steps.needs_grad):
            for start in range(done, n, batch_size):
                batch = slice(start, start + batch_size)
                xb = torch.index_select(x, 0, order[batch], out=x_buffer[: len(order[batch])])
                if augment is not None:
                    xb = augment(xb, generator)
                steps(xb, y_shuffled[batch], logits[batch])
    with torch.no_grad():
        mean_loss = loss_fn(logits, y_shuffled).item()  # the mean of the steps' losses
        if data.task == "regression":
            return mean_loss, math.nan
        return mean_loss, count_correct(logits, y_shuffled, data.task).item() / n


@torch.inference_mode()
def evaluate(
    model: TwoLayerNet,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    task: str,
    chunk: int = 8192,
) -> tuple[float, float]:
    """(mean loss, accuracy) over a whole split, in chunks; accuracy is nan for regression."""
    model.eval()
    total_loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for start in range(0, x.shape[0], chunk):
        logits = model(x[start : start + chunk])
        yb = y[start : start + chunk]
        total_loss += loss_fn(logits, yb, reduction="sum")
        if task != "regression":
            correct += count_correct(logits, yb, task)
    n = x.shape[0]
    # mse_loss's "sum" adds over the K outputs too; report the per-element mean like training does
    per = n * y.shape[1] if task == "regression" else n
    return total_loss.item() / per, (correct.item() / n if task != "regression" else math.nan)


@torch.inference_mode()
def predict_us_per_sample(model: TwoLayerNet, x: torch.Tensor, chunk: int = 8192) -> float:
    """Wall time of the forward pass over `x` in microseconds per sample (after one warm-up)."""
    model.eval()
    model(x[:chunk])
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    started = time.perf_counter()
    for start in range(0, x.shape[0], chunk):
        model(x[start : start + chunk])
    sync()
    return (time.perf_counter() - started) / x.shape[0] * 1e6


# A step whose largest tensor is smaller than this runs on one CPU thread when the thread count is
# left to us: torch splits no elementwise op under 32768 elements, and a second thread measured no
# faster on such steps while it slows down whatever else runs on the machine (the metric writer).
SMALL_STEP_ELEMENTS = 16384


@functools.cache
def torch_default_threads() -> int:
    """torch's own choice of CPU threads (one per physical core), read before we first change it."""
    return torch.get_num_threads()


def auto_threads(cfg: Config, available: int) -> int:
    """The CPU threads for `cfg` when `trainer.num_threads` is 0: 1 for a small step, else
    `available`."""
    data = load_dataset(cfg.data)  # cached per process: the same arrays the run trains on
    return threads_for(cfg.trainer.batch_size, data, cfg.model.d_hidden, available)


def threads_for(batch_size: int, data: Dataset, hidden_units: int, available: int) -> int:
    """1 thread for a step whose widest layer times the batch is small, else `available`."""
    widest = max(data.n_features, hidden_units, data.n_outputs)
    return 1 if batch_size * widest < SMALL_STEP_ELEMENTS else available


@dataclass
class Setup:
    """Everything a run trains with, built from its config."""

    data: Dataset
    model: TwoLayerNet
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler | None
    loss_fn: LossFn
    steps: Steps
    augment: Augment | None
    batch_order: torch.Generator

    def state_dict(self) -> dict[str, Any]:
        """What changes while training and decides the next steps: the weights, the optimizer's
        and the schedule's state, and every random generator a step draws from (the batch order,
        which augmentation shares, and torch's global one, which dropout uses)."""
        device = self.data.x_train.device
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict() if self.schedule is not None else None,
            "batch_order": self.batch_order.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])  # after the model: onto its params
        if self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])
        self.batch_order.set_state(state["batch_order"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.data.x_train.device)


def setup(cfg: Config) -> Setup:
    """Threads, device, data, network, optimizer, schedule and steps of the run `cfg` describes."""
    torch.set_num_threads(cfg.trainer.num_threads or auto_threads(cfg, torch_default_threads()))
    device = resolve_device(cfg.trainer.device)
    data = load_dataset(cfg.data).to(device)
    torch.manual_seed(cfg.seed)
    model = network(cfg, data).to(device)
    optimizer = build_optimizer(list(model.parameters()), cfg.optimizer)
    loss_fn = loss_for_task(data.task)
    augment = image_distortions(cfg.trainer, data, device)
    loop = choose_loop(cfg, data, device, "single-run")
    if loop is Loop.AUTOGRAD:
        steps = AutogradSteps(model, optimizer, loss_fn)
    else:
        steps = fast_steps(model, optimizer, data.task, native_loop=loop is Loop.NATIVE)
    return Setup(
        data,
        model,
        optimizer,
        build_schedule(optimizer, cfg.trainer),
        loss_fn,
        steps,
        augment,
        torch.Generator().manual_seed(
            cfg.seed if cfg.trainer.shuffle_seed is None else cfg.trainer.shuffle_seed
        ),
    )


def network(cfg: Config, data: Dataset) -> TwoLayerNet:
    """The network `cfg.model` describes, for `data`'s inputs and outputs."""
    return TwoLayerNet(
        data.n_features,
        cfg.model.d_hidden,
        data.n_outputs,
        cfg.model.activation,
        dropout=cfg.model.dropout,
        input_dropout=cfg.model.input_dropout,
    )


def start(
    s: Setup, cfg: Config, resume: TrainState | None, callbacks: Sequence[Callback]
) -> tuple[list[dict[str, float]], float]:
    """The metrics of the epochs trained so far and the untrained network's validation loss: none
    and measured now, or those of `resume`, whose state goes into `s` and whose epochs the
    callbacks see (the pruner judges the whole curve, the MLflow run logs it)."""
    if resume is None:
        data = s.data
        loss, _ = evaluate(
            s.model, s.loss_fn, data.x_val, data.y_val, data.task, cfg.trainer.eval_batch_size
        )
        return [], loss
    resume.check(cfg)
    s.load_state_dict(resume.tensors)
    for epoch, metrics in enumerate(resume.history, 1):
        for callback in callbacks:
            callback.on_epoch_end(epoch, metrics)
    return list(resume.history), resume.initial_loss


def run(
    cfg: Config,
    callbacks: Sequence[Callback] = (),
    checkpoint: Path | None = None,
    resume: TrainState | None = None,
) -> TrainResult:
    """Train the network `cfg` describes; callbacks see every epoch. Returns the final metrics.

    With `checkpoint`, the run's state is written there every `trainer.checkpoint_every` epochs;
    with `resume` (a state of the same config), it goes on from that state's epoch, and its
    callbacks first see the epochs trained before, as if this run had trained them."""
    s = setup(cfg)
    mark_phase("data, model and optimizer ready")
    data, model, eval_chunk = s.data, s.model, cfg.trainer.eval_batch_size
    history, initial_loss = start(s, cfg, resume, callbacks)
    # a loss this far above the untrained network's has diverged even while it is finite
    diverged_above = cfg.trainer.divergence_ratio * max(initial_loss, 1.0)
    every = cfg.trainer.checkpoint_every if checkpoint is not None else 0
    for epoch in range(len(history) + 1, cfg.trainer.epochs + 1):
        lr = s.optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        train_loss, train_acc = train_one_epoch(
            model, s.steps, s.loss_fn, data, cfg.trainer.batch_size, s.batch_order, s.augment
        )
        epoch_s = time.perf_counter() - started
        if not math.isfinite(train_loss) or (
            cfg.trainer.divergence_ratio > 0 and train_loss > diverged_above
        ):
            raise DivergenceError(
                f"train/loss={train_loss:.4g} at epoch {epoch}: training diverged (the untrained "
                f"network's loss was {initial_loss:.4g}; trainer.divergence_ratio="
                f"{cfg.trainer.divergence_ratio:g})"
            )
        val_loss, val_acc = evaluate(
            model, s.loss_fn, data.x_val, data.y_val, data.task, eval_chunk
        )
        metrics = {"train/loss": train_loss, "val/loss": val_loss, "time/epoch_s": epoch_s}
        if s.schedule is not None:
            s.schedule.step()
            metrics["train/lr"] = lr
        if data.task != "regression":
            metrics |= {"train/acc": train_acc, "val/acc": val_acc}
        history.append(metrics)
        if every and epoch % every == 0:  # before the callbacks: one may stop the run
            TrainState.of(cfg, history, initial_loss, s.state_dict()).save(checkpoint)
        for callback in callbacks:
            callback.on_epoch_end(epoch, metrics)
    mark_phase("epochs trained")
    result = TrainResult(final_metrics(s, history[-1], eval_chunk), history, model, data)
    mark_phase("test metrics measured")
    for callback in callbacks:
        callback.on_train_end(result)
    return result


def prediction_speed(model: TwoLayerNet, data: Dataset, chunk: int) -> dict[str, float]:
    return {"test/predict_us_per_sample": predict_us_per_sample(model, data.x_test, chunk)}


def model_size(model: TwoLayerNet, data: Dataset, chunk: int) -> dict[str, float]:
    """The network's weights and biases, and the floating-point operations of predicting one
    sample (a multiply and an add per weight, an add per bias): what a sweep trades accuracy for."""
    layers = (model.hidden, model.output)
    flops = sum(2 * layer.weight.numel() + layer.bias.numel() for layer in layers)
    return {"model/n_params": sum(p.numel() for p in model.parameters()), "model/flops": flops}


def size_before_training(cfg: Config) -> dict[str, float]:
    """`model_size` of the network `cfg` trains, known before it trains (a multi-objective
    sweep's pruning weighs it)."""
    data = load_dataset(cfg.data)
    with torch.device("meta"):  # shapes only: no weights drawn
        return model_size(network(cfg, data), data, 0)


# what a run measures once, at its end, beside the test loss and accuracy: each function takes the
# trained model, the dataset and the evaluation chunk size and returns {metric name: value}
RUN_METRICS: tuple[Callable[[TwoLayerNet, Dataset, int], dict[str, float]], ...] = (
    prediction_speed,
    model_size,
)


def final_metrics(s: Setup, last_epoch: dict[str, float], chunk: int) -> dict[str, float]:
    """The last epoch's metrics, the test split's loss and accuracy, and the RUN_METRICS."""
    data = s.data
    test_loss, test_acc = evaluate(s.model, s.loss_fn, data.x_test, data.y_test, data.task, chunk)
    final = dict(last_epoch) | {"test/loss": test_loss}
    if data.task != "regression":
        final["test/acc"] = test_acc
    for measure in RUN_METRICS:
        final |= measure(s.model, data, chunk)
    return final


class ProgressBar(Callback):
    """A tqdm bar over epochs showing the latest metrics; silent when stderr is not a terminal."""

    def __init__(self, epochs: int, enabled: bool = True, desc: str = "train") -> None:
        self.bar = tqdm(total=epochs, desc=desc, disable=not (enabled and sys.stderr.isatty()))

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        shown = {k.replace("/", "_"): f"{v:.4g}" for k, v in metrics.items() if "time" not in k}
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
