"""GluonClient: standard loop, train_fn, local DP-SGD, participation, evaluate."""
import math

import numpy as np
import pytest

pytest.importorskip("flwr")
mx = pytest.importorskip("mxnet")
from mxnet import gluon  # noqa: E402

from mxprivacy.accounting import epsilon_for  # noqa: E402
from mxprivacy.errors import (ConflictingParametersError, FederatedError,  # noqa: E402
                              InvalidParameterError, PrivacyWarning)
from mxprivacy.federated.client import GluonClient  # noqa: E402
from mxprivacy.federated.mods import EXAMPLE_EPSILON_KEY, PARTICIPATE_KEY  # noqa: E402


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.float32)


def _mlp(seed=0):
    mx.random.seed(seed)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(8, activation="relu"), gluon.nn.Dense(2))
    return net


def _same(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_fit_lowers_the_loss_and_reports_examples():
    client = GluonClient(_mlp(), _data(), test_data=_data(100, seed=1), batch_size=20,
                         local_epochs=3, ctx=mx.cpu(0))
    start = client.get_parameters({})
    assert [w.shape for w in start] == [(8,), (8, 5), (2,), (2, 8)]
    loss_before, n_test, _ = client.evaluate(start, {})
    weights, n_train, metrics = client.fit(start, {})
    loss_after, _, acc = client.evaluate(weights, {})
    assert (n_train, n_test) == (200, 100)
    assert loss_after < 0.8 * loss_before
    assert acc["accuracy"] > 0.8
    assert metrics["train_loss"] > 0


def test_fit_starts_from_the_received_parameters():
    client = GluonClient(_mlp(0), _data(), train_fn=lambda net, data, config: {})
    other = GluonClient(_mlp(1), _data()).get_parameters({})
    weights, _, _ = client.fit(other, {})
    _same(weights, other)


def test_learning_rate_override_is_used():
    client = GluonClient(_mlp(), _data(), batch_size=20)
    start = client.get_parameters({})
    moved = [np.abs(w - s).max() for w, s in zip(client.fit(start, {})[0], start)]
    still = [np.abs(w - s).max() for w, s in zip(
        client.fit(start, {"learning_rate": 1e-9})[0], start)]
    assert max(moved) > 1e-3 and max(still) < 1e-6


def test_not_participating_returns_exactly_the_input_without_training():
    calls = []
    client = GluonClient(_mlp(), _data(), train_fn=lambda *a: calls.append(a) or {})
    before = client.get_parameters({})
    received = [w + 1.0 for w in before]
    weights, _, metrics = client.fit(received, {PARTICIPATE_KEY: 0})
    _same(weights, received)
    assert calls == [] and metrics == {}
    _same(client.get_parameters({}), before)  # the local net was not touched either
    with pytest.raises(FederatedError, match="0 or 1"):
        client.fit(received, {PARTICIPATE_KEY: 0.5})


def test_train_fn_replaces_the_loop():
    seen = {}

    def train_fn(net, train_data, config):
        seen.update(n=len(train_data), config=dict(config))
        net[1].bias.set_data(mx.nd.array([7.0, -7.0]))
        return {"my_metric": 1.5}

    client = GluonClient(_mlp(), _data(), train_fn=train_fn)
    weights, _, metrics = client.fit(client.get_parameters({}), {"round": 3})
    assert metrics == {"my_metric": 1.5}
    assert seen == {"n": 200, "config": {"round": 3}}
    np.testing.assert_array_equal(weights[2], [7.0, -7.0])  # "1.bias" is third


def test_local_epochs_override_runs_more_steps():
    steps = []

    class Counting(gluon.loss.SoftmaxCrossEntropyLoss):
        def hybrid_forward(self, F, pred, label, *args):
            steps.append(1)
            return super().hybrid_forward(F, pred, label, *args)

    client = GluonClient(_mlp(), _data(), batch_size=50, loss=Counting())
    client.fit(client.get_parameters({}), {})
    client.fit(client.get_parameters({}), {"local_epochs": 3})
    assert len(steps) == 4 + 12


def test_dp_mode_reports_example_epsilon_of_the_accountant():
    dp = dict(noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-5)
    client = GluonClient(_mlp(), _data(), batch_size=20, dp=dp)
    weights, _, metrics = client.fit(client.get_parameters({}), {})
    rate = 20 / 200
    assert metrics[EXAMPLE_EPSILON_KEY] == pytest.approx(
        epsilon_for(1.1, rate, math.ceil(1 / rate), 1e-5), rel=1e-12)
    _, _, metrics = client.fit(weights, {"local_epochs": 2})  # composes: 10 + 20 steps
    assert metrics[EXAMPLE_EPSILON_KEY] == pytest.approx(
        epsilon_for(1.1, rate, 30, 1e-5), rel=1e-12)
    with pytest.raises(InvalidParameterError, match="sampling rate"):
        client.fit(weights, {"batch_size": 10})


def test_example_epsilon_composes_across_client_objects_sharing_flower_state():
    """Flower's simulation builds a new client per message: the ledger must live in
    context.state, or each round would report the epsilon of one fit (too low)."""
    from flwr.common import RecordSet

    dp = dict(noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-5)
    state = RecordSet()
    weights = GluonClient(_mlp(), _data(), batch_size=20, dp=dp, state=state).get_parameters({})
    for rounds in (1, 2, 3):
        client = GluonClient(_mlp(), _data(), batch_size=20, dp=dp, state=state)
        weights, _, metrics = client.fit(weights, {})
        assert metrics[EXAMPLE_EPSILON_KEY] == pytest.approx(
            epsilon_for(1.1, 0.1, 10 * rounds, 1e-5), rel=1e-12)


def test_a_dp_client_without_flower_state_warns():
    dp = dict(noise_multiplier=1.1, max_grad_norm=1.0)
    with pytest.warns(PrivacyWarning, match="state=context.state"):
        GluonClient(_mlp(), _data(), batch_size=20, dp=dp)


def test_dp_mode_clips_and_noises():
    # max_grad_norm tiny and no noise: the update of one step is at most lr * C.
    client = GluonClient(_mlp(), _data(), batch_size=20, optimizer_params={
        "learning_rate": 1.0}, dp=dict(noise_multiplier=0.0, max_grad_norm=1e-3))
    start = client.get_parameters({})
    weights, _, _ = client.fit(start, {})
    moved = math.sqrt(sum(float(((w - s).astype(np.float64) ** 2).sum())
                          for w, s in zip(weights, start)))
    assert 0 < moved <= 10 * 1e-3 * (1 + 1e-5)  # 10 steps, each of norm <= lr C


def test_evaluate_matches_a_hand_computed_loss_and_accuracy():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [-1.0, 0.0]], np.float32)
    y = np.array([0, 1, 1, 1], np.float32)
    net = gluon.nn.Dense(2, in_units=2)
    client = GluonClient(net, (x, y))
    weights = [np.zeros(2, np.float32), np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)]
    loss, n, metrics = client.evaluate(weights, {})
    logits = x.astype(np.float64) @ weights[1].T.astype(np.float64)
    expected = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(4), y.astype(int)])
    assert n == 4 and loss == pytest.approx(expected, rel=1e-5)  # float32 softmax
    assert metrics == {"accuracy": 0.75}  # argmax 0, 1, 0, 1 against labels 0, 1, 1, 1


def test_gluon_dataset_input():
    x, y = _data(60)
    client = GluonClient(_mlp(), gluon.data.ArrayDataset(x, y), batch_size=30)
    _, n, _ = client.fit(client.get_parameters({}), {})
    assert n == 60


def test_bad_arguments_say_what_to_do():
    data = _data(20)
    with pytest.raises(ConflictingParametersError, match="train_fn or dp"):
        GluonClient(_mlp(), data, train_fn=lambda *a: {}, dp=dict(noise_multiplier=1,
                                                               max_grad_norm=1))
    with pytest.raises(InvalidParameterError, match="local_epochs must be a positive"):
        GluonClient(_mlp(), data, local_epochs=0)
    with pytest.raises(InvalidParameterError, match="X has 20 rows but y has 3"):
        GluonClient(_mlp(), (data[0], data[1][:3]))
    with pytest.raises(InvalidParameterError, match=r"dp needs \['max_grad_norm'\]"):
        GluonClient(_mlp(), data, dp=dict(noise_multiplier=1.0))
    with pytest.raises(InvalidParameterError, match="derives them"):
        GluonClient(_mlp(), data, dp=dict(noise_multiplier=1.0, max_grad_norm=1.0,
                                          sample_rate=0.5))
    with pytest.raises(InvalidParameterError, match="delta must be in"):
        GluonClient(_mlp(), data, dp=dict(noise_multiplier=1.0, max_grad_norm=1.0, delta=2))
    client = GluonClient(_mlp(), data)
    with pytest.raises(InvalidParameterError, match="learning_rate must be a positive"):
        client.fit(client.get_parameters({}), {"learning_rate": -1.0})
