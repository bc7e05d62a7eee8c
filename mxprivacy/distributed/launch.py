"""Start and supervise an MXNet parameter-server job: a scheduler, servers and workers.

MXNet's ``dist_sync`` kvstore (ps-lite) needs one scheduler, ``num_servers`` servers and
``num_workers`` workers, each told its role by ``DMLC_*`` environment variables. The
scheduler and the servers are ``python -c "import mxnet"`` (importing MXNet with
``DMLC_ROLE`` set runs the role's loop until the job ends); the workers run the user's
command and create ``mx.kv.create("dist_sync")``. :func:`launch_local` runs them all on
this machine over loopback; :func:`launch_ssh` spreads them over the hosts of a host file
(see :mod:`mxprivacy.distributed.hosts`).

Supervision (both paths)
    * Start order: the scheduler, the servers, then the workers. Each child runs in its own
      process group (a new session), so stopping it stops the whole tree it started.
      Standard output and error are passed through unchanged (a worker's ``--json`` last
      line still parses); standard input is /dev/null.
    * If any process exits non-zero or is killed, one line names it on stderr and the
      others are stopped: SIGTERM to their process groups, SIGKILL ``grace`` seconds later.
      A process group is also swept with SIGKILL as soon as its leader has exited.
    * When every worker has exited 0, the scheduler and servers get ``grace`` seconds to
      exit by themselves (they normally do at once) and are then stopped.
    * SIGINT, SIGTERM and SIGHUP received by the launcher are forwarded to every child,
      which are then stopped as above; a second signal kills them at once. If the launcher
      itself is killed with SIGKILL, local children are orphaned (remote ones stop: their
      ssh connection closes).
    * ``timeout`` bounds the job's wall time: when it passes, everything is stopped.
    * A worker blocked in a kvstore call whose peer died never returns by itself (ps-lite
      has no failure detection): these rules are what ends such a job.

Exit code
    0 if every worker exited 0; otherwise the exit code of the first process seen to fail
    (128 + N when it was killed by signal N, 255 when ssh itself failed); 124 when
    ``timeout`` passed; 128 + N when the launcher received signal N; 127 (126) when a
    command could not be found (executed).

Worker ``i`` in messages is the i-th worker started; its kvstore rank is assigned by the
scheduler and may differ.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from ..errors import InvalidParameterError
from .hosts import Host, place, read_hostfile, remote_command, scheduler_address

__all__ = ["launch_local", "launch_ssh", "free_port", "DMLC_VARIABLES", "TIMEOUT_EXIT_CODE"]

DMLC_VARIABLES = ("DMLC_ROLE", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_SERVER",
                  "DMLC_NUM_WORKER")
TIMEOUT_EXIT_CODE = 124
SSH = ("ssh", "-o", "BatchMode=yes")
_PREFIX = "mxprivacy launch: "
_POLL = 0.05
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on this machine now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class _Child:
    """One process of the job; ``argv``/``env`` are what is started on this machine."""

    role: str
    index: int
    argv: List[str]
    env: Dict[str, str]
    where: str = ""
    popen: Optional[subprocess.Popen] = None
    code: Optional[int] = None

    @property
    def name(self) -> str:
        label = self.role if self.role == "scheduler" else f"{self.role} {self.index}"
        return label + (f" on {self.where}" if self.where else "")

    @property
    def running(self) -> bool:
        return self.popen is not None and self.code is None

    def poll(self) -> Optional[int]:
        """The exit code (128 + N for signal N) once the process has exited."""
        if self.running and self.popen.poll() is not None:
            code = self.popen.returncode
            self.code = 128 - code if code < 0 else code
            self.signal_group(signal.SIGKILL)  # orphans left in its process group
            _close_stdin(self.popen)
        return self.code

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.popen.pid, sig)

    def describe_exit(self) -> str:
        if self.code > 128 and self.code - 128 in _SIGNALS:
            how = f"was killed by {_SIGNALS[self.code - 128]}"
        else:
            how = f"exited with code {self.code}"
            if self.code == 255 and self.where:
                how += " (ssh could not connect, or the remote side failed)"
        return f"{self.name} (pid {self.popen.pid}) {how}"


_SIGNALS = {int(s): s.name for s in signal.Signals}


def _close_stdin(popen: subprocess.Popen) -> None:
    if popen.stdin is not None:
        with contextlib.suppress(OSError):
            popen.stdin.close()


def _processes(count: int) -> str:
    return f"{count} process" + ("" if count == 1 else "es")


def _say(message: str) -> None:
    print(_PREFIX + message, file=sys.stderr, flush=True)


class _Supervisor:
    """Starts the children in order, watches them, and stops them all on the first failure,
    a signal or the timeout."""

    def __init__(self, children: List[_Child], grace: float, cwd, stdin_pipe: bool):
        self.children, self.grace, self.cwd = children, grace, cwd
        self.stdin = subprocess.PIPE if stdin_pipe else subprocess.DEVNULL
        self.received: Optional[int] = None

    def live(self) -> List[_Child]:
        return [c for c in self.children if c.running]

    def on_signal(self, signum, _frame) -> None:
        escalate = self.received is not None
        self.received = self.received or signum
        for child in self.live():
            child.signal_group(signal.SIGKILL if escalate else signum)

    def start(self) -> Optional[int]:
        """Start every child; an exit code if one could not be started."""
        for child in self.children:
            if self.received is not None:
                return None
            try:
                child.popen = subprocess.Popen(child.argv, env=child.env, cwd=self.cwd,
                                               stdin=self.stdin, start_new_session=True)
            except OSError as exc:
                _say(f"cannot start {child.name}: {exc}; stopping the other "
                     f"{_processes(len(self.live()))}")
                self.stop()
                return 126 if isinstance(exc, PermissionError) else 127
        return None

    def run(self, timeout: Optional[float]) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        code = self.start()
        if code is not None:
            return code
        workers = [c for c in self.children if c.role == "worker"]
        while True:
            if self.received is not None:
                return self._stop_on_signal()
            for child in self.children:
                if child.running and child.poll():
                    if self.received is not None:  # it died of the forwarded signal
                        return self._stop_on_signal()
                    _say(f"{child.describe_exit()}; stopping the other "
                         f"{_processes(len(self.live()))}")
                    self.stop()
                    return child.code
            if all(w.code == 0 for w in workers):
                self._finish(deadline)
                return 0
            if deadline is not None and time.monotonic() >= deadline:
                _say(f"the job exceeded its timeout of {timeout:g} s; stopping its "
                     f"{_processes(len(self.live()))}")
                self.stop()
                return TIMEOUT_EXIT_CODE
            time.sleep(_POLL)

    def _stop_on_signal(self) -> int:
        signum = self.received
        _say(f"received {_SIGNALS.get(signum, signum)}; forwarded it and stopping the "
             f"{_processes(len(self.live()))}")
        self.stop()
        return 128 + signum

    def _finish(self, deadline: Optional[float]) -> None:
        """All workers succeeded: let the scheduler and servers end, then stop them."""
        until = time.monotonic() + self.grace
        if deadline is not None:
            until = min(until, deadline)
        while self.live() and time.monotonic() < until and self.received is None:
            time.sleep(_POLL)
            for child in self.live():
                child.poll()
        if self.live():
            names = ", ".join(c.name for c in self.live())
            _say(f"all workers finished; stopping {names} (still running)")
            self.stop()

    def stop(self) -> None:
        """SIGTERM every running process group, SIGKILL what is left after ``grace``."""
        live = self.live()
        for child in live:
            child.signal_group(signal.SIGTERM)
            _close_stdin(child.popen)
        until = time.monotonic() + self.grace
        while any(c.poll() is None for c in live) and time.monotonic() < until:
            time.sleep(_POLL)
        for child in self.live():
            child.signal_group(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(timeout=5)
            child.poll()


@contextlib.contextmanager
def _forwarding(supervisor: _Supervisor):
    """Route SIGINT, SIGTERM and SIGHUP to the supervisor (main thread only; restored
    after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, supervisor.on_signal)
                for sig in _FORWARDED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check_job(command, num_workers, num_servers, timeout, grace, port, env) -> List[str]:
    if isinstance(command, (str, bytes)):
        raise InvalidParameterError(
            "command must be a sequence of arguments, e.g. ['python', 'train.py'], not a "
            "string (it is not passed through a shell).")
    command = [os.fspath(word) if isinstance(word, os.PathLike) else word
               for word in command]
    if not command or not all(isinstance(word, str) for word in command):
        raise InvalidParameterError(
            "Give the workers' command: a non-empty list of strings (after -- on the "
            "command line).")
    for name, value in (("num_workers", num_workers), ("num_servers", num_servers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidParameterError(f"{name} must be an integer >= 1, got {value!r}.")
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise InvalidParameterError(f"timeout must be a number of seconds > 0 or None, "
                                    f"got {timeout!r}.")
    if not (isinstance(grace, (int, float)) and 0 <= grace < float("inf")):
        raise InvalidParameterError(f"grace must be a finite number of seconds >= 0, "
                                    f"got {grace!r}.")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                             or not 1 <= port <= 65535):
        raise InvalidParameterError(f"port must be an integer in [1, 65535], got {port!r}.")
    clash = sorted(set(env or {}) & set(DMLC_VARIABLES))
    if clash:
        raise InvalidParameterError(
            f"env sets {', '.join(clash)}, which the launcher sets for every process; "
            "remove it (use num_workers, num_servers and port).")
    return command


def _dmlc(role: str, uri: str, port: int, num_workers: int, num_servers: int) -> dict:
    return {"DMLC_ROLE": role, "DMLC_PS_ROOT_URI": uri, "DMLC_PS_ROOT_PORT": str(port),
            "DMLC_NUM_SERVER": str(num_servers), "DMLC_NUM_WORKER": str(num_workers)}


def _roles(num_workers: int, num_servers: int):
    yield "scheduler", 0
    yield from (("server", i) for i in range(num_servers))
    yield from (("worker", i) for i in range(num_workers))


def launch_local(command: Sequence[str], num_workers: int, num_servers: int = 1, *,
                 env: Optional[dict] = None, timeout: Optional[float] = None,
                 grace: float = 10.0, port: Optional[int] = None, cwd=None) -> int:
    """Run a ``dist_sync`` job on this machine (127.0.0.1) and return its exit code.

    Starts a scheduler and ``num_servers`` servers (``sys.executable -c "import mxnet"``)
    and ``num_workers`` copies of ``command`` with ``DMLC_ROLE`` set, all with this
    process's environment plus ``env`` and ``DMLC_PS_ROOT_URI=127.0.0.1``,
    ``DMLC_PS_ROOT_PORT=port`` (a free port by default), ``DMLC_NUM_SERVER``,
    ``DMLC_NUM_WORKER`` and ``DMLC_NODE_HOST=127.0.0.1`` (unless ``env`` sets it).
    Supervision, signals and the exit code follow the module docstring: 0 when every
    worker exits 0; otherwise the failing process's code (128 + N for signal N), 124
    after ``timeout`` seconds, 128 + N when the launcher gets signal N. ``grace`` is the
    time between SIGTERM and SIGKILL.
    """
    command = _check_job(command, num_workers, num_servers, timeout, grace, port, env)
    port = free_port() if port is None else port
    base = {**os.environ, "DMLC_NODE_HOST": "127.0.0.1", **(env or {})}
    server = [sys.executable, "-c", "import mxnet"]
    children = [_Child(role, index, command if role == "worker" else server,
                       {**base, **_dmlc(role, "127.0.0.1", port, num_workers, num_servers)})
                for role, index in _roles(num_workers, num_servers)]
    return _supervise(children, timeout, grace, cwd, stdin_pipe=False)


def _supervise(children, timeout, grace, cwd, stdin_pipe: bool) -> int:
    supervisor = _Supervisor(children, grace, cwd, stdin_pipe)
    with _forwarding(supervisor):
        try:
            return supervisor.run(timeout)
        finally:  # an exception in the launcher itself never leaves children behind
            if supervisor.live():
                supervisor.stop()


def launch_ssh(command: Sequence[str], hostfile, num_workers: int, num_servers: int = 1, *,
               scheduler_host: Optional[str] = None, local_scheduler: bool = False,
               env: Optional[dict] = None, timeout: Optional[float] = None,
               grace: float = 10.0, port: Optional[int] = None, cwd=None,
               python: Optional[str] = None, ssh: Sequence[str] = SSH) -> int:
    """Run a ``dist_sync`` job over ssh on the hosts of ``hostfile``; return its exit code.

    The scheduler runs on the first host (on this machine with ``local_scheduler=True``),
    the servers and then the workers round-robin over the hosts
    (:func:`~mxprivacy.distributed.hosts.place`). Each remote process is
    ``ssh -o BatchMode=yes HOST 'cd CWD && env DMLC_...=... KEY=VALUE ... COMMAND'`` (see
    :mod:`~mxprivacy.distributed.hosts`): ssh must log in without a password, and ``cwd``
    (default: this directory), ``python`` (default: this interpreter's path, which runs
    the scheduler, the servers and the remote guard) and the command must exist on every
    host. Remote processes get their login environment plus the ``DMLC_*`` variables and
    ``env``, nothing else from here.

    ``DMLC_PS_ROOT_URI`` is ``scheduler_host`` if given (required with
    ``local_scheduler``), else the first host's IPv4 address as resolved here; it must be
    an address of the scheduler's host that every host can reach. ``port`` defaults to a
    port free on this machine: give one known to be free on the scheduler's host.
    Supervision and exit codes are those of :func:`launch_local`; 255 means ssh failed.
    """
    command = _check_job(command, num_workers, num_servers, timeout, grace, port, env)
    hosts = list(hostfile) if not isinstance(hostfile, (str, os.PathLike)) else \
        read_hostfile(os.fspath(hostfile))
    if not hosts or not all(isinstance(h, Host) for h in hosts):
        raise InvalidParameterError("hostfile must be a path or a non-empty list of Host.")
    if local_scheduler and not scheduler_host:
        raise InvalidParameterError(
            "local_scheduler=True needs scheduler_host: an IP address of this machine that "
            "every host can reach (--scheduler-host).")
    uri = scheduler_host or scheduler_address(hosts)
    port = free_port() if port is None else port
    cwd = os.path.abspath(os.fspath(cwd if cwd is not None else os.getcwd()))
    python = python or sys.executable
    server_hosts, worker_hosts = place(hosts, num_servers, num_workers)
    placed = {"scheduler": [None if local_scheduler else hosts[0]],
              "server": server_hosts, "worker": worker_hosts}
    children = []
    for role, index in _roles(num_workers, num_servers):
        host = placed[role][index]
        argv = command if role == "worker" else [python, "-c", "import mxnet"]
        variables = {**(env or {}), **_dmlc(role, uri, port, num_workers, num_servers)}
        if host is None:
            children.append(_Child(role, index, argv, {**os.environ, **variables}))
        else:
            remote = remote_command(argv, variables, cwd, python, grace)
            children.append(_Child(role, index, [*ssh, host.target, remote],
                                   dict(os.environ), where=host.target))
    return _supervise(children, timeout, grace, None, stdin_pipe=True)
