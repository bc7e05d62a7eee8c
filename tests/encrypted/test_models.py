"""The HE-friendly MNIST net (layers, shapes, values) and train_he_friendly on a few
hundred MNIST images: plaintext learns, DP-SGD reports the accountant's epsilon and
leaves a plain net behind. The full-MNIST recipe numbers are in models.py."""
import math
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon, nd

from mxprivacy import InvalidParameterError
from mxprivacy.accounting.calibration import epsilon_for
from mxprivacy.encrypted.models import (DP_RECIPE, RECIPE, HETrainResult,
                                        he_friendly_mnist_net, train_he_friendly)
from mxprivacy.gluon import PolyActivation, validate
from mxprivacy.gluon.private_block import owner_of
from mxprivacy.train import load_dataset

LOSS = gluon.loss.SoftmaxCrossEntropyLoss()


@pytest.fixture(scope="module")
def mnist(data_dir):
    (x, y), (xt, yt) = load_dataset("mnist", data_dir, train_limit=400, inputs="unit")
    return (x, y), (xt[:300], yt[:300])


def test_net_is_the_tutorials_and_computes_conv_square_dense_square_dense():
    mx.random.seed(0)
    net = he_friendly_mnist_net()
    net.initialize(mx.init.Xavier())
    x = nd.random.uniform(shape=(2, 1, 28, 28))
    assert [type(b).__name__ for b in net] == ["Conv2D", "PolyActivation", "Flatten", "Dense",
                                                 "PolyActivation", "Dense"]
    conv, _, _, hidden, _, out = net
    assert conv._kwargs["kernel"] == (7, 7) and conv._kwargs["stride"] == (3, 3)
    assert conv._kwargs["pad"] == (0, 0) and conv.weight.shape == (4, 1, 7, 7)
    features = conv(x) ** 2
    assert features.shape == (2, 4, 8, 8)
    want = out(hidden(features.reshape((2, 256))) ** 2)
    np.testing.assert_allclose(net(x).asnumpy(), want.asnumpy(), rtol=1e-5)
    assert hidden.weight.shape == (64, 256) and out.weight.shape == (10, 64)
    assert validate(net) == []


def test_net_sizes_and_bad_sizes():
    net = he_friendly_mnist_net(channels=8, hidden=32, classes=3)
    net.initialize()
    assert net(nd.zeros((1, 1, 28, 28))).shape == (1, 3)
    assert net[3].weight.shape == (32, 512)
    for bad in (dict(channels=0), dict(hidden=2.0), dict(strides=True)):
        with pytest.raises(InvalidParameterError):
            he_friendly_mnist_net(**bad)


def mean_loss(net, split):
    x, y = split
    return float(LOSS(net(nd.array(x)), nd.array(y)).mean().asscalar())


def test_plaintext_training_learns(mnist):
    train, test = mnist
    mx.random.seed(0)
    net = he_friendly_mnist_net()
    net.initialize(mx.init.Xavier())
    before = mean_loss(net, train)
    result = train_he_friendly(net, train, test, epochs=6, batch_size=32, lr=2e-3, seed=0)
    assert isinstance(result, HETrainResult)
    assert result.steps == 6 * math.ceil(400 / 32) and result.epsilon is None
    assert mean_loss(net, train) < 0.3 * before
    assert result.test_accuracy > 0.6  # 400 digits; chance is 0.1
    predicted = net(nd.array(test[0])).argmax(axis=1).asnumpy()
    assert result.test_accuracy == pytest.approx(np.mean(predicted == test[1]))


def test_dp_training_reports_the_accountants_epsilon_and_releases_the_net(mnist):
    train, test = mnist
    mx.random.seed(0)
    net = he_friendly_mnist_net()
    dp = dict(noise_multiplier=0.8, max_grad_norm=1.0, delta=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seeded sampling and noise, large epsilon
        result = train_he_friendly(net, train, test, epochs=4, batch_size=50, lr=3e-3, dp=dp,
                                   seed=0)
    rate = 50 / 400
    assert result.steps == math.ceil(4 / rate) == 32
    assert result.epsilon == pytest.approx(epsilon_for(0.8, rate, steps=32, delta=1e-5))
    assert (result.delta, result.noise_multiplier, result.max_grad_norm) == (1e-5, 0.8, 1.0)
    assert result.test_accuracy > 0.2
    assert all(owner_of(p) is None for p in net.collect_params().values())  # released
    assert isinstance(net[1], PolyActivation)


@pytest.mark.parametrize("kwargs", [
    dict(epochs=0), dict(epochs=float("nan")), dict(batch_size=401), dict(batch_size=0),
    dict(lr=-1.0), dict(dp=dict(noise_multiplier=1.0)),
    dict(dp=dict(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, lr=1)),
])
def test_bad_options_are_refused(mnist, kwargs):
    train, test = mnist
    with pytest.raises(InvalidParameterError):
        train_he_friendly(he_friendly_mnist_net(), train, test, **kwargs)


def test_mismatched_data_is_refused(mnist):
    (x, y), test = mnist
    with pytest.raises(InvalidParameterError, match="as many labels"):
        train_he_friendly(he_friendly_mnist_net(), (x, y[:10]), test)
    with pytest.raises(InvalidParameterError, match="pair"):
        train_he_friendly(he_friendly_mnist_net(), x, test)


def test_recipes_are_the_defaults():
    assert train_he_friendly.__kwdefaults__ == dict(RECIPE, dp=None, seed=None)
    assert set(DP_RECIPE["dp"]) == {"noise_multiplier", "max_grad_norm", "delta"}
