"""The training loop: plain PyTorch, read top to bottom.

`run(cfg, callbacks)` builds the data, the network and the optimizer from a typed `Config`, trains
for `trainer.epochs` epochs and returns a `TrainResult` (final metrics, per-epoch history, model).
Side effects (MLflow logging, Optuna pruning, progress) happen in callbacks, which see each epoch's
metrics; the loop itself knows nothing about them. A callback may stop training by raising.

Speed by design: the data sits on the device as tensors and each epoch slices it with one random
permutation (no DataLoader collation), optimizers use fused/foreach kernels, the inner loop never
syncs with the host (`.item()` once per epoch), evaluation runs in large chunks in inference mode.
With the hand-derived gradients and Adam/AdamW on the CPU, `sweeplab.native` makes an epoch's
steps in C++ (the same ATen calls as the loop below, without Python's cost per call).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from sweeplab.config import Config
from sweeplab.data import Dataset, RandomShift, load_dataset
from sweeplab.model import (
    LossFn,
    ManualBackprop,
    TwoLayerNet,
    count_correct,
    loss_for_task,
    supports_manual_backward,
)
from sweeplab.native import load as load_native
from sweeplab.native import train_steps as native_train_steps
from sweeplab.optim import LeanAdam, build_optimizer, build_schedule, step_function


class Callback:
    """Hooks the loop calls; override what you need. Raising from a hook stops training."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def on_train_end(self, result: TrainResult) -> None:
        pass


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainResult:
    metrics: dict[str, float]  # last epoch's train/val metrics plus test/loss, test/acc
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch
    model: TwoLayerNet | None = None
    dataset: Dataset | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"trainer.device={name!r}: CUDA is not available on this machine")
    return torch.device(name)


def train_one_epoch(
    model: TwoLayerNet,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    data: Dataset,
    batch_size: int,
    generator: torch.Generator,
    manual_backward: bool = False,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    native: bool = False,
) -> tuple[float, float]:
    """One pass over a fresh shuffle of the training set; returns (mean loss, accuracy).
    `augment` (e.g. `data.RandomShift`) transforms each batch of inputs.

    Gradients come from autograd, or with `manual_backward` from the seed's back-propagation
    equations (`model.ManualBackprop`), which are the same numbers without the graph. With
    `native` too, `sweeplab.native` makes the steps in C++ where it can (the same calls).
    """
    model.train()
    x, y = data.x_train, data.y_train
    n = x.shape[0]
    order = torch.randperm(n, generator=generator).to(x.device)
    y_shuffled = y.index_select(0, order)  # the labels are small: shuffled once per epoch
    # each batch of inputs is gathered into one reused buffer: no allocation per step
    x_buffer = torch.empty((min(batch_size, n), *x.shape[1:]), dtype=x.dtype, device=x.device)
    # every step's logits land in one tensor; the epoch's loss and accuracy come from it at the
    # end, in a few ops over the whole epoch instead of several small ops per step
    logits = torch.empty((n, data.n_outputs), dtype=x.dtype, device=x.device)
    backprop = ManualBackprop(model, data.task) if manual_backward else None
    optimizer_step = step_function(optimizer)
    native = native and backprop is not None and augment is None  # what the C++ loop covers
    # the hand-derived gradients need no autograd recording: switched off once for the epoch
    with torch.set_grad_enabled(backprop is None):
        for start in range(0, n, batch_size):
            # the C++ loop takes the rest of the epoch where it can: from its first step, or from
            # the second after the optimizer has made its state
            if (
                native
                and start <= batch_size
                and native_train_steps(
                    backprop, optimizer, x, order, y_shuffled, logits, batch_size, start
                )
            ):
                break
            batch = slice(start, start + batch_size)
            idx, yb, logits_b = order[batch], y_shuffled[batch], logits[batch]
            xb = torch.index_select(x, 0, idx, out=x_buffer[: idx.numel()])
            if augment is not None:
                xb = augment(xb, generator)
            if backprop is not None:
                backprop(xb, yb, logits_b)
            else:
                out = model(xb)
                optimizer.zero_grad(set_to_none=True)
                loss_fn(out, yb).backward()
                logits_b.copy_(out.detach())
            optimizer_step()
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
# faster on such steps (synthetic d_H 4-256, B 32-100) while it slows down whatever else runs on
# the machine, e.g. the metric writer. MNIST with B >= 21 is above it (2 threads: 7-26 % faster).
SMALL_STEP_ELEMENTS = 16384


@functools.cache
def torch_default_threads() -> int:
    """torch's own choice of CPU threads (one per physical core), read before we first change it."""
    return torch.get_num_threads()


def auto_threads(cfg: Config, available: int) -> int:
    """The CPU threads for `cfg` when `trainer.num_threads` is 0: 1 for a small step, else
    `available`."""
    data = load_dataset(cfg.data)  # cached per process: the same arrays the run trains on
    widest = max(data.n_features, cfg.model.d_hidden, data.n_outputs)
    return 1 if cfg.trainer.batch_size * widest < SMALL_STEP_ELEMENTS else available


def run(cfg: Config, callbacks: list[Callback] | tuple[Callback, ...] = ()) -> TrainResult:
    """Train the network `cfg` describes; callbacks see every epoch. Returns the final metrics."""
    # --- setup
    threads = cfg.trainer.num_threads or auto_threads(cfg, torch_default_threads())
    torch.set_num_threads(threads)
    device = resolve_device(cfg.trainer.device)
    data = load_dataset(cfg.data).to(device)
    torch.manual_seed(cfg.seed)
    model = TwoLayerNet(
        data.n_features,
        cfg.model.d_hidden,
        data.n_outputs,
        cfg.model.activation,
        dropout=cfg.model.dropout,
        input_dropout=cfg.model.input_dropout,
    ).to(device)
    optimizer = build_optimizer(list(model.parameters()), cfg.optimizer)
    schedule = build_schedule(optimizer, cfg.trainer)
    loss_fn = loss_for_task(data.task)
    batch_order = torch.Generator().manual_seed(cfg.seed)
    classify = data.task != "regression"
    manual = cfg.trainer.backward == "manual" or (
        cfg.trainer.backward == "auto" and supports_manual_backward(model)
    )
    augment = None
    if cfg.trainer.shift_pixels:
        if data.image_shape is None:
            raise ValueError(f"trainer.shift_pixels: dataset {data.name!r} has no images")
        background = float(data.x_train.min())  # a blank pixel, normalised or not
        augment = RandomShift(data.image_shape, cfg.trainer.shift_pixels, background, device)
    # the C++ steps (built here on a machine's first run, not inside the first epoch's time)
    native = (
        manual
        and cfg.trainer.native
        and augment is None
        and device.type == "cpu"
        and isinstance(optimizer, LeanAdam)
        and load_native() is not None
    )
    # a loss this far above the untrained network's has diverged even while it is finite
    initial_loss, _ = evaluate(
        model, loss_fn, data.x_val, data.y_val, data.task, cfg.trainer.eval_batch_size
    )
    diverged_above = cfg.trainer.divergence_ratio * max(initial_loss, 1.0)

    # --- epochs
    history: list[dict[str, float]] = []
    for epoch in range(1, cfg.trainer.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        train_loss, train_acc = train_one_epoch(
            model,
            optimizer,
            loss_fn,
            data,
            cfg.trainer.batch_size,
            batch_order,
            manual,
            augment,
            native,
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
            model, loss_fn, data.x_val, data.y_val, data.task, cfg.trainer.eval_batch_size
        )
        if schedule is not None:
            schedule.step()
        metrics = {"train/loss": train_loss, "val/loss": val_loss, "time/epoch_s": epoch_s}
        if schedule is not None:
            metrics["train/lr"] = lr
        if classify:
            metrics |= {"train/acc": train_acc, "val/acc": val_acc}
        history.append(metrics)
        for callback in callbacks:
            callback.on_epoch_end(epoch, metrics)

    # --- test
    test_loss, test_acc = evaluate(
        model, loss_fn, data.x_test, data.y_test, data.task, cfg.trainer.eval_batch_size
    )
    final = dict(history[-1]) | {"test/loss": test_loss}
    final["test/predict_us_per_sample"] = predict_us_per_sample(
        model, data.x_test, cfg.trainer.eval_batch_size
    )
    if classify:
        final["test/acc"] = test_acc
    result = TrainResult(metrics=final, history=history, model=model, dataset=data)
    for callback in callbacks:
        callback.on_train_end(result)
    return result


class ProgressBar(Callback):
    """A tqdm bar over epochs showing the latest metrics; silent when stderr is not a terminal."""

    def __init__(self, epochs: int, enabled: bool = True, desc: str = "train") -> None:
        import sys

        from tqdm import tqdm

        self.bar = tqdm(total=epochs, desc=desc, disable=not (enabled and sys.stderr.isatty()))

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        shown = {k.replace("/", "_"): f"{v:.4g}" for k, v in metrics.items() if "time" not in k}
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
