"""mxprivacy.audit.gluon: logits of a trained net, attack inputs, and the canary audit."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import mxprivacy
from mxprivacy.audit.gluon import model_logits
from mxprivacy.errors import AuditInputError


def _small_net(seed=0, dropout=False):
    mx.random.seed(seed)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(7, activation="tanh"))
    if dropout:
        net.add(gluon.nn.Dropout(0.5))
    net.add(gluon.nn.Dense(3))
    net.initialize(mx.init.Xavier())
    return net


def _hand_batch():
    return np.arange(5 * 4, dtype=np.float32).reshape(5, 4) / 10 - 1


def test_model_logits_equal_the_forward_pass_on_a_hand_batch():
    net = _small_net()
    x = _hand_batch()
    expected = net(mx.nd.array(x)).asnumpy()
    got = model_logits(net, x, batch_size=2)  # three batches: 2, 2, 1 rows
    assert got.dtype == np.float64 and got.shape == (5, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model_logits(net, mx.nd.array(x)), expected, rtol=1e-6, atol=1e-6)


def test_model_logits_of_a_private_block_equal_the_plain_net_and_capture_nothing():
    net = _small_net()
    x = _hand_batch()
    expected = net(mx.nd.array(x)).asnumpy()
    wrapped = mxprivacy.PrivateBlock(net)
    with autograd.record():  # even inside a recording scope: predict mode, no capture
        got = model_logits(wrapped, x, batch_size=3)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert wrapped.pending_shards() == []
    wrapped.release()


def test_model_logits_run_in_predict_mode():
    net = _small_net(dropout=True)
    x = _hand_batch()
    first, second = model_logits(net, x), model_logits(net, x)
    np.testing.assert_array_equal(first, second)  # dropout off: deterministic
    with autograd.train_mode():
        np.testing.assert_array_equal(model_logits(net, x), first)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_model_logits_refuse_a_bad_batch_size(bad):
    with pytest.raises(AuditInputError, match="batch_size"):
        model_logits(_small_net(), _hand_batch(), batch_size=bad)


def test_model_logits_refuse_empty_or_non_numeric_inputs():
    with pytest.raises(AuditInputError, match="empty"):
        model_logits(_small_net(), np.zeros((0, 4), np.float32))
    with pytest.raises(AuditInputError, match="numeric"):
        model_logits(_small_net(), np.array([["a"] * 4]))
