"""clip_update_mod: clipped update on fit, zero update + reason when anything is off."""
import re

import numpy as np
import pytest

pytest.importorskip("flwr")
mx = pytest.importorskip("mxnet")
from flwr.client import ClientApp  # noqa: E402
from flwr.common import (Code, Context, FitIns, FitRes, Message, MessageType,  # noqa: E402
                         Metadata, RecordSet, Status, ndarrays_to_parameters,
                         parameters_to_ndarrays)
from flwr.common import recordset_compat as compat  # noqa: E402
from mxnet import gluon  # noqa: E402

from mxprivacy.federated.client import GluonClient  # noqa: E402
from mxprivacy.federated.mods import (CLIP_NORM_KEY, EXAMPLE_EPSILON_KEY,  # noqa: E402
                                      PARTICIPATE_KEY, REJECTED_KEY, UPDATE_NORM_KEY,
                                      REPORT_NORM_KEY, SECURE_KEY,
                                      clip_update_mod)
from mxprivacy.federated.params import global_norm, subtract_arrays  # noqa: E402

RECEIVED = [np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), np.array([0.5, -0.5], np.float32)]


def _message(arrays, config, message_type=MessageType.TRAIN):
    meta = Metadata(run_id=1, message_id="m", src_node_id=0, dst_node_id=7,
                    reply_to_message="", group_id="1", ttl=60.0, message_type=message_type)
    ins = FitIns(ndarrays_to_parameters(arrays), config)
    return Message(metadata=meta, content=compat.fitins_to_recordset(ins, keep_input=True))


def _context():
    return Context(node_id=7, node_config={}, state=RecordSet(), run_config={})


def _app_returning(weights, metrics=None, calls=None):
    def call_next(msg, ctxt):
        if calls is not None:
            calls.append(msg)
        res = FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters(weights), 123,
                     dict(metrics or {}))
        return msg.create_reply(compat.fitres_to_recordset(res, keep_input=True))
    return call_next


def _result(reply):
    res = compat.recordset_to_fitres(reply.content, keep_input=False)
    return parameters_to_ndarrays(res.parameters), res.num_examples, res.metrics


def _run(weights, config, **kwargs):
    msg = _message(RECEIVED, config)
    return _result(clip_update_mod(msg, _context(), _app_returning(weights, **kwargs)))


def test_huge_update_is_clipped_to_the_configured_norm():
    weights = [w + 1e6 * np.sign(np.arange(w.size).reshape(w.shape) - 1.5) for w in RECEIVED]
    update = subtract_arrays(weights, RECEIVED)
    arrays, num_examples, metrics = _run(weights, {CLIP_NORM_KEY: 0.7, PARTICIPATE_KEY: 1, REPORT_NORM_KEY: 1})
    assert global_norm(arrays) <= 0.7
    assert global_norm(arrays) == pytest.approx(0.7, rel=1e-6)
    assert num_examples == 1  # uniform weights, whatever the app said (123)
    assert metrics[UPDATE_NORM_KEY] == pytest.approx(global_norm(update))
    assert REJECTED_KEY not in metrics
    direction = np.concatenate([u.ravel() for u in update]) / global_norm(update)
    np.testing.assert_allclose(np.concatenate([a.ravel() for a in arrays]) / 0.7,
                               direction, atol=1e-6)


def test_small_update_is_sent_exactly_and_only_safe_metrics_are_kept():
    weights = [RECEIVED[0] + 0.25, RECEIVED[1] - 0.125]
    arrays, _, metrics = _run(weights, {CLIP_NORM_KEY: 10.0, REPORT_NORM_KEY: 1},
                              metrics={"train_loss": 0.3, EXAMPLE_EPSILON_KEY: 2.5})
    np.testing.assert_array_equal(arrays[0], np.full((2, 2), 0.25, np.float32))
    np.testing.assert_array_equal(arrays[1], np.full(2, -0.125, np.float32))
    assert metrics == {EXAMPLE_EPSILON_KEY: 2.5, UPDATE_NORM_KEY: pytest.approx(np.sqrt(0.28125))}


@pytest.mark.parametrize("weights, reason", [
    ([RECEIVED[0], np.array([np.nan, 0.0], np.float32)], "NaN/inf"),
    ([RECEIVED[0]], "Expected 2 arrays"),
    ([RECEIVED[0], np.zeros(3, np.float32)], r"array 1 has shape \(3,\)"),
    ([RECEIVED[0], np.array([np.inf, 0.0], np.float32)], "NaN/inf"),
    ([RECEIVED[0], np.array([0.0, 1.0])[None]], r"shape \(1, 2\)"),
])
def test_invalid_weights_become_a_zero_update_with_the_reason(weights, reason):
    arrays, num_examples, metrics = _run(weights, {CLIP_NORM_KEY: 1.0, REPORT_NORM_KEY: 1})
    assert [a.shape for a in arrays] == [(2, 2), (2,)]
    assert all(not a.any() for a in arrays)
    assert num_examples == 1
    assert metrics[REJECTED_KEY].startswith("invalid weights from the client app")
    assert metrics[UPDATE_NORM_KEY] == 0.0
    assert re.search(reason, metrics[REJECTED_KEY])


def test_update_overflowing_float32_becomes_a_zero_update():
    received = [np.array([-3e38], np.float32)]
    reply = clip_update_mod(_message(received, {CLIP_NORM_KEY: 1.0}), _context(),
                            _app_returning([np.array([3e38], np.float32)]))
    arrays, _, metrics = _result(reply)
    assert not arrays[0].any() and "NaN/inf" in metrics[REJECTED_KEY]


def test_failing_app_becomes_a_zero_update():
    def raising(msg, ctxt):
        raise RuntimeError("disk full")
    reply = clip_update_mod(_message(RECEIVED, {CLIP_NORM_KEY: 1.0}), _context(), raising)
    arrays, _, metrics = _result(reply)
    assert all(not a.any() for a in arrays)
    assert metrics[REJECTED_KEY] == "the client app raised RuntimeError: disk full"

    def erroring(msg, ctxt):
        from flwr.common import Error
        return msg.create_error_reply(Error(code=3, reason="boom"))
    arrays, _, metrics = _result(clip_update_mod(_message(RECEIVED, {CLIP_NORM_KEY: 1.0}),
                                                 _context(), erroring))
    assert all(not a.any() for a in arrays)
    assert "boom" in metrics[REJECTED_KEY]


@pytest.mark.parametrize("config", [{}, {CLIP_NORM_KEY: -1.0}, {CLIP_NORM_KEY: "1"},
                                    {CLIP_NORM_KEY: float("nan")}])
def test_missing_or_bad_clip_norm_never_sends_the_weights(config):
    calls = []
    arrays, _, metrics = _run([w + 5 for w in RECEIVED], config, calls=calls)
    assert all(not a.any() for a in arrays)
    assert CLIP_NORM_KEY in metrics[REJECTED_KEY]
    assert calls == []  # the app did not even train


def test_not_sampled_client_sends_zero_without_running_the_app():
    calls = []
    arrays, num_examples, metrics = _run([w + 5 for w in RECEIVED],
                                         {CLIP_NORM_KEY: 1.0, PARTICIPATE_KEY: 0}, calls=calls)
    assert calls == [] and num_examples == 1
    assert all(not a.any() for a in arrays) and REJECTED_KEY not in metrics
    arrays, _, metrics = _run(RECEIVED, {CLIP_NORM_KEY: 1.0, PARTICIPATE_KEY: 2})
    assert "must be 0 or 1" in metrics[REJECTED_KEY]


def test_non_fit_messages_pass_through_unchanged():
    msg = _message(RECEIVED, {}, message_type=MessageType.EVALUATE)
    sentinel = object()
    assert clip_update_mod(msg, _context(), lambda m, c: sentinel) is sentinel


def test_mod_inside_a_client_app_with_a_gluon_client():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    mx.random.seed(0)
    net = gluon.nn.Dense(2)
    client = GluonClient(net, (x, y), batch_size=16, optimizer_params={"learning_rate": 5.0})
    received = client.get_parameters({})
    app = ClientApp(client_fn=lambda context: client.to_client(), mods=[clip_update_mod])
    reply = app(_message(received, {CLIP_NORM_KEY: 0.05, "local_epochs": 2, REPORT_NORM_KEY: 1}), _context())
    arrays, num_examples, metrics = _result(reply)
    assert num_examples == 1 and REJECTED_KEY not in metrics
    assert metrics[UPDATE_NORM_KEY] > 0.05  # lr 5: the raw update is far larger
    assert global_norm(arrays) <= 0.05
    assert set(metrics) == {UPDATE_NORM_KEY}  # the client's train_loss is not sent


@pytest.mark.parametrize("weights", [
    [RECEIVED[0] + 1e6, RECEIVED[1]],                               # clipped
    [RECEIVED[0], np.array([np.nan, 0.0], np.float32)],             # rejected
])
def test_under_secure_aggregation_nothing_but_the_update_leaves_the_client(weights):
    """secaggplus_mod forwards fit metrics in the clear: a norm, a rejection reason or an
    epsilon there would tell the server about one client what the secure sum hides."""
    config = {CLIP_NORM_KEY: 1.0, PARTICIPATE_KEY: 1, SECURE_KEY: 1, REPORT_NORM_KEY: 1}
    _, _, metrics = _run(weights, config, metrics={EXAMPLE_EPSILON_KEY: 2.5})
    assert metrics == {}
    _, _, metrics = _run(weights, dict(config, **{PARTICIPATE_KEY: 0}))
    assert metrics == {}


def test_the_norm_is_sent_only_when_the_strategy_asks_for_it():
    weights = [RECEIVED[0] + 3.0, RECEIVED[1]]
    _, _, metrics = _run(weights, {CLIP_NORM_KEY: 1.0, PARTICIPATE_KEY: 1})
    assert UPDATE_NORM_KEY not in metrics
    _, _, metrics = _run(weights, {CLIP_NORM_KEY: 1.0, PARTICIPATE_KEY: 1, REPORT_NORM_KEY: 1})
    assert metrics[UPDATE_NORM_KEY] == pytest.approx(6.0)
