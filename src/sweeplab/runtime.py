"""The ground floor of a sweeplab process: how it starts, stops and reports a bad config.

Every command-line entry point goes through `run_cli`; long-running code that must not be cut in
half by Ctrl-C or SIGTERM (a write to a study's journal, a message to the metric writer) runs
inside `interrupts_deferred()`. Nothing here imports another sweeplab module but `config`.
"""

from __future__ import annotations

import gc
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sweeplab.config import ConfigError, ensure_output_dir, register_configs

EXIT_BAD_CONFIG = 2
EXIT_INTERRUPTED = 130


def run_cli(hydra_main: Callable[[], None]) -> None:
    """A command's entry point: store the schemas, check the output folder (a one-line error and
    exit code 2 if it is unusable), then let Hydra compose the config and call `hydra_main`."""
    register_configs()
    try:
        ensure_output_dir()
    except ConfigError as err:
        exit_with_error(err)
    hydra_main()


def exit_with_error(err: BaseException, code: int = EXIT_BAD_CONFIG) -> None:
    """One line on stderr, then exit: what a user sees of a bad config."""
    print(f"error: {err}", file=sys.stderr)
    sys.exit(code)


class _Interrupts:
    """What the signal handler needs to know: inside how many `interrupts_deferred` blocks we
    are, and the signal that arrived meanwhile."""

    depth = 0
    pending: int | None = None


def raise_keyboard_interrupt_on_signals() -> None:
    """Let SIGTERM unwind like Ctrl-C, so runs end KILLED and storages stay consistent; both wait
    for the end of an `interrupts_deferred` block. (SIGINT keeps being ignored where the process
    was started with it ignored, as background jobs are.)"""

    def handler(signum: int, frame: object) -> None:
        if _Interrupts.depth:
            _Interrupts.pending = signum
            return
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, handler)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """A block that Ctrl-C/SIGTERM must not cut in half (a write to a study's journal file under
    its lock): the interrupt is raised when the block ends."""
    _Interrupts.depth += 1
    try:
        yield
    finally:
        _Interrupts.depth -= 1
        if not _Interrupts.depth and _Interrupts.pending is not None:
            signum, _Interrupts.pending = _Interrupts.pending, None
            raise KeyboardInterrupt(f"signal {signum}")


def freeze_long_lived_objects() -> None:
    """`gc.freeze()` everything alive: call it once the libraries a command uses are imported.
    The garbage collector's full collections, which MLflow's metric writes set off, then skip
    their hundreds of thousands of objects. For processes that run one job: the entry points."""
    gc.freeze()
