"""Where a whole command's time goes, in each of its processes (`benchmarks/whole_command.py`).

    mark_phase("torch imported")    # appends "<wall-clock time> torch imported" to $SWEEPLAB_PHASES

Nothing but the standard library here: the MLflow helper process imports it too, and must not
pay for Hydra.
"""

from __future__ import annotations

import os
import time

PHASES_ENV = "SWEEPLAB_PHASES"  # a file that mark_phase appends to; unset: marks cost nothing


def mark_phase(name: str) -> None:
    """Note that the command reached `name`, where a benchmark asked for it."""
    if path := os.environ.get(PHASES_ENV):
        with open(path, "a") as log:
            log.write(f"{time.time():.4f} {name}\n")
