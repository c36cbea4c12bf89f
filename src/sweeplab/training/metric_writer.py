"""A helper process that writes per-epoch metrics to MLflow while training goes on.

MLflow's SQL store spends tens of microseconds of CPU per metric value in SQLAlchemy, plus
milliseconds per call: runs of millisecond epochs would spend much of their time writing
metrics, and a thread is no way out (it holds the GIL the training loop needs). So a run
hands its metrics to one helper process per training process (`shared_writer()`, started on first
use) and goes on; `MetricWriter.sync()` waits until everything handed over is in the store.

    writer = shared_writer()
    writer.send(uri, run_id, metrics, fallback=write_here)   # returns at once
    writer.sync()                                             # before the run ends

Nothing is lost: a batch stays with the sender until the helper says it is written. A batch the
helper could not write is written again by its `fallback` in the training process (which then
raises the store's own error where there is one), and if the helper dies every unconfirmed
batch is, and later ones go to their fallback directly (MLflow drops exact duplicates). The
helper runs in its own session, so Ctrl-C in the terminal does not stop it before the runs it
writes for have ended; it leaves when the training process closes the pipe or dies.

Run by the training process as `python -m sweeplab.training.metric_writer READ_FD WRITE_FD`.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import gc
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from sweeplab.runtime import interrupts_deferred

if TYPE_CHECKING:
    from mlflow.entities import Metric

MAX_METRICS = 1000  # MLflow's limit of metrics per log_batch call
SILENT_HELPER_LIMIT_S = 300.0  # a helper alive but silent this long while we wait is given up


class MetricWriter:
    """The training process's end of the helper: hands batches over, collects confirmations."""

    def __init__(self) -> None:
        to_helper_r, to_helper_w = os.pipe()
        from_helper_r, from_helper_w = os.pipe()
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(to_helper_r), str(from_helper_w)],
            pass_fds=(to_helper_r, from_helper_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C goes to the terminal's process group, not here
        )
        os.close(to_helper_r)
        os.close(from_helper_w)
        self._pipe_bytes = 65536
        with contextlib.suppress(OSError):  # Linux: room for a few seconds of metrics
            self._pipe_bytes = fcntl.fcntl(to_helper_w, fcntl.F_SETPIPE_SZ, 1 << 20)
        self._to_helper: Connection = Connection(to_helper_w, readable=False)
        self._from_helper: Connection = Connection(from_helper_r, writable=False)
        self._ready = False  # the helper has imported MLflow and reads the pipe
        self._waiting: list[bytes] = []  # pickled messages not sent yet
        self._in_flight = 0  # messages sent and not answered yet
        self._unconfirmed: dict[int, tuple[list[Metric], Callable[[list[Metric]], None]]] = {}
        self.broken = False
        self.batches = 0  # handed over so far; a batch's number in the messages

    def send(
        self,
        uri: str,
        run_id: str,
        metrics: list[Metric],
        fallback: Callable[[list[Metric]], None],
    ) -> None:
        """Hand `metrics` of `run_id` over to the helper; `fallback` writes them here if need be."""
        if not metrics:
            return
        if self.broken:
            fallback(metrics)
            return
        with interrupts_deferred():  # a message cut in half would garble the pipe
            self.batches += 1
            self._unconfirmed[self.batches] = (metrics, fallback)
            rows = [(m.key, m.value, m.timestamp, m.step) for m in metrics]
            self._waiting.append(pickle.dumps((self.batches, uri, run_id, rows)))
            self._exchange(wait_for=None)

    def sync(self) -> None:
        """Return once every batch handed over so far is in its store (or written by its fallback)."""
        with interrupts_deferred():
            if self._unconfirmed and not self.broken:  # the helper answers in order
                self._exchange(wait_for=max(self._unconfirmed))
        if self.broken:
            self._write_unconfirmed_here()

    def _exchange(self, wait_for: int | None) -> None:
        """Read the helper's replies and send what waits, never more than the pipe holds, so
        that training does not block on a busy helper; with `wait_for`, block until that
        message's reply has come."""
        silent_since = time.monotonic()
        try:
            while True:
                while self._from_helper.poll(0):
                    self._on_reply(self._from_helper.recv())
                    silent_since = time.monotonic()
                if self._ready and self._waiting and not self._in_flight:
                    size = 0
                    while self._waiting and (
                        not size or size + len(self._waiting[0]) < self._pipe_bytes
                    ):
                        message = self._waiting.pop(0)
                        self._to_helper.send_bytes(message)
                        size += len(message) + 4  # the length header
                        self._in_flight += 1
                if wait_for is None or wait_for not in self._unconfirmed:
                    return
                if self._process.poll() is not None:
                    raise EOFError(f"metric writer exited with status {self._process.returncode}")
                if time.monotonic() - silent_since > SILENT_HELPER_LIMIT_S:
                    raise TimeoutError(f"metric writer silent for {SILENT_HELPER_LIMIT_S:.0f} s")
                self._from_helper.poll(1.0)  # until a reply comes (or a second passes)
        except (OSError, EOFError) as err:  # TimeoutError is an OSError
            print(f"sweeplab: {err}; writing metrics in the training process", file=sys.stderr)
            self.broken = True
            self._waiting = []  # still unconfirmed: written by their fallbacks
            self._process.kill()

    def _on_reply(self, reply: tuple) -> None:
        kind, number = reply[0], reply[1]
        if kind == "ready":
            self._ready = True
            return
        self._in_flight -= 1
        metrics, fallback = self._unconfirmed.pop(number)
        if kind == "failed":  # written again here, where the store's error can surface
            fallback(metrics)

    def _write_unconfirmed_here(self) -> None:
        while self._unconfirmed:
            _, (metrics, fallback) = self._unconfirmed.popitem()
            fallback(metrics)

    def close(self) -> None:
        """Let the helper finish what it has and leave."""
        self._to_helper.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._from_helper.close()


@functools.lru_cache(maxsize=1)
def shared_writer() -> MetricWriter:
    """This process's metric writer, started on first use."""
    writer = MetricWriter()
    atexit.register(writer.close)
    os.register_at_fork(after_in_child=shared_writer.cache_clear)  # a fork starts its own
    return writer


def serve(requests: Connection, replies: Connection) -> None:
    """The helper: write each batch with an MLflow client of its store and confirm it, in order."""
    # MLflow (seconds to import) only in the helper: the training process imports this module too
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    os.nice(19)  # idle CPU only: training's own threads come first
    gc.freeze()  # MLflow's objects are long-lived; full collections over them slowed writes
    clients: dict[str, MlflowClient] = {}
    replies.send(("ready", 0))
    while True:
        try:
            message = requests.recv()
        except EOFError:  # the training process closed the pipe or died
            return
        number, uri, run_id, rows = message
        try:
            if uri not in clients:
                clients[uri] = MlflowClient(tracking_uri=uri)
            for i in range(0, len(rows), MAX_METRICS):
                batch = [Metric(*row) for row in rows[i : i + MAX_METRICS]]
                clients[uri].log_batch(run_id, metrics=batch)
        except Exception:  # the training process writes them again and sees the error
            replies.send(("failed", number))
            continue
        replies.send(("done", number))


if __name__ == "__main__":
    serve(
        Connection(int(sys.argv[1]), writable=False),
        Connection(int(sys.argv[2]), readable=False),
    )
