"""Bounded waits for a distributed DPTrainer: a dead peer must not block a worker forever.

ps-lite never notices a dead peer: a worker blocked in a kvstore round trip waits forever,
and a blocked call cannot be interrupted. :class:`Watchdog` watches each wait (MXNet's
ctypes calls release the GIL, so its thread runs) and, past the deadline, prints one line
and ends the process with :data:`TIMEOUT_EXIT_CODE`. :func:`install_exit_guard` makes a
worker that ends with an uncaught exception exit at once rather than wait in ps-lite's
shutdown barrier for peers stuck in a step (a :class:`~mxprivacy.WorkerMismatchError`,
raised on every worker, shuts down normally).

A normal exit finishes the job in this order, before MXNet's own exit handler and the
interpreter's teardown: the callbacks of :func:`on_normal_exit` (the last agreement
round), then the watchdog threads are stopped, then the ``last=True`` callbacks (the
release of the kvstore, which shuts ps-lite down). Left to the teardown, the kvstore is
freed only if nothing still holds it (a daemon thread's frame or module globals outlive
the teardown), else ps-lite's threads are still running when C++ destroys them:
``terminate called without an active exception`` and SIGABRT, on every worker.
"""
from __future__ import annotations

import atexit
import contextlib
import math
import os
import sys
import threading
import time
import traceback
import weakref
from typing import Callable, List, Optional

from ..errors import InvalidParameterError, WorkerMismatchError

__all__ = ["Watchdog", "resolve_timeout", "install_exit_guard", "on_normal_exit",
           "TIMEOUT_EXIT_CODE",
           "TIMEOUT_ENV", "DEFAULT_TIMEOUT"]

TIMEOUT_ENV = "MXPRIVACY_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
TIMEOUT_EXIT_CODE = 75  # EX_TEMPFAIL: resume from the last checkpoint


def resolve_timeout(dist_timeout) -> float:
    """Seconds to wait for the other workers: the argument, else $MXPRIVACY_DIST_TIMEOUT,
    else 600; ``inf`` waits forever."""
    source = "dist_timeout"
    if dist_timeout is None:
        dist_timeout = os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT)
        source = TIMEOUT_ENV
    try:
        value = float(dist_timeout)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(dist_timeout, bool) or not value > 0:
        raise InvalidParameterError(
            f"{source} must be a number of seconds > 0 (inf: no limit), got {dist_timeout!r}.")
    return value


class Watchdog:
    """Ends the process when one wait for the other workers lasts over ``timeout`` s.

    A kvstore call blocked on a dead peer cannot be interrupted (MXNet's ctypes calls
    release the GIL, so this thread still runs), hence the exit. ``exit`` is
    ``os._exit`` (tests pass their own)."""

    def __init__(self, timeout: float, label: str,
                 exit: Callable[[int], None] = os._exit) -> None:
        self.timeout, self.label, self._exit = float(timeout), label, exit
        self._cond = threading.Condition()
        self._deadline: Optional[float] = None
        self._what = ""
        self._thread: Optional[threading.Thread] = None
        self._stopping = False

    @contextlib.contextmanager
    def watch(self, what: str):
        """Run the block under the deadline; leave it in time or the process ends."""
        if math.isinf(self.timeout):
            yield
            return
        with self._cond:
            self._deadline, self._what = time.monotonic() + self.timeout, what
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="mxprivacy-dist-watchdog")
                self._thread.start()
                _RUNNING.add(self)
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._deadline = None
                self._cond.notify()

    def stop(self) -> None:
        """End the thread (a later :meth:`watch` starts another); waits for it (up to 5 s:
        a daemon thread, it never holds the exit)."""
        with self._cond:
            thread, self._stopping = self._thread, True
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
        with self._cond:
            self._thread, self._stopping = None, False
        _RUNNING.discard(self)

    def _run(self) -> None:
        with self._cond:
            while True:
                if self._stopping:
                    return
                if self._deadline is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                break
        self._fire()

    def _fire(self) -> None:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        print(f"mxprivacy: {self.label} waited more than {self.timeout:g} s for {self._what}: "
              "another worker died, hangs or is far behind (ps-lite does not detect dead "
              f"peers). Exiting with code {TIMEOUT_EXIT_CODE}; resume from the last "
              "checkpoint (trainer.load_states). If workers may legitimately drift apart "
              f"that long, raise DPTrainer(dist_timeout=...) or ${TIMEOUT_ENV}.",
              file=sys.stderr, flush=True)
        self._exit(TIMEOUT_EXIT_CODE)


def _exit_after_uncaught_error() -> None:
    """atexit: skip ps-lite's shutdown barrier after an uncaught exception (peers stuck in
    a step would never reach it); a mismatch, raised on every worker, shuts down normally,
    after the callbacks given to :func:`on_normal_exit`."""
    error = getattr(sys, "last_value", None)
    if error is not None and not isinstance(error, WorkerMismatchError):
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(1)
        return  # (a test's os._exit returns)
    _run_all(_AT_NORMAL_EXIT)
    for dog in list(_RUNNING):
        dog.stop()
    _run_all(_AT_EXIT_LAST)


def _run_all(callbacks: List[Callable[[], None]]) -> None:
    """Run and drop each callback (a reference kept until the teardown would keep what it
    holds, the kvstore, alive past MXNet); one that raises is printed, the rest run."""
    while callbacks:
        callback = callbacks.pop(0)
        try:
            callback()
        except Exception:
            traceback.print_exc()


_EXIT_GUARD: List[bool] = []
_AT_NORMAL_EXIT: List[Callable[[], None]] = []
_AT_EXIT_LAST: List[Callable[[], None]] = []
_RUNNING: "weakref.WeakSet[Watchdog]" = weakref.WeakSet()  # watchdogs with a thread


def install_exit_guard() -> None:
    if not _EXIT_GUARD:
        atexit.register(_exit_after_uncaught_error)
        _EXIT_GUARD.append(True)


def on_normal_exit(callback: Callable[[], None], *, last: bool = False) -> None:
    """Run ``callback`` when the process ends without an uncaught error (or with a
    mismatch), before MXNet's exit handler: the distributed trainer's last round, or,
    with ``last=True``, after every other callback and once the watchdog threads have
    stopped (the release of the kvstore)."""
    install_exit_guard()
    (_AT_EXIT_LAST if last else _AT_NORMAL_EXIT).append(callback)
