"""Host files, process placement and the remote command lines of ``launch_ssh``.

A host file lists one host per line: ``host``, ``user@host``, ``host:slots`` or
``user@host:slots`` (an IPv6 address in brackets, ``[::1]:2``). ``#`` starts a comment;
blank lines are ignored. ``slots`` (default 1) is how many turns the host takes in each
round of the round-robin placement: the servers, then the workers, are placed on the
hosts in file order, a host with ``slots`` k appearing k times in a row.

Each remote process is started as::

    ssh -o BatchMode=yes HOST 'cd DIR && env DMLC_ROLE=... KEY=VALUE PYTHON -c GUARD GRACE COMMAND...'

every word quoted with :func:`shlex.quote`, so the remote login shell must be a POSIX
shell (sh, bash, dash, zsh). ``GUARD`` is a few lines of Python that run COMMAND in its own
process group and stop that group (SIGTERM, then SIGKILL after ``GRACE`` seconds) when
the ssh connection closes (its standard input reaches end of file), when it receives
SIGTERM, SIGINT or SIGHUP, or when COMMAND exits. Without it a remote worker blocked in a
kvstore pull would outlive the launcher. COMMAND's standard input is /dev/null.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shlex
import socket
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from ..errors import InvalidParameterError

__all__ = ["Host", "read_hostfile", "parse_host", "place", "scheduler_address",
           "remote_command", "GUARD"]


@dataclass(frozen=True)
class Host:
    """One host file entry: ``target`` is what ssh is given (``user@host`` or ``host``)."""

    name: str
    user: Optional[str] = None
    slots: int = 1

    @property
    def target(self) -> str:
        return f"{self.user}@{self.name}" if self.user else self.name


_ENTRY = re.compile(r"(?:(?P<user>[^@\s]+)@)?(?:\[(?P<v6>[^\]\s]+)\]|(?P<name>[^@\s]+?))"
                    r"(?::(?P<slots>[^:\s]*))?\Z")


def parse_host(text: str, where: str = "host") -> Host:
    """Parse one entry (``user@host:slots``); ``where`` names it in error messages."""
    text = text.strip()
    if ":" in text and "[" not in text and text.count(":") > 1:  # bare IPv6, no slots
        user, _, name = text.rpartition("@")
        return Host(name, user or None)
    match = _ENTRY.match(text)
    if not text or match is None:
        raise InvalidParameterError(
            f"{where}: {text!r} is not a host entry; write host, user@host or host:slots "
            "(one host per line, # for comments).")
    slots = match.group("slots")
    if slots is not None and not (slots.isdigit() and int(slots) >= 1):
        raise InvalidParameterError(
            f"{where}: the slots of {text!r} must be an integer >= 1, got {slots!r}.")
    return Host(match.group("v6") or match.group("name"), match.group("user"),
                int(slots) if slots else 1)


def read_hostfile(path: str) -> List[Host]:
    """The hosts listed in ``path``, in file order. Raises InvalidParameterError if the file
    is missing, unreadable or lists no host."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise InvalidParameterError(f"Cannot read host file {path}: {reason}.") from None
    hosts = [parse_host(line.split("#", 1)[0], f"{path} line {number}")
             for number, line in enumerate(lines, 1) if line.split("#", 1)[0].strip()]
    if not hosts:
        raise InvalidParameterError(
            f"Host file {path} lists no host: write one host per line (user@host:slots).")
    return hosts


def place(hosts: Sequence[Host], num_servers: int, num_workers: int):
    """(server hosts, worker hosts): round-robin over the hosts, servers first, a host
    taking ``slots`` turns per round."""
    turns = [host for host in hosts for _ in range(host.slots)]
    order = [turns[i % len(turns)] for i in range(num_servers + num_workers)]
    return order[:num_servers], order[num_servers:]


def _resolve(name: str) -> str:
    try:
        return socket.gethostbyname(name)
    except (OSError, UnicodeError):
        raise InvalidParameterError(
            f"Cannot resolve host {name!r} on this machine. Pass --scheduler-host (the "
            "scheduler host's IP address that the other hosts can reach).") from None


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def scheduler_address(hosts: Sequence[Host]) -> str:
    """DMLC_PS_ROOT_URI for a scheduler on the first host: that host's IPv4 address as
    this machine resolves it. A loopback address is refused when other hosts are not
    loopback too, since they could not reach it."""
    address = _resolve(hosts[0].name)
    if _is_loopback(address) and not all(_is_loopback(_resolve(h.name)) for h in hosts):
        raise InvalidParameterError(
            f"The first host {hosts[0].name!r} resolves to the loopback address {address}, "
            "which the other hosts cannot reach. Pass --scheduler-host with an address of "
            "that host that they can reach.")
    return address


# Run COMMAND (argv[2:]) in its own process group; stop that group when stdin ends (the
# ssh connection closed), on SIGTERM/SIGINT/SIGHUP, and sweep it when COMMAND exits.
GUARD = """\
import os, signal, subprocess, sys, threading, time
child = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, start_new_session=True)
def kill(sig):
    try:
        os.killpg(child.pid, sig)
    except OSError:
        pass
def stop(*_):
    kill(signal.SIGTERM)
    time.sleep(float(sys.argv[1]))
    kill(signal.SIGKILL)
def watch():
    while os.read(0, 4096):
        pass
    stop()
threading.Thread(target=watch, daemon=True).start()
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, lambda *_: threading.Thread(target=stop, daemon=True).start())
code = child.wait()
kill(signal.SIGKILL)
os._exit(code if code >= 0 else 128 - code)
"""


def remote_command(command: Sequence[str], env: Dict[str, str], cwd: str, python: str,
                   grace: float) -> str:
    """The one string ssh runs on the remote host (see the module docstring)."""
    assignments = " ".join(shlex.quote(f"{key}={value}") for key, value in env.items())
    words = [python, "-c", GUARD, f"{grace:g}", *command]
    return (f"cd {shlex.quote(os.fspath(cwd))} && env {assignments} "
            + " ".join(shlex.quote(str(word)) for word in words))
