"""NoisyOutput: clipping, calibrated noise, exact budget exhaustion, label mode, ledger."""

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon
from scipy import stats

from mxprivacy import (CheckpointError, InvalidParameterError, NoisyOutput, PrivacyBudgetExceeded,
                       PrivacyWarning)
from mxprivacy.gluon.noisy_output import NoisyOutput as GluonNoisyOutput
from mxprivacy.mechanisms import NoisyOutput as MechanismsNoisyOutput
from mxprivacy.accounting import GaussianEvent, PLDAccountant
from mxprivacy.mechanisms import analytic_gaussian_sigma

# wrap() seeds the noise for reproducible tests; the seed's PrivacyWarning is tested below.
pytestmark = pytest.mark.filterwarnings(r"ignore:NoisyOutput\(random_state")


class Constant(gluon.Block):
    """Returns the same rows for every input and counts its calls."""

    def __init__(self, rows):
        super().__init__()
        self.rows = np.asarray(rows, dtype=np.float32)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        reps = x.shape[0] // self.rows.shape[0]
        return mx.nd.array(np.tile(self.rows, (reps, 1)))


def wrap(rows=((3.0, 4.0),), **kwargs):
    options = dict(mechanism="gaussian", epsilon=1.0, delta=1e-6, output_bound=1.0,
                   budget_epsilon=10.0, budget_delta=1e-5, random_state=0)
    options.update(kwargs)
    return NoisyOutput(Constant(rows), **options)


def test_rows_are_clipped_before_noise():
    # Laplace with enormous epsilon: noise is negligible, so the output is the clipped row.
    net = wrap(mechanism="laplace", epsilon=1e9, delta=0.0, budget_epsilon=1e12,
               budget_delta=0.0, output_bound=2.0)
    out = net(mx.nd.zeros((1, 1))).asnumpy()
    np.testing.assert_allclose(out, [[2 * 3 / 7, 2 * 4 / 7]], atol=1e-6)  # L1 norm 2
    gauss = wrap(epsilon=1e6, budget_epsilon=1e9, output_bound=1.0, accountant="rdp")
    np.testing.assert_allclose(gauss(mx.nd.zeros((1, 1))).asnumpy(), [[0.6, 0.8]], atol=1e-3)


def test_noise_has_the_calibrated_spread():
    # 10,000 answers of the same row (20,000 values): the spread must be sigma(eps, delta, 2 bound).
    net = wrap(rows=((0.0, 0.0),) * 10000, budget_epsilon=1e6, accountant="rdp")
    noise = net(mx.nd.zeros((10000, 1))).asnumpy().ravel()
    sigma = analytic_gaussian_sigma(1.0, 1e-6, 2.0)
    assert stats.kstest(noise, stats.norm(scale=sigma).cdf).pvalue > 1e-3
    assert stats.kstest(noise, stats.norm(scale=sigma * 1.06).cdf).pvalue < 1e-3  # power


def test_pure_budget_answers_exactly_budget_over_epsilon_rows():
    net = wrap(mechanism="laplace", epsilon=0.5, delta=0.0, budget_epsilon=5.0,
               budget_delta=0.0)
    assert net.accountant == "basic" and net.max_queries() == 10
    for _ in range(10):
        net(mx.nd.zeros((1, 1)))
    assert net.spent() == (5.0, 0.0) and net.remaining_queries() == 0
    with pytest.raises(PrivacyBudgetExceeded):
        net(mx.nd.zeros((1, 1)))
    assert net.block.calls == 10 and net.queries == 10  # refused query ran nothing


def test_gaussian_budget_is_the_composed_epsilon():
    net = wrap(budget_epsilon=4.0)
    k = net.max_queries()

    def spent(rows):
        acc = PLDAccountant().compose(GaussianEvent(net.mechanism.sigma / 2.0), rows)
        return acc.get_epsilon(1e-5)

    assert spent(k) <= 4.0 < spent(k + 1)
    # Composition is tighter than basic composition (k * 1.0) would allow.
    assert k > 4
    with pytest.raises(PrivacyBudgetExceeded, match=f"{k} of {k}"):
        net(mx.nd.zeros((k + 1, 1)))
    assert net.block.calls == 0
    net(mx.nd.zeros((k, 1)))
    assert net.remaining_queries() == 0
    eps, delta = net.spent()
    assert eps <= 4.0 and delta == 1e-5


def test_label_mode_returns_classes_only():
    net = wrap(rows=((0.1, 0.9, 0.0), (0.8, 0.1, 0.1)), mode="label", epsilon=1e6,
               budget_epsilon=1e9, accountant="rdp")
    labels = net(mx.nd.zeros((2, 1)))
    assert labels.shape == (2,) and labels.asnumpy().tolist() == [1, 0]


def test_ledger_round_trip_and_mismatch(tmp_path):
    net = wrap(budget_epsilon=4.0)
    net(mx.nd.zeros((3, 1)))
    path = str(tmp_path / "ledger.json")
    net.save_ledger(path)
    fresh = wrap(budget_epsilon=4.0)
    fresh.load_ledger(path)
    assert fresh.queries == 3 and fresh.spent() == net.spent()
    other = wrap(epsilon=0.5, budget_epsilon=4.0)
    with pytest.raises(CheckpointError, match="settings differ"):
        other.load_ledger(path)
    assert other.queries == 0
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CheckpointError):
        fresh.load_ledger(str(tmp_path / "bad.json"))
    assert fresh.queries == 3


def test_save_parameters_carries_the_ledger(tmp_path):
    dense = gluon.nn.Dense(2)
    dense.initialize()
    net = NoisyOutput(dense, epsilon=1.0, delta=1e-6, output_bound=1.0, budget_epsilon=5.0,
                      budget_delta=1e-5)
    net(mx.nd.ones((2, 3)))
    fname = str(tmp_path / "model.params")
    net.save_parameters(fname)
    other = gluon.nn.Dense(2)
    other.initialize()
    restored = NoisyOutput(other, epsilon=1.0, delta=1e-6, output_bound=1.0,
                           budget_epsilon=5.0, budget_delta=1e-5)
    restored(mx.nd.ones((1, 3)))  # finish deferred init: one row of another lineage
    with pytest.warns(PrivacyWarning, match="another run"):
        restored.load_parameters(fname)
    assert restored.queries == 3  # both lineages' rows are counted
    np.testing.assert_allclose(other.weight.data().asnumpy(), dense.weight.data().asnumpy())
    with pytest.raises(CheckpointError):
        restored.load_parameters(str(tmp_path / "missing.params"))


@pytest.mark.parametrize("kwargs,match", [
    (dict(mechanism="laplace", delta=1e-6), "pure"),
    (dict(budget_epsilon=0.5), "single row"),
    (dict(budget_delta=0.0), "budget_delta"),
    (dict(mode="scores"), "mode"),
    (dict(mechanism="cauchy"), "mechanism"),
    (dict(accountant="basic"), "pure epsilon"),
    (dict(secure=True, random_state=None, accountant="pld"), "rdp"),
    (dict(output_bound=0.0), "sensitivity"),
])
def test_bad_settings_are_clear_errors(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        wrap(**kwargs)


# -- location, one ledger format, atomic files, write-ahead ledger -------------------------
def test_importable_from_gluon_mechanisms_and_the_top_level():
    import subprocess
    import sys
    assert NoisyOutput is GluonNoisyOutput is MechanismsNoisyOutput
    code = "import sys, mxprivacy.mechanisms; print('mxnet' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False"


def test_the_ledger_is_an_accountant_state_dict():
    net = wrap(budget_epsilon=4.0)
    net(mx.nd.zeros((3, 1)))
    state = net.state_dict()
    assert set(state) == {"format", "config", "privacy", "budget", "run_id"}
    accountant = PLDAccountant()
    accountant.load_state_dict(state["privacy"])
    assert accountant.get_epsilon(1e-5) == pytest.approx(net.spent()[0], rel=1e-9)


def test_save_parameters_is_atomic_keeps_the_mode_and_writes_the_ledger_first(tmp_path):
    import os
    dense = gluon.nn.Dense(2, in_units=3)
    dense.initialize()
    net = NoisyOutput(dense, epsilon=1.0, delta=1e-6, output_bound=1.0, budget_epsilon=5.0,
                      budget_delta=1e-5)
    fname = str(tmp_path / "model.params")
    net.save_parameters(fname)
    os.chmod(fname, 0o644)
    before = open(fname, "rb").read()
    net(mx.nd.ones((2, 3)))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    dense.save_parameters = crash
    with pytest.raises(OSError):
        net.save_parameters(fname)
    assert open(fname, "rb").read() == before  # the old model, whole
    assert sorted(os.listdir(tmp_path)) == ["model.params", "model.params.ledger.json"]
    fresh = wrap()
    fresh.load_ledger(fname + ".ledger.json")
    del dense.save_parameters
    net.save_parameters(fname)
    assert os.stat(fname).st_mode & 0o777 == 0o644


def test_write_ahead_ledger_resumes_and_never_lowers(tmp_path):
    path = str(tmp_path / "wal")
    net = wrap(budget_epsilon=4.0, ledger_path=path)
    net(mx.nd.zeros((3, 1)))
    assert wrap(budget_epsilon=4.0, ledger_path=path).queries == 3  # no save needed
    older = str(tmp_path / "older.json")
    wrap(budget_epsilon=4.0).save_ledger(older)  # 0 rows
    net(mx.nd.zeros((2, 1)))
    net.load_ledger(older)
    assert net.queries == 5
    again = wrap(budget_epsilon=4.0, ledger_path=path)
    assert again.queries == 5 and again.spent() == net.spent()


def test_a_query_is_durable_before_its_answer(tmp_path, monkeypatch):
    import mxprivacy.gluon.noisy_output as module
    path = str(tmp_path / "wal")
    net = wrap(budget_epsilon=4.0, ledger_path=path)

    def failing_write(fname, data):
        raise OSError("disk full")

    monkeypatch.setattr(module, "atomic_write", failing_write)
    with pytest.raises(OSError):
        net(mx.nd.zeros((2, 1)))
    assert net.queries == 0
    monkeypatch.undo()
    net(mx.nd.zeros((2, 1)))
    assert wrap(budget_epsilon=4.0, ledger_path=path).queries == 2


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "edit"])
def test_a_corrupt_ledger_is_an_error_never_a_reset(tmp_path, damage):
    import json as _json
    from mxprivacy._io import seal
    path = tmp_path / "wal"
    net = wrap(budget_epsilon=4.0, ledger_path=str(path))
    net(mx.nd.zeros((3, 1)))
    data = path.read_bytes()
    if damage == "flip":
        data = data[:-5] + bytes([data[-5] ^ 4]) + data[-4:]
    elif damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "empty":
        data = b""
    else:  # a resealed edit with a non-integer count
        state = _json.loads(data.partition(b"\n")[2])
        state["privacy"]["ledger"][0]["count"] = 2.5
        data = seal("noisy-output-ledger", _json.dumps(state).encode())
    path.write_bytes(data)
    with pytest.raises(CheckpointError):
        wrap(budget_epsilon=4.0, ledger_path=str(path))
    with pytest.raises(CheckpointError):
        net.load_ledger(str(path))
    assert net.queries == 3


def test_a_truncated_parameter_file_is_a_checkpoint_error(tmp_path):
    dense = gluon.nn.Dense(2, in_units=3)
    dense.initialize()
    net = NoisyOutput(dense, epsilon=1.0, delta=1e-6, output_bound=1.0, budget_epsilon=5.0,
                      budget_delta=1e-5)
    fname = tmp_path / "model.params"
    net.save_parameters(str(fname))
    fname.write_bytes(fname.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="parameters are unchanged"):
        net.load_parameters(str(fname))
