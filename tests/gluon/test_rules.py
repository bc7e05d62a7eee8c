"""Every rule against the per-sample reference loop (each sample's loss alone)."""
import mxnet as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mxnet import gluon, nd

from mxprivacy.gluon import per_sample_grad_norms, per_sample_grads

from .helpers import LOSS, reference_grads


class Head(gluon.nn.Block):
    """``body`` followed by a Dense classifier (so every net ends in class scores)."""

    def __init__(self, body, classes=3, **kwargs):
        super().__init__(**kwargs)
        self.body = body
        self.out = gluon.nn.Dense(classes)

    def forward(self, x):
        return self.out(self.body(x))


def check_against_reference(body, x, classes=3, seed=0, rtol=1e-5):
    mx.random.seed(seed)
    net = Head(body, classes)
    net.initialize(mx.init.Xavier(magnitude=2.0))
    net(x)
    y = nd.array(np.random.default_rng(seed).integers(0, classes, size=x.shape[0]))
    want = reference_grads(net, LOSS, x, y)
    got = per_sample_grads(net, LOSS, x, y, mode="vectorized")
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name].asnumpy(), want[name], rtol=rtol, atol=1e-6,
                                   err_msg=name)
    norms = per_sample_grad_norms(net, LOSS, x, y, mode="vectorized").asnumpy()
    flat = np.concatenate([want[n].reshape(x.shape[0], -1) for n in want], axis=1)
    np.testing.assert_allclose(norms, np.linalg.norm(flat, axis=1), rtol=rtol)
    return net


CONV_CASES = [
    dict(channels=4, kernel_size=3),
    dict(channels=4, kernel_size=3, strides=2, padding=1),
    dict(channels=4, kernel_size=2, dilation=2, use_bias=False),
    dict(channels=4, kernel_size=3, groups=2, padding=1),
    dict(channels=6, kernel_size=(2, 3), strides=(1, 2), activation="relu"),
]


@pytest.mark.parametrize("kwargs", CONV_CASES)
def test_conv2d(kwargs):
    check_against_reference(gluon.nn.Conv2D(**kwargs), nd.random.normal(shape=(5, 2, 7, 7)))


@pytest.mark.parametrize("kwargs", [dict(channels=3, kernel_size=3, strides=2, padding=1),
                                    dict(channels=4, kernel_size=2, groups=2, use_bias=False)])
def test_conv1d_and_conv3d(kwargs):
    check_against_reference(gluon.nn.Conv1D(**kwargs), nd.random.normal(shape=(4, 2, 9)))
    check_against_reference(gluon.nn.Conv3D(**kwargs), nd.random.normal(shape=(3, 2, 5, 5, 5)))


@pytest.mark.parametrize("kwargs", [dict(channels=3, kernel_size=3),
                                    dict(channels=4, kernel_size=3, strides=2, padding=1,
                                         output_padding=1),
                                    dict(channels=4, kernel_size=2, groups=2, in_channels=2,
                                         use_bias=False)])
def test_conv2d_transpose(kwargs):
    check_against_reference(gluon.nn.Conv2DTranspose(**kwargs), nd.random.normal(shape=(4, 2, 5, 5)))


@settings(max_examples=10, deadline=None)
@given(batch=st.integers(1, 4), size=st.integers(5, 9), kernel=st.integers(1, 3),
       stride=st.integers(1, 2), channels=st.integers(1, 5))
def test_conv2d_shapes(batch, size, kernel, stride, channels):
    check_against_reference(gluon.nn.Conv2D(channels, kernel, strides=stride),
                            nd.random.normal(shape=(batch, 2, size, size)))


def test_conv_called_twice():
    class Twice(gluon.nn.HybridBlock):
        def __init__(self):
            super().__init__()
            self.conv = gluon.nn.Conv2D(3, 3, padding=1)

        def hybrid_forward(self, F, x):
            return self.conv(x) + self.conv(x * 0.5)

    check_against_reference(Twice(), nd.random.normal(shape=(3, 2, 5, 5)))


class EmbedPool(gluon.nn.HybridBlock):
    def __init__(self, vocab=7, dim=4, **kwargs):
        super().__init__(**kwargs)
        self.embed = gluon.nn.Embedding(vocab, dim)

    def hybrid_forward(self, F, x):
        return F.tanh(self.embed(x)).mean(axis=1)


def test_embedding_with_repeated_tokens():
    ids = nd.array([[0, 1, 1, 3], [2, 2, 2, 2], [6, 5, 0, 1]])
    check_against_reference(EmbedPool(), ids)


@settings(max_examples=8, deadline=None)
@given(batch=st.integers(1, 4), length=st.integers(1, 6), vocab=st.integers(2, 9))
def test_embedding_shapes(batch, length, vocab):
    ids = nd.array(np.random.default_rng(batch * 31 + length).integers(0, vocab, (batch, length)))
    check_against_reference(EmbedPool(vocab=vocab), ids)


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
])
def test_normalization_and_prelu(make, shape):
    check_against_reference(make(), nd.random.normal(shape=shape))


def test_frozen_parameters_are_skipped():
    body = _seq(gluon.nn.Conv2D(3, 3), gluon.nn.LayerNorm(axis=1))
    net = Head(body)
    net.initialize()
    net(nd.ones((2, 2, 5, 5)))
    body[0].weight.grad_req = "null"
    body[1].gamma.grad_req = "null"
    x, y = nd.random.normal(shape=(3, 2, 5, 5)), nd.array([0, 1, 2])
    got = per_sample_grads(net, LOSS, x, y, mode="vectorized")
    want = reference_grads(net, LOSS, x, y)
    assert body[0].weight.name not in got and body[1].gamma.name not in got
    for name in want:
        np.testing.assert_allclose(got[name].asnumpy(), want[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", ["DPLSTM", "DPGRU", "DPRNN"])
@pytest.mark.parametrize("options,steps", [(dict(), 5), (dict(num_layers=2, bidirectional=True), 4),
                                           (dict(), 1)])
def test_dp_recurrent_layers(layer, options, steps):
    from mxprivacy import gluon as dp_gluon

    class Last(gluon.nn.Block):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(dp_gluon, layer)(4, layout="NTC", input_size=3, **options)

        def forward(self, x):
            return self.rnn(x)[:, -1, :]

    check_against_reference(Last(), nd.random.normal(shape=(3, steps, 3)), rtol=1e-4)


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


def test_conv_ghost_norm_path():
    layer = gluon.nn.Conv2D(64, 3, in_channels=16)
    rows, cols, length = 16 * 9, 64, 16  # 6x6 input, 4x4 output
    assert 2 * length * length * (rows + cols) < rows * cols * length  # the ghost branch
    check_against_reference(layer, nd.random.normal(shape=(3, 16, 6, 6)))
