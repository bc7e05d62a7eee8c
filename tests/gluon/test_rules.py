"""Every rule against the per-sample reference loop (each sample's loss alone), in
imperative mode and inside hybridized graphs (the ``hybridize`` axis)."""
import contextlib

import mxnet as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mxnet import gluon, nd

from mxprivacy.gluon import per_sample_grads
from mxprivacy.gluon.graph_capture import GraphCapture
from mxprivacy.gluon.norms import _capture

from .helpers import LOSS, reference_grads

# None: imperative; a dict: net.hybridize(**options) after the reference is computed.
HYBRIDIZE = [None, {}, {"static_alloc": True, "static_shape": True}]
HYBRIDIZE_IDS = ["imperative", "hybridized", "static"]
hybridize_axis = pytest.mark.parametrize("hybridize", HYBRIDIZE, ids=HYBRIDIZE_IDS)


class Head(gluon.nn.Block):
    """``body`` followed by a Dense classifier (so every net ends in class scores)."""

    def __init__(self, body, classes=3, **kwargs):
        super().__init__(**kwargs)
        self.body = body
        self.out = gluon.nn.Dense(classes)

    def forward(self, x):
        return self.out(self.body(x))


class HybridHead(gluon.nn.HybridBlock):
    """The same as one HybridBlock, so that hybridizing it makes one graph of it all."""

    def __init__(self, body, classes=3, **kwargs):
        super().__init__(**kwargs)
        self.body = body
        self.out = gluon.nn.Dense(classes)

    def hybrid_forward(self, F, x):
        return self.out(self.body(x))


@contextlib.contextmanager
def graph_runs():
    """Records every capture-graph run, to show that the hybridized path was taken."""
    runs = []
    original = GraphCapture.run

    def run(self, *args, **kwargs):
        runs.append(self)
        return original(self, *args, **kwargs)

    GraphCapture.run = run
    try:
        yield runs
    finally:
        GraphCapture.run = original


def capture_shard(net, x, y, hybridize):
    """One vectorized capture of ``net`` on (x, y); hybridized first when asked."""
    if hybridize is not None:
        net.hybridize(**hybridize)
    with graph_runs() as runs:
        shard = _capture(net, LOSS, x, y, "vectorized")
    assert bool(runs) == (hybridize is not None)  # the capture graph ran iff hybridized
    return shard


def check_shard(shard, want, rows, rtol=1e-5, seed=0):
    """Per-sample gradients, norms and a clipped sum of ``shard`` against ``want``."""
    norms = np.sqrt(shard.unit_sq_norms().asnumpy())
    flat = np.concatenate([want[n].reshape(rows, -1) for n in want], axis=1)
    np.testing.assert_allclose(norms, np.linalg.norm(flat, axis=1), rtol=rtol)
    factors = np.random.default_rng(seed).uniform(0.1, 1.0, size=rows).astype(np.float32)
    sums = {p.name: g.asnumpy() for p, g in shard.clipped_sums(nd.array(factors)).items()}
    got = {p.name: g.asnumpy() for p, g in shard.per_unit_grads().items()}
    assert set(got) == set(want) == set(sums)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(sums[name], np.tensordot(factors, want[name], axes=1),
                                   rtol=rtol, atol=1e-5, err_msg=name)


def check_against_reference(body, x, classes=3, seed=0, rtol=1e-5, hybridize=None):
    mx.random.seed(seed)
    hybrid = hybridize is not None and isinstance(body, gluon.HybridBlock)
    net = (HybridHead if hybrid else Head)(body, classes)
    net.initialize(mx.init.Xavier(magnitude=2.0))
    net(x)
    y = nd.array(np.random.default_rng(seed).integers(0, classes, size=x.shape[0]))
    want = reference_grads(net, LOSS, x, y)
    check_shard(capture_shard(net, x, y, hybridize), want, x.shape[0], rtol=rtol, seed=seed)
    return net


CONV_CASES = [
    dict(channels=4, kernel_size=3),
    dict(channels=4, kernel_size=3, strides=2, padding=1),
    dict(channels=4, kernel_size=2, dilation=2, use_bias=False),
    dict(channels=4, kernel_size=3, groups=2, padding=1),
    dict(channels=6, kernel_size=(2, 3), strides=(1, 2), activation="relu"),
]


@hybridize_axis
@pytest.mark.parametrize("kwargs", CONV_CASES)
def test_conv2d(kwargs, hybridize):
    check_against_reference(gluon.nn.Conv2D(**kwargs), nd.random.normal(shape=(5, 2, 7, 7)),
                            hybridize=hybridize)


@pytest.mark.parametrize("kwargs", [dict(channels=3, kernel_size=3, strides=2, padding=1),
                                    dict(channels=4, kernel_size=2, groups=2, use_bias=False)])
@hybridize_axis
def test_conv1d_and_conv3d(kwargs, hybridize):
    check_against_reference(gluon.nn.Conv1D(**kwargs), nd.random.normal(shape=(4, 2, 9)),
                            hybridize=hybridize)
    check_against_reference(gluon.nn.Conv3D(**kwargs), nd.random.normal(shape=(3, 2, 5, 5, 5)),
                            hybridize=hybridize)


@pytest.mark.parametrize("kwargs", [dict(channels=3, kernel_size=3),
                                    dict(channels=4, kernel_size=3, strides=2, padding=1,
                                         output_padding=1),
                                    dict(channels=4, kernel_size=2, groups=2, in_channels=2,
                                         use_bias=False)])
@hybridize_axis
def test_conv2d_transpose(kwargs, hybridize):
    check_against_reference(gluon.nn.Conv2DTranspose(**kwargs),
                            nd.random.normal(shape=(4, 2, 5, 5)), hybridize=hybridize)


@settings(max_examples=10, deadline=None)
@given(batch=st.integers(1, 4), size=st.integers(5, 9), kernel=st.integers(1, 3),
       stride=st.integers(1, 2), channels=st.integers(1, 5))
def test_conv2d_shapes(batch, size, kernel, stride, channels):
    check_against_reference(gluon.nn.Conv2D(channels, kernel, strides=stride),
                            nd.random.normal(shape=(batch, 2, size, size)))


@hybridize_axis
def test_conv_called_twice(hybridize):
    class Twice(gluon.nn.HybridBlock):
        def __init__(self):
            super().__init__()
            self.conv = gluon.nn.Conv2D(3, 3, padding=1)

        def hybrid_forward(self, F, x):
            return self.conv(x) + self.conv(x * 0.5)

    check_against_reference(Twice(), nd.random.normal(shape=(3, 2, 5, 5)), hybridize=hybridize)


class EmbedPool(gluon.nn.HybridBlock):
    def __init__(self, vocab=7, dim=4, **kwargs):
        super().__init__(**kwargs)
        self.embed = gluon.nn.Embedding(vocab, dim)

    def hybrid_forward(self, F, x):
        return F.tanh(self.embed(x)).mean(axis=1)


@hybridize_axis
def test_embedding_with_repeated_tokens(hybridize):
    ids = nd.array([[0, 1, 1, 3], [2, 2, 2, 2], [6, 5, 0, 1]])
    check_against_reference(EmbedPool(), ids, hybridize=hybridize)


@settings(max_examples=8, deadline=None)
@given(batch=st.integers(1, 4), length=st.integers(1, 6), vocab=st.integers(2, 9))
def test_embedding_shapes(batch, length, vocab):
    ids = nd.array(np.random.default_rng(batch * 31 + length).integers(0, vocab, (batch, length)))
    check_against_reference(EmbedPool(vocab=vocab), ids)
    check_against_reference(EmbedPool(vocab=vocab), ids, hybridize={"static_alloc": True})


def _seq(*layers):
    net = gluon.nn.HybridSequential()
    net.add(*layers)
    return net


@pytest.mark.parametrize("make,shape", [
    (lambda: _seq(gluon.nn.Dense(6, flatten=False), gluon.nn.LayerNorm()), (4, 3, 5)),
    (lambda: _seq(gluon.nn.LayerNorm(axis=1, center=False)), (4, 3, 5)),
    (lambda: _seq(gluon.nn.Conv2D(4, 3), gluon.nn.GroupNorm(num_groups=2)), (3, 2, 6, 6)),
    (lambda: _seq(gluon.nn.Conv2D(4, 3), gluon.nn.InstanceNorm(scale=True)), (3, 2, 6, 6)),
    (lambda: _seq(gluon.nn.Conv1D(3, 2), gluon.nn.PReLU()), (4, 2, 7)),
    (lambda: _seq(gluon.nn.Conv1D(3, 2), gluon.nn.PReLU(in_channels=3)), (4, 2, 7)),
    (lambda: _seq(gluon.nn.Conv1D(3, 2), gluon.nn.InstanceNorm(axis=2, center=False)),
     (4, 2, 7)),
    (lambda: _seq(gluon.nn.Dense(6, activation="tanh")), (4, 5)),
    (lambda: _seq(gluon.nn.Dense(6, flatten=False, activation="relu", use_bias=False)),
     (4, 3, 5)),
], ids=["dense-layernorm", "layernorm-axis1", "groupnorm", "instancenorm", "prelu",
        "prelu-channels", "instancenorm-axis2", "dense-tanh", "dense-nd-relu"])
@hybridize_axis
def test_normalization_and_prelu(make, shape, hybridize):
    check_against_reference(make(), nd.random.normal(shape=shape), hybridize=hybridize)


@hybridize_axis
def test_frozen_parameters_are_skipped(hybridize):
    body = _seq(gluon.nn.Conv2D(3, 3), gluon.nn.LayerNorm(axis=1))
    net = HybridHead(body)
    net.initialize()
    net(nd.ones((2, 2, 5, 5)))
    body[0].weight.grad_req = "null"
    body[1].gamma.grad_req = "null"
    x, y = nd.random.normal(shape=(3, 2, 5, 5)), nd.array([0, 1, 2])
    want = reference_grads(net, LOSS, x, y)
    if hybridize is not None:
        net.hybridize(**hybridize)
    got = per_sample_grads(net, LOSS, x, y, mode="vectorized")
    assert body[0].weight.name not in got and body[1].gamma.name not in got
    for name in want:
        np.testing.assert_allclose(got[name].asnumpy(), want[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", ["DPLSTM", "DPGRU", "DPRNN"])
@pytest.mark.parametrize("options,steps", [(dict(), 5), (dict(num_layers=2, bidirectional=True), 4),
                                           (dict(), 1)])
@hybridize_axis
def test_dp_recurrent_layers(layer, options, steps, hybridize):
    from mxprivacy import gluon as dp_gluon

    class Last(gluon.nn.Block):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(dp_gluon, layer)(4, layout="NTC", input_size=3, **options)

        def forward(self, x):
            return self.rnn(x)[:, -1, :]

    check_against_reference(Last(), nd.random.normal(shape=(3, steps, 3)), rtol=1e-4,
                            hybridize=hybridize)


def test_dp_lstm_in_microbatch_mode_matches_vectorized():
    from mxprivacy import DPLSTM

    class Last(gluon.nn.Block):
        def __init__(self):
            super().__init__()
            self.rnn = DPLSTM(4, layout="NTC", input_size=3)
            self.out = gluon.nn.Dense(2)

        def forward(self, x):
            return self.out(self.rnn(x)[:, -1, :])

    mx.random.seed(1)
    net = Last()
    net.initialize(mx.init.Xavier())
    x, y = nd.random.normal(shape=(3, 5, 3)), nd.array([0, 1, 1])
    fast = per_sample_grads(net, LOSS, x, y, mode="vectorized")
    exact = per_sample_grads(net, LOSS, x, y, mode="microbatch")
    for name in exact:
        np.testing.assert_allclose(fast[name].asnumpy(), exact[name].asnumpy(), rtol=1e-4,
                                   atol=1e-6)


@hybridize_axis
def test_conv_ghost_norm_path(hybridize):
    layer = gluon.nn.Conv2D(64, 3, in_channels=16)
    rows, cols, length = 16 * 9, 64, 16  # 6x6 input, 4x4 output
    assert 2 * length * length * (rows + cols) < rows * cols * length  # the ghost branch
    check_against_reference(layer, nd.random.normal(shape=(3, 16, 6, 6)), hybridize=hybridize)
