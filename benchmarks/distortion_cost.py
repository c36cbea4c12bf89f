"""What the image distortions cost an MNIST epoch: the same run with none, each one, and all.

    python benchmarks/distortion_cost.py [--hidden 1024] [--batch 128] [--rounds 3] [--out DIR]

Each arm trains `sweeplab.training.trainer.run` on MNIST (data/mnist, `make data`) for 2 epochs
in this process; the arms take turns, round after round (the machine's speed drifts), and the
second epoch's `time/epoch_s` is kept (the first also pays for warming up). Reports the median
per arm and its cost over the undistorted epoch (in the C++ loop, as such a run trains).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from sweeplab.config import CONF_DIR, register_configs, to_config
from sweeplab.training import trainer

ARMS = {
    "none": [],
    # a run that distorts trains in the Python loop (the C++ loop has no distortions): this arm
    # tells the loop's share of the cost from the distortions'
    "none, Python loop": ["trainer.native=false"],
    "shift_pixels=1": ["trainer.shift_pixels=1"],
    "affine 10 deg, scale 0.1, shear 10 deg": [
        "trainer.affine_degrees=10",
        "trainer.affine_scale=0.1",
        "trainer.affine_shear=10",
    ],
    "elastic alpha=8, sigma=4": ["trainer.elastic_alpha=8", "trainer.elastic_sigma=4"],
    "all three": [
        "trainer.shift_pixels=1",
        "trainer.affine_degrees=10",
        "trainer.affine_scale=0.1",
        "trainer.affine_shear=10",
        "trainer.elastic_alpha=8",
    ],
}


def epoch_seconds(hidden: int, batch: int, overrides: list[str]) -> float:
    base = [
        "data=mnist",
        f"model.d_hidden={hidden}",
        "model.activation=relu",
        "optimizer=adam",
        f"trainer.batch_size={batch}",
        "trainer.epochs=2",
        "trainer.progress=false",
    ]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = to_config(compose("config", [*base, *overrides]))
    return trainer.run(cfg).history[-1]["time/epoch_s"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    register_configs()
    seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for round_ in range(args.rounds):
        for arm, overrides in ARMS.items():
            seconds[arm].append(epoch_seconds(args.hidden, args.batch, overrides))
            print(f"round {round_}, {arm}: {seconds[arm][-1]:.2f} s", file=sys.stderr)
    plain = statistics.median(seconds["none"])
    lines = [
        f"# Image distortions: an MNIST epoch at d_H={args.hidden}, batch {args.batch}, ReLU, "
        f"Adam (medians of {args.rounds} rounds, arms in turns)",
        "",
        "| distortions | epoch (s) | cost over none |",
        "|---|---:|---:|",
    ]
    for arm, values in seconds.items():
        median = statistics.median(values)
        lines.append(f"| {arm} | {median:.2f} | {median / plain - 1:+.0%} |")
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "distortion_cost.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
