"""Errors that come from the machine, not from the work: a full disk, a read-only or failing file
system, a store that stopped answering. A trial that meets one is not at fault: the sweep stops
(a rerun resumes it once the machine is fixed) instead of failing trial after trial.

    try:
        train(...)
    except Exception as err:
        if (reason := machine_failure(err)) is None:
            raise                              # the trial's own error
        stop(reason)                           # "no space left on device"

Libraries wrap these errors (SQLAlchemy, MLflow, Optuna's own assertions after a failed write),
so the whole chain of causes is searched, and SQLite's messages are matched by their text.
"""

from __future__ import annotations

import errno

FAILED_BY_MACHINE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EIO: "input/output error",
    errno.ECONNREFUSED: "the store stopped answering",
    errno.ECONNRESET: "the store stopped answering",
    errno.EHOSTUNREACH: "the store stopped answering",
    errno.ENETUNREACH: "the store stopped answering",
}
# what the stores say instead of an errno (SQLite, PostgreSQL, MLflow's HTTP client)
FAILED_BY_MACHINE_MESSAGES = {
    "database or disk is full": "no space left on device",
    "no space left on device": "no space left on device",
    "disk quota exceeded": "disk quota exceeded",
    "disk i/o error": "input/output error",
    "attempt to write a readonly database": "read-only file system",
    "could not connect to server": "the store stopped answering",
    "server closed the connection unexpectedly": "the store stopped answering",
    "connection refused": "the store stopped answering",
    "max retries exceeded": "the store stopped answering",
}


def machine_failure(err: BaseException | None) -> str | None:
    """Why `err` (or an error that caused it) is the machine's failure, in a few words; None
    when it is not."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in FAILED_BY_MACHINE_ERRNOS:
            return FAILED_BY_MACHINE_ERRNOS[err.errno]
        text = str(err).lower()
        for message, reason in FAILED_BY_MACHINE_MESSAGES.items():
            if message in text:
                return reason
        err = err.__cause__ or err.__context__
    return None
