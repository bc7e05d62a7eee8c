"""The rules' fast paths against the per-sample reference, and mutation checks.

- conv: per-sample gradients of a 2-D convolution with one input channel per group as one
  convolution grouped over the batch (``conv._grouped_conv_grads``), instead of im2col +
  batch_dot;
- dense and conv clipped sums: large products through ``FullyConnected``
  (``_ops.matmul_tn`` / ``_ops.matmul_nt``) instead of ``dot``.

Each path is forced on small nets (imperative and hybridized) and compared with the
reference loop, and checked at the benchmark's sizes against the other path. A mutated
version of each path must fail the same comparison.
"""
import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon, nd

from mxprivacy.gluon.rules import _ops, conv, dense, rule_for

from .test_rules import check_against_reference, hybridize_axis

GROUPED_CASES = [  # (layer kwargs, input shape): one input channel per group
    (dict(channels=4, kernel_size=8, strides=2, padding=3), (4, 1, 12, 12)),  # Opacus conv1
    (dict(channels=3, kernel_size=3, dilation=2, padding=1), (3, 1, 9, 9)),
    (dict(channels=2, kernel_size=(2, 3), strides=(2, 1), activation="relu"), (3, 1, 7, 8)),
    (dict(channels=6, kernel_size=3, groups=3, strides=2), (3, 3, 8, 8)),  # depthwise x2
    (dict(channels=3, kernel_size=3, groups=3, padding=1, use_bias=False), (2, 3, 6, 6)),
    (dict(channels=4, kernel_size=3, strides=3), (2, 1, 10, 10)),  # output rows > kernel
]


def _spy(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


@hybridize_axis
@pytest.mark.parametrize("kwargs,shape", GROUPED_CASES)
def test_grouped_conv_path_matches_reference(kwargs, shape, hybridize, monkeypatch):
    calls = _spy(monkeypatch, conv, "_grouped_conv_grads")
    check_against_reference(gluon.nn.Conv2D(**kwargs), nd.random.normal(shape=shape),
                            hybridize=hybridize)
    assert calls  # the grouped-convolution path ran


@hybridize_axis
def test_grouped_conv_path_inside_a_net(hybridize, monkeypatch):
    """A depthwise conv whose input is an intermediate of the (cached) graph."""
    calls = _spy(monkeypatch, conv, "_grouped_conv_grads")
    body = gluon.nn.HybridSequential()
    body.add(gluon.nn.Conv2D(3, 3, padding=1, activation="relu"), gluon.nn.MaxPool2D(2, 1),
             gluon.nn.Conv2D(6, 3, groups=3, strides=2, activation="relu"),
             gluon.nn.Conv2D(4, 2, groups=2))
    check_against_reference(body, nd.random.normal(shape=(3, 1, 10, 10)),
                            hybridize=hybridize)
    # the first conv (one channel) and the depthwise one; not the last (3 per group)
    assert len(calls) == 4  # two layers, in sq_norms and in per_sample


def test_grouped_conv_path_not_taken_for_several_channels(monkeypatch):
    calls = _spy(monkeypatch, conv, "_grouped_conv_grads")
    check_against_reference(gluon.nn.Conv2D(4, 3), nd.random.normal(shape=(3, 2, 6, 6)))
    assert not calls


def test_grouped_conv_path_off_matches_reference(monkeypatch):
    monkeypatch.setattr(conv, "GROUPED_CONV", False)
    calls = _spy(monkeypatch, conv, "_grouped_conv_grads")
    kwargs, shape = GROUPED_CASES[0]
    check_against_reference(gluon.nn.Conv2D(**kwargs), nd.random.normal(shape=shape))
    assert not calls


@pytest.mark.parametrize("mutation", ["swap_stride_dilation", "no_slice", "transpose_kernel"])
def test_grouped_conv_mutations_are_caught(mutation, monkeypatch):
    def mutated(layer, a, d):
        kw = layer._kwargs
        batch, channels, out_channels = a.shape[0], a.shape[1], d.shape[1]
        stride, dilate = ((kw["stride"], kw["dilate"]) if mutation == "swap_stride_dilation"
                          else (kw["dilate"], kw["stride"]))
        grads = nd.Convolution(
            a.reshape((1, batch * channels) + a.shape[2:]),
            d.reshape((batch * out_channels, 1) + d.shape[2:]), kernel=d.shape[2:],
            stride=stride, dilate=dilate, pad=kw["pad"], num_filter=batch * out_channels,
            num_group=batch * channels, no_bias=True)
        if mutation == "transpose_kernel":
            grads = nd.swapaxes(grads, 2, 3)
        size = int(np.prod(layer.weight.shape))
        # no_slice: take the first kernel-size values of the flattened (too large) output
        flat = grads.reshape((batch, -1))[:, :size] if mutation == "no_slice" else \
            nd.slice(grads, begin=(None, None, 0, 0),
                     end=(None, None) + tuple(kw["kernel"])).reshape((batch, -1))
        return flat.reshape((batch,) + layer.weight.shape)

    monkeypatch.setattr(conv, "_grouped_conv_grads", mutated)
    kwargs, shape = GROUPED_CASES[-1] if mutation == "no_slice" else GROUPED_CASES[0]
    # swapped stride and dilation give a wrong output size: an error, or wrong values
    with pytest.raises((AssertionError, mx.base.MXNetError)):
        check_against_reference(gluon.nn.Conv2D(**kwargs), nd.random.normal(shape=shape))


def _layer_io(layer, in_shape, seed=0):
    mx.random.seed(seed)
    layer.initialize(mx.init.Xavier())
    x = nd.random.normal(shape=in_shape)
    d = nd.random.normal(shape=layer(x).shape)
    return x, d


@pytest.mark.parametrize("layer,shape", [
    (lambda: gluon.nn.Conv2D(16, 8, strides=2, padding=3), (256, 1, 28, 28)),
    (lambda: gluon.nn.Conv2D(32, 3, groups=32, padding=1), (64, 32, 16, 16)),
])
def test_grouped_conv_equals_im2col_at_benchmark_size(layer, shape, monkeypatch):
    layer = layer()
    x, d = _layer_io(layer, shape)
    rule, params = rule_for(layer), list(layer.collect_params().values())
    fast = rule.per_sample(layer, [x], [d], params)[layer.weight].asnumpy()
    monkeypatch.setattr(conv, "GROUPED_CONV", False)
    slow = rule.per_sample(layer, [x], [d], params)[layer.weight].asnumpy()
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5 * np.abs(slow).max())


@pytest.mark.parametrize("fc_min", [0, 1 << 62])
@hybridize_axis
def test_matmul_paths_match_reference(fc_min, hybridize, monkeypatch):
    """Dense (2-D and sequence inputs) and a conv on the ghost path (whose clipped sum is
    one product), with every product forced through FullyConnected or through dot."""
    monkeypatch.setattr(_ops, "FC_MIN_MACS", fc_min)
    check_against_reference(gluon.nn.Dense(7), nd.random.normal(shape=(5, 6)),
                            hybridize=hybridize)
    check_against_reference(gluon.nn.Dense(4, flatten=False, in_units=3),
                            nd.random.normal(shape=(4, 5, 3)), hybridize=hybridize)
    check_against_reference(gluon.nn.Dense(9), nd.random.normal(shape=(4, 5, 3)),
                            hybridize=hybridize)  # the larger operand is scaled
    calls = _spy(monkeypatch, conv, "_clipped_weight")
    check_against_reference(gluon.nn.Conv2D(64, 3, in_channels=16),
                            nd.random.normal(shape=(3, 16, 6, 6)), hybridize=hybridize)
    assert calls  # ghost norm, then the clipped sum as one product


def test_matmul_mutation_is_caught(monkeypatch):
    """A product that pairs each sample's output gradient with another sample's input."""
    monkeypatch.setattr(_ops, "FC_MIN_MACS", 0)
    original = dense.matmul_tn
    monkeypatch.setattr(dense, "matmul_tn", lambda x, y: original(x, y[::-1]))
    with pytest.raises(AssertionError):
        check_against_reference(gluon.nn.Dense(7), nd.random.normal(shape=(5, 6)))


def test_fc_products_equal_dot_at_benchmark_size(monkeypatch):
    rng = np.random.default_rng(0)
    x = nd.array(rng.normal(size=(256, 256)))
    y = nd.array(rng.normal(size=(256, 784)))
    assert 256 * 256 * 784 >= _ops.FC_MIN_MACS  # the FullyConnected path at this size
    want = x.asnumpy().T.astype(np.float64) @ y.asnumpy().astype(np.float64)
    np.testing.assert_allclose(_ops.matmul_tn(x, y).asnumpy(), want, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(_ops.matmul_nt(x.T, y.T).asnumpy(), want, rtol=1e-4, atol=1e-3)


def test_dense_norms_with_and_without_bias():
    """The 2-D Dense norm ``|d|^2 (|a|^2 + 1)`` with bias, ``|d|^2 |a|^2`` without."""
    check_against_reference(gluon.nn.Dense(4), nd.random.normal(shape=(5, 6)))
    check_against_reference(gluon.nn.Dense(4, use_bias=False), nd.random.normal(shape=(5, 6)))


def test_ghost_choice_for_the_opacus_cnn():
    """The cost model: materialized for the first conv (196 output positions), ghost for
    the second (25 positions, 256 unfolded rows), as measured faster at batch 256."""
    first = gluon.nn.Conv2D(16, 8, strides=2, padding=3)
    second = gluon.nn.Conv2D(32, 4, strides=2)
    x1, d1 = _layer_io(first, (8, 1, 28, 28))
    x2, d2 = _layer_io(second, (8, 16, 13, 13))
    assert not conv._use_ghost(first, x1, d1)
    assert conv._use_ghost(second, x2, d2)


@hybridize_axis
def test_ghost_clipped_sum_uses_the_cached_unfolding(hybridize, monkeypatch):
    """The clipped sum reuses sq_norms' unfolded operands; corrupting them must show."""
    layer, shape = gluon.nn.Conv2D(32, 4, strides=2, in_channels=16), (3, 16, 9, 9)
    x, d = _layer_io(layer, shape)
    assert conv._use_ghost(layer, x, d)
    factors_calls = _spy(monkeypatch, conv, "_factors")
    check_against_reference(gluon.nn.Conv2D(32, 4, strides=2, in_channels=16),
                            nd.random.normal(shape=shape), hybridize=hybridize)
    # unfolded once for the norms and the clipped sum, once more for check_shard's
    # per-sample gradients
    assert len(factors_calls) == 2

    original = conv._weight_sq_norms

    def corrupt(layer, a, d, cache):
        total = original(layer, a, d, cache)
        unfolded, other, groups = cache["unfolded"]
        cache["unfolded"] = (unfolded[::-1], other, groups)  # samples paired wrongly
        return total

    monkeypatch.setattr(conv, "_weight_sq_norms", corrupt)
    with pytest.raises(AssertionError):
        check_against_reference(gluon.nn.Conv2D(32, 4, strides=2, in_channels=16),
                                nd.random.normal(shape=shape))


def test_float64_keeps_the_plain_operators(monkeypatch):
    monkeypatch.setattr(_ops, "FC_MIN_MACS", 0)
    calls = _spy(monkeypatch, conv, "_grouped_conv_grads")
    layer = gluon.nn.Conv2D(4, 3, strides=2)
    layer.initialize(mx.init.Xavier())
    layer.cast("float64")
    x = nd.random.normal(shape=(3, 1, 7, 7)).astype("float64")
    d = nd.random.normal(shape=layer(x).shape).astype("float64")
    params = list(layer.collect_params().values())
    grads = rule_for(layer).per_sample(layer, [x], [d], params)[layer.weight]
    assert grads.dtype == np.float64 and not calls
    assert _ops.matmul_tn(d.reshape((3, -1)), d.reshape((3, -1))).dtype == np.float64
