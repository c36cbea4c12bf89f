"""A sweep run as a user runs it, timed: `python -m sweeplab.sweep ARGS` in a fresh process with
its own output folder, then its study read back from the journal there. The sweep benchmarks
(pruning_savings.py, warm_start.py) compare such runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna

from sweeplab.sweep.storage import make_storage


def timed_sweep(
    out: Path, study_name: str, args: list[str], python: list[str] | None = None
) -> tuple[optuna.Study, float]:
    """The study of `python -m sweeplab.sweep sweep.study_name=<study_name> ARGS` writing into
    `out`, and the command's wall time; exits with its stderr if it fails. `python` replaces
    `-m sweeplab.sweep` (a benchmark that changes the sweep in its process: `-c CODE`)."""
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            *(python or ["-m", "sweeplab.sweep"]),
            f"sweep.study_name={study_name}",
            *args,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "SWEEPLAB_OUTPUT": str(out)},
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    storage = make_storage(str(out / "optuna" / f"{study_name}.journal"))
    return optuna.load_study(study_name=study_name, storage=storage), wall
