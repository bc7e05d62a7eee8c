"""Distributed jobs on MXNet's parameter server: the launcher (no MXNet import here).

:func:`launch_local` runs a scheduler, servers and workers on this machine;
:func:`launch_ssh` runs them on the hosts of a host file. ``mxprivacy launch`` is the
command line of both.
"""
from .hosts import Host, read_hostfile
from .launch import TIMEOUT_EXIT_CODE, free_port, launch_local, launch_ssh

__all__ = ["launch_local", "launch_ssh", "read_hostfile", "Host", "free_port",
           "TIMEOUT_EXIT_CODE"]
