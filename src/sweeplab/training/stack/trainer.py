"""Training a stack: many trials at once as one wide network, each trial a full run otherwise.

    outcomes = run_stack([Group([cfg_a], [callbacks_a]), Group([cfg_b0, cfg_b1], [...])])

Each `Group` is one trial: one member per seed (`sweep.repeats`), and the callbacks that see the
trial's metrics every epoch (the mean over its members and, with several, `<metric>_std`). A
callback that raises (a pruned trial), or a member whose loss diverges, takes its group out of
the stack at once and the stack shrinks; the stack ends when its last group does. Each group
gets its own `Outcome`: a `TrainResult` like a single run's, or the error that ended it.

What may differ between the members of a stack is `STACKABLE`; everything else (the data, the
batch size, the optimizer family, the epochs, augmentation, the device) they share, the order of
the mini-batches included: it comes from `trainer.shuffle_seed`, the same for every member, so a
single run with a member's config reproduces that member.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from types import ModuleType

import torch

from sweeplab.config import Config, to_flat_dict
from sweeplab.phases import mark_phase
from sweeplab.training import trainer as single_run
from sweeplab.training.augment import Augment, image_distortions
from sweeplab.training.data import Dataset, load_dataset
from sweeplab.training.fast import native
from sweeplab.training.loops import Loop, choose_loop
from sweeplab.training.model import TwoLayerNet, loss_for_task
from sweeplab.training.stack.model import Pieces, StackedNet, StackLayout
from sweeplab.training.stack.optim import RULE_CODES, LrSchedules, StackedOptimizer
from sweeplab.training.trainer import (
    Callback,
    DivergenceError,
    TrainResult,
    evaluate,
    resolve_device,
    threads_for,
    torch_default_threads,
)

# what may differ between the members of a stack (keys of the flat config, or their prefixes)
STACKABLE = (
    "seed",
    "model.d_hidden",
    "model.activation",
    "model.dropout",
    "model.input_dropout",
    "optimizer.lr",
    "optimizer.weight_decay",
    "optimizer.momentum",
    "optimizer.betas",
    "optimizer.eps",
    "optimizer.alpha",
    "optimizer.dampening",
    "optimizer.lr_decay",
    "optimizer.initial_accumulator_value",
    "trainer.lr_schedule",
    "trainer.warmup_epochs",
    "trainer.step_size",
    "trainer.gamma",
    "trainer.divergence_ratio",
    "trainer.shuffle_seed",  # set alike on every member: the stack's batch order
    "trainer.num_threads",
    "trainer.progress",
    "tracking.",
)


def stack_key(cfg: Config) -> tuple:
    """What members of one stack must share: every config value but the STACKABLE ones."""
    flat = to_flat_dict(replace(cfg, sweep=None))
    return tuple((key, repr(value)) for key, value in flat.items() if not key.startswith(STACKABLE))


@dataclass
class Group:
    """One trial of a stack: a member per seed, and the callbacks that see its metrics."""

    configs: list[Config]
    callbacks: Sequence[Callback] = ()


@dataclass
class Outcome:
    """How a group ended: its result, or the error that took it out of the stack."""

    result: TrainResult | None = None
    error: BaseException | None = None
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Members:
    """The members still in the stack: for each, its config and its group (by index)."""

    configs: list[Config]
    groups: list[int]

    def of(self, groups: set[int]) -> list[int]:
        """The members of these groups, in order."""
        return [m for m, g in enumerate(self.groups) if g in groups]

    def without(self, leaving: set[int]) -> Members:
        staying = [m for m in range(len(self.configs)) if m not in leaving]
        return Members([self.configs[m] for m in staying], [self.groups[m] for m in staying])


def run_stack(
    groups: list[Group],
    available_threads: int | None = None,
    on_epoch: Callable[[int, dict[int, dict[str, float]]], dict[int, BaseException]] | None = None,
) -> list[Outcome]:
    """Train every group's members as one stacked network; one Outcome per group. The stack
    uses `trainer.num_threads`, or (0) up to `available_threads` (default: torch's).

    After each epoch, each group's callbacks see its metrics; then `on_epoch(epoch, {group:
    metrics})` sees those of all groups still training at once (a sweep reports them to Optuna
    in one write) and returns the groups it stops, with the error each ends with (pruned)."""
    members = Members(
        [cfg for group in groups for cfg in group.configs],
        [g for g, group in enumerate(groups) for _ in group.configs],
    )
    first = check_stackable(members.configs)
    stack = Stack.build(members.configs, available_threads)
    mark_phase("data, model and optimizer ready")
    outcomes = [Outcome() for _ in groups]
    batch_order = torch.Generator().manual_seed(shuffle_seed(first))
    for epoch in range(1, first.trainer.epochs + 1):
        metrics = stack.train_and_validate(first.trainer.batch_size, batch_order)
        leaving = set()
        for g in sorted(set(members.groups)):
            own = members.of({g})
            summary = group_metrics([metrics[m] for m in own])
            outcomes[g].history.append(summary)
            try:
                for m in own:
                    stack.check_divergence(m, metrics[m], epoch)
                for callback in groups[g].callbacks:
                    callback.on_epoch_end(epoch, summary)
            except Exception as err:  # pruned, diverged or failed: this group alone leaves
                outcomes[g].error = err
                leaving.add(g)
        if on_epoch is not None:
            training = {g: outcomes[g].history[-1] for g in set(members.groups) - leaving}
            for g, err in on_epoch(epoch, training).items():
                outcomes[g].error = err
                leaving.add(g)
        if leaving:
            gone = set(members.of(leaving))
            members = members.without(gone)
            if not members.configs:
                break
            stack = stack.without(gone)
    mark_phase("epochs trained")
    for g in sorted(set(members.groups)):
        outcomes[g].result = stack.result(members.of({g}), outcomes[g].history)
        for callback in groups[g].callbacks:
            callback.on_train_end(outcomes[g].result)
    mark_phase("test metrics measured")
    return outcomes


def run_alone(cfg: Config, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """`trainer.run(cfg, callbacks)` as a stack of one member: the same result, or the same
    error (a callback's, or DivergenceError)."""
    [outcome] = run_stack([Group([cfg], callbacks)])
    if outcome.error is not None:
        raise outcome.error
    assert outcome.result is not None
    return outcome.result


def group_metrics(members: list[dict[str, float]]) -> dict[str, float]:
    """One member's metrics as they are; several members' means and standard deviations."""
    if len(members) == 1:
        return dict(members[0])
    summary = {}
    for key in members[0]:
        values = [m[key] for m in members]
        summary[key] = statistics.fmean(values)
        if key != "time/epoch_s" and key != "train/lr":
            summary[f"{key}_std"] = statistics.stdev(values)
    return summary


def shuffle_seed(cfg: Config) -> int:
    """The seed of the mini-batch order: trainer.shuffle_seed, else the run's seed."""
    return cfg.seed if cfg.trainer.shuffle_seed is None else cfg.trainer.shuffle_seed


def check_stackable(configs: list[Config]) -> Config:
    """The first config, once every other shares what a stack shares; else ValueError."""
    first, key = configs[0], stack_key(configs[0])
    for cfg in configs[1:]:
        other = stack_key(cfg)
        if other != key:
            differs = next(k for (k, v), (_, w) in zip(key, other, strict=True) if v != w)
            raise ValueError(f"{differs} differs between members: they cannot share a stack")
    if len({shuffle_seed(cfg) for cfg in configs}) > 1:
        raise ValueError("members of a stack need one trainer.shuffle_seed (their batch order)")
    return first


class Stack:
    """The stacked network of the members still training, with its optimizer and schedules."""

    def __init__(
        self,
        configs: list[Config],
        data: Dataset,
        net: StackedNet,
        optimizer: StackedOptimizer,
        schedules: LrSchedules,
        augment: Augment | None,
        diverged_above: list[float],
    ) -> None:
        self.configs = configs
        self.data = data
        self.net = net
        self.optimizer = optimizer
        self.schedules = schedules
        self.augment = augment
        self.diverged_above = diverged_above
        native_everywhere = all(
            choose_loop(cfg, data, net.flat.device, "stack") is Loop.STACK_NATIVE for cfg in configs
        )
        self.loop = native.load_stack() if native_everywhere else None
        self.last: list[dict[str, float]] = [{} for _ in configs]  # each member's last epoch

    @classmethod
    def build(cls, configs: list[Config], available_threads: int | None = None) -> Stack:
        first = configs[0]
        device = resolve_device(first.trainer.device)
        data = load_dataset(first.data).to(device)
        widths = [cfg.model.d_hidden for cfg in configs]
        threads = first.trainer.num_threads or threads_for(
            first.trainer.batch_size,
            data,
            sum(widths),
            available_threads or torch_default_threads(),
        )
        torch.set_num_threads(threads)
        pieces = [_initial_pieces(cfg, data, device) for cfg in configs]
        layout = StackLayout(
            data.n_features,
            data.n_outputs,
            tuple(widths),
            tuple(c.model.activation for c in configs),
        )
        net = StackedNet(
            layout,
            data.task,
            pieces,
            dropout=[cfg.model.dropout for cfg in configs],
            input_dropout=[cfg.model.input_dropout for cfg in configs],
        )
        optimizer = StackedOptimizer(net, [cfg.optimizer for cfg in configs])
        schedules = LrSchedules([c.optimizer for c in configs], [c.trainer for c in configs])
        if schedules.any:  # a schedule may start below the optimizer's lr (a warm-up)
            optimizer.set_lrs(schedules.lrs())
        augment = image_distortions(first.trainer, data, device)
        # a loss this far above the untrained network's has diverged even while it is finite
        initial, _ = evaluate_stack(net, data.x_val, data.y_val, first.trainer.eval_batch_size)
        diverged_above = [
            cfg.trainer.divergence_ratio * max(loss, 1.0)
            for cfg, loss in zip(configs, initial.tolist(), strict=True)
        ]
        stack = cls(configs, data, net, optimizer, schedules, augment, diverged_above)
        stack.initial_losses = initial.tolist()
        return stack

    def train_and_validate(
        self, batch_size: int, batch_order: torch.Generator
    ) -> list[dict[str, float]]:
        """One epoch of every member; each member's metrics, as a single run names them."""
        lrs = self.schedules.lrs()
        started = time.perf_counter()
        train_loss, train_acc = train_stack_epoch(
            self.net, self.optimizer, self.data, batch_size, batch_order, self.augment, self.loop
        )
        epoch_s = time.perf_counter() - started
        chunk = self.configs[0].trainer.eval_batch_size
        val_loss, val_acc = evaluate_stack(
            self.net, self.data.x_val, self.data.y_val, chunk, self.loop
        )
        if self.schedules.any:
            self.schedules.step()
            self.optimizer.set_lrs(self.schedules.lrs())
        rows = torch.stack([train_loss, val_loss, train_acc, val_acc]).tolist()  # one host sync
        classify = self.data.task != "regression"
        metrics = []
        for m in range(len(self.configs)):
            values = {"train/loss": rows[0][m], "val/loss": rows[1][m], "time/epoch_s": epoch_s}
            if self.schedules.any:
                values["train/lr"] = lrs[m]
            if classify:
                values |= {"train/acc": rows[2][m], "val/acc": rows[3][m]}
            metrics.append(values)
        self.last = metrics
        return metrics

    def check_divergence(self, member: int, metrics: dict[str, float], epoch: int) -> None:
        loss, ratio = metrics["train/loss"], self.configs[member].trainer.divergence_ratio
        if not math.isfinite(loss) or (ratio > 0 and loss > self.diverged_above[member]):
            raise DivergenceError(
                f"train/loss={loss:.4g} at epoch {epoch}: training diverged (the untrained "
                f"network's loss was {self.initial_losses[member]:.4g}; "
                f"trainer.divergence_ratio={ratio:g})"
            )

    def without(self, leaving: set[int]) -> Stack:
        """The stack of the members that stay: every tensor compacted, nothing recomputed."""
        old = self.net.layout
        layout = old.without(leaving)
        staying = [m for m in range(old.members) if m not in leaving]
        pieces = self.net.pieces()
        net = StackedNet(
            layout,
            self.net.task,
            [pieces[m] for m in staying],
            [self.net.dropout[m] for m in staying],
            [self.net.input_dropout[m] for m in staying],
        )
        state = {
            name: None if buffer is None else layout.join([old.split(buffer)[m] for m in staying])
            for name, buffer in self.optimizer.state.items()
        }
        self.optimizer.forget(leaving)
        self.optimizer.bind(net, state)
        self.schedules.forget(leaving)
        stack = Stack(
            [self.configs[m] for m in staying],
            self.data,
            net,
            self.optimizer,
            self.schedules,
            self.augment,
            [self.diverged_above[m] for m in staying],
        )
        stack.initial_losses = [self.initial_losses[m] for m in staying]
        stack.last = [self.last[m] for m in staying]
        return stack

    def member_model(self, member: int) -> TwoLayerNet:
        """A member as the TwoLayerNet a single run would have trained."""
        cfg = self.configs[member]
        net = TwoLayerNet(
            self.data.n_features,
            cfg.model.d_hidden,
            self.data.n_outputs,
            cfg.model.activation,
            dropout=cfg.model.dropout,
            input_dropout=cfg.model.input_dropout,
        ).to(self.net.flat.device)
        w_h, b_h, w_o, b_o = self.net.pieces()[member]
        with torch.no_grad():
            for target, source in zip(
                (net.hidden.weight, net.hidden.bias, net.output.weight, net.output.bias),
                (w_h, b_h, w_o, b_o),
                strict=True,
            ):
                target.copy_(source)
        return net

    def test_metrics(self, member: int) -> dict[str, float]:
        """A member's test loss and accuracy and prediction speed, as trainer.final_metrics."""
        model, data = self.member_model(member), self.data
        chunk = self.configs[member].trainer.eval_batch_size
        loss_fn = loss_for_task(data.task)
        test_loss, test_acc = evaluate(model, loss_fn, data.x_test, data.y_test, data.task, chunk)
        final = {"test/loss": test_loss}
        if data.task != "regression":
            final["test/acc"] = test_acc
        for measure in single_run.RUN_METRICS:  # read now: a metric added there is logged here too
            final |= measure(model, data, chunk)
        return final

    def result(self, members: list[int], history: list[dict[str, float]]) -> TrainResult:
        """A group's result: its last epoch and test metrics (means and standard deviations
        over its members, and each seed's final value), its first member's network."""
        finals = [self.last[m] | self.test_metrics(m) for m in members]
        metrics = dict(history[-1]) | group_metrics([f for f in finals])
        if len(members) > 1:
            for m, final in zip(members, finals, strict=True):
                for key in ("val/acc", "val/loss", "test/acc", "test/loss"):
                    if key in final:
                        metrics[f"{key}_seed{self.configs[m].seed}"] = final[key]
        return TrainResult(metrics, history, self.member_model(members[0]), self.data)


def _initial_pieces(cfg: Config, data: Dataset, device: torch.device) -> Pieces:
    """The member's initial weights: those of the TwoLayerNet a single run of `cfg` starts from."""
    torch.manual_seed(cfg.seed)
    net = TwoLayerNet(data.n_features, cfg.model.d_hidden, data.n_outputs, cfg.model.activation)
    return tuple(
        p.detach().to(device)
        for p in (net.hidden.weight, net.hidden.bias, net.output.weight, net.output.bias)
    )


def train_stack_epoch(
    net: StackedNet,
    optimizer: StackedOptimizer,
    data: Dataset,
    batch_size: int,
    generator: torch.Generator,
    augment: Augment | None = None,
    loop: ModuleType | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of every member over a fresh shuffle of the training set (the same batches as
    trainer.train_one_epoch with the same generator); each member's (mean loss, accuracy).
    With `loop` (fast/stack_loop.cpp, see `loops.choose_loop`) the steps run in C++."""
    x, y = data.x_train, data.y_train
    n = x.shape[0]
    order = torch.randperm(n, generator=generator).to(x.device)
    y_shuffled = y.index_select(0, order)
    logits = torch.empty((n, net.layout.members * data.n_outputs), dtype=x.dtype, device=x.device)
    x_buffer = torch.empty((min(batch_size, n), *x.shape[1:]), dtype=x.dtype, device=x.device)
    with torch.no_grad():
        if loop is not None:
            optimizer.steps = loop.stack_train_steps(
                x,
                order,
                y_shuffled,
                logits,
                batch_size,
                native.TASKS[net.task],
                net.flat,
                net.grad,
                net.member_starts,
                net.activation_starts,
                net.activation_kinds,
                data.n_outputs,
                RULE_CODES[optimizer.rule],
                optimizer.steps,
                bool(optimizer.flags.get("nesterov")),
                bool(optimizer.flags.get("centered")),
                optimizer.full_state(),
                net.position_members,
                optimizer.table(),
            )
            n = 0  # every batch done
        for start in range(0, n, batch_size):
            batch = slice(start, start + batch_size)
            xb = torch.index_select(x, 0, order[batch], out=x_buffer[: len(order[batch])])
            if augment is not None:
                xb = augment(xb, generator)
            net.step_gradients(xb, y_shuffled[batch], logits[batch])
            optimizer.step()
        loss, accuracy = member_metrics(net, logits, y_shuffled, loop)
        return _by_member(net, loss), _by_member(net, accuracy)


def member_metrics(
    net: StackedNet, logits: torch.Tensor, y: torch.Tensor, loop: ModuleType | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each member's mean loss and accuracy (nan for regression) over `logits`, in the
    buffer's order: in C++ with `loop`, else with ATen's losses."""
    if loop is not None:
        loss, accuracy = loop.stack_metrics(
            logits, y.contiguous(), native.TASKS[net.task], net.layout.d_out
        )
        return loss, accuracy
    return net.losses(logits, y), _accuracies(net, logits, y)


def _accuracies(net: StackedNet, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if net.task == "regression":
        return torch.full((net.layout.members,), math.nan)
    return net.accuracies(logits, y)


def _by_member(net: StackedNet, values: torch.Tensor) -> torch.Tensor:
    """Values in the buffer's order -> the callers' order of the members."""
    return values[list(net.layout.positions)]


@torch.inference_mode()
def evaluate_stack(
    net: StackedNet,
    x: torch.Tensor,
    y: torch.Tensor,
    chunk: int = 8192,
    loop: ModuleType | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every member's (mean loss, accuracy) over a whole split, in chunks; with `loop`, the
    forward pass of fast/stack_loop.cpp."""
    total_loss = torch.zeros(net.layout.members, device=x.device)
    correct = torch.zeros(net.layout.members, device=x.device)
    for start in range(0, x.shape[0], chunk):
        logits = net.forward(x[start : start + chunk], loop=loop)
        yb = y[start : start + chunk]
        loss, accuracy = member_metrics(net, logits, yb, loop)
        total_loss += loss * len(yb)
        correct += accuracy.to(x.device) * len(yb)
    n = x.shape[0]
    return _by_member(net, total_loss / n), _by_member(net, correct / n)
