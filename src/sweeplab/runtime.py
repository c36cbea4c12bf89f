"""The ground floor of a sweeplab process: how it starts, stops and reports a bad config.

Every command-line entry point goes through `run_cli`; long-running code that must not be cut in
half by Ctrl-C or SIGTERM (a write to a study's journal, a message to the metric writer) runs
inside `interrupts_deferred()`. Nothing here imports another sweeplab module but `config` and
`redaction`.
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
from sweeplab.redaction import redact_streams, without_secrets

EXIT_BAD_CONFIG = 2
EXIT_INTERRUPTED = 130


def run_cli(hydra_main: Callable[[], None]) -> None:
    """A command's entry point: store the schemas, check the output folder (a one-line error and
    exit code 2 if it is unusable), then let Hydra compose the config and call `hydra_main`."""
    redact_streams()
    register_configs()
    try:
        ensure_output_dir()
    except ConfigError as err:
        exit_with_error(err)
    hydra_main()


def redact_hydra_record() -> None:
    """Hydra wrote the composed config and the overrides into the run's folder before the
    command began: mask the passwords in them too (call first thing in a `@hydra.main`)."""
    hydra_config = HydraConfig.get()
    if hydra_config.output_subdir is None:
        return
    for path in (Path(hydra_config.runtime.output_dir) / hydra_config.output_subdir).glob("*.yaml"):
        text = path.read_text()
        if (clean := without_secrets(text)) != text:
            path.write_text(clean)


def exit_with_error(err: BaseException, code: int = EXIT_BAD_CONFIG) -> None:
    """One line on stderr, then exit: what a user sees of a bad config."""
    print(f"error: {err}", file=sys.stderr)
    sys.exit(code)


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
