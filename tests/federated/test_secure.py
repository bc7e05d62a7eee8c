"""SecAgg+ settings (mxprivacy.federated.secure) and secure aggregation end to end.

The unit tests run Flower's own quantize/dequantize and the workflow's modular
arithmetic in-process; one simulation (5 clients, 2 rounds, sigma = 0) shows that the
secure aggregate equals the plain one within the stated bound, that the vectors the
server receives are masked, and that a client dropping out mid-round is survived.
"""
import math

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.common.secure_aggregation.ndarrays_arithmetic import (  # noqa: E402
    factor_combine, factor_extract, parameters_addition, parameters_mod)
from flwr.common.secure_aggregation.quantization import dequantize, quantize  # noqa: E402
from flwr.server.workflow import SecAggPlusWorkflow  # noqa: E402

from mxprivacy.errors import SecureAggregationSettingsError  # noqa: E402
from mxprivacy.federated import secure  # noqa: E402

F32_U = 2.0**-24


# -- formulas -----------------------------------------------------------------------
def test_effective_clip_norm_is_c_minus_the_stated_slack():
    c, d, q = 2.0, 10_000, 2**20
    per_coordinate = 2 * c / q + 16 * c * F32_U  # R = C
    expected = c - per_coordinate * math.sqrt(d) - 2 * F32_U * c
    assert secure.effective_clip_norm(c, d, q) == pytest.approx(expected, rel=1e-15)
    assert secure.quantization_slack(c, d, q) == pytest.approx(c - expected, rel=1e-12)
    wide = secure.effective_clip_norm(c, d, q, dtype="float64")
    assert wide == pytest.approx(c - (2 * c / q + 16 * c * 2.0**-53) * 100 - 2 * c * 2.0**-53)


def test_slack_above_one_percent_is_refused_with_advice():
    with pytest.raises(SecureAggregationSettingsError, match="larger quantization_range"):
        secure.effective_clip_norm(1.0, 10_000, 2**12)  # 2 sqrt(d) / Q = 4.9 %
    secure.effective_clip_norm(1.0, 10_000, 2**16)  # 0.3 %: accepted


def test_error_bound_of_a_sum_is_n_times_the_mean_bound():
    one = secure.quantization_error_bound(3.0, 2**22)
    assert one == pytest.approx(6.0 / 2**22 + 48.0 * F32_U)
    assert secure.quantization_error_bound(3.0, 2**22, num_summed=7) == pytest.approx(7 * one)


def test_settings_for_ten_clients():
    s = secure.secagg_settings(1.5, 650, 10)
    assert (s["num_shares"], s["reconstruction_threshold"], s["max_dropouts"]) == (10, 6, 4)
    assert s["max_weight"] == 1.0 and s["clipping_range"] == 1.5
    assert s["quantization_range"] == secure.DEFAULT_QUANTIZATION_RANGE == 2**22
    assert s["modulus_range"] == 2**32
    assert s["num_shares"] <= s["modulus_range"] / s["quantization_range"]  # Flower's check
    assert s["effective_clip_norm"] == secure.effective_clip_norm(1.5, 650, 2**22)
    flow = secure.secagg_workflow(1.5, 650, 10, timeout=30.0)
    assert isinstance(flow, SecAggPlusWorkflow)
    assert (flow.num_shares, flow.reconstruction_threshold, flow.max_weight,
            flow.clipping_range, flow.quantization_range, flow.modulus_range, flow.timeout) \
        == (10, 6, 1.0, 1.5, 2**22, 2**32, 30.0)
    big = secure.secagg_settings(1.0, 650, 100)
    assert big["num_shares"] == 4 * 7 + 1 and big["reconstruction_threshold"] == 15


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_clients=2), "at least 3 clients"),
    (dict(num_clients=1100), "wrap around"),  # 1100 x 2**22 > 2**32
    (dict(quantization_range=2**29), "wrap around"),
    (dict(modulus_range=3 * 2**20), "power of two"),
    (dict(reconstruction_threshold=10), "below num_shares"),
    (dict(num_shares=11), "exceeds num_clients"),
    (dict(clip_norm=0.0), "clip_norm"),
    (dict(dtype="int32"), "floating dtype"),
])
def test_bad_settings_raise(kwargs, match):
    args = dict(clip_norm=1.0, num_params=650, num_clients=10)
    args.update(kwargs)
    with pytest.raises(SecureAggregationSettingsError, match=match):
        secure.secagg_settings(**args)


# -- Flower's quantization against our bounds ----------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("q", [2**16, 2**22, 2**28])
def test_flower_quantization_error_within_coordinate_bound(dtype, q):
    rng = np.random.default_rng(1)
    r = 0.3
    x = (rng.uniform(-1, 1, 100_000) * r).astype(dtype)
    back = dequantize(quantize([x], r, q), r, q)[0]
    error = np.abs(back - x.astype(np.float64)).max()
    bound = secure.coordinate_error(r, q, dtype)
    assert error <= bound
    if dtype is np.float32 and q == 2**28:  # float32 rounding, not 2R/Q, dominates here
        assert error > 4 * (2 * r / q)


def test_dequantized_clipped_update_has_norm_below_c():
    """Clipped to C_eff, quantized by Flower: norm < C every time. With C_eff = C
    (slack removed) the norm exceeds C in about half the trials."""
    from mxprivacy.federated.params import clip_update

    c, d, q = 1.0, 20_000, 2**16
    c_eff = secure.effective_clip_norm(c, d, q)
    rng = np.random.default_rng(2)
    excess_without_slack = 0
    for _ in range(30):
        update = [rng.normal(size=d).astype(np.float32)]
        for clip, counts in ((c_eff, False), (c, True)):
            sent, _ = clip_update(update, clip)
            back = dequantize(quantize(sent, c, q), c, q)[0]
            norm = float(np.linalg.norm(back))
            if counts:
                excess_without_slack += norm > c
            else:
                assert norm < c
    assert excess_without_slack >= 5


def _modular_mean(vectors, r, q, m):
    """The workflow's arithmetic (masks cancel mod m): weight factor Q, sum mod m,
    dequantize with the (n - 1) R offset, divide by the summed factor."""
    total = None
    for v in vectors:
        part = factor_combine(q, quantize([v], r, q))
        total = part if total is None else parameters_addition(total, part)
    factor, summed = factor_extract(parameters_mod(total, m))
    mean = dequantize(summed, r, q)[0] - (len(vectors) - 1) * r
    return mean * (q / factor) if factor else mean * math.nan


def test_no_wraparound_at_the_largest_allowed_client_count():
    r, q, m = 1.0, 2**8, 2**12
    largest = max(k for k in range(1, 40) if k * (q * (1 + 2**-20) + 1) < m)
    assert largest == 15
    secure.check_no_wraparound(largest, q, m)
    top = np.full(50, r, dtype=np.float64)  # every level at Q: the largest sum
    assert np.allclose(_modular_mean([top] * largest, r, q, m), r)
    with pytest.raises(SecureAggregationSettingsError, match="wrap around"):
        secure.check_no_wraparound(16, q, m)
    wrapped = _modular_mean([top] * 16, r, q, m)  # 16 x 256 = 4096 = 0 mod m
    assert not np.allclose(wrapped, r)


# -- one simulation: 5 clients, 2 rounds, sigma = 0 -----------------------------------
K, C, DIM_IN, DIM_OUT = 5, 1.0, 64, 10
SCALES = (0.01, 0.02, 0.015, 1.0, 0.005)  # client 3's update is far above C: clipped


def _net():
    import mxnet as mx
    from mxnet import gluon

    net = gluon.nn.Dense(DIM_OUT, in_units=DIM_IN)
    net.initialize(mx.init.Xavier(), force_reinit=True)
    return net


def client_delta(pid, shapes):
    rng = np.random.default_rng(100 + pid)
    return [(rng.normal(size=s) * SCALES[pid]).astype(np.float32) for s in shapes]


def shift_train_fn(net, train_data, config):
    """Local "training": add the client's fixed delta (the label holds its id)."""
    from mxprivacy.federated.params import get_weights, set_weights

    pid = int(train_data[0][1])
    weights = get_weights(net)
    set_weights(net, [w + d for w, d in zip(weights, client_delta(pid, [w.shape for w in weights]))])
    return {}


def drop_in_round_two(msg, ctxt, call_next):
    """Client 0 disconnects in round 2 when asked for its masked vector."""
    configs = msg.content.configs_records
    stage = configs["secaggplus_configs"]["stage"] if "secaggplus_configs" in configs else None
    if int(ctxt.node_config["partition-id"]) == 0 and msg.metadata.group_id == "2" \
            and stage == "collect_masked_vectors":
        raise ConnectionError("client 0 dropped out mid-round")
    return call_next(msg, ctxt)


class _RecordingDriver:
    """Passes everything to Flower's driver; keeps the masked vectors clients send."""

    def __init__(self, driver, records):
        self._driver, self._records = driver, records

    def __getattr__(self, name):
        return getattr(self._driver, name)

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.common import bytes_to_ndarray

        replies = list(self._driver.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if not reply.has_error():
                raw = reply.content.configs_records["secaggplus_configs"]["masked_params"]
                self._records.append((reply.metadata.group_id,
                                      [bytes_to_ndarray(b) for b in raw]))
        return replies


def _sent_update(global_arrays, pid, c_eff):
    """What clip_update_mod sends for client pid: its update clipped to C_eff."""
    from mxprivacy.federated.params import clip_update, subtract_arrays

    shifted = [g + d for g, d in zip(global_arrays, client_delta(pid, [g.shape for g in global_arrays]))]
    return clip_update(subtract_arrays(shifted, global_arrays), c_eff)[0]


@pytest.fixture(scope="module")
def secure_run():
    from mxprivacy.federated.params import get_weights
    from mxprivacy.federated.runtime import run_federated
    from mxprivacy.federated.strategy import DPFedAvg

    records, seen = [], {}
    original = SecAggPlusWorkflow.collect_masked_vectors_stage

    def recording_stage(self, driver, context, state):
        return original(self, _RecordingDriver(driver, records), context, state)

    def evaluate_fn(server_round, arrays, config):
        seen[server_round] = [np.array(a) for a in arrays]
        return None

    initial = get_weights(_net())
    strategy = DPFedAvg(num_clients=K, sample_rate=1.0, clip_norm=C, noise_multiplier=0.0,
                        initial_parameters=initial, secure_aggregation=True,
                        evaluate_fn=evaluate_fn)
    data = [(np.zeros((4, DIM_IN), np.float32), np.full(4, pid, np.float32)) for pid in range(K)]
    SecAggPlusWorkflow.collect_masked_vectors_stage = recording_stage
    try:
        result = run_federated(_net, data, strategy, rounds=2, progress=False,
                               client_kwargs=dict(train_fn=shift_train_fn),
                               client_mods=[drop_in_round_two])
    finally:
        SecAggPlusWorkflow.collect_masked_vectors_stage = original
    return dict(strategy=strategy, result=result, records=records, seen=seen, initial=initial)


def _expected_step(global_arrays, pids, c_eff):
    sent = [_sent_update(global_arrays, pid, c_eff) for pid in pids]
    return [g.astype(np.float64) + sum(s[i].astype(np.float64) for s in sent) / K
            for i, g in enumerate(global_arrays)]


def _settings(initial):
    return secure.secagg_settings(C, int(sum(a.size for a in initial)), K)


def test_secure_aggregate_equals_plain_within_quantization_bound(secure_run):
    """Round 1 (all 5 clients): |secure - plain| <= 5/5 x (2R/Q + 16 R u) per
    coordinate, plus float32 storage of the global model."""
    g0, g1 = secure_run["initial"], secure_run["seen"][1]
    s = _settings(g0)
    bound = secure.quantization_error_bound(s["clipping_range"], s["quantization_range"],
                                            num_summed=K) / K
    expected = _expected_step(g0, range(K), s["effective_clip_norm"])
    errors = [np.abs(got - want) - np.spacing(np.abs(want).astype(np.float32))
              for got, want in zip(g1, expected)]
    assert max(e.max() for e in errors) <= bound
    assert max(np.abs(got - g).max() for got, g in zip(g1, g0)) > 100 * bound  # it moved
    np.testing.assert_array_equal(np.concatenate([a.ravel() for a in secure_run["result"].parameters]),
                                  np.concatenate([a.ravel() for a in secure_run["strategy"].parameters_]))


def _looks_masked(values, updates, q, m):
    """Values spread over [0, m) (unmasked levels would all be <= Q = m / 1024) and
    uncorrelated with every client's update."""
    values = np.asarray(values, dtype=np.float64)
    low = np.mean(values <= q * 1.001)
    spread = abs(values.mean() / m - 0.5)
    corr = max(abs(np.corrcoef(values, u)[0, 1]) for u in updates)
    return low < 0.02 and spread < 0.06 and corr < 0.2


def test_values_the_server_receives_are_masked(secure_run):
    g0 = secure_run["initial"]
    s = _settings(g0)
    q, m = s["quantization_range"], s["modulus_range"]
    updates = [np.concatenate([a.ravel() for a in _sent_update(g0, pid, s["effective_clip_norm"])])
               for pid in range(K)]
    round_one = [arrays for group, arrays in secure_run["records"] if group == "1"]
    assert len(round_one) == K
    for arrays in round_one:
        factor, body = arrays[0], np.concatenate([a.ravel() for a in arrays[1:]])
        assert body.size == updates[0].size and body.min() >= 0 and body.max() < m
        assert factor[0] != q  # the weight factor is masked too
        assert _looks_masked(body, updates, q, m)
    for update in updates:  # the detector has power: the plain quantized vector fails it
        plain = quantize([update], s["clipping_range"], q)[0]
        assert not _looks_masked(plain, updates, q, m)


def test_client_dropping_mid_round_is_survived(secure_run):
    """Round 2: client 0 raises when asked for its masked vector; SecAgg+ unmasks the 4
    survivors and the step equals their plain aggregate (client 0 counts as 0)."""
    strategy, g1, g2 = secure_run["strategy"], secure_run["seen"][1], secure_run["seen"][2]
    s = _settings(g1)
    row = strategy.history_[1]
    assert (row["round"], row["received"], row["contributed"]) == (2, 4, 4)
    # flwr 1.12's collect_masked_vectors_stage lists each failed reply twice
    assert row["failures"] == 1  # Flower 1.12 lists the dropout twice; counted once
    assert all("dropped out" in reason for reason in row["failure_reasons"])
    assert len([1 for group, _ in secure_run["records"] if group == "2"]) == 4
    bound = secure.quantization_error_bound(C, s["quantization_range"], num_summed=4) / K
    expected = _expected_step(g1, range(1, K), s["effective_clip_norm"])
    for got, want in zip(g2, expected):
        assert (np.abs(got - want) - np.spacing(np.abs(want).astype(np.float32))).max() <= bound
    with_client_0 = _expected_step(g1, range(K), s["effective_clip_norm"])
    assert max(np.abs(got - w).max() for got, w in zip(g2, with_client_0)) > 100 * bound


# -- a client's claimed weight cannot rescale the others ------------------------------------
def _malicious_factor_sum(n=10, d=50, big_q=2**22, modulus=2**32, clip=0.99999):
    """Flower's client arithmetic for n clients: honest Y sends a clipped update, n - 2
    unsampled clients send zeros, and X claims the weight factor that makes the factors
    sum to Q instead of n Q (masks omitted: they cancel mod M, which is SecAgg's job)."""
    y = np.full(d, clip / math.sqrt(d), np.float32)

    def vec(x, factor):
        return factor_combine(factor, quantize([x], 1.0, big_q))

    vecs = [vec(y, big_q)] + [vec(np.zeros(d, np.float32), big_q) for _ in range(n - 2)]
    vecs.append(vec(np.zeros(d, np.float32), (big_q - (n - 1) * big_q) % modulus))
    total = vecs[0]
    for v in vecs[1:]:
        total = parameters_addition(total, v)
    return parameters_mod(total, modulus), y, n, big_q


def _unmask_as_flower(total, n, big_q, extract):
    """The arithmetic of SecAggPlusWorkflow.unmask_stage after the masks are removed."""
    q_total, levels = extract(total)
    (agg,) = dequantize(levels, 1.0, big_q)
    return (agg - (n - 1) * 1.0) * (big_q / q_total) * n  # DPFedAvg multiplies the mean by n


def test_a_claimed_weight_factor_cannot_multiply_an_honest_update():
    """Review finding: with Flower's factor the honest update entered the sum n = 10
    times (norm 10 C where the bound is C); with the server's count it enters once."""
    total, y, n, big_q = _malicious_factor_sum()
    flower = _unmask_as_flower(total, n, big_q, factor_extract)
    assert np.linalg.norm(flower) == pytest.approx(n * np.linalg.norm(y), rel=1e-4)
    logged = []
    counted = secure.counted_factor_extract(factor_extract, n * big_q, logged.append)
    ours = _unmask_as_flower(total, n, big_q, counted)
    np.testing.assert_allclose(ours, y, atol=3e-6)
    assert len(logged) == 1 and "weight factors" in logged[0]


def test_the_workflow_divides_by_its_count_during_unmask_and_restores_flower(monkeypatch):
    from flwr.server.workflow.secure_aggregation import secaggplus_workflow as flower

    seen = {}

    def fake_unmask(self, driver, context, state):  # stands for Flower's unmask_stage
        seen["factor"] = flower.factor_extract([np.array([7]), np.zeros(2)])[0]
        return True

    monkeypatch.setattr(SecAggPlusWorkflow, "unmask_stage", fake_unmask)
    workflow = secure.secagg_workflow(1.0, 100, 5)
    assert isinstance(workflow, SecAggPlusWorkflow)
    state = type("State", (), {"active_node_ids": {11, 12, 13}})()
    assert workflow.unmask_stage(None, None, state) is True
    assert seen["factor"] == 3 * workflow.quantization_range
    assert flower.factor_extract is factor_extract  # restored
