"""``mxprivacy launch``: run a command as the workers of a ``dist_sync`` job.

``mxprivacy launch -n 2 -s 1 -- python train.py --kvstore dist_sync`` starts a scheduler,
one server and two workers on this machine; with ``--hostfile`` they run over ssh on the
listed hosts. The command's exit code is the job's (see
:mod:`mxprivacy.distributed.launch`): 0 when every worker exits 0, the failing process's
code otherwise, 124 after ``--timeout``. Nothing here imports MXNet.
"""
from __future__ import annotations

import argparse
import math

from ..errors import InvalidParameterError

__all__ = ["add_launch_parser"]

_DESCRIPTION = (
    "Start a scheduler, SERVERS servers and WORKERS copies of COMMAND with the DMLC_* "
    "variables of an MXNet dist_sync job: on this machine, or over ssh on the hosts of "
    "--hostfile. Output passes through unchanged. If a process fails, the others are "
    "stopped (SIGTERM, then SIGKILL after --grace). Exit code: 0 when every worker exits "
    "0; otherwise the failing process's code (128+N for signal N, 255 when ssh failed); "
    "124 after --timeout; 128+N when this launcher gets signal N (forwarded to the job).")


def _positive(kind, wanted: str, minimum=0, strict=True):
    def parse(text: str):
        try:
            value = kind(text)
        except (TypeError, ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not math.isfinite(value) or (value <= minimum if strict else value < minimum):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value
    parse.__name__ = wanted
    return parse


def _assignment(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key or not key.replace("_", "a").isalnum() or key[0].isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key, value


def add_launch_parser(sub) -> None:
    """Register ``launch`` on the subparsers ``sub`` of the ``mxprivacy`` parser."""
    launch = sub.add_parser(
        "launch", help="run a command as the workers of a dist_sync (parameter-server) job",
        description=_DESCRIPTION,
        usage="mxprivacy launch -n WORKERS [-s SERVERS] [--hostfile FILE] [options] "
              "-- COMMAND ...")
    launch.add_argument("-n", "--num-workers", type=_positive(int, "an integer >= 1"),
                        metavar="WORKERS",
                        required=True, help="number of workers (copies of COMMAND)")
    launch.add_argument("-s", "--num-servers", type=_positive(int, "an integer >= 1"),
                        metavar="SERVERS",
                        default=1, help="number of servers (default 1)")
    launch.add_argument("--hostfile", metavar="FILE",
                        help="run over ssh on these hosts: one per line, user@host:slots, "
                             "# comments (default: all on this machine)")
    launch.add_argument("--scheduler-host", metavar="ADDR",
                        help="with --hostfile: the IP address of the scheduler's host that "
                             "every host can reach (default: the first host, resolved here)")
    launch.add_argument("--scheduler-local", action="store_true",
                        help="with --hostfile: run the scheduler on this machine (needs "
                             "--scheduler-host)")
    launch.add_argument("--python", metavar="PATH",
                        help="with --hostfile: the Python on the hosts (default: this one's "
                             "path)")
    launch.add_argument("--env", type=_assignment, action="append", default=[],
                        metavar="NAME=VALUE", help="set in every process (repeatable)")
    launch.add_argument("--timeout", type=_positive(float, "a number of seconds > 0"),
                        metavar="SECONDS",
                        help="stop the whole job after this many seconds (exit code 124)")
    launch.add_argument("--grace", type=_positive(float, "a number of seconds >= 0",
                                                  strict=False), default=10.0,
                        metavar="SECONDS",
                        help="seconds between SIGTERM and SIGKILL when stopping (default 10)")
    launch.add_argument("--port", type=_positive(int, "a port in [1, 65535]"),
                        help="the scheduler's port (default: a free port)")
    launch.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                        help="the workers' command")
    launch.set_defaults(func=_cmd_launch)


def _cmd_launch(args) -> int:
    """Run the job; the exit code is returned to ``mxprivacy.cli.main``."""
    from .launch import launch_local, launch_ssh

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise InvalidParameterError("Give the workers' command after --, e.g. "
                                    "mxprivacy launch -n 2 -- python train.py.")
    if args.port is not None and args.port > 65535:
        raise InvalidParameterError(f"--port must be in [1, 65535], got {args.port}.")
    remote_only = [flag for flag, given in (("--scheduler-host", args.scheduler_host),
                                            ("--scheduler-local", args.scheduler_local),
                                            ("--python", args.python)) if given]
    if remote_only and not args.hostfile:
        raise InvalidParameterError(f"{', '.join(remote_only)} only applies with --hostfile.")
    common = dict(env=dict(args.env), timeout=args.timeout, grace=args.grace,
                  port=args.port)
    if args.hostfile is None:
        return launch_local(command, args.num_workers, args.num_servers, **common)
    return launch_ssh(command, args.hostfile, args.num_workers, args.num_servers,
                      scheduler_host=args.scheduler_host,
                      local_scheduler=args.scheduler_local, python=args.python, **common)
