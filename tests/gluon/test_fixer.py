"""validate() names every problem; fix() replaces BatchNorm and fused recurrent layers."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon, nd

import mxprivacy
from mxprivacy import DPLSTM, PrivateBlock, UnsupportedLayerError

from .helpers import LOSS, reference_grads


class TextNet(gluon.nn.Block):
    def __init__(self):
        super().__init__()
        self.embed = gluon.nn.Embedding(20, 4)
        self.lstm = gluon.rnn.LSTM(5, layout="NTC", input_size=4)
        self.out = gluon.nn.Dense(2)

    def forward(self, x):
        return self.out(self.lstm(self.embed(x))[:, -1, :])


def conv_bn():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(6, 3), gluon.nn.BatchNorm(), gluon.nn.Activation("relu"),
            gluon.nn.Dense(3))
    return net


def test_validate_lists_every_problem_with_the_fix():
    net = conv_bn()
    net.add(gluon.nn.BatchNorm())
    problems = mxprivacy.validate(net)
    assert len(problems) == 2 and all("mxprivacy.fix" in p for p in problems)
    text = TextNet()
    (problem,) = mxprivacy.validate(text)
    assert "DPLSTM" in problem
    with pytest.raises(UnsupportedLayerError, match="DPLSTM"):
        PrivateBlock(text, mode="vectorized")


def test_fix_replaces_batchnorm_with_groupnorm():
    net = conv_bn()
    net.initialize()
    net(nd.ones((2, 3, 6, 6)))
    fixed = mxprivacy.fix(net)
    assert fixed is net and isinstance(net[1], gluon.nn.GroupNorm)
    assert net[1]._num_groups == 6 and len(net.fixed_layers_) == 1
    assert mxprivacy.validate(net) == []


def test_fix_swaps_lstm_and_keeps_its_function():
    mx.random.seed(0)
    text = TextNet()
    text.initialize(mx.init.Xavier())
    x = nd.array(np.random.default_rng(0).integers(0, 20, (3, 6)))
    before = text(x).asnumpy()
    mxprivacy.fix(text)
    assert isinstance(text.lstm, DPLSTM) and text._children["lstm"] is text.lstm
    np.testing.assert_allclose(text(x).asnumpy(), before, rtol=1e-5, atol=1e-6)
    assert mxprivacy.validate(text) == []
    y = nd.array([0, 1, 1])
    want = reference_grads(text, LOSS, x, y)
    got = mxprivacy.gluon.per_sample_grads(text, LOSS, x, y, mode="vectorized")
    for name in want:
        np.testing.assert_allclose(got[name].asnumpy(), want[name], rtol=1e-4, atol=1e-6)
