"""Training speed: the lecture's PyTorch recipe against sweeplab's trainer, on the same arrays.

    make bench                                  # MNIST d_H=100/B=100, d_H=1000/B=1000, synthetic d_H=4
    python benchmarks/bench.py --epochs 5 --out outputs/bench
    python benchmarks/bench.py --tiny           # seconds: the smoke test `make test` runs

For each case, in one process: the lecture's recipe exactly as the slides write it (TensorDataset +
DataLoader with shuffle, default torch.optim.Adam, the loss criterion, `loss.item()` per batch),
then sweeplab's `trainer.run` with the same hyperparameters, with its hand-derived gradients
(`trainer.backward=manual`, the default; its steps in the C++ loop of `sweeplab.native`, the
default, and in the Python loop) and with autograd. After a warm-up the four take turns
for eight rounds; each reports its fastest round. It prints and writes (markdown + CSV):
seconds per epoch (median over the epochs after the first), the ratio to the lecture's recipe, test
accuracy after the same epochs, and the time per epoch that the matrix products alone would take
at the matmul rate measured here, with the ratio to it. `--profile` adds where a step's time goes.
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from lecture_demo import Net as LectureNet  # the slides' network, as the demo script has it
from torch import nn


@dataclass
class Case:
    name: str
    data: str  # mnist | synthetic
    d_hidden: int
    batch_size: int
    lr: float
    epochs: int


@dataclass
class Row:
    case: str
    method: str
    epoch_s: float
    test_acc: float
    steps_per_epoch: int


# --- the lecture's recipe, as the slides write it ------------------------------------------------


def lecture_recipe(case: Case, data: object, seed: int = 0) -> Row:
    """Slides 35-38: binary task -> sigmoid output + BCELoss; MNIST -> logits + CrossEntropyLoss.
    On torch's default CPU threads, as the slides' code runs (sweeplab's runs set their own)."""
    from sweeplab.training.trainer import torch_default_threads

    torch.set_num_threads(torch_default_threads())
    torch.manual_seed(seed)
    binary = data.task == "binary"
    dataset = torch.utils.data.TensorDataset(data.x_train, data.y_train)
    loader = torch.utils.data.DataLoader(dataset, batch_size=case.batch_size, shuffle=True)
    model = LectureNet(data.n_features, case.d_hidden, data.n_outputs, output_sigmoid=binary)
    opt = torch.optim.Adam(model.parameters(), lr=case.lr)
    criterion = nn.BCELoss() if binary else nn.CrossEntropyLoss()
    times = []
    for _epoch in range(case.epochs):
        started = time.perf_counter()
        error, total, batch_loss = 0, 0, []
        for _batch, (x_batch, y_batch) in enumerate(loader):
            out = model(x_batch)
            loss = criterion(out, y_batch)
            batch_loss.append(loss.item())
            opt.zero_grad()
            loss.backward()
            opt.step()
            guess = out.round() if binary else out.argmax(1)
            error += torch.sum(guess != y_batch)  # a tensor, as the slides count it
            total += len(y_batch)
        _train_acc = 1 - float(error) / total  # the slides' per-epoch accuracy (one sync)
        times.append(time.perf_counter() - started)
    with torch.no_grad():
        out = model(data.x_test)
        guess = out.round() if binary else out.argmax(1)
        accuracy = (guess == data.y_test).float().mean().item()
    return Row(case.name, "lecture recipe", _median_after_first(times), accuracy, len(loader))


# --- sweeplab ----------------------------------------------------------------------------------


def sweeplab_run(case: Case, backward: str, data_overrides: list[str], native: bool = True) -> Row:
    from hydra import compose, initialize_config_dir

    from sweeplab.config import CONF_DIR, register_configs, to_config
    from sweeplab.training import trainer

    register_configs()
    overrides = [
        *data_overrides,
        f"model.d_hidden={case.d_hidden}",
        "model.activation=sigmoid",
        "optimizer=adam",
        f"optimizer.lr={case.lr}",
        f"trainer.batch_size={case.batch_size}",
        f"trainer.epochs={case.epochs}",
        f"trainer.backward={backward}",
        f"trainer.native={str(native).lower()}",
        "trainer.progress=false",
    ]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = to_config(compose("config", overrides))
    result = trainer.run(cfg)
    times = [h["time/epoch_s"] for h in result.history]
    steps = -(-result.dataset.x_train.shape[0] // case.batch_size)
    return Row(
        case.name,
        f"sweeplab ({backward if native else f'{backward}, Python loop'})",
        _median_after_first(times),
        result.metrics["test/acc"],
        steps,
    )


def _median_after_first(times: list[float]) -> float:
    return statistics.median(times[1:] if len(times) > 1 else times)


# --- the matmul limit --------------------------------------------------------------------------


def matmul_limit_epoch_s(
    case: Case, n_features: int, n_outputs: int, n_train: int
) -> tuple[float, float]:
    """(seconds per epoch for the step's matrix products alone, measured GFLOP/s).

    A step multiplies B x d by d x H (forward), B x H by H x K (forward), and for the gradients
    H x B by B x d (dW_H), K x B by B x H (dW_O) and B x K by K x H (dA_H): 2B(2dH + 3HK) flops.
    The rate is measured on the largest of these products at this case's sizes (hot caches).
    """
    from sweeplab.training.trainer import torch_default_threads

    torch.set_num_threads(torch_default_threads())
    b, d, h, k = case.batch_size, n_features, case.d_hidden, n_outputs
    a, w = torch.randn(b, d), torch.randn(d, h)
    for _ in range(20):
        a @ w
    repeats = max(20, int(2e9 / (2 * b * d * h)))
    best = math.inf
    for _ in range(5):  # the fastest of five: the tightest limit
        started = time.perf_counter()
        for _ in range(repeats):
            a @ w
        best = min(best, time.perf_counter() - started)
    rate = 2 * b * d * h * repeats / best
    flops_per_step = 2 * b * (2 * d * h + 3 * h * k)
    steps = -(-n_train // b)
    return steps * flops_per_step / rate, rate / 1e9


def profile_step(case: Case, data: object) -> str:
    """Where sweeplab's training step spends its time (torch.profiler, top operators)."""
    from torch.profiler import ProfilerActivity, profile

    from sweeplab.config import AdamConfig
    from sweeplab.training.fast import fast_steps
    from sweeplab.training.model import TwoLayerNet, loss_for_task
    from sweeplab.training.optim import build_optimizer
    from sweeplab.training.trainer import train_one_epoch

    torch.manual_seed(0)
    net = TwoLayerNet(data.n_features, case.d_hidden, data.n_outputs, "sigmoid")
    opt = build_optimizer(list(net.parameters()), AdamConfig(lr=case.lr))
    # the Python loop: a profiler would send the C++ loop's epochs there anyway
    steps = fast_steps(net, opt, data.task, native_loop=False)
    loss_fn, order = loss_for_task(data.task), torch.Generator().manual_seed(0)
    train_one_epoch(net, steps, loss_fn, data, case.batch_size, order)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_one_epoch(net, steps, loss_fn, data, case.batch_size, order)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)


# --- main --------------------------------------------------------------------------------------


def load(case: Case, idx_root: str | None) -> tuple[object, list[str]]:
    """The case's dataset and the overrides that make sweeplab load the very same arrays."""
    from sweeplab.config import IdxDataConfig, MnistDataConfig, SyntheticDataConfig
    from sweeplab.training.data import load_dataset

    if case.data == "synthetic":
        sizes = {"n_train": 2000, "n_val": 500, "n_test": 1000}
        overrides = ["data=synthetic", *(f"data.{k}={v}" for k, v in sizes.items())]
        return load_dataset(SyntheticDataConfig(**sizes)), overrides
    if idx_root:  # any IDX dataset instead of MNIST (the smoke test's tiny files)
        overrides = ["data=idx", f"data.root={idx_root}", "data.n_val=10"]
        return load_dataset(IdxDataConfig(root=idx_root, n_val=10)), overrides
    return load_dataset(MnistDataConfig()), ["data=mnist"]


def main(argv: list[str] | None = None) -> None:
    from sweeplab.training.trainer import torch_default_threads

    torch_default_threads()  # read before any run changes it
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per method, case and round")
    parser.add_argument("--rounds", type=int, default=8, help="turns each method takes")
    parser.add_argument("--tiny", action="store_true", help="2 epochs, 1 round (the smoke test)")
    parser.add_argument("--idx-root", default=None, help="an IDX dataset folder to use for MNIST")
    parser.add_argument("--profile", action="store_true", help="profile sweeplab's step")
    parser.add_argument("--out", default=None, help="folder for bench.md and bench.csv")
    args = parser.parse_args(argv)
    epochs = 2 if args.tiny else args.epochs
    cases = [
        Case("MNIST d_H=100 B=100", "mnist", 100, 100, 1e-3, epochs),
        Case("MNIST d_H=1000 B=1000", "mnist", 1000, 1000, 1e-3, epochs),
        Case("synthetic d_H=4 B=100", "synthetic", 4, 100, 0.01, epochs * 4),
    ]
    rows: list[Row] = []
    limits: dict[str, tuple[float, float]] = {}
    for case in cases:
        data, overrides = load(case, args.idx_root)
        # round 1 warms the process up (first-touch of the arrays, allocator, thread pool: the
        # first method run in a process measured up to 1.8x slower). Then the methods take turns
        # for `--rounds` short rounds, and each keeps its fastest round: on a shared machine
        # other load only ever adds time (this project's VMs were measured to run 2x slower for
        # seconds to minutes at a time), and short turns expose every method to it alike.
        lecture_recipe(case, data)
        rounds = [
            [
                lecture_recipe(case, data),
                sweeplab_run(case, "manual", overrides),
                sweeplab_run(case, "manual", overrides, native=False),
                sweeplab_run(case, "autograd", overrides),
            ]
            for _round in range(1 if args.tiny else args.rounds)
        ]
        rows.extend(
            min(by_method, key=lambda r: r.epoch_s) for by_method in zip(*rounds, strict=True)
        )
        limits[case.name] = matmul_limit_epoch_s(
            case, data.n_features, data.n_outputs, data.x_train.shape[0]
        )
        if args.profile and case.data == "mnist" and case.d_hidden == 100:
            profile = profile_step(case, data)
            print(
                f"\nprofile of sweeplab's step (Python loop, same calls), {case.name}:\n{profile}"
            )

    header = (
        f"torch {torch.__version__}, {torch_default_threads()} threads by default, {platform.processor() or platform.machine()}, "
        f"python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    lines = [
        f"# Training speed ({header})",
        "",
        "| case | method | s/epoch | vs lecture | test acc | matmul-limit s/epoch | vs limit |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lecture = next(r for r in rows if r.case == row.case and r.method == "lecture recipe")
        limit, _ = limits[row.case]
        lines.append(
            f"| {row.case} | {row.method} | {row.epoch_s:.4f} | {lecture.epoch_s / row.epoch_s:.2f}x "
            f"| {row.test_acc:.4f} | {limit:.4f} | {row.epoch_s / limit:.2f}x |"
        )
    lines.append("")
    for name, (limit, gflops) in limits.items():
        lines.append(
            f"- {name}: matmul rate measured {gflops:.1f} GFLOP/s -> {limit:.4f} s/epoch of products"
        )
    report = "\n".join(lines)
    print(report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.md").write_text(report + "\n")
        with (out / "bench.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(
                ["case", "method", "epoch_s", "test_acc", "steps_per_epoch", "matmul_limit_epoch_s"]
            )
            for row in rows:
                writer.writerow(
                    [
                        row.case,
                        row.method,
                        f"{row.epoch_s:.6f}",
                        f"{row.test_acc:.4f}",
                        row.steps_per_epoch,
                        f"{limits[row.case][0]:.6f}",
                    ]
                )
        print(f"\nwritten: {out / 'bench.md'}, {out / 'bench.csv'}", file=sys.stderr)


if __name__ == "__main__":
    main()
