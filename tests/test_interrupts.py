"""Ctrl-C and SIGTERM stop a run or a sweep, but never in the middle of a study's journal write."""

from __future__ import annotations

import os
import signal
import time

import optuna
import pytest

from sweeplab.runtime import interrupts_deferred, raise_keyboard_interrupt_on_signals
from sweeplab.sweep.storage import make_storage


@pytest.fixture
def our_signal_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    raise_keyboard_interrupt_on_signals()
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def send_sigterm_to_self():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)  # Python runs the handler between bytecodes of the main thread


def test_sigterm_raises_keyboard_interrupt_at_once(our_signal_handlers):
    with pytest.raises(KeyboardInterrupt):
        send_sigterm_to_self()


def test_a_second_signal_does_not_cut_the_first_ones_cleanup(our_signal_handlers):
    """Ctrl-C reaches a sweep's workers, then the main process's SIGTERM: one stop path."""
    cleaned = []
    with pytest.raises(KeyboardInterrupt):
        try:
            send_sigterm_to_self()
        finally:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            cleaned.append("the runs ended")
    assert cleaned == ["the runs ended"]


def test_an_interrupt_inside_a_deferred_block_is_raised_when_it_ends(our_signal_handlers):
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            send_sigterm_to_self()
            finished.append("the block")
    assert finished == ["the block"]
    with interrupts_deferred():  # nothing left pending
        pass


def test_a_journal_write_interrupted_inside_its_lock_completes_first(tmp_path, our_signal_handlers):
    path = tmp_path / "study.journal"
    storage = make_storage(str(path))
    study = optuna.create_study(study_name="s", storage=storage)
    lock = storage._backend._lock
    release = lock.release

    def release_after_a_signal():
        send_sigterm_to_self()  # the moment an unlucky Ctrl-C arrives
        release()

    lock.release = release_after_a_signal
    with pytest.raises(KeyboardInterrupt):
        study.set_user_attr("written", True)
    lock.release = release
    assert not (tmp_path / "study.journal.lock").exists()  # the lock was released
    reloaded = optuna.load_study(study_name="s", storage=make_storage(str(path)))
    assert reloaded.user_attrs["written"] is True
