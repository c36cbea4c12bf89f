"""Which errors are the machine's (a full disk, a store gone), found through the libraries'
wrapping: they stop a sweep instead of failing its trials one after another."""

from __future__ import annotations

import errno
import sqlite3

import pytest
import sqlalchemy

from sweeplab.machine import machine_failure


def _optuna_after_a_failed_write():
    """Optuna's tell fails on a full disk, then its own `finally` asserts (a chain of contexts)."""
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    finally:
        raise AssertionError("Should not reach.")  # noqa: B012 - as Optuna's finally does


def _sqlalchemy_wrapping_sqlite():
    try:
        raise sqlite3.OperationalError("database or disk is full")
    except sqlite3.OperationalError as err:
        raise sqlalchemy.exc.OperationalError("COMMIT", {}, err) from err


def _raising(err):
    def make():
        raise err

    return make


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_optuna_after_a_failed_write, "no space left on device"),
        (_sqlalchemy_wrapping_sqlite, "no space left on device"),
        (_raising(OSError(errno.EROFS, "Read-only file system")), "read-only file system"),
        (_raising(ConnectionRefusedError(111, "refused")), "the store stopped answering"),
        (_raising(ZeroDivisionError("division by zero")), None),
        (_raising(FileNotFoundError(errno.ENOENT, "No such file")), None),
    ],
)
def test_the_machines_failures_are_told_from_the_programs(make, reason):
    with pytest.raises(BaseException) as raised:  # noqa: PT011 - any: it is classified below
        make()
    assert machine_failure(raised.value) == reason


def test_a_real_full_device():
    with pytest.raises(OSError) as raised, open("/dev/full", "w") as handle:  # noqa: PT012
        handle.write("x")  # Linux's /dev/full fails every write with ENOSPC
        handle.flush()
    assert machine_failure(raised.value) == "no space left on device"
