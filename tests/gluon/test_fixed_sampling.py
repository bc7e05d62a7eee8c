"""DPTrainer(sampling="fixed"): each step charges a fixed-size batch drawn without
replacement under replace-one, exactly B examples per step, only batches DPDataLoader
drew, and the replace-one sensitivity (2C) of every clipping mode."""
import math
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd
from scipy import optimize, stats

from mxprivacy import (BatchSizeMismatchError, DPDataLoader, DPTrainer, InvalidParameterError,
                       PrivacyWarning, PrivateBlock, SamplingError)
from mxprivacy.accounting import (GaussianEvent, PoissonSampledEvent, RDPAccountant,
                                  SampledWithoutReplacementEvent, make_accountant,
                                  rdp_to_epsilon)
from mxprivacy.gluon.guards import FixedSizeDetector

from .helpers import LOSS, mlp

pytestmark = pytest.mark.filterwarnings("ignore::mxprivacy.PrivacyWarning")


def build(n=30, b=6, sigma=1.0, net=None, mode="vectorized", block=None, clip=1.0, lr=0.1,
          **kwargs):
    blk = PrivateBlock(net or mlp(), mode=mode, **(block or {}))
    options = dict(noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=b,
                   dataset_size=n, sampling="fixed")
    options.update(kwargs)
    return blk, DPTrainer(blk.collect_params(), "sgd", {"learning_rate": lr}, **options)


def initialized_mlp(seed):
    net = mlp(seed=seed)
    net(nd.zeros((1, 5)))  # deferred initialization, right after the seed
    return net


def data(n, features=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, features)).astype(np.float32), rng.integers(0, 3, n)


def backward(block, x, y):
    with autograd.record():
        loss = LOSS(block(x), y)
    loss.backward()


def train(block, trainer, loader):
    for x, y in loader:
        backward(block, x, y)
        trainer.step(x.shape[0])


# -- the accounted event ---------------------------------------------------------------
def test_each_sampler_charges_its_own_event():
    x, y = data(30)
    block, poisson = build(sampling="poisson", sigma=1.3)
    train(block, poisson, DPDataLoader((x, y), expected_batch_size=6, trainer=poisson,
                                       num_batches=5))
    assert poisson.accountant.neighboring == "add_remove"
    assert poisson.accountant.ledger == [(PoissonSampledEvent(0.2, GaussianEvent(1.3)), 5)]
    block, fixed = build(sigma=1.3)
    loader = DPDataLoader((x, y), expected_batch_size=6, trainer=fixed, num_batches=5)
    assert loader.sampling == "fixed" and fixed.sampling == "fixed"  # the loader follows
    train(block, fixed, loader)
    event = SampledWithoutReplacementEvent(30, 6, GaussianEvent(1.3))
    assert fixed.step_event() == event
    assert fixed.accountant.neighboring == "replace_one"
    assert fixed.accountant.ledger == [(event, 5)] and fixed.steps == 5
    assert fixed.accountant.state_dict()["neighboring"] == "replace_one"
    by_hand = RDPAccountant(neighboring="replace_one").compose(event, 5)
    assert fixed.epsilon(1e-5) == by_hand.get_epsilon(1e-5)


def _gaussian_epsilon(mu, delta):
    """Exact epsilon of N(0,1) against N(mu,1) at delta (Balle & Wang 2018)."""
    def excess(eps):
        return (stats.norm.cdf(-eps / mu + mu / 2) -
                math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - delta)
    return optimize.brentq(excess, 0.0, 500.0, xtol=1e-12)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_a_full_batch_costs_the_gaussian_mechanism_with_sensitivity_2c(accountant):
    """B = N: every record is in each of the T steps; a replaced record moves the
    clipped sum by 2C against noise sigma*C, so the run is the Gaussian mechanism with
    mu = 2 sqrt(T) / sigma (noise multiplier sigma/2 under add/remove)."""
    n, sigma, steps, delta = 8, 2.0, 10, 1e-5
    x, y = data(n)
    block, trainer = build(n=n, b=n, sigma=sigma, accountant=accountant)
    train(block, trainer, DPDataLoader((x, y), expected_batch_size=n, trainer=trainer,
                                       num_batches=steps))
    eps = trainer.epsilon(delta)
    if accountant == "rdp":
        orders = np.asarray(trainer.accountant.orders)
        assert eps == pytest.approx(
            rdp_to_epsilon(orders, steps * 2.0 * orders / sigma ** 2, delta)[0], rel=1e-12)
        assert eps == pytest.approx(make_accountant("rdp").compose(
            GaussianEvent(sigma / 2), steps).get_epsilon(delta), rel=1e-12)
    exact = _gaussian_epsilon(2.0 * math.sqrt(steps) / sigma, delta)
    assert exact - 1e-9 <= eps <= exact * (1.01 if accountant == "pld" else 1.25)


def test_fixed_noise_is_sigma_times_c():
    """Zero inputs and a bias-free layer: every gradient is 0, so the update is the
    noise x lr / B, whose std must be sigma * C (4000 values: 5 % is 4.5 s.e.)."""
    mx.random.seed(0)
    net = gluon.nn.Dense(50, in_units=80, use_bias=False)
    net.initialize(mx.init.Zero())
    block, trainer = build(n=8, b=4, sigma=2.0, net=net, clip=0.5, lr=1.0, noise_seed=5)
    x = np.zeros((8, 80), dtype=np.float32)
    train(block, trainer, DPDataLoader((x, np.zeros(8)), expected_batch_size=4,
                                       trainer=trainer, num_batches=1))
    noise = -net.weight.data().asnumpy().ravel() * 4
    assert noise.std() == pytest.approx(2.0 * 0.5, rel=0.05)
    assert stats.kstest(noise, "norm").pvalue > 1e-3


# -- exactly B examples, drawn by the loader ---------------------------------------------
def test_a_fixed_step_of_another_size_is_refused():
    x, y = data(30)
    block, trainer = build()
    trainer.expect_examples(5)  # as if a loader had drawn 5 (a fixed loader never does)
    backward(block, nd.array(x[:5]), nd.array(y[:5]))
    with pytest.raises(BatchSizeMismatchError, match="exactly expected_batch_size = 6"):
        trainer.step(5)
    assert trainer.steps == 0 and trainer.accountant.ledger == []
    # a loader batch of which only part was forwarded
    block, trainer = build()
    loader = DPDataLoader((x, y), expected_batch_size=6, trainer=trainer, num_batches=1)
    for xb, yb in loader:
        backward(block, xb[:4], yb[:4])
        with pytest.raises(BatchSizeMismatchError, match="drew 6"):
            trainer.step(4)
    assert trainer.accountant.ledger == []


def test_a_shuffled_epoch_is_refused_in_fixed_mode():
    """gluon's DataLoader(shuffle=True) gives batches of exactly B too, but they are not
    independent draws: the step is refused and nothing is charged."""
    x, y = data(30)
    block, trainer = build()
    shuffled = gluon.data.DataLoader(gluon.data.ArrayDataset(x, y.astype(np.float32)),
                                     batch_size=6, shuffle=True, last_batch="discard")
    xb, yb = next(iter(shuffled))
    backward(block, xb, yb)
    with pytest.raises(SamplingError, match="shuffled epoch"):
        trainer.step(6)
    assert trainer.steps == 0 and trainer.accountant.ledger == []


def test_equal_sizes_are_the_rule_in_fixed_mode():
    x, y = data(1000)
    run = FixedSizeDetector(50 / 1000, 50).run
    assert run <= 12  # a Poisson trainer would refuse 12 equal sizes in a row
    block, trainer = build(n=1000, b=50)
    train(block, trainer, DPDataLoader((x, y), expected_batch_size=50, trainer=trainer,
                                       num_batches=12))
    assert trainer.steps == 12


def test_virtual_steps_charge_one_event_per_logical_batch_of_b():
    x, y = data(24)
    blocks, trainers = zip(*(build(n=24, b=6, sigma=0.0, net=initialized_mlp(2), lr=1.0)
                             for _ in range(2)))
    loaders = [DPDataLoader((x, y), expected_batch_size=6, trainer=t, num_batches=3, seed=9)
               for t in trainers]
    train(blocks[0], trainers[0], loaders[0])
    for xb, yb in loaders[1]:  # the same batches, in two physical parts each
        backward(blocks[1], xb[:2], yb[:2])
        trainers[1].accumulate()
        backward(blocks[1], xb[2:], yb[2:])
        trainers[1].step(6)
    assert trainers[1].accountant.ledger == [
        (SampledWithoutReplacementEvent(24, 6, GaussianEvent(0.0)), 3)]
    for one, two in zip(blocks[0].collect_params().values(),
                        blocks[1].collect_params().values()):
        np.testing.assert_allclose(one.data().asnumpy(), two.data().asnumpy(), rtol=1e-5,
                                   atol=1e-6)
    for xb, yb in DPDataLoader((x, y), expected_batch_size=6, trainer=trainers[1],
                               num_batches=1):
        backward(blocks[1], xb[:3], yb[:3])
        trainers[1].accumulate()
        with pytest.raises(BatchSizeMismatchError):
            trainers[1].step(3)  # half a logical batch is not the accounted event
    assert trainers[1].steps == 3


@pytest.mark.parametrize("sampling", ["fixed", "poisson"])
def test_one_step_cannot_join_parts_of_two_draws(sampling):
    """Review finding: accumulate() rows 0-2 of one draw, then step on 3 rows of the next
    draw, was charged as one step of B = 6; a record in both draws moved the clipped sum
    by 2.83C where the accountant assumes 2C."""
    from mxprivacy import SamplingError
    x, y = data(30)
    options = {} if sampling == "fixed" else dict(sampling="poisson", sample_rate=0.2,
                                                  dataset_size=None)
    block, trainer = build(sigma=0.0, **options)
    draws = iter(DPDataLoader((x, y), expected_batch_size=6, trainer=trainer, num_batches=3,
                              seed=4))
    xb, yb = next(draws)
    assert xb.shape[0] >= 2  # a draw in two parts (seeded)
    backward(block, xb[:1], yb[:1])
    trainer.accumulate()
    with pytest.raises(SamplingError, match="two draws"):
        next(draws)


# -- options ---------------------------------------------------------------------------
@pytest.mark.parametrize("options,match", [
    (dict(dataset_size=None), "dataset_size=N"),
    (dict(b=2.5), "whole number"),
    (dict(n=5, b=6), "cannot be drawn"),
    (dict(sample_rate=0.3), "disagrees"),
    (dict(sampling="shuffled"), "'poisson' or 'fixed'"),
    (dict(accountant=RDPAccountant()), "neighboring='replace_one'"),
    (dict(sampling="poisson", accountant=RDPAccountant(neighboring="replace_one")),
     "neighboring='add_remove'"),
])
def test_fixed_options_are_validated(options, match):
    with pytest.raises(InvalidParameterError, match=match):
        build(**options)


def test_a_replace_one_accountant_template_is_used_for_fixed_sampling():
    _, trainer = build(accountant=RDPAccountant(orders=[2, 8, 32], neighboring="replace_one"))
    assert trainer.accountant.orders == (2.0, 8.0, 32.0)
    assert trainer.sample_rate == 0.2 and trainer.dataset_size == 30


# -- replace-one sensitivity of each clipping mode ------------------------------------------
def _update_shift(mode, clipping, block_options, clip=0.5, b=4):
    """Norm of the change of the clipped sum when record 0 of a fixed batch is replaced
    by its opposite (bias-free, zero-initialized layer: logits 0, so the two gradients
    are exactly opposite and large, and each clips to C)."""
    x = np.random.default_rng(3).normal(size=(b, 6)).astype(np.float32)
    x[0] *= 100
    other = x.copy()
    other[0] = -x[0]
    updates = []
    for batch in (x, other):
        net = gluon.nn.Dense(3, in_units=6, use_bias=False)
        net.initialize(mx.init.Zero())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PrivacyWarning)
            block, trainer = build(n=8, b=b, sigma=0.0, net=net, mode=mode, clip=clip,
                                   lr=1.0, clipping=clipping, block=block_options)
        trainer.expect_examples(b)  # the loader's hook: this batch is the drawn one
        backward(block, nd.array(batch), nd.zeros(b))
        trainer.step(b)
        updates.append(-net.weight.data().asnumpy() * b)
    return float(np.linalg.norm(updates[0] - updates[1])), trainer


@pytest.mark.parametrize("mode,clipping,block_options", [
    ("vectorized", "flat", {}), ("vectorized", "per_layer", {}),
    ("microbatch", "flat", {"num_microbatches": 2, "seed": 0})])
def test_a_replaced_record_moves_the_clipped_sum_by_at_most_2c(mode, clipping, block_options):
    """Replace-one sensitivity is 2C (not the add/remove C), and the accountant's
    assumption 2 x (noise std / sigma) = 2 x trainer.sensitivity covers it. Microbatches
    keep their add/remove factor 2, so their charge is conservative (4C assumed)."""
    shift, trainer = _update_shift(mode, clipping, block_options)
    assert 1.9 * 0.5 <= shift <= 2 * 0.5 * (1 + 1e-5)  # reaches about 2C, never more
    assert 2 * trainer.sensitivity >= shift
    assert trainer.sensitivity == (1.0 if mode == "microbatch" else 0.5)


def test_adaptive_clipping_noise_split_holds_under_replace_one():
    """The gradient (shift 2C, noise sigma_g C) and the centered count (a replaced
    record flips its +1/2 to -1/2: shift 1, noise count_noise) together are one Gaussian
    with mu^2 = (2/sigma_g)^2 + (1/count_noise)^2. The accountant charges
    GaussianEvent(z) under replace-one: mu = 2/z. The add/remove split
    sigma_g = (z^-2 - (2 count_noise)^-2)^-1/2 gives exactly that, since both shifts
    double."""
    x, y = data(30)
    for z, count_noise in [(1.0, 0.6), (1.1, 6.0), (3.0, 10.0)]:
        block, trainer = build(sigma=z, clipping="adaptive",
                               clipping_options={"count_noise": count_noise})
        sigma_g = trainer.gradient_noise_multiplier
        assert math.hypot(2 / sigma_g, 1 / count_noise) == pytest.approx(2 / z, rel=1e-12)
    train(block, trainer, DPDataLoader((x, y), expected_batch_size=6, trainer=trainer,
                                       num_batches=2))
    assert trainer.accountant.ledger == [
        (SampledWithoutReplacementEvent(30, 6, GaussianEvent(3.0)), 2)]
