"""Seeded goodness-of-fit tests of every sampler, fast and secure.

Each test draws N = 20,000 values and accepts the right distribution at level
alpha = 0.001. The same sample must also *reject* a distribution whose scale is 6 % off
(power check). With this N, the KS and chi-square tests have power above 0.99 against a
6 % scale error. The secure samplers read ``os.urandom``; here it is replaced by a seeded
byte stream, so the tests are deterministic.
"""
import numpy as np
import pytest
from scipy import stats

from mxprivacy.mechanisms import GaussianMechanism, LaplaceMechanism, secure

N = 20000
ALPHA = 1e-3


@pytest.fixture
def seeded_urandom(monkeypatch):
    rng = np.random.default_rng(1234)
    monkeypatch.setattr(secure.os, "urandom", lambda n: rng.bytes(n))


def _ks_accepts_and_rejects_off_scale(sample, dist, scale):
    assert stats.kstest(sample, dist(scale=scale).cdf).pvalue > ALPHA
    assert stats.kstest(sample, dist(scale=scale * 1.06).cdf).pvalue < ALPHA


def _chi2_pvalue(sample, pmf, support):
    outside = np.sum(np.abs(sample) > support.max())
    observed = np.array([np.sum(sample == k) for k in support] + [outside])
    probs = np.append(pmf(support), 0.0)
    probs[-1] = max(0.0, 1.0 - probs.sum())
    keep = probs * len(sample) >= 5  # merge sparse cells into the tail cell
    observed = np.append(observed[keep], observed[~keep].sum())
    probs = np.append(probs[keep], probs[~keep].sum())
    mask = probs > 0
    return stats.chisquare(observed[mask], probs[mask] * len(sample)).pvalue


def _discrete_laplace_pmf(scale):
    p = np.exp(-1.0 / scale)
    return lambda k: (1 - p) / (1 + p) * p ** np.abs(k)


def _discrete_gaussian_pmf(sigma):
    grid = np.arange(-60 * sigma, 60 * sigma + 1)
    norm = np.exp(-grid ** 2 / (2 * sigma ** 2)).sum()
    return lambda k: np.exp(-np.asarray(k) ** 2 / (2 * sigma ** 2)) / norm


def test_fast_laplace():
    sample = LaplaceMechanism(0.5, 1.0, random_state=0)(np.zeros(N))
    _ks_accepts_and_rejects_off_scale(sample, stats.laplace, 2.0)


def test_fast_gaussian():
    mech = GaussianMechanism(1.0, 1e-5, 1.0, random_state=0)
    _ks_accepts_and_rejects_off_scale(mech(np.zeros(N)), stats.norm, mech.sigma)


@pytest.mark.parametrize("scale", [1, 3])
def test_discrete_laplace_is_exact(seeded_urandom, scale):
    sample = secure.discrete_laplace(scale, N)
    support = np.arange(-12 * scale, 12 * scale + 1)
    assert _chi2_pvalue(sample, _discrete_laplace_pmf(scale), support) > ALPHA
    assert _chi2_pvalue(sample, _discrete_laplace_pmf(scale * 1.06), support) < ALPHA


@pytest.mark.parametrize("sigma", [1, 3])
def test_discrete_gaussian_is_exact(seeded_urandom, sigma):
    sample = secure.discrete_gaussian(sigma, N)
    support = np.arange(-8 * sigma, 8 * sigma + 1)
    assert _chi2_pvalue(sample, _discrete_gaussian_pmf(sigma), support) > ALPHA
    assert _chi2_pvalue(sample, _discrete_gaussian_pmf(sigma * 1.06), support) < ALPHA


def test_bernoulli_exp_probabilities(seeded_urandom):
    for num, den in [(1, 2), (3, 2), (7, 3)]:
        hits = secure.bernoulli_exp(np.full(N, num), np.full(N, den)).sum()
        assert stats.binomtest(int(hits), N, np.exp(-num / den)).pvalue > ALPHA


def test_uniform_below_is_uniform(seeded_urandom):
    draws = secure.uniform_below(np.full(N, 7))
    counts = np.bincount(draws, minlength=7)
    assert draws.min() >= 0 and draws.max() < 7
    assert stats.chisquare(counts).pvalue > ALPHA


def test_secure_gaussian_mechanism(seeded_urandom):
    mech = GaussianMechanism(1.0, 1e-5, 1.0, secure=True)
    sample = mech(np.full((N, 1), 0.3))
    effective, step, grid_sigma = mech._grid_sigma(1)
    np.testing.assert_allclose(sample / step, np.rint(sample / step), atol=1e-6)  # on the grid
    assert grid_sigma * step >= mech.sigma  # never less noise than the continuous mechanism
    _ks_accepts_and_rejects_off_scale(sample.ravel() - np.rint(0.3 / step) * step,
                                      stats.norm, grid_sigma * step)


def test_secure_laplace_mechanism_keeps_epsilon(seeded_urandom):
    mech = LaplaceMechanism(0.5, 1.0, secure=True)
    sample = mech(np.zeros((N // 4, 4)))
    step = mech.scale / 1024
    np.testing.assert_allclose(sample / step, np.rint(sample / step), atol=1e-6)
    # Widened scale: the L1 rounding slack 4 * step is paid for, so epsilon still holds.
    grid_scale = np.ceil((1.0 + 4 * step) / (step * 0.5))
    assert (1.0 + 4 * step) / (grid_scale * step) <= 0.5
    _ks_accepts_and_rejects_off_scale(sample.ravel(), stats.laplace, grid_scale * step)


def _stream_of(monkeypatch, *words):
    """os.urandom yielding the given 64-bit words in order."""
    data = bytearray(np.array(words, dtype=np.uint64).tobytes())

    def fake(n):
        chunk = bytes(data[:n])
        del data[:n]
        assert len(chunk) == n, "stream exhausted"
        return chunk
    monkeypatch.setattr(secure.os, "urandom", fake)


def test_bernoulli_is_exact_on_ties(monkeypatch):
    # q = 2^-20 + 2^-72 (a float64): floor(q 2^64) = 2^44, and a draw equal to it
    # decides on the remaining bits, 2^-8, i.e. the next draw against 2^56. Comparing a
    # 53-bit uniform with q would drop the 2^-72 term.
    q = 2.0 ** -20 + 2.0 ** -72
    _stream_of(monkeypatch, 2 ** 44 - 1, 2 ** 44, 2 ** 44 + 1, 2 ** 56 - 1)
    assert secure.bernoulli(q, 3).tolist() == [True, True, False]
    _stream_of(monkeypatch, 2 ** 44, 2 ** 56)
    assert secure.bernoulli(q, 1).tolist() == [False]
    # A rate below 2^-64 still includes with its exact probability, never zero.
    _stream_of(monkeypatch, 0, 2 ** 48 - 1)
    assert secure.bernoulli(2.0 ** -80, 1).tolist() == [True]


def test_bernoulli_edges_and_frequency(seeded_urandom):
    assert secure.bernoulli(1.0, 5).all() and not secure.bernoulli(0.0, 5).any()
    with pytest.raises(ValueError):
        secure.bernoulli(1.5, 3)
    hits = int(secure.bernoulli(0.3, N).sum())
    assert stats.binomtest(hits, N, 0.3).pvalue > ALPHA
    assert stats.binomtest(hits, N, 0.3 * 1.06).pvalue < ALPHA  # power check


def test_secure_standard_normal(seeded_urandom):
    sample = secure.standard_normal(N)
    assert sample.dtype == np.float32
    _ks_accepts_and_rejects_off_scale(sample.astype(np.float64), stats.norm, 1.0)
