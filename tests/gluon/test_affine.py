"""ChannelAffine and PlainGroupNorm (what fix() puts in place of BatchNorm): their
outputs against numpy, the group count table, deferred channel counts, and the
ChannelAffine rule against the per-sample reference loop, imperative and hybridized."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon, nd

from mxprivacy import ChannelAffine, InvalidParameterError, UnknownChannelsError
from mxprivacy.gluon.affine import PlainGroupNorm, group_count, resolve_from_shapes
from mxprivacy.gluon.rules import rule_for

from .helpers import LOSS, reference_grads
from .test_rules import (HybridHead, _seq, capture_shard, check_against_reference, check_shard,
                         hybridize_axis)

NORMAL = mx.init.Normal(0.5)


def numpy_group_norm(x, groups, eps=1e-5):
    rows = x.reshape(x.shape[0], groups, -1)
    out = (rows - rows.mean(2, keepdims=True)) / np.sqrt(rows.var(2, keepdims=True) + eps)
    return out.reshape(x.shape)


@pytest.mark.parametrize("channels,groups", [(64, 32), (48, 24), (7, 7), (3, 3), (1, 1),
                                             (96, 32), (100, 25), (34, 17), (512, 32)])
def test_group_count_is_the_largest_divisor_up_to_32(channels, groups):
    assert group_count(channels) == groups


@pytest.mark.parametrize("bad", [0, -3, 2.0, None])
def test_group_count_refuses_non_positive_counts(bad):
    with pytest.raises(InvalidParameterError, match="positive integer"):
        group_count(bad)


@pytest.mark.parametrize("axis", [1, -1, 2])
@hybridize_axis
def test_channel_affine_scales_and_shifts_each_channel(axis, hybridize):
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    channels = x.shape[axis]
    layer = ChannelAffine(axis=axis)  # channel count inferred (deferred)
    layer.initialize()
    layer(nd.array(x))
    gamma, beta = np.arange(1, channels + 1) * 0.5, np.arange(channels) - 1.0
    layer.gamma.set_data(nd.array(gamma))
    layer.beta.set_data(nd.array(beta))
    if hybridize is not None:
        layer.hybridize(**hybridize)
    shape = [1] * 4
    shape[axis] = channels
    want = x * gamma.reshape(shape) + beta.reshape(shape)
    np.testing.assert_allclose(layer(nd.array(x)).asnumpy(), want, rtol=1e-6, atol=1e-6)


def test_channel_affine_infers_its_shape_inside_a_hybridized_graph():
    net = _seq(gluon.nn.Conv2D(5, 3), ChannelAffine(), gluon.nn.Dense(2))
    net.initialize()
    net.hybridize()
    net(nd.ones((2, 3, 6, 6)))  # the graph's shape inference sets gamma's shape
    assert net[1].gamma.shape == (5,) and net[1].beta.shape == (5,)


def test_channel_affine_on_5d_inputs_and_wrong_layouts():
    x = np.random.default_rng(4).normal(size=(2, 3, 2, 3, 2)).astype(np.float32)
    layer = ChannelAffine(3, gamma_initializer=mx.init.Constant(2.0))
    layer.initialize()
    np.testing.assert_allclose(layer(nd.array(x)).asnumpy(), 2 * x, rtol=1e-6)
    assert layer.resolved()  # it now runs as a depthwise 3-D convolution
    with pytest.raises(InvalidParameterError, match="one layer per input layout"):
        layer(nd.ones((2, 3, 4)))
    with pytest.raises(InvalidParameterError, match="one layer per input layout"):
        layer(nd.ones((2, 4, 2, 3, 2)))


def test_channel_affine_validates_and_freezes():
    with pytest.raises(InvalidParameterError, match="in_channels"):
        ChannelAffine(-1)
    layer = ChannelAffine(4, scale=False)
    assert layer.gamma.grad_req == "null" and layer.beta.grad_req == "write"


@pytest.mark.parametrize("groups", [1, 2, 6])
@hybridize_axis
def test_plain_group_norm_matches_numpy(groups, hybridize):
    x = np.random.default_rng(1).normal(size=(3, 6, 4, 2)).astype(np.float32) * 3 + 1
    layer = PlainGroupNorm(groups)
    if hybridize is not None:
        layer.hybridize(**hybridize)
    out = layer(nd.array(x)).asnumpy()
    np.testing.assert_allclose(out, numpy_group_norm(x, groups), rtol=1e-4, atol=1e-5)


def test_plain_group_norm_on_the_last_axis():
    x = np.random.default_rng(2).normal(size=(2, 5, 8)).astype(np.float32)
    out = PlainGroupNorm(4, axis=-1)(nd.array(x)).asnumpy()
    want = numpy_group_norm(x.transpose(0, 2, 1), 4).transpose(0, 2, 1)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


def test_plain_group_norm_chooses_groups_at_its_first_imperative_call():
    layer = PlainGroupNorm()
    assert layer.num_groups is None
    x = np.random.default_rng(3).normal(size=(2, 48, 3)).astype(np.float32)
    out = layer(nd.array(x)).asnumpy()
    assert layer.num_groups == 24
    np.testing.assert_allclose(out, numpy_group_norm(x, 24), rtol=1e-4, atol=1e-5)
    with pytest.raises(InvalidParameterError, match="do not divide"):
        layer(nd.ones((2, 50, 3)))


def test_waiting_group_norm_refuses_a_symbolic_graph():
    net = _seq(gluon.nn.Conv2D(4, 3), PlainGroupNorm())
    net.initialize()
    net.hybridize()
    with pytest.raises(UnknownChannelsError, match="in_channels"):
        net(nd.ones((1, 2, 5, 5)))  # nobody told it to watch the net


def test_shape_inference_resolves_every_waiting_layer():
    net = _seq(gluon.nn.Conv2D(12, 3), PlainGroupNorm(), gluon.nn.Conv2D(40, 1),
               PlainGroupNorm(), gluon.nn.Dense(2))
    resolve_from_shapes(net, [(1, 3, 8, 8)])
    assert (net[1].num_groups, net[3].num_groups) == (12, 20)


@hybridize_axis
def test_watched_group_norm_resolves_at_the_first_hybridized_call(hybridize):
    net = _seq(gluon.nn.Conv2D(8, 3), PlainGroupNorm(), gluon.nn.Dense(2))
    net[1].watch(net)
    net.initialize()
    if hybridize is not None:
        net.hybridize(**hybridize)
    net(nd.ones((2, 3, 6, 6)))
    assert net[1].num_groups == 8


# -- the ChannelAffine rule -----------------------------------------------------------
def test_channel_affine_has_a_rule():
    assert rule_for(ChannelAffine()) is not None


@pytest.mark.parametrize("make,shape", [
    (lambda: _seq(gluon.nn.Conv2D(4, 3), ChannelAffine(gamma_initializer=NORMAL,
                                                       beta_initializer=NORMAL)),
     (3, 2, 6, 6)),
    (lambda: _seq(gluon.nn.Dense(5), ChannelAffine(gamma_initializer=NORMAL)), (4, 3)),
    (lambda: _seq(gluon.nn.Dense(6, flatten=False), ChannelAffine(axis=-1)), (4, 3, 5)),
    (lambda: _seq(gluon.nn.Conv1D(4, 2), ChannelAffine(scale=False)), (4, 2, 7)),
    (lambda: _seq(gluon.nn.Conv2D(6, 3), PlainGroupNorm(3),
                  ChannelAffine(gamma_initializer=NORMAL), gluon.nn.Activation("relu")),
     (3, 2, 6, 6)),
], ids=["conv2d", "dense-2d", "last-axis", "beta-only", "groupnorm-affine-relu"])
@hybridize_axis
def test_channel_affine_rule_matches_reference(make, shape, hybridize):
    check_against_reference(make(), nd.random.normal(shape=shape), hybridize=hybridize)


@pytest.mark.parametrize("static", [False, True])
def test_channel_affine_rule_in_a_graph_built_before_any_shape_was_known(static):
    """Not watched, never called with arrays: the graph runs the broadcast fallback."""
    mx.random.seed(0)
    net = HybridHead(_seq(gluon.nn.Conv2D(4, 3), ChannelAffine(gamma_initializer=NORMAL,
                                                               beta_initializer=NORMAL)))
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=static, static_shape=static)
    x, y = nd.random.normal(shape=(3, 2, 6, 6)), nd.array([0, 2, 1])
    want = reference_grads(net, LOSS, x, y)
    check_shard(capture_shard(net, x, y, {"static_alloc": static, "static_shape": static}),
                want, 3)
    assert not net.body[1].resolved()


class Twice(gluon.nn.HybridBlock):
    def __init__(self):
        super().__init__()
        self.conv = gluon.nn.Conv2D(3, 3, padding=1)
        self.affine = ChannelAffine(gamma_initializer=NORMAL)

    def hybrid_forward(self, F, x):
        h = self.conv(x)
        return self.affine(h) + self.affine(F.tanh(h))


@hybridize_axis
def test_channel_affine_called_twice(hybridize):
    check_against_reference(Twice(), nd.random.normal(shape=(3, 2, 5, 5)), hybridize=hybridize)


def test_a_channel_axis_on_the_batch_axis_is_refused():
    """Review finding: ChannelAffine(axis=0) summed each channel over samples, so one
    record moved the clipped sum by about B x C (8.0 for B = 8, C = 1)."""
    from mxprivacy import InvalidParameterError, fix
    for make in (lambda: ChannelAffine(axis=0), lambda: PlainGroupNorm(axis=0)):
        with pytest.raises(InvalidParameterError, match="batch axis"):
            make()
    layer = ChannelAffine(axis=-2)  # resolves to 0 on (N, C)
    layer.initialize()
    with pytest.raises(InvalidParameterError, match="batch axis"):
        layer(mx.nd.ones((4, 3)))
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(8), gluon.nn.BatchNorm(axis=0))
    net.initialize()
    with pytest.raises(InvalidParameterError, match="batch axis"):
        fix(net)
    assert isinstance(net[1], gluon.nn.BatchNorm)  # refused before any swap


def test_one_value_per_channel_normalizes_over_all_channels():
    """On (N, C) inputs a group per channel would normalize every value to 0."""
    norm = PlainGroupNorm()
    norm.initialize()
    x = mx.nd.random.normal(shape=(5, 16))
    out = norm(x).asnumpy()
    assert norm.num_groups == 1
    ref = (x.asnumpy() - x.asnumpy().mean(1, keepdims=True)) / np.sqrt(
        x.asnumpy().var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    conv = PlainGroupNorm()
    conv.initialize()
    conv(mx.nd.random.normal(shape=(2, 16, 3, 3)))
    assert conv.num_groups == 16
