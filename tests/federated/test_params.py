"""mxprivacy.federated.params: order, get/set, validation, float64 norm, clipping."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("flwr")
mx = pytest.importorskip("mxnet")
from mxnet import gluon  # noqa: E402

from mxprivacy.errors import FederatedError, InvalidParameterError, InvalidUpdateError  # noqa: E402
from mxprivacy.federated.params import (add_arrays, check_update, clip_update,  # noqa: E402
                                        get_weights, global_norm, parameter_names,
                                        scale_arrays, set_weights, subtract_arrays, zeros_like)


def _net(seed=0):
    mx.random.seed(seed)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(4, activation="relu"), gluon.nn.BatchNorm(), gluon.nn.Dense(3))
    net.initialize(mx.init.Xavier())
    net(mx.nd.ones((2, 5)))
    return net


def test_order_is_sorted_structural_names_and_stable_across_constructions():
    first, second = _net(0), _net(1)
    names = parameter_names(first)
    assert names == ["0.bias", "0.weight", "1.beta", "1.gamma", "1.running_mean",
                     "1.running_var", "2.bias", "2.weight"]
    assert parameter_names(second) == names  # prefix names differ (dense0_ vs dense2_)
    assert list(first.collect_params()) != list(second.collect_params())
    shapes = [w.shape for w in get_weights(first)]
    assert shapes == [(4,), (4, 5), (4,), (4,), (4,), (4,), (3,), (3, 4)]
    assert [w.shape for w in get_weights(second)] == shapes


def test_get_set_round_trip_moves_weights_between_nets():
    source, target = _net(0), _net(1)
    weights = get_weights(source)
    assert all(w.dtype == np.float32 for w in weights)
    set_weights(target, weights)
    for a, b in zip(get_weights(target), weights):
        np.testing.assert_array_equal(a, b)
    x = mx.nd.array(np.random.default_rng(0).standard_normal((3, 5)))
    np.testing.assert_array_equal(source(x).asnumpy(), target(x).asnumpy())
    weights[1][0, 0] += 1.0  # get_weights returns copies
    assert get_weights(source)[1][0, 0] != weights[1][0, 0]


def test_set_weights_rejects_wrong_count_shape_and_nan_without_changing_the_net():
    net = _net(0)
    before = get_weights(net)
    with pytest.raises(InvalidUpdateError, match="Expected 8 arrays.*got 7"):
        set_weights(net, before[:-1])
    bad = [w.copy() for w in before]
    bad[7] = np.zeros((4, 3), np.float32)
    with pytest.raises(InvalidUpdateError, match=r"array 7 \(parameter '2.weight'\) has shape "
                       r"\(4, 3\), expected \(3, 4\).*same architecture"):
        set_weights(net, bad)
    bad = [w.copy() for w in before]
    bad[0][1] = np.nan
    with pytest.raises(InvalidUpdateError, match=r"parameter '0.bias'.*1 NaN/inf"):
        set_weights(net, bad)
    for a, b in zip(get_weights(net), before):
        np.testing.assert_array_equal(a, b)


def test_get_weights_of_a_net_without_shapes_says_what_to_do():
    net = gluon.nn.Dense(3)
    net.initialize()
    with pytest.raises(FederatedError, match="forward pass"):
        get_weights(net)


def test_check_update_messages():
    template = [np.zeros((2, 2), np.float32), np.zeros(3, np.float32)]
    check_update([np.ones((2, 2)), np.ones(3, np.float16)], template)  # floats pass
    with pytest.raises(InvalidUpdateError, match="dtype int64, expected a floating"):
        check_update([np.ones((2, 2), np.int64), np.ones(3)], template)
    with pytest.raises(InvalidUpdateError, match=r"array 1 has 2 NaN/inf value\(s\) of 3"):
        check_update([np.ones((2, 2)), np.array([np.inf, 1.0, -np.nan])], template)
    with pytest.raises(InvalidUpdateError, match="list of 2 numpy arrays"):
        check_update(np.ones(3), template)
    with pytest.raises(InvalidUpdateError, match="not a numpy array"):
        check_update([[1.0, 2.0], np.ones(3)], [(2,), (3,)])
    assert issubclass(InvalidUpdateError, ValueError)


def test_global_norm_is_float64_and_does_not_overflow():
    arrays = [np.array([3.0], np.float32), np.array([[4.0, 12.0]], np.float32)]
    assert global_norm(arrays) == 13.0
    big = np.full(4, 3e38, np.float32)  # squares overflow float32, not float64
    assert global_norm([big]) == pytest.approx(6e38, rel=1e-7)
    assert global_norm([np.array([1e300, 1e300])]) == pytest.approx(np.sqrt(2) * 1e300)
    assert global_norm([]) == 0.0


def test_clip_identity_within_the_norm():
    arrays = [np.array([0.3, -0.4], np.float32), np.array([[1.2]], np.float32)]
    exact = global_norm(arrays)  # 1.3 up to the float32 rounding of the entries
    assert exact == pytest.approx(1.3, rel=1e-7)
    clipped, norm = clip_update(arrays, exact)  # norm == C: not scaled
    assert norm == exact
    for a, b in zip(clipped, arrays):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_clip_scales_to_the_norm_with_direction_kept():
    arrays = [np.array([30.0, -40.0]), np.array([0.0])]
    clipped, norm = clip_update(arrays, 5.0)
    assert norm == 50.0
    np.testing.assert_allclose(clipped[0], [3.0, -4.0], rtol=1e-15)
    assert global_norm(clipped) <= 5.0


def test_clip_holds_after_the_float32_cast():
    # 0.1 is not a float32: scaling [3] to norm 0.1 rounds up to 0.10000000149.
    assert float(np.float32(0.1)) > 0.1
    clipped, _ = clip_update([np.array([3.0], np.float32)], 0.1)
    assert clipped[0].dtype == np.float32
    assert global_norm(clipped) <= 0.1
    assert global_norm(clipped) > 0.1 * (1 - 1e-6)  # shrunk by rounding only


_floats32 = st.floats(allow_nan=False, allow_infinity=False, width=32)  # incl. subnormals


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_floats32, min_size=1, max_size=30), min_size=1, max_size=4),
       st.floats(min_value=1e-30, max_value=1e30, allow_nan=False))
def test_clip_bound_holds_for_random_float32_arrays(values, clip):
    arrays = [np.array(v, np.float32) for v in values]
    clipped, norm = clip_update(arrays, clip)
    assert global_norm(clipped) <= clip
    assert norm == global_norm(arrays)
    assert [a.dtype for a in clipped] == [np.float32] * len(arrays)
    if norm <= clip:
        for a, b in zip(clipped, arrays):
            np.testing.assert_array_equal(a, b)


def test_clip_refuses_nan_and_bad_clip_norm():
    with pytest.raises(InvalidUpdateError, match="NaN/inf"):
        clip_update([np.array([1.0, np.nan])], 1.0)
    for bad in (0, -1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(InvalidParameterError, match="clip_norm must be a positive"):
            clip_update([np.ones(2)], bad)


def test_arithmetic_in_float64_keeps_dtype():
    a = [np.array([1.0, 2.0], np.float32)]
    b = [np.array([0.5, 4.0], np.float32)]
    np.testing.assert_array_equal(add_arrays(a, b)[0], [1.5, 6.0])
    diff = subtract_arrays(a, b)[0]
    assert diff.dtype == np.float32
    np.testing.assert_array_equal(diff, [0.5, -2.0])
    np.testing.assert_array_equal(scale_arrays(a, 0.5)[0], [0.5, 1.0])
    assert zeros_like(a)[0].dtype == np.float32 and not zeros_like(a)[0].any()
    with pytest.raises(InvalidUpdateError, match="shape"):
        subtract_arrays(a, [np.ones(3, np.float32)])
    with pytest.raises(InvalidUpdateError, match="Cannot combine 1 arrays with 2"):
        add_arrays(a, a + a)
