"""The release of the dist kvstore at a normal exit (mxprivacy/gluon/dist_kvstore.py).

Left to the interpreter's teardown, the kvstore is freed only if nothing still holds it;
a daemon thread that holds the trainer keeps it alive, ps-lite's threads are still
running when C++ destroys them, and every worker aborts ("terminate called without an
active exception", SIGABRT, exit 134).
"""
import gc
import os
import sys
import weakref

import mxnet as mx
import pytest
from mxnet import nd

from mxprivacy import KVStoreReleasedError
from mxprivacy.distributed.launch import launch_local
from mxprivacy.gluon import dist_kvstore
from mxprivacy.gluon import watchdog as watchdog_module
from mxprivacy.gluon.watchdog import Watchdog

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {"OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1"}


@pytest.fixture
def fresh_exit(monkeypatch):
    """A process with no distributed trainer yet, empty exit lists, a normal exit."""
    monkeypatch.setattr(dist_kvstore, "_PROCESS", dist_kvstore._Process())
    for name in ("_AT_NORMAL_EXIT", "_AT_EXIT_LAST"):
        monkeypatch.setattr(watchdog_module, name, [])
    monkeypatch.setattr(watchdog_module, "_RUNNING", weakref.WeakSet())
    monkeypatch.delattr(sys, "last_value", raising=False)


def pushed_kvstore():
    store = mx.kv.create("local")
    store.init(3, nd.zeros((2,)))
    value = nd.ones((2,))
    store.pushpull(3, value, out=value)  # an op through the engine before the release
    return store


def test_a_released_kvstore_refuses_every_use_and_is_freed_once():
    store = pushed_kvstore()
    dist_kvstore.release_kvstore(store)
    with pytest.raises(KVStoreReleasedError, match=r"released .* \.pushpull"):
        store.pushpull(3, nd.ones((2,)))
    for name in ("rank", "type", "num_workers"):
        with pytest.raises(KVStoreReleasedError, match=name):
            getattr(store, name)
    dist_kvstore.release_kvstore(store)  # twice: nothing
    del store
    gc.collect()  # no second MXKVStoreFree (it would free the C++ object again)


def test_the_trainers_kvstore_is_released_at_a_normal_exit_after_the_rounds(fresh_exit):
    store, seen = pushed_kvstore(), []
    dist_kvstore.mark_started(0, 1, store)
    watchdog_module.on_normal_exit(lambda: seen.append(store.type))  # the last round
    watchdog_module._exit_after_uncaught_error()
    assert seen == ["local"]
    with pytest.raises(KVStoreReleasedError):
        store.rank


def test_a_kvstore_created_by_name_is_released_even_if_no_trainer_started(
        fresh_exit, monkeypatch):
    for variable in dist_kvstore._ENV:
        monkeypatch.setenv(variable, "1")
    monkeypatch.setattr(dist_kvstore._kv, "create", lambda name, made=pushed_kvstore(): made)
    store = dist_kvstore.create_kvstore("dist_sync", Watchdog(60, "worker"))
    watchdog_module._exit_after_uncaught_error()
    with pytest.raises(KVStoreReleasedError):
        store.rank


def test_a_worker_whose_trainer_outlives_the_teardown_exits_cleanly(capfd):
    """Each worker's script leaves a daemon thread holding its trainer (2 workers)."""
    code = launch_local([sys.executable, "-m", "tests.gluon.dist_exit_worker", "pinned"],
                        2, env=ENV, timeout=60, grace=2.0, cwd=ROOT)
    captured = capfd.readouterr()
    assert "terminate called" not in captured.err
    assert code == 0, captured.err[-2000:]
    # the two workers share the terminal: their lines may interleave without a newline
    assert captured.out.count("rank 0 trained") == 1 and captured.out.count("rank 1 trained") == 1
