"""The ground floor of a sweeplab process: how it starts, stops and reports a bad config.

Every command-line entry point goes through `run_cli`; long-running code that must not be cut in
half by Ctrl-C or SIGTERM (a write to a study's journal, a message to the metric writer) runs
inside `interrupts_deferred()`. Nothing here imports another sweeplab module but `config`,
`machine` and `redaction`.
"""

from __future__ import annotations

import gc
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

from sweeplab.config import ConfigError, ensure_output_dir, register_configs
from sweeplab.machine import machine_failure
from sweeplab.redaction import redact_streams, without_secrets

# a command's exit status: 0 done; 1 the work failed (a run diverged, too many trials failed, a
# bug); 2 a bad config or input, refused before any work; 3 the machine failed (a full disk, a
# store gone): rerun once it is fixed; 130 interrupted
EXIT_WORK_FAILED = 1
EXIT_BAD_CONFIG = 2
EXIT_MACHINE_FAILED = 3
EXIT_INTERRUPTED = 130
INTERRUPTED = "interrupted (Ctrl-C or SIGTERM)"  # what a run or trial that stopped says


def run_cli(hydra_main: Callable[[], None]) -> None:
    """A command's entry point: store the schemas, check the output folder (a one-line error and
    exit code 2 if it is unusable), then let Hydra compose the config and call `hydra_main`."""
    redact_streams()
    register_configs()
    try:
        ensure_output_dir()
    except ConfigError as err:
        exit_with_error(err)
    try:
        hydra_main()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: a run that had started is KILLED in MLflow
        exit_with_error("interrupted", EXIT_INTERRUPTED)
    except SystemExit as stop:  # Hydra's own errors (an unknown key or group option) exit 1:
        if stop.code == EXIT_WORK_FAILED and not _Command.composed:  # a bad config exits 2
            sys.exit(EXIT_BAD_CONFIG)
        raise


class _Command:
    composed = False  # Hydra composed the config and called the command's function


def config_composed() -> None:
    """Call first thing in a `@hydra.main`: Hydra composed the config, and wrote it and the
    overrides into the run's folder before the command began: mask the passwords in them."""
    _Command.composed = True
    hydra_config = HydraConfig.get()
    if hydra_config.output_subdir is None:
        return
    for path in (Path(hydra_config.runtime.output_dir) / hydra_config.output_subdir).glob("*.yaml"):
        text = path.read_text()
        if (clean := without_secrets(text)) != text:
            path.write_text(clean)


def exit_with_error(err: BaseException | str, code: int = EXIT_BAD_CONFIG) -> None:
    """One line on stderr, then exit: what a user sees of a bad config."""
    print(f"error: {err}", file=sys.stderr)
    sys.exit(code)


def exit_if_machine_failed(err: Exception) -> None:
    """Exit with one line and EXIT_MACHINE_FAILED when `err` is the machine's failure (a full
    disk, a store gone: `sweeplab.machine`), not the program's; otherwise return."""
    if (why := machine_failure(err)) is not None:
        exit_with_error(
            f"the machine failed ({why}); fix it and rerun the same command",
            code=EXIT_MACHINE_FAILED,
        )


class _Interrupts:
    """What the signal handler needs to know: inside how many `interrupts_deferred` blocks we
    are, the signal that arrived meanwhile, and whether one was raised already."""

    depth = 0
    pending: int | None = None
    stopping = False  # an interrupt was raised: the process is on its way out


def raise_keyboard_interrupt_on_signals() -> None:
    """Let SIGTERM unwind like Ctrl-C, so runs end KILLED and storages stay consistent; both wait
    for the end of an `interrupts_deferred` block, and only the first is raised. (SIGINT keeps being ignored where the process
    was started with it ignored, as background jobs are.)"""

    def handler(signum: int, frame: object) -> None:
        if _Interrupts.stopping:  # one stop path: a second signal (Ctrl-C reaches a sweep's
            return  # workers, then the main process's SIGTERM) must not cut the first's cleanup
        if _Interrupts.depth:
            _Interrupts.pending = signum
            return
        _Interrupts.stopping = True
        raise KeyboardInterrupt(f"signal {signum}")

    _Interrupts.stopping = False
    signal.signal(signal.SIGTERM, handler)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, handler)


def stopping() -> bool:
    """Whether Ctrl-C or SIGTERM was raised in this process (it is on its way out)."""
    return _Interrupts.stopping


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
            _Interrupts.stopping = True
            raise KeyboardInterrupt(f"signal {signum}")


def freeze_long_lived_objects() -> None:
    """`gc.freeze()` everything alive: call it once the libraries a command uses are imported.
    The garbage collector's full collections, which MLflow's metric writes set off, then skip
    their hundreds of thousands of objects. For processes that run one job: the entry points."""
    gc.freeze()
