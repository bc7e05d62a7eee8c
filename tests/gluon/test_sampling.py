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


# -- fixed-size sampling: exactly B distinct examples, drawn afresh at every step --------
def _fixed_draws(n, b, steps, **kwargs):
    from mxprivacy.gluon.sampling import FixedSizeBatchSampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        sampler = FixedSizeBatchSampler(n, b, num_batches=steps, **kwargs)
    return [np.asarray(batch, dtype=np.int64) for batch in sampler]


@pytest.mark.parametrize("n,b", [(50, 10), (7, 7), (9, 1), (1000, 999), (3, 2)])
def test_every_fixed_batch_has_exactly_b_distinct_indices(n, b):
    for batch in _fixed_draws(n, b, 300):
        assert len(batch) == b and len(np.unique(batch)) == b
        assert batch.min() >= 0 and batch.max() < n and np.all(np.diff(batch) > 0)


def _inclusion_statistic(counts, steps, n, b):
    """Chi-square statistic of inclusion counts under uniform sampling without
    replacement: counts have mean T p and covariance T p (1-p) n/(n-1) (I - J/n), so
    sum (c - Tp)^2 / (T p (1-p) n/(n-1)) is chi-square with n - 1 degrees of freedom."""
    p = b / n
    return float(np.sum((counts - steps * p) ** 2) / (steps * p * (1 - p) * n / (n - 1)))


def test_fixed_inclusion_frequencies_are_uniform_with_stated_power():
    """n = 50, B = 10, 20,000 draws, alpha = 1e-3 (critical value 85.35 of chi2(49)).
    Power >= 0.99 against one index at p (1 +- 13 %) (p = 0.2), or against half the
    indices at p (1 + 1.9 %) and half at p (1 - 1.9 %): the non-central chi-square with
    lambda = sum (T dp_i)^2 / (T p (1-p) n/(n-1)) is checked below."""
    n, b, steps = 50, 10, 20000
    draws = _fixed_draws(n, b, steps)
    counts = np.bincount(np.concatenate(draws), minlength=n)
    assert counts.sum() == steps * b
    assert stats.chi2(n - 1).sf(_inclusion_statistic(counts, steps, n, b)) > ALPHA
    p, scale = b / n, steps * (b / n) * (1 - b / n) * n / (n - 1)
    critical = stats.chi2(n - 1).isf(ALPHA)
    one = np.r_[0.13 * p, np.full(n - 1, -0.13 * p / (n - 1))]
    half = np.r_[np.full(n // 2, 0.019 * p), np.full(n // 2, -0.019 * p)]
    for deviation in (one, half):
        lam = np.sum((steps * deviation) ** 2) / scale
        assert stats.ncx2(n - 1, lam).sf(critical) >= 0.99


def test_every_fixed_subset_is_equally_likely():
    # N = 6, B = 3: 20 subsets; 20,000 draws are multinomial(20000, 1/20) if uniform.
    draws = _fixed_draws(6, 3, 20000)
    codes = np.array([int(np.sum(1 << batch)) for batch in draws])
    _, counts = np.unique(codes, return_counts=True)
    assert len(counts) == 20
    assert stats.chisquare(counts).pvalue > ALPHA


def test_fixed_batches_are_independent_across_steps():
    """Not an epoch permutation: consecutive batches overlap like two independent
    draws, |S_t & S_t+1| ~ Hypergeometric(N, B, B) (mean B^2/N = 2; a shuffled epoch
    gives 0 within an epoch), and an index of S_t is in S_t+1 with probability B/N."""
    n, b, steps = 50, 10, 20000
    draws = _fixed_draws(n, b, steps)
    overlaps = np.array([len(np.intersect1d(a, c)) for a, c in zip(draws, draws[1:])])
    law = stats.hypergeom(n, b, b)
    rate = overlaps.sum() / (b * len(overlaps))  # P(i in S_t+1 | i in S_t)
    se = np.sqrt(law.var() / len(overlaps)) / b
    assert abs(rate - b / n) < 5 * se  # 5 s.e. = 0.004
    observed = np.bincount(np.minimum(overlaps, 5), minlength=6)
    expected = np.r_[law.pmf(np.arange(5)), law.sf(4)] * len(overlaps)
    assert stats.chisquare(observed, expected).pvalue > ALPHA


def test_fixed_sampler_is_secret_by_default_and_seeds_warn():
    from mxprivacy.gluon.sampling import FixedSizeBatchSampler
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrivacyWarning)
        first = [FixedSizeBatchSampler(10 ** 6, 20).draw() for _ in range(2)]
    assert first[0] != first[1]  # OS entropy: equal with probability ~ 1e-80
    with pytest.warns(PrivacyWarning, match="anyone who knows the seed"):
        FixedSizeBatchSampler(100, 10, seed=0)
    np.testing.assert_array_equal(_fixed_draws(100, 10, 3, seed=4),
                                  _fixed_draws(100, 10, 3, seed=4))  # reproducible on request
    with pytest.raises(InvalidParameterError, match="secure mode"):
        FixedSizeBatchSampler(100, 10, seed=0, secure=True)


def test_secure_fixed_sampler_draws_from_urandom(byte_stream):
    from mxprivacy.gluon.sampling import FixedSizeBatchSampler
    sampler = FixedSizeBatchSampler(500, 30, num_batches=4, secure=True)
    assert sampler._rng is None
    batches = list(sampler)
    assert len(byte_stream) >= 4 and all(size % 8 == 0 for size in byte_stream)
    assert all(len(set(batch)) == 30 for batch in batches)


def test_secure_fixed_sampler_is_uniform():
    n, b, steps = 20, 5, 4000
    draws = _fixed_draws(n, b, steps, secure=True)
    counts = np.bincount(np.concatenate(draws), minlength=n)
    assert all(len(np.unique(batch)) == b for batch in draws)
    assert stats.chi2(n - 1).sf(_inclusion_statistic(counts, steps, n, b)) > ALPHA


def fake_fixed_trainer(n=50, b=10):
    return types.SimpleNamespace(sampling="fixed", dataset_size=n, expected_batch_size=b,
                                 sample_rate=b / n, secure_mode=False,
                                 expect_examples=lambda count: None)


def test_fixed_loader_yields_ceil_n_over_b_batches_of_b():
    loader = DPDataLoader(data(50), expected_batch_size=15, sampling="fixed")
    assert loader.sampling == "fixed" and len(loader) == 4  # ceil(50 / 15)
    shapes = [x.shape for x, _ in loader]
    assert shapes == [(15, 5)] * 4 and loader.empty_batches == 0
    assert DPDataLoader(data(50), 0.2, sampling="fixed").sampler.batch_size == 10
    assert DPDataLoader(data(50), expected_batch_size=10,
                        trainer=fake_fixed_trainer()).sampling == "fixed"  # follows it


@pytest.mark.parametrize("bad", [0, 51, 2.5, True, "10"])
def test_fixed_loader_needs_a_whole_batch_size(bad):
    with pytest.raises(InvalidParameterError, match="expected_batch_size"):
        DPDataLoader(data(50), expected_batch_size=bad, sampling="fixed")


def test_fixed_loader_refuses_a_rate_that_is_not_a_whole_batch():
    with pytest.raises(InvalidParameterError, match="whole number"):
        DPDataLoader(data(50), 0.123, sampling="fixed")


def test_loader_and_trainer_must_agree_on_the_sampling():
    with pytest.raises(InvalidParameterError, match="sampling='poisson'"):
        DPDataLoader(data(50), expected_batch_size=10, sampling="fixed",
                     trainer=fake_trainer(0.2))
    with pytest.raises(InvalidParameterError, match="sampling='fixed'"):
        DPDataLoader(data(50), expected_batch_size=10, sampling="poisson",
                     trainer=fake_fixed_trainer())
    with pytest.raises(InvalidParameterError, match="'poisson' or 'fixed'"):
        DPDataLoader(data(50), expected_batch_size=10, sampling="shuffled")


@pytest.mark.parametrize("n,b,match", [(50, 12, "B = 10 of N = 50"),
                                       (60, 10, "B = 10 of N = 50")])
def test_fixed_loader_draws_the_trainers_n_and_b(n, b, match):
    with pytest.raises(InvalidParameterError, match=match):
        DPDataLoader(data(n), expected_batch_size=b, trainer=fake_fixed_trainer())
