"""Poisson sampling and the DP data loader: secrecy of the sample, rate agreement with the
trainer, and the secure (CSPRNG) sampler."""
import os
import types
import warnings

import numpy as np
from mxnet import nd
import pytest
from scipy import stats

from mxprivacy import DPDataLoader, EmptyBatchError, InvalidParameterError, PoissonBatchSampler
from mxprivacy.errors import PrivacyWarning

from .test_trainer import make

ALPHA = 1e-3


def seeded(*args, **kwargs):
    with pytest.warns(PrivacyWarning, match="secret sample"):
        return PoissonBatchSampler(*args, **kwargs)


def fake_trainer(rate, secure=False):
    return types.SimpleNamespace(sample_rate=rate, secure_mode=secure, step=lambda n: None)


def data(n=50):
    x = np.random.default_rng(0).normal(size=(n, 5)).astype(np.float32)
    return x, np.zeros(n, dtype=np.float32)


def test_inclusion_is_bernoulli_q():
    sampler = seeded(1000, 0.05, num_batches=400, seed=0)
    sizes = np.array([len(b) for b in sampler])
    # Batch size ~ Binomial(1000, 0.05): mean 50, var 47.5; 400 draws give a s.e. of
    # the mean of 0.34, so |mean - 50| < 1.5 fails with prob. < 1e-5 if correct.
    assert abs(sizes.mean() - 50) < 1.5
    draws = [np.asarray(b, dtype=np.int64) for b in seeded(20, 0.3, num_batches=2000, seed=1)]
    counts = np.bincount(np.concatenate(draws), minlength=20)
    assert stats.chisquare(counts).pvalue > ALPHA  # every index equally likely


def test_sampler_defaults_and_validation():
    assert len(PoissonBatchSampler(100, 0.01)) == 100
    for rate in (0, 1.2):
        with pytest.raises(InvalidParameterError):
            PoissonBatchSampler(100, rate)


def test_empty_batches_take_a_noisy_step():
    x, y = data(100)
    block, trainer = make(sigma=1.0, sample_rate=0.01, expected=1)  # qN = 1
    block(nd.array(x[:2]))  # finish deferred initialization
    with pytest.warns(PrivacyWarning):
        loader = DPDataLoader((x, y), 0.01, trainer=trainer, num_batches=30, seed=3)
    seen = sum(1 for _ in loader)
    assert loader.empty_batches > 0
    assert trainer.steps == loader.empty_batches  # the loop body never stepped
    assert seen + loader.empty_batches == 30
    with pytest.raises(EmptyBatchError), pytest.warns(PrivacyWarning):
        list(DPDataLoader((x, y), 0.01, num_batches=30, seed=3))


# -- path 1: the sample is secret by default ----------------------------------------------
def test_default_sampling_is_unseeded_and_silent():
    x, y = data(1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrivacyWarning)
        first = [next(iter(DPDataLoader((x, y), 0.1).sampler)) for _ in range(2)]
        PoissonBatchSampler(1000, 0.1)
    # Two loaders built alike draw the same first batch with probability ~ 1e-28 when
    # seeded from the OS (a fixed default seed would make them equal).
    assert first[0] != first[1]


def test_explicit_seed_warns_that_the_sample_must_be_secret():
    with pytest.warns(PrivacyWarning, match="anyone who knows the seed"):
        PoissonBatchSampler(100, 0.1, seed=0)
    with pytest.warns(PrivacyWarning, match="secret sample"):
        DPDataLoader(data(), 0.1, seed=0)
    # Reproducible on request.
    assert list(seeded(100, 0.1, seed=5)) == list(seeded(100, 0.1, seed=5))


def test_seed_with_secure_mode_is_an_error():
    with pytest.raises(InvalidParameterError, match="secure mode"):
        PoissonBatchSampler(100, 0.1, seed=0, secure=True)
    with pytest.raises(InvalidParameterError, match="secure mode"):
        DPDataLoader(data(), 0.1, seed=0, secure_mode=True)
    with pytest.raises(InvalidParameterError, match="secure mode"):
        DPDataLoader(data(), 0.1, seed=0, trainer=fake_trainer(0.1, secure=True))


# -- path 8a: the loader samples at the trainer's q ---------------------------------------
def test_loader_refuses_a_rate_different_from_the_trainers():
    _, trainer = make(sample_rate=0.01)
    with pytest.raises(InvalidParameterError, match=r"0\.5.*0\.01"):
        DPDataLoader(data(), 0.5, trainer=trainer)
    # expected_batch_size: q = B / N = 25 / 50 against the trainer's 0.01.
    with pytest.raises(InvalidParameterError, match=r"25 / 50 = 0\.5.*0\.01"):
        DPDataLoader(data(), expected_batch_size=25, trainer=trainer)
    with pytest.raises(InvalidParameterError, match="trainer"):
        DPDataLoader(data(), 0.01 * (1 + 1e-6), trainer=trainer)
    DPDataLoader(data(), 0.01 * (1 + 1e-12), trainer=trainer)  # rounding only
    DPDataLoader(data(100), expected_batch_size=1, trainer=trainer)  # 1/100 == 0.01


def test_loader_validates_expected_batch_size():
    for bad in (0, -3, 51, "abc", float("nan")):
        with pytest.raises(InvalidParameterError):
            DPDataLoader(data(), expected_batch_size=bad)


# -- secure mode ------------------------------------------------------------------------
def test_secure_mode_follows_the_trainer():
    assert DPDataLoader(data(), 0.1, trainer=fake_trainer(0.1, secure=True)).sampler.secure
    assert not DPDataLoader(data(), 0.1, trainer=fake_trainer(0.1)).sampler.secure
    assert not DPDataLoader(data(), 0.1).secure_mode
    assert DPDataLoader(data(), 0.1, secure_mode=True, trainer=fake_trainer(0.1)).secure_mode
    with pytest.raises(InvalidParameterError, match="secure_mode"):
        DPDataLoader(data(), 0.1, trainer=fake_trainer(0.1, secure=True), secure_mode=False)


@pytest.fixture
def byte_stream(monkeypatch):
    """os.urandom replaced by a seeded stream; returns the list of requested sizes."""
    rng, calls = np.random.default_rng(77), []

    def fake(n):
        calls.append(n)
        return rng.bytes(n)
    monkeypatch.setattr(os, "urandom", fake)
    return calls


def test_secure_sampler_is_the_urandom_stream_against_q(byte_stream):
    q, n = 0.3, 500
    batches = list(PoissonBatchSampler(n, q, num_batches=3, secure=True))
    assert byte_stream == [8 * n] * 3  # one 64-bit integer per example and step
    expected = np.random.default_rng(77)
    for batch in batches:
        draws = np.frombuffer(expected.bytes(8 * n), dtype=np.uint64)
        # Exact comparison with floor(q 2^64) (ties, of prob. 2^-64, aside).
        assert batch == np.flatnonzero(draws < np.uint64(int(q * 2 ** 64))).tolist()


def test_secure_sampler_inclusion_rate_and_independence():
    n, q, steps = 1000, 0.05, 400
    masks = np.zeros((steps, n), dtype=bool)
    for t, batch in enumerate(PoissonBatchSampler(n, q, num_batches=steps, secure=True)):
        masks[t, batch] = True
    # Total inclusions ~ Binomial(400000, 0.05): s.d. 137.8, so a 5 s.d. band (+-3.4 %
    # of q) fails with prob. 6e-7 when correct, and catches a 5 % error in q for sure.
    total = masks.sum()
    assert abs(total - steps * n * q) < 5 * np.sqrt(steps * n * q * (1 - q))
    assert stats.chisquare(masks.sum(axis=0)).pvalue > ALPHA  # no index favoured
    # Steps are independent: inclusion at t and t+1 uncorrelated (|r| < 5 s.e.).
    r = np.corrcoef(masks[:-1].ravel(), masks[1:].ravel())[0, 1]
    assert abs(r) < 5 / np.sqrt(masks[1:].size)
    assert stats.chi2_contingency(np.histogram2d(masks[:-1].ravel(), masks[1:].ravel(),
                                                 bins=2)[0]).pvalue > ALPHA


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_num_batches_must_be_a_positive_integer(bad):
    from mxprivacy import InvalidParameterError, PoissonBatchSampler
    with pytest.raises(InvalidParameterError, match="num_batches"):
        PoissonBatchSampler(10, 0.5, num_batches=bad)


def test_dataset_batches_land_on_the_requested_context():
    import mxnet as mx
    from mxnet import gluon as g
    from mxprivacy import DPDataLoader
    data = g.data.ArrayDataset(np.ones((20, 2), dtype=np.float32), np.arange(20))
    loader = DPDataLoader(data, 1.0, ctx=mx.cpu(1), num_batches=1)
    x, y = next(iter(loader))
    assert x.context == mx.cpu(1) and y.context == mx.cpu(1)


def test_loader_with_several_contexts_yields_per_device_slices():
    import mxnet as mx
    from mxnet import gluon as g
    contexts = [mx.cpu(0), mx.cpu(1)]
    x = np.arange(14, dtype=np.float32).reshape(7, 2)
    y = np.arange(7)
    for data in ((x, y), g.data.ArrayDataset(x, y)):
        loader = DPDataLoader(data, 1.0, ctx=contexts, num_batches=1)
        xs, ys = next(iter(loader))
        assert [a.shape[0] for a in xs] == [4, 3] == [b.shape[0] for b in ys]
        assert [a.context for a in xs] == contexts == [b.context for b in ys]
        np.testing.assert_array_equal(np.concatenate([a.asnumpy() for a in xs]), x)
        np.testing.assert_array_equal(np.concatenate([b.asnumpy() for b in ys]), y)
    (one,), = next(iter(DPDataLoader((x[:1],), 1.0, ctx=contexts, num_batches=1)))
    assert one.context == mx.cpu(0) and one.shape == (1, 2)  # one row: one device
    with pytest.raises(InvalidParameterError, match="twice"):
        DPDataLoader((x,), 1.0, ctx=[mx.cpu(0), mx.cpu(0)])


def test_multi_device_training_loop_with_empty_and_tiny_batches():
    import mxnet as mx
    from mxnet import autograd
    from .helpers import LOSS, mlp
    contexts = [mx.cpu(0), mx.cpu(1)]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 5)).astype(np.float32), rng.integers(0, 3, 20)
    net = mlp(seed=3)
    net(nd.array(x[:1]))
    net.collect_params().reset_ctx(contexts)
    block, trainer = make(net, sigma=1.0, expected=1, sample_rate=0.05)
    trainer._size_check.enabled = False
    loader = DPDataLoader((x, y), expected_batch_size=1, trainer=trainer, num_batches=60,
                          ctx=contexts)
    sizes = []
    for xs, ys in loader:  # the README's multi-device loop
        with autograd.record():
            losses = [LOSS(block(a), b) for a, b in zip(xs, ys)]
        autograd.backward(losses)
        trainer.step(sum(len(a) for a in xs))
        sizes.append(len(xs))
    assert trainer.steps == 60 == len(sizes) + loader.empty_batches
    assert loader.empty_batches > 0 and 1 in sizes  # empty steps and a one-device batch
    for p in block.collect_params().values():
        np.testing.assert_array_equal(p.data(mx.cpu(0)).asnumpy(), p.data(mx.cpu(1)).asnumpy())
