"""The training process's end of the MLflow helper process: everything a run writes to MLflow
goes through here, and the helper (`mlflow_store.serve`) writes it while training goes on.

MLflow takes seconds to import, creating a run and logging its params tens of milliseconds, and
its SQL store spends tens of microseconds of CPU per metric value: for the small networks
sweeplab trains, a large share of a run. So the training process never imports MLflow. The
command starts the helper first thing (`start()`), so that it imports MLflow while torch loads,
and a run hands it messages and goes on:

    helper = shared_helper()
    helper.send(("start", key, spec))          # returns at once; the run id comes back later
                                               # (spec: uri, experiment, run_name, tags, ...)
    helper.send(("metrics", key, rows))
    helper.sync()                              # every message so far is in the store

Nothing is lost: a message stays with the sender until the helper confirms it. A message the
helper could not apply is applied again here (`mlflow_store.RunStore`, which imports MLflow),
where the store's own error surfaces; if the helper dies or cannot be started, every
unconfirmed message is, and later ones go there directly. The helper runs in its own session:
Ctrl-C in the terminal reaches the training process only, which ends its runs through the
helper; if the training process dies without a word, the helper ends its open runs KILLED. It
imports MLflow at the training process's priority, on the core that process leaves idle while it
composes the config and imports torch; once training begins (`stay_below`), it runs niced.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from sweeplab.runtime import interrupts_deferred

# below the training process, yet with a share of a saturated core: at 19 the helper could be
# starved until training ended, and the runs of a busy machine appeared only when they were done
HELPER_NICENESS = 10

SILENT_HELPER_LIMIT_S = 300.0  # a helper alive but silent this long while we wait is given up
STORE_MODULE = "sweeplab.training.mlflow_store"  # what the helper process runs


class Helper:
    """Hands messages to the helper process in order, collects its confirmations."""

    def __init__(self, background: bool = True) -> None:
        self.run_ids: dict[str, str] = {}  # key -> run id, as the store's replies arrive
        self.on_started: dict[str, Callable[[str], None]] = {}  # key -> told the run id
        self._to_tell: list[str] = []  # keys whose run id came and was not told yet
        self.uris: dict[str, str] = {}  # key -> the store the run lives in
        self._unconfirmed: dict[int, tuple] = {}  # number -> message
        self._failed: list[tuple] = []  # messages the helper could not apply
        self._waiting: list[tuple[int, bytes]] = []  # numbered, pickled messages not sent yet
        self._in_flight: dict[int, int] = {}  # bytes of each message sent and not answered yet
        self._bytes_in_flight = 0
        self._ready = False  # the helper has imported MLflow and reads the pipe
        self._local: Any = None  # a RunStore of this process, once it must write here
        self.sent = 0  # messages so far; a message's number
        self.broken = not background
        self.niced = False  # below this process (`stay_below`)
        self.session_niced = False  # its session too (Linux autogroup, where allowed)
        if not self.broken:
            self._start_process()

    def _start_process(self) -> None:
        to_helper_r, to_helper_w = os.pipe()
        from_helper_r, from_helper_w = os.pipe()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", STORE_MODULE, str(to_helper_r), str(from_helper_w)],
                pass_fds=(to_helper_r, from_helper_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C goes to the terminal's process group, not here
            )  # no preexec_fn: Python run between fork and exec can hang on another thread's lock
        except OSError as err:
            print(f"sweeplab: no MLflow helper ({err}); writing here", file=sys.stderr)
            self.broken = True
            return
        finally:
            os.close(to_helper_r)
            os.close(from_helper_w)
        self._pipe_bytes = 65536
        with contextlib.suppress(OSError):  # Linux: room for a few seconds of metrics
            self._pipe_bytes = fcntl.fcntl(to_helper_w, fcntl.F_SETPIPE_SZ, 1 << 20)
        self._to_helper = Connection(to_helper_w, readable=False)
        self._from_helper = Connection(from_helper_r, writable=False)

    def send(self, message: tuple) -> None:
        """Hand `message` (kind, run key, payload...) over; it is applied in the order sent."""
        kind, key = message[0], message[1]
        if kind == "start":
            self.uris[key] = message[2]["uri"]
        elif kind == "adopt":
            self.uris[key], self.run_ids[key] = message[2], message[3]
        with interrupts_deferred():  # a message cut in half would garble the pipe
            self._number(message)
            if self.broken:
                self._apply_unconfirmed_here()
            else:
                self._exchange(wait_for=None)
        self._tell_started()

    def _number(self, message: tuple) -> None:
        """Give `message` the next number; queue it for the helper unless it is gone."""
        self.sent += 1
        self._unconfirmed[self.sent] = message
        if not self.broken:
            self._waiting.append((self.sent, pickle.dumps((self.sent, message))))

    def poll(self) -> None:
        """Collect the replies that have come and send what waits, without blocking."""
        if not self.broken:
            with interrupts_deferred():
                self._exchange(wait_for=None)
        self._tell_started()

    def sync(self, through: int | None = None) -> None:
        """Return once every message handed over so far (or up to message number `through`)
        is applied, by the helper or here."""
        with interrupts_deferred():
            waiting = [n for n in self._unconfirmed if through is None or n <= through]
            if waiting and not self.broken:  # the helper answers in order
                self._exchange(wait_for=max(waiting))
            if self.broken:
                self._apply_unconfirmed_here()
        self._tell_started()

    def _tell_started(self) -> None:
        """Tell each run's `on_started` its id (outside the exchange: a listener may fail)."""
        while self._to_tell:
            key = self._to_tell.pop(0)
            if (tell := self.on_started.pop(key, None)) is not None:
                tell(self.run_ids[key])

    def _exchange(self, wait_for: int | None) -> None:
        """Read the helper's replies and send what waits, never more than the pipe holds, so
        that training does not block on a busy helper; with `wait_for`, block until that
        message's reply has come. Then apply here what the helper could not."""
        self._exchange_over_pipe(wait_for)
        while self._failed:
            self._apply_here(self._failed.pop(0))

    def _exchange_over_pipe(self, wait_for: int | None) -> None:
        silent_since = time.monotonic()
        try:
            while True:
                while self._from_helper.poll(0):
                    self._on_reply(self._from_helper.recv())
                    silent_since = time.monotonic()
                # as much as the pipe surely has room for (what is sent and not answered may
                # still be in it): the helper always has work queued, and sending never blocks
                while self._ready and self._waiting:
                    number, message = self._waiting[0]
                    size = len(message) + 4  # the length header
                    if self._in_flight and self._bytes_in_flight + size > self._pipe_bytes:
                        break
                    self._to_helper.send_bytes(message)
                    self._waiting.pop(0)
                    self._in_flight[number] = size
                    self._bytes_in_flight += size
                if wait_for is None or wait_for not in self._unconfirmed:
                    return
                if self._process.poll() is not None:
                    raise EOFError(f"MLflow helper exited with status {self._process.returncode}")
                if time.monotonic() - silent_since > SILENT_HELPER_LIMIT_S:
                    raise TimeoutError(f"MLflow helper silent for {SILENT_HELPER_LIMIT_S:.0f} s")
                self._from_helper.poll(1.0)  # until a reply comes (or a second passes)
        except (OSError, EOFError) as err:  # TimeoutError is an OSError
            print(f"sweeplab: {err}; writing to MLflow in the training process", file=sys.stderr)
            self.broken = True
            self._waiting = []  # still unconfirmed: applied here by sync
            self._process.kill()

    def _on_reply(self, reply: tuple) -> None:
        if reply[0] == "ready":
            self._ready = True
            return
        kind, number, result = reply
        self._bytes_in_flight -= self._in_flight.pop(number)
        message = self._unconfirmed.pop(number)
        if kind == "failed":  # applied again here (once the exchange is over: an error then is
            self._failed.append(message)  # the store's, not the pipe's), where it can surface
        elif message[0] == "start":
            self._started(message[1], result)

    def _started(self, key: str, run_id: str) -> None:
        self.run_ids[key] = run_id
        self._to_tell.append(key)

    def _apply_unconfirmed_here(self) -> None:
        """Apply every unconfirmed message in this process, in order."""
        while self._unconfirmed:
            self._apply_here(self._unconfirmed.pop(min(self._unconfirmed)))

    def _apply_here(self, message: tuple) -> None:
        if self._local is None:
            # MLflow (seconds to import) only where the helper could not write
            from sweeplab.training.mlflow_store import RunStore

            self._local = RunStore()
        kind, key = message[0], message[1]
        if key in self.run_ids and key not in self._local.runs:  # started by the helper
            self._local.adopt(key, self.uris[key], self.run_ids[key])
        if kind == "end" and key not in self._local.runs:  # its start failed here too
            return
        result = self._local.apply(message)
        if kind == "start":
            self._started(key, result)
            if not self.broken:  # the helper writes its later messages, and ends it KILLED
                self._number(("adopt", key, self.uris[key], result))  # if this process dies

    def stay_below(self) -> None:
        """Nice the helper (and its session, where the kernel lets us) below this process, once
        training begins: from then on it takes only a share of a core that training needs."""
        if self.niced or self.broken:
            return
        self.niced = True
        niceness = min(19, os.getpriority(os.PRIO_PROCESS, 0) + HELPER_NICENESS)
        with contextlib.suppress(ProcessLookupError):  # gone: the next exchange finds out
            os.setpriority(os.PRIO_PROCESS, self._process.pid, niceness)
            self.session_niced = _nice_session(self._process.pid, niceness)

    @property
    def pid(self) -> int | None:
        """The helper process's id; None when this process writes itself."""
        return None if self.broken else self._process.pid

    def close(self) -> None:
        """Let the helper finish what it has and leave."""
        if self.broken or not hasattr(self, "_to_helper"):
            return
        if not self.sent:  # started early for a command that then wrote nothing (a bad config):
            self._process.kill()  # it need not finish importing MLflow first
        self._to_helper.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._from_helper.close()


def _nice_session(pid: int, niceness: int) -> bool:
    """Where the kernel groups CPU time by session (Linux's autogroup), a process's own niceness
    counts only inside its session: the helper, in a session of its own, would take a core's
    share from training. Its session gets the same niceness, where the kernel lets it."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(niceness))
    except OSError:  # no autogroup, not permitted, or the kernel's rate limit on changes
        return False
    return True


def shared_helper(background: bool = True) -> Helper:
    """This process's helper (started on first use), or with `background=False` its in-process
    writer."""
    return _shared_helper(bool(background))  # one cache key however it is called


@functools.lru_cache(maxsize=2)
def _shared_helper(background: bool) -> Helper:
    helper = Helper(background)
    atexit.register(helper.close)
    os.register_at_fork(after_in_child=_shared_helper.cache_clear)  # a fork starts its own
    return helper


def start() -> None:
    """Start this process's helper now: it imports MLflow while the caller imports torch."""
    shared_helper()
