"""Per-sample gradients against the microbatch-of-one reference."""
import mxnet as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mxnet import gluon, nd

from mxprivacy.gluon import per_sample_grad_norms, per_sample_grads

from .helpers import LOSS, batch, mlp, reference_grads


class SeqNet(gluon.nn.HybridBlock):
    """Dense on (B, T, F) with flatten=False, pooled over T, then a classifier."""

    def __init__(self, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.proj = gluon.nn.Dense(4, flatten=False, use_bias=use_bias, activation="tanh")
        self.out = gluon.nn.Dense(3)

    def hybrid_forward(self, F, x):
        return self.out(self.proj(x).mean(axis=1))


class Twice(gluon.nn.HybridBlock):
    """One Dense layer applied at two places of the graph."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.shared = gluon.nn.Dense(5, activation="relu")
        self.out = gluon.nn.Dense(3)

    def hybrid_forward(self, F, x):
        return self.out(self.shared(x) + self.shared(x * 0.5))


def _compare(net, x, y, mode):
    want = reference_grads(net, LOSS, x, y)
    got = per_sample_grads(net, LOSS, x, y, mode=mode)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name].asnumpy(), want[name], rtol=1e-5, atol=1e-6)
    norms = per_sample_grad_norms(net, LOSS, x, y, mode=mode).asnumpy()
    flat = np.concatenate([want[n].reshape(len(norms), -1) for n in want], axis=1)
    np.testing.assert_allclose(norms, np.linalg.norm(flat, axis=1), rtol=1e-5)


@pytest.mark.parametrize("mode", ["vectorized", "microbatch"])
def test_mlp(mode):
    _compare(mlp(), *batch(), mode)


@pytest.mark.parametrize("mode", ["vectorized", "microbatch"])
def test_image_input_flattened(mode):
    x = nd.random.normal(shape=(4, 1, 3, 3))
    _compare(mlp(), x, nd.array([0, 1, 2, 1]), mode)


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("mode", ["vectorized", "microbatch"])
def test_sequence_dense_flatten_false(use_bias, mode):
    mx.random.seed(3)
    net = SeqNet(use_bias=use_bias)
    net.initialize(mx.init.Xavier())
    _compare(net, nd.random.normal(shape=(5, 7, 6)), nd.array([0, 1, 2, 0, 1]), mode)


def test_layer_called_twice():
    net = Twice()
    net.initialize(mx.init.Xavier())
    _compare(net, *batch(), "vectorized")


@pytest.mark.parametrize("frozen", ["layer", "bias"])
@pytest.mark.parametrize("mode", ["vectorized", "microbatch"])
def test_frozen_parameters_are_skipped(frozen, mode):
    # (Freezing only a Dense *weight* is avoided: MXNet's FullyConnected backward then
    # returns a zero bias gradient, so the autograd reference itself is wrong there.)
    net = mlp()
    frozen_params = list(net[0].collect_params().values()) if frozen == "layer" \
        else [net[1].bias]
    for p in frozen_params:
        p.grad_req = "null"
    x, y = batch()
    got = per_sample_grads(net, LOSS, x, y, mode=mode)
    assert not {p.name for p in frozen_params} & set(got)
    _compare(net, x, y, mode)


def test_gram_and_materialized_norms_agree():
    # Long sequences use the Gram (ghost) form, short ones materialize: both exact.
    for steps in (2, 40):
        mx.random.seed(0)
        net = SeqNet()
        net.initialize(mx.init.Xavier())
        _compare(net, nd.random.normal(shape=(3, steps, 6)), nd.array([0, 1, 2]), "vectorized")


@settings(max_examples=12, deadline=None)
@given(b=st.integers(1, 7), features=st.integers(1, 9), hidden=st.integers(1, 6),
       steps=st.integers(1, 5))
def test_shapes_hypothesis(b, features, hidden, steps):
    mx.random.seed(b * 31 + features)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(hidden, flatten=False, activation="relu"), gluon.nn.Dense(2))
    net.initialize(mx.init.Xavier())
    x = nd.random.normal(shape=(b, steps, features))
    y = nd.array(np.arange(b) % 2)
    _compare(net, x, y, "vectorized")


def test_hybridized_microbatch_matches_reference():
    net = mlp()
    x, y = batch()
    want = reference_grads(net, LOSS, x, y)
    net.hybridize()
    got = per_sample_grads(net, LOSS, x, y, mode="microbatch")
    for name in want:
        np.testing.assert_allclose(got[name].asnumpy(), want[name], rtol=1e-5, atol=1e-6)
