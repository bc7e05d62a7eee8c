"""run_federated: argument checks, the per-round line, a failing client, and DP-FedAvg
end to end on digits (10 clients, 2 rounds) with the user-level epsilon checked against
a fresh accountant. Two Flower simulations (about 12 s each)."""
import math
import re

import numpy as np
import pytest

pytest.importorskip("flwr")

from mxprivacy.accounting import GaussianEvent, PoissonSampledEvent, make_accountant  # noqa: E402
from mxprivacy.errors import ConflictingParametersError, InvalidParameterError  # noqa: E402
from mxprivacy.federated.params import clip_update, get_weights  # noqa: E402
from mxprivacy.federated.runtime import _round_line, gluon_evaluate_fn, run_federated  # noqa: E402
from mxprivacy.federated.strategy import DPFedAvg  # noqa: E402

LINE = re.compile(r"^round (\d+)/(\d+)  accuracy (\S+)  epsilon (\S+) \(delta (\S+)\)$")


def _net():
    import mxnet as mx
    from mxnet import gluon

    net = gluon.nn.Dense(10, in_units=64)
    net.initialize(mx.init.Xavier(), force_reinit=True)
    return net


def _strategy(**kwargs):
    args = dict(num_clients=3, sample_rate=1.0, clip_norm=1.0, noise_multiplier=0.0,
                initial_parameters=get_weights(_net()))
    args.update(kwargs)
    return DPFedAvg(**args)


def _data(count):
    return [(np.zeros((4, 64), np.float32), np.full(4, pid, np.float32)) for pid in range(count)]


# -- no simulation --------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(rounds=0), InvalidParameterError, "rounds"),
    (dict(rounds=3, strategy=dict(rounds=2, delta=1e-3)), ConflictingParametersError, "planned"),
    (dict(client_data=_data(4)), ConflictingParametersError, "num_clients=3"),
    (dict(secure_aggregation=True), ConflictingParametersError, "secure_aggregation"),
    (dict(backend="grpc"), InvalidParameterError, "simulation"),
    (dict(client_data=lambda pid: _data(3)[pid]), InvalidParameterError, "num_clients"),
    (dict(client_data="abc"), InvalidParameterError, "client_data"),
    (dict(net_fn=None), InvalidParameterError, "net_fn"),
])
def test_bad_arguments_raise_before_anything_runs(kwargs, error, match):
    args = dict(net_fn=_net, client_data=_data(3), rounds=1)
    strategy = _strategy(**kwargs.pop("strategy", {}))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        run_federated(args.pop("net_fn"), args.pop("client_data"), strategy, **args)


def test_secure_aggregation_refuses_a_wrapping_quantization():
    strategy = _strategy(num_clients=3, secure_aggregation=True)
    with pytest.raises(Exception, match="wrap around"):
        run_federated(_net, _data(3), strategy, rounds=1,
                      secagg_kwargs=dict(modulus_range=2**23))


def test_round_line_format():
    row = dict(round=2, accuracy=0.91234, epsilon=1.23456)
    assert _round_line(row, 5, 1e-5) == "round 2/5  accuracy 0.9123  epsilon 1.235 (delta 1e-05)"
    assert _round_line(dict(row, epsilon=math.inf, accuracy=None), 5, None) == \
        "round 2/5  accuracy -  epsilon inf (not private)"


# -- simulations ----------------------------------------------------------------------
def raising_or_shifting_train_fn(net, train_data, config):
    """Client 0 raises; the others add a fixed delta (their id is the label)."""
    from mxprivacy.federated.params import set_weights

    pid = int(train_data[0][1])
    if pid == 0:
        raise RuntimeError("client 0 crashed during local training")
    weights = get_weights(net)
    rng = np.random.default_rng(pid)
    set_weights(net, [w + (rng.normal(size=w.shape) * 0.05 * pid).astype(np.float32)
                      for w in weights])
    return {}


def test_client_raising_in_fit_does_not_kill_the_run():
    strategy = _strategy()
    g0 = [a.copy() for a in strategy.parameters_]
    result = run_federated(_net, _data(3), strategy, rounds=1, progress=False,
                           client_kwargs=dict(train_fn=raising_or_shifting_train_fn))
    row = strategy.history_[0]
    assert (row["sampled"], row["received"], row["contributed"], row["failures"]) == (3, 2, 2, 1)
    assert "crashed during local training" in row["failure_reasons"][0]
    assert result.history[0]["failures"] == 1
    expected = [g.astype(np.float64) for g in g0]  # sigma = 0: survivors' clipped mean / 3
    for pid in (1, 2):
        rng = np.random.default_rng(pid)
        shifted = [g + (rng.normal(size=g.shape) * 0.05 * pid).astype(np.float32) for g in g0]
        update, _ = clip_update([s.astype(np.float64) - g for s, g in zip(shifted, g0)], 1.0)
        expected = [e + u / 3 for e, u in zip(expected, update)]
    for got, want in zip(result.parameters, expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_dp_fedavg_on_digits_end_to_end():
    from mxprivacy.datasets import load_digits
    from mxprivacy.federated.partition import partition_by_label

    (x_train, y_train), (x_test, y_test) = load_digits()
    x_train, x_test = x_train.reshape(-1, 64) / 16, x_test.reshape(-1, 64) / 16
    parts = partition_by_label(y_train, 10, classes_per_client=2, seed=0)
    evaluate = gluon_evaluate_fn(_net, (x_test, y_test))
    q, sigma, delta = 0.6, 0.8, 1e-3
    strategy = DPFedAvg(num_clients=10, sample_rate=q, clip_norm=1.0, noise_multiplier=sigma,
                        delta=delta, rounds=2, initial_parameters=get_weights(_net()),
                        evaluate_fn=evaluate)
    lines = []
    result = run_federated(_net, [(x_train[p], y_train[p]) for p in parts], strategy, rounds=2,
                           client_kwargs=dict(batch_size=16), print_fn=lines.append)
    fresh = make_accountant("rdp", "add_remove")
    for _ in range(2):
        fresh.compose(PoissonSampledEvent(q, GaussianEvent(sigma)))
    assert result.epsilon == strategy.epsilon() == pytest.approx(fresh.get_epsilon(delta), rel=1e-12)
    assert (result.delta, result.rounds, result.clients, result.secure_aggregation) == \
        (delta, 2, 10, False)
    assert len(lines) == 2 and [LINE.match(line).group(1) for line in lines] == ["1", "2"]
    assert float(LINE.match(lines[1]).group(4)) == pytest.approx(result.epsilon, rel=1e-3)
    assert float(LINE.match(lines[0]).group(4)) < result.epsilon
    final_accuracy = evaluate(2, result.parameters, {})[1]["accuracy"]
    assert result.history[-1]["accuracy"] == final_accuracy
    assert float(LINE.match(lines[1]).group(3)) == pytest.approx(final_accuracy, abs=1e-4)
    assert [row["round"] for row in strategy.history_] == [1, 2]
    assert result.seconds_per_round > 0 and result.total_seconds > result.seconds_per_round
