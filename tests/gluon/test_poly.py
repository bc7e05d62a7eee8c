"""PolyActivation: values against numpy, the least squares fits and their documented
errors, argument checks, DP training with constant coefficients, and the per-sample rule
of trainable coefficients against the per-sample reference loop."""
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

from mxprivacy import DPTrainer, InvalidParameterError, PrivateBlock
from mxprivacy.gluon import PolyActivation, per_sample_grads, validate
from mxprivacy.gluon.rules import _RULES, rule_for

from .helpers import LOSS, allow_fixed_batches, reference_grads
from .test_rules import HybridHead, _seq, check_against_reference, hybridize_axis

X = np.linspace(-3, 3, 13, dtype=np.float32).reshape(1, 13)


def run(layer, x=X, hybridize=False):
    layer.initialize()
    if hybridize:
        layer.hybridize()
    return layer(nd.array(x)).asnumpy()


@pytest.mark.parametrize("hybridize", [False, True])
def test_square_is_x_times_x(hybridize):
    layer = PolyActivation("square")
    assert (layer.kind, layer.degree, layer.coefficients) == ("square", 2, (0.0, 0.0, 1.0))
    np.testing.assert_array_equal(run(layer, hybridize=hybridize), X * X)


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("trainable", [False, True])
def test_explicit_coefficients_match_numpy_polyval(trainable, hybridize):
    coefficients = (0.5, -1.0, 0.0, 0.25)
    layer = PolyActivation(coefficients=coefficients, trainable=trainable)
    assert (layer.kind, layer.degree) == ("poly", 3)
    want = np.polynomial.polynomial.polyval(X.astype(np.float64), coefficients)
    np.testing.assert_allclose(run(layer, hybridize=hybridize), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layer.coefficients, coefficients)


# The table in mxprivacy/gluon/poly.py: max error on (-4, 4), degrees 2, 3, 4.
DOCUMENTED = {"relu": (0.375, 0.375, 0.234), "tanh": (0.424, 0.228, 0.228),
              "sigmoid": (0.131, 0.0382, 0.0382)}


@pytest.mark.parametrize("target", sorted(DOCUMENTED))
def test_fit_errors_are_the_documented_ones_and_true_on_a_finer_grid(target):
    grid = np.linspace(-4, 4, 20001)
    exact = {"relu": np.maximum(grid, 0), "tanh": np.tanh(grid),
             "sigmoid": 1 / (1 + np.exp(-grid))}[target]
    for degree, documented in zip((2, 3, 4), DOCUMENTED[target]):
        layer = PolyActivation.fit(target, degree, (-4, 4))
        assert layer.kind == target and layer.input_range == (-4.0, 4.0)
        assert layer.max_error == pytest.approx(documented, rel=5e-3)
        real = np.abs(np.polynomial.polynomial.polyval(grid, layer.coefficients) - exact)
        assert real.max() == pytest.approx(layer.max_error, rel=1e-3)


def test_fit_is_the_least_squares_polynomial():
    """Hand-derived: the least squares parabola of |x|-like relu on (-1, 1) under a
    uniform weight is 3/32 + x/2 + 15/32 x^2 (Legendre projection)."""
    layer = PolyActivation.fit("relu", 2, (-1, 1))
    np.testing.assert_allclose(layer.coefficients, (3 / 32, 0.5, 15 / 32), atol=2e-3)


def test_fit_drops_zero_top_coefficients_so_the_degree_is_honest():
    tanh = PolyActivation.fit("tanh", 2, (-4, 4))  # odd target: the x^2 term is zero
    assert tanh.degree == 1 and tanh.coefficients[0] == 0.0
    cubic = PolyActivation.fit("tanh", 3, (-2, 2))
    assert cubic.degree == 3 and cubic.coefficients[0] == cubic.coefficients[2] == 0.0


@pytest.mark.parametrize("make", [
    lambda: PolyActivation("relu"),
    lambda: PolyActivation(""),
    lambda: PolyActivation(coefficients=(1.0,)),
    lambda: PolyActivation(coefficients=(1.0, 0.0)),
    lambda: PolyActivation(coefficients=(1.0, float("nan"))),
    lambda: PolyActivation(coefficients="ab"),
    lambda: PolyActivation(trainable=1),
    lambda: PolyActivation.fit("gelu", 2),
    lambda: PolyActivation.fit("relu", 1),
    lambda: PolyActivation.fit("relu", 5),
    lambda: PolyActivation.fit("relu", True),
    lambda: PolyActivation.fit("relu", 2, (3, 3)),
    lambda: PolyActivation.fit("relu", 2, (0, float("inf"))),
    lambda: PolyActivation.fit("relu", 2, 4),
], ids=["unknown-kind", "empty-kind", "one-coefficient", "zero-top", "nan", "strings",
        "trainable-int", "target", "degree-1", "degree-5", "degree-bool", "empty-range",
        "infinite-range", "range-scalar"])
def test_bad_arguments_are_refused(make):
    with pytest.raises(InvalidParameterError):
        make()


def tiny_net(activation):
    mx.random.seed(0)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(3, 3, in_channels=1), activation, gluon.nn.Flatten(),
            gluon.nn.Dense(6), PolyActivation("square"), gluon.nn.Dense(3))
    net.initialize(mx.init.Xavier())
    return net


def images(rows=8, seed=0):
    rng = np.random.default_rng(seed)
    x = nd.array(rng.uniform(0, 1, size=(rows, 1, 6, 6)))
    y = nd.array(rng.integers(0, 3, size=rows))
    return x, y


@pytest.mark.parametrize("hybridize", [False, True])
def test_constant_coefficients_pass_the_validators_and_per_sample_grads_are_exact(hybridize):
    net = tiny_net(PolyActivation.fit("tanh", 3, (-2, 2)))
    x, y = images()
    net(x)
    assert validate(net) == [] and not list(net[1].collect_params().values())
    want = reference_grads(net, LOSS, x, y)
    if hybridize:
        net.hybridize()
    got = per_sample_grads(net, LOSS, x, y, mode="vectorized")
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name].asnumpy(), want[name], rtol=1e-5, atol=1e-6)


def test_dp_trainer_trains_a_net_with_square_activations():
    net = tiny_net(PolyActivation("square"))
    x, y = images(rows=32, seed=1)
    net(x)
    block = PrivateBlock(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixed noise seed warns
        trainer = allow_fixed_batches(DPTrainer(
            block.collect_params(), "adam", {"learning_rate": 0.01}, noise_multiplier=0.01,
            max_grad_norm=10.0, expected_batch_size=32, dataset_size=3200, noise_seed=0))
    losses = []
    for _ in range(40):
        with autograd.record():
            loss = LOSS(block(x), y)
        loss.backward()
        trainer.step(x.shape[0])
        losses.append(float(loss.mean().asscalar()))
    assert block.mode == "vectorized" and trainer.steps == 40
    assert losses[-1] < 0.5 * losses[0]


# -- trainable coefficients: the rule ---------------------------------------------------
RULE_CASES = [
    (lambda: _seq(gluon.nn.Dense(6), PolyActivation("square", trainable=True)), (5, 4)),
    (lambda: _seq(gluon.nn.Conv2D(3, 3), PolyActivation.fit("relu", 4, (-3, 3),
                                                            trainable=True)), (4, 2, 6, 6)),
    (lambda: _seq(gluon.nn.Dense(5, flatten=False),
                  PolyActivation(coefficients=(0.1, 1.0, 0.3), trainable=True)), (3, 4, 6)),
]


@pytest.mark.parametrize("make,shape", RULE_CASES, ids=["dense-square", "conv-relu4",
                                                        "sequence-quadratic"])
@hybridize_axis
def test_trainable_rule_matches_the_reference_loop(make, shape, hybridize):
    body = make()
    net = check_against_reference(body, nd.random.normal(shape=shape), hybridize=hybridize)
    assert net.body[1].weight.name.endswith("coefficients")


class Twice(gluon.nn.HybridBlock):
    """One PolyActivation called on two inputs: the rule sums both calls."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = gluon.nn.Dense(4)
        self.poly = PolyActivation(coefficients=(0.0, 1.0, 0.5), trainable=True)

    def hybrid_forward(self, F, x):
        return self.poly(self.dense(x)) + self.poly(x.slice_axis(axis=1, begin=0, end=4))


@hybridize_axis
def test_trainable_rule_sums_several_calls(hybridize):
    check_against_reference(Twice(), nd.random.normal(shape=(5, 6)), hybridize=hybridize)


def test_trained_coefficients_are_what_the_plan_reads():
    body = _seq(gluon.nn.Dense(4), PolyActivation("square", trainable=True))
    net = HybridHead(body)
    net.initialize()
    x, y = nd.random.normal(shape=(6, 3)), nd.array([0, 1, 2, 0, 1, 2])
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    with autograd.record():
        LOSS(net(x), y).backward()
    trainer.step(6)
    values = body[1].weight.data().asnumpy()
    assert not np.allclose(values, (0, 0, 1))
    np.testing.assert_allclose(body[1].coefficients, values)


def test_without_its_rule_a_trainable_poly_is_refused():
    """The rule is what makes trainable coefficients private: without it the validators
    refuse the vectorized mode (no silent non-private gradient)."""
    net = _seq(gluon.nn.Dense(4), PolyActivation("square", trainable=True))
    net.initialize()
    net(nd.ones((2, 3)))
    assert rule_for(net[1]) is not None and validate(net) == []
    saved = _RULES.pop(PolyActivation)
    try:
        assert any("no vectorized per-sample gradient rule" in p for p in validate(net))
    finally:
        _RULES[PolyActivation] = saved
