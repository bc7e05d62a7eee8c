"""The watchdog's thread and the order of a normal exit (mxprivacy/gluon/watchdog.py).

The timeout itself and the uncaught-error exit are tested in test_distributed.py.
"""
import sys
import time
import weakref

import pytest

from mxprivacy.gluon import watchdog as watchdog_module
from mxprivacy.gluon.watchdog import TIMEOUT_EXIT_CODE, Watchdog


@pytest.fixture
def fresh_exit(monkeypatch):
    """Empty exit lists and registry, and no uncaught error: a normal exit."""
    for name in ("_AT_NORMAL_EXIT", "_AT_EXIT_LAST"):
        monkeypatch.setattr(watchdog_module, name, [])
    monkeypatch.setattr(watchdog_module, "_RUNNING", weakref.WeakSet())
    monkeypatch.delattr(sys, "last_value", raising=False)


def test_stop_ends_the_thread_and_a_later_watch_starts_one_that_still_fires(fresh_exit):
    calls = []
    dog = Watchdog(0.3, "worker rank 0 of 2", exit=calls.append)
    with dog.watch("quick"):
        pass
    first = dog._thread
    assert first.is_alive() and set(watchdog_module._RUNNING) == {dog}
    dog.stop()
    assert not first.is_alive() and dog._thread is None and not watchdog_module._RUNNING
    dog.stop()  # twice: nothing to stop
    with dog.watch("slow"):
        time.sleep(0.8)
    assert dog._thread is not first and calls == [TIMEOUT_EXIT_CODE]


def test_a_normal_exit_runs_the_rounds_then_stops_the_watchdogs_then_the_release(
        fresh_exit):
    """The last agreement round may need nothing stopped; the release (ps-lite's
    shutdown) comes last, with no watchdog thread left; a callback that raises does not
    skip the others; each is dropped once run (it would hold the kvstore)."""
    dog = Watchdog(60, "worker rank 0 of 2", exit=lambda code: None)
    with dog.watch("a step"):
        pass
    thread, seen = dog._thread, []

    def record(what):
        return lambda: seen.append((what, thread.is_alive()))

    def fails():
        raise RuntimeError("the last round failed")

    watchdog_module.on_normal_exit(record("release"), last=True)
    watchdog_module.on_normal_exit(record("round"))
    watchdog_module.on_normal_exit(fails)
    watchdog_module.on_normal_exit(record("after the failure"))
    watchdog_module._exit_after_uncaught_error()
    assert seen == [("round", True), ("after the failure", True), ("release", False)]
    assert watchdog_module._AT_NORMAL_EXIT == [] and watchdog_module._AT_EXIT_LAST == []


def test_an_uncaught_error_runs_no_round_and_no_release(fresh_exit, monkeypatch):
    """Exit at once (peers may be stuck in a step: a barrier would never end)."""
    exits, seen = [], []
    monkeypatch.setattr(watchdog_module.os, "_exit", exits.append)
    monkeypatch.setattr(sys, "last_value", RuntimeError("boom"), raising=False)
    watchdog_module.on_normal_exit(lambda: seen.append("round"))
    watchdog_module.on_normal_exit(lambda: seen.append("release"), last=True)
    watchdog_module._exit_after_uncaught_error()
    assert exits == [1] and seen == []
