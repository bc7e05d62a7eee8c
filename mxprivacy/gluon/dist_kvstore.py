"""The kvstore of a distributed :class:`~mxprivacy.gluon.DPTrainer`: created once per
process, shared by nothing else, and checked to return sums.

ps-lite starts once per process: a second ``mx.kv.create("dist_sync")`` blocks forever,
and a second DPTrainer on the first one's kvstore would collide with its keys (Gluon
keys parameters 0 .. P-1). So a process holds one distributed DPTrainer; a second is
refused with a clear message (a kvstore created here by name for a trainer whose
construction failed early is reused). A probe push when the trainer starts finds a
server that does not sum the pushes (an optimizer set with ``KVStore.set_optimizer``)
or gradient compression, both refused.

At a normal exit the kvstore is released explicitly (:func:`release_kvstore`, after the
last agreement round; see :mod:`.watchdog`), so ps-lite shuts down before the
interpreter's teardown. Left to the teardown, it is freed only if nothing else still
holds it (a daemon thread holding the trainer is enough to prevent it), and ps-lite's
threads, still running at exit, abort every worker (SIGABRT).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Tuple

from mxnet import kv as _kv
from mxnet import nd
from mxnet.base import _LIB, MXNetError, check_call

from ..errors import InvalidParameterError, KVStoreReleasedError
from .watchdog import Watchdog, on_normal_exit

__all__ = ["create_kvstore", "probe_sums", "refuse_second_trainer", "mark_started",
           "started_workers", "release_kvstore", "PROBE_KEY"]

PROBE_KEY = 2 ** 31 - 4  # far above Gluon's parameter keys 0 .. P-1
_ENV = ("DMLC_NUM_WORKER", "DMLC_NUM_SERVER", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT")


@dataclasses.dataclass
class _Process:
    """This process's dist kvstores: those created here by name, and the number of
    workers of the DPTrainer that started (at most one per process)."""
    created: Dict[str, object] = dataclasses.field(default_factory=dict)
    started: Optional[Tuple[int, int]] = None  # (rank, W)
    to_release: List[object] = dataclasses.field(default_factory=list)  # at exit


_PROCESS = _Process()


def started_workers() -> int:
    """W of the distributed DPTrainer started in this process (0 if none)."""
    return 0 if _PROCESS.started is None else _PROCESS.started[1]


def mark_started(rank: int, workers: int, kvstore=None) -> None:
    """A distributed DPTrainer of this process starts using its kvstore's keys; the
    kvstore is released when the process exits normally."""
    refuse_second_trainer()
    _PROCESS.started = (int(rank), int(workers))
    if kvstore is not None:
        _release_at_exit(kvstore)


def _release_at_exit(kvstore) -> None:
    if not any(kvstore is held for held in _PROCESS.to_release):
        _PROCESS.to_release.append(kvstore)
        on_normal_exit(_release_all, last=True)


def _release_all() -> None:
    while _PROCESS.to_release:
        release_kvstore(_PROCESS.to_release.pop())


class _ReleasedKVStore:
    """What a kvstore becomes once released: every use raises (the C++ object is gone)."""

    def __getattr__(self, name):
        raise KVStoreReleasedError(
            f"This dist kvstore was released (ps-lite shut down) when the process began "
            f"to exit, so .{name} is not available: exit handlers that run after "
            "mxprivacy's (registered before the DPTrainer was built) cannot use it. Do the "
            "work before the end of the script.")


def release_kvstore(kvstore) -> None:
    """Free ``kvstore``'s C++ object now: for a dist kvstore its destructor shuts ps-lite
    down (a barrier of the workers, rank 0 stops the servers, ``ps::Finalize``), so every
    worker must call it. Waits for MXNet's engine first. The Python object stays, and
    any later use raises :class:`~mxprivacy.KVStoreReleasedError` (instead of reaching
    freed memory); releasing it twice does nothing."""
    if isinstance(kvstore, _ReleasedKVStore):
        return
    try:
        nd.waitall()  # no push or pull still queued for the kvstore
    finally:
        handle = kvstore.handle
        kvstore.__class__ = _ReleasedKVStore  # its __del__ no longer frees the handle
        check_call(_LIB.MXKVStoreFree(handle))


def refuse_second_trainer() -> None:
    if _PROCESS.started is None:
        return
    rank, workers = _PROCESS.started
    raise InvalidParameterError(
        f"This process already started a distributed DPTrainer (worker rank {rank} of "
        f"{workers}); one process holds one. A second one cannot create another dist "
        "kvstore (ps-lite starts once per process: it would block), nor share the first "
        "one's (its keys already hold the first model's parameters). Train every model "
        "with one DPTrainer (wrap them in one PrivateBlock, e.g. one HybridSequential), "
        "or run them as separate jobs.")


def create_kvstore(name: str, watchdog: "Watchdog"):
    """``mx.kv.create(name)`` of a job started by a launcher (it waits for every node);
    a kvstore created here earlier and not used yet is reused."""
    if name in _PROCESS.created:
        return _PROCESS.created[name]
    if _PROCESS.created:
        raise InvalidParameterError(
            f"This process already created a {next(iter(_PROCESS.created))!r} kvstore; "
            f"ps-lite starts once per process, so a {name!r} one would block. Use the "
            "same kvstore type in every DPTrainer of the process.")
    missing = [variable for variable in _ENV if variable not in os.environ]
    if missing:
        raise InvalidParameterError(
            f"kvstore {name!r} needs a parameter-server job, but {', '.join(missing)} "
            "is not set. Start the script with the launcher: mxprivacy launch -n WORKERS "
            "-s SERVERS -- python script.py (it sets the DMLC_* variables).")
    with watchdog.watch("every node of the job to join (kvstore creation; or this process "
                        "created a dist kvstore already: pass that KVStore object)"):
        kvstore = _kv.create(name)
    _PROCESS.created[name] = kvstore
    _release_at_exit(kvstore)
    return kvstore


def probe_sums(kvstore, num_workers: int, key: int = PROBE_KEY) -> None:
    """One push of 1 per worker must pull W: else the server alters pushes (an optimizer
    set with ``KVStore.set_optimizer``) and nothing it returns is a sum."""
    probe = nd.ones((1,))
    kvstore.init(key, nd.zeros((1,)))
    try:
        kvstore.pushpull(key, probe, out=probe)
        pulled = float(probe.asscalar())
    except MXNetError as error:
        if "ompression" not in str(error):
            raise
        raise InvalidParameterError(
            "The kvstore has gradient compression (set_gradient_compression), which "
            "quantizes the noisy pushes (the noise would no longer be Gaussian) and which "
            "MXNet cannot combine with the push-pull DPTrainer needs. Create the kvstore "
            "without compression.") from None
    if pulled != num_workers:
        raise InvalidParameterError(
            f"The kvstore's server does not sum the workers' pushes: each of the "
            f"{num_workers} workers pushed 1 and pulled {pulled:g}. It has an "
            "optimizer of its own (KVStore.set_optimizer), which would update the "
            "server's copy with the raw pushes, before the noise is counted once and the "
            "sum divided by the global batch size. Create the kvstore without "
            "set_optimizer (DPTrainer updates on the workers).")


