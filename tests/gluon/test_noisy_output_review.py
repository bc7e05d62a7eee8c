"""NoisyOutput: refusals that depend only on the query and the ledger, charge before the
model runs, exact budgets under threads and shared ledgers, lineages, seeds."""
import json
import math
import os
import subprocess
import sys
import threading
import time
import warnings

import fcntl
import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from mxprivacy import (InvalidParameterError, NoisyOutput, PrivacyBudgetExceeded,
                       PrivacyWarning)
from mxprivacy.errors import NonFiniteOutputWarning

from .test_noisy_output import Constant, wrap

pytestmark = pytest.mark.filterwarnings(r"ignore:NoisyOutput\(random_state")


class Scaled(gluon.Block):
    """x * w: a "trained" weight that depends on the data (inf for one data set)."""

    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x):
        return x * self.w


class Slow(gluon.Block):
    def __init__(self, delay=0.05):
        super().__init__()
        self.delay = delay

    def forward(self, x):
        time.sleep(self.delay)  # releases the GIL, as a real model does
        return x


def _gauss(block, **kwargs):
    options = dict(epsilon=0.5, delta=1e-6, output_bound=1.0, budget_epsilon=2.0,
                   budget_delta=1e-5)
    options.update(kwargs)
    return NoisyOutput(block, **options)


def _file_count(path):
    state = json.loads(open(path, "rb").read().partition(b"\n")[2])
    return sum(entry["count"] for entry in state["privacy"]["ledger"])


# -- 1: non-finite outputs ------------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_rows_are_answered_charged_and_zeroed_like_finite_ones(bad):
    x = mx.nd.array([[1.0, 1.0], [0.5, -0.5]])
    outcomes = {}
    for name, w in (("D", bad), ("D'", 1.0)):
        net = _gauss(Scaled(w), epsilon=1e6, budget_epsilon=1e9, accountant="rdp")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            answers = [net(x).asnumpy() for _ in range(3)]
        outcomes[name] = (net.queries, net.nonfinite_rows,
                          [w.category for w in caught].count(NonFiniteOutputWarning))
        if name == "D":
            for answer in answers:  # noise is negligible at this epsilon: the zero row
                np.testing.assert_allclose(answer, 0.0, atol=0.02)
    assert outcomes["D"][0] == outcomes["D'"][0] == 6  # same charge either way
    assert outcomes["D"][1:] == (6, 1)  # counted, warned once per instance
    assert outcomes["D'"][1:] == (0, 0)


def test_only_non_finite_rows_are_replaced():
    net = wrap(rows=((math.nan, 1.0), (0.6, 0.8)), epsilon=1e6, budget_epsilon=1e9,
               accountant="rdp")
    with pytest.warns(NonFiniteOutputWarning):
        out = net(mx.nd.zeros((2, 1))).asnumpy()
    np.testing.assert_allclose(out, [[0.0, 0.0], [0.6, 0.8]], atol=0.02)
    assert net.nonfinite_rows == 1 and net.queries == 2


def test_rows_are_charged_durably_before_the_model_runs(tmp_path):
    path = str(tmp_path / "wal")
    seen = []

    class Spy(gluon.Block):
        def forward(self, x):
            seen.append(_file_count(path))
            raise RuntimeError("the model fails")

    net = _gauss(Spy(), ledger_path=path)
    with pytest.raises(RuntimeError):
        net(mx.nd.zeros((3, 2)))
    assert seen == [3] and net.queries == 3 and _file_count(path) == 3


def test_a_zero_row_query_is_a_clear_error_and_charges_nothing():
    net = wrap()
    for mode in ("values", "label"):
        net.mode = mode
        with pytest.raises(InvalidParameterError, match="at least one row"):
            net(mx.nd.array(np.zeros((0, 1))))
    assert net.queries == 0 and net.block.calls == 0


# -- 2, 3: one budget for threads, instances and processes --------------------------------
@pytest.mark.parametrize("with_file", [False, True])
def test_threads_never_answer_more_rows_than_the_budget_pays(tmp_path, with_file):
    path = str(tmp_path / "wal") if with_file else None
    net = _gauss(Slow(), ledger_path=path)
    limit = net.max_queries()
    if not with_file:  # widen the window between the check and the charge
        net._write_ahead = lambda queries: time.sleep(0.005)
    answered, refused = [], []

    def serve():
        try:
            net(mx.nd.ones((1, 2)))
            answered.append(1)
        except PrivacyBudgetExceeded:
            refused.append(1)

    threads = [threading.Thread(target=serve) for _ in range(3 * limit)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answered) == limit == net.queries
    assert len(refused) == 2 * limit
    if with_file:
        assert _file_count(path) == limit == _gauss(Slow(), ledger_path=path).queries


def test_two_instances_on_one_ledger_share_one_budget(tmp_path):
    path = str(tmp_path / "wal")
    first, second = _gauss(Slow(0), ledger_path=path), _gauss(Slow(0), ledger_path=path)
    limit = first.max_queries()
    answered = 0
    for net in (first, second) * limit:
        try:
            net(mx.nd.ones((1, 2)))
            answered += 1
        except PrivacyBudgetExceeded:
            pass
    assert answered == limit
    assert _file_count(path) == limit == _gauss(Slow(0), ledger_path=path).queries
    assert first.queries == limit or second.queries == limit
    with pytest.raises(PrivacyBudgetExceeded):
        first(mx.nd.ones((1, 2)))
    assert first.queries == limit  # refreshed from the file


def test_the_ledger_file_lock_serializes_the_charge(tmp_path):
    path = str(tmp_path / "wal")
    net = _gauss(Slow(0), ledger_path=path)
    holder = os.open(path + ".lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another process holding the ledger
    done = threading.Event()
    thread = threading.Thread(target=lambda: (net(mx.nd.ones((1, 2))), done.set()))
    thread.start()
    try:
        assert not done.wait(0.5)  # blocked on the lock
        assert _file_count(path) == 0
    finally:
        os.close(holder)
    thread.join(10)
    assert done.is_set() and _file_count(path) == 1


_WORKER = r"""
import os, sys, time, warnings
warnings.simplefilter("ignore")
from mxnet import gluon, nd
from mxprivacy import NoisyOutput, PrivacyBudgetExceeded
class Identity(gluon.Block):
    def forward(self, x):
        time.sleep(0.02)
        return x
while not os.path.exists(sys.argv[2]):  # start together
    time.sleep(0.01)
net = NoisyOutput(Identity(), epsilon=0.5, delta=1e-6, output_bound=1.0, budget_epsilon=2.0,
                  budget_delta=1e-5, ledger_path=sys.argv[1])
answered = 0
while True:
    try:
        net(nd.ones((1, 2)))
        answered += 1
    except PrivacyBudgetExceeded:
        break
print(answered)
"""


def test_processes_sharing_a_ledger_answer_the_budget_once_in_total(tmp_path):
    path = str(tmp_path / "wal")
    limit = _gauss(Slow(0), ledger_path=path).max_queries()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    go = str(tmp_path / "go")
    workers = [subprocess.Popen([sys.executable, "-c", _WORKER, path, go], env=env,
                                stdout=subprocess.PIPE, text=True) for _ in range(3)]
    time.sleep(0.5)
    open(go, "w").close()
    totals = [int(worker.communicate(timeout=120)[0]) for worker in workers]
    assert sum(totals) == limit == _file_count(path)


# -- 4: lineages ----------------------------------------------------------------------------
def _dense():
    net = gluon.nn.Dense(2, in_units=2)
    net.initialize()
    return _gauss(net, budget_epsilon=5.0)


def test_another_lineages_ledger_is_added_not_maxed(tmp_path):
    fname = str(tmp_path / "m.params")
    x = mx.nd.ones((1, 2))
    server1 = _dense()
    for _ in range(6):
        server1(x)
    server1.save_parameters(fname)
    server2 = _dense()
    server2.block.load_parameters(fname)
    for _ in range(6):
        server2(x)
    with pytest.warns(PrivacyWarning, match="another run"):
        server2.load_parameters(fname)
    assert server2.queries == 12
    with pytest.warns(PrivacyWarning, match="another run"):
        server2.load_ledger(fname + ".ledger.json")  # loading it again adds it again
    assert server2.queries == 18


def test_a_fresh_instance_adopts_the_lineage_and_keeps_the_longer_ledger(tmp_path):
    older, newer = str(tmp_path / "older.json"), str(tmp_path / "newer.json")
    x = mx.nd.ones((1, 2))
    net = _dense()
    net(x)
    net.save_ledger(older)
    net(x)
    net(x)
    net.save_ledger(newer)
    fresh = _dense()
    fresh.load_ledger(newer)
    assert fresh.queries == 3 and fresh.run_id != net.run_id  # a child lineage
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh.load_ledger(older)  # an older ledger of the same lineage: kept, no warning
    assert fresh.queries == 3


def test_a_lineage_adopted_through_the_ledger_path_is_written_back(tmp_path):
    path, saved = str(tmp_path / "wal"), str(tmp_path / "saved.json")
    net = _dense()
    net(mx.nd.ones((2, 2)))
    net.save_ledger(saved)
    served = _gauss(Slow(0), budget_epsilon=5.0, ledger_path=path)
    served.load_ledger(saved)
    assert served.run_id != net.run_id and _file_count(path) == 2
    # every instance on the live ledger file shares the lineage written there
    assert _gauss(Slow(0), budget_epsilon=5.0, ledger_path=path).run_id == served.run_id


# -- 5: seeds -------------------------------------------------------------------------------
def test_a_seed_raises_a_privacy_warning():
    with pytest.warns(PrivacyWarning, match="random_state"):
        NoisyOutput(Constant(((1.0,),)), epsilon=1.0, delta=1e-6, output_bound=1.0,
                    budget_epsilon=5.0, budget_delta=1e-5, random_state=42)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NoisyOutput(Constant(((1.0,),)), epsilon=1.0, delta=1e-6, output_bound=1.0,
                    budget_epsilon=5.0, budget_delta=1e-5)


def test_a_ledger_with_a_huge_count_is_a_checkpoint_error(tmp_path):
    from mxprivacy import CheckpointError
    from mxprivacy._io import seal
    path = tmp_path / "ledger.json"
    net = wrap(budget_epsilon=4.0)
    net(mx.nd.zeros((1, 1)))
    net.save_ledger(str(path))
    state = json.loads(path.read_bytes().partition(b"\n")[2])
    state["privacy"]["ledger"][0]["count"] = 10**400
    path.write_bytes(seal("noisy-output-ledger", json.dumps(state).encode()))
    fresh = wrap(budget_epsilon=4.0)
    with pytest.raises(CheckpointError, match="2\\*\\*53"):
        fresh.load_ledger(str(path))
    assert fresh.queries == 0


def test_two_replicas_resumed_from_one_copy_are_two_lineages(tmp_path):
    saved, a_path, b_path = (str(tmp_path / n) for n in ("saved", "a", "b"))
    x = mx.nd.ones((1, 2))
    origin = _dense()
    for _ in range(2):
        origin(x)
    origin.save_ledger(saved)
    replicas = []
    for path in (a_path, b_path):
        replica = _dense()
        replica.load_ledger(saved)
        for _ in range(3):
            replica(x)
        replica.save_ledger(path)
        replicas.append(replica)
    with pytest.warns(PrivacyWarning):
        replicas[0].load_ledger(b_path)
    # 2 shared + 3 + 3 rows were answered: the merge may over-state (10), never 5
    assert replicas[0].queries >= 8


def test_rows_the_parent_answers_after_the_copy_are_added(tmp_path):
    copy, later = str(tmp_path / "copy"), str(tmp_path / "later")
    x = mx.nd.ones((1, 2))
    parent = _dense()
    for _ in range(2):
        parent(x)
    parent.save_ledger(copy)
    replica = _dense()
    replica.load_ledger(copy)
    replica(x)
    parent(x)  # answered after the copy was taken
    parent.save_ledger(later)
    replica.load_ledger(later)
    assert replica.queries == 4  # 2 shared + 1 replica + 1 parent, not max(3, 3)
    replica.load_ledger(later)  # the same ledger again adds nothing
    assert replica.queries == 4
