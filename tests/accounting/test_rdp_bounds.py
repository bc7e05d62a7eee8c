"""RDP of fixed-size batches (Wang, Balle & Kasiviswanathan 2019) and of the
Poisson-subsampled Laplace mechanism: closed forms, quadrature and dp-accounting 0.6.0."""
import math
from decimal import Decimal, getcontext

import numpy as np
import pytest
from scipy import integrate

from mxprivacy.accounting import (GaussianEvent, LaplaceEvent, PLDAccountant, PoissonSampledEvent,
                                  RDPAccountant, SampledWithoutReplacementEvent, compute_rdp)
from mxprivacy.accounting._rdp_bounds import _log_b_upper, poisson_laplace_rdp, wor_gaussian_rdp

INTEGER_ORDERS = tuple(float(a) for a in [2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64, 128, 256])


def _fixed(n, batch, sigma, steps, orders=None):
    acc = RDPAccountant(orders, neighboring="replace_one")
    return acc.compose(SampledWithoutReplacementEvent(n, batch, GaussianEvent(sigma)), steps)


def test_full_batch_is_the_gaussian_with_sensitivity_2c():
    # B = n: every step sees every record; a replaced record moves the sum by 2C, so the
    # RDP is alpha (2C)^2 / (2 (sigma C)^2) = 2 alpha / sigma^2, and epsilon is that of
    # T Gaussian steps with noise sigma / 2.
    acc = _fixed(500, 500, 3.0, 7)
    np.testing.assert_allclose(acc.rdp, 7 * 2 * np.asarray(acc.orders) / 9.0, rtol=1e-12)
    half_noise = RDPAccountant().compose(GaussianEvent(1.5), 7)
    assert acc.get_epsilon(1e-5) == pytest.approx(half_noise.get_epsilon(1e-5), rel=1e-12)
    replaced_gaussian = RDPAccountant(neighboring="replace_one").compose(GaussianEvent(3.0), 7)
    assert replaced_gaussian.get_epsilon(1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)


@pytest.mark.parametrize("n,batch,sigma", [(1000, 10, 1.1), (60000, 256, 0.8),
                                           (100, 50, 2.0), (1000, 999, 4.0)])
def test_dominates_the_remove_type_pair_it_must_cover(n, batch, sigma):
    # Other records equal to the replacing one make a step exactly the Poisson-remove
    # pair (1-q) N(0) + q N(2C) against N(0): its Renyi divergence (exact, and checked
    # against quadrature in test_rdp.py) is a lower bound that any valid bound exceeds.
    # Reading sigma against C instead of 2C falls below it by a factor near 4.
    q = batch / n
    realizable = compute_rdp(q, sigma / 2, 1, INTEGER_ORDERS)
    bound = wor_gaussian_rdp(q, sigma / 2, INTEGER_ORDERS)
    assert np.all(bound >= realizable * (1 - 1e-12))
    assert np.all(_fixed(n, batch, sigma, 1, INTEGER_ORDERS).rdp >= realizable * (1 - 1e-12))


def test_zero_batch_and_zero_noise():
    assert _fixed(1000, 0, 1.0, 10).get_epsilon(1e-5) == 0.0
    assert _fixed(1000, 10, 0.0, 1).get_epsilon(1e-5) == math.inf


def _exact_log_b(length, c):
    """log B(l) = log sum_i (-1)^i C(l, i) e^{(i-1) i c}, with 200 significant digits."""
    getcontext().prec = 200
    total = sum((-1) ** i * math.comb(length, i) * (Decimal((i - 1) * i) * Decimal(c)).exp()
                for i in range(length + 1))
    return float(total.ln())


@pytest.mark.parametrize("c", [1e-4, 0.005, 0.125, 2.0])
def test_cancellation_allowance_keeps_b_above_its_exact_value(c):
    # B(l) is an alternating sum that loses up to all its digits for small c (large
    # noise); the bound adds the worst-case rounding error instead of trusting them.
    upper = _log_b_upper(c)
    for length in (2, 4, 10, 40, 100):
        exact = _exact_log_b(length, c)
        assert upper[length] >= exact - 1e-12
        largest_term = max(math.log(math.comb(length, i)) + (i - 1) * i * c
                           for i in range(length + 1))
        if exact > largest_term - 5:  # little cancellation: the allowance is negligible
            assert upper[length] == pytest.approx(exact, rel=1e-9)


# -- against dp-accounting 0.6.0 ------------------------------------------------------
dp_accounting = pytest.importorskip("dp_accounting")
from dp_accounting import dp_event, privacy_accountant  # noqa: E402
from dp_accounting.rdp import rdp_privacy_accountant  # noqa: E402

THEIR_ORDERS = list(rdp_privacy_accountant.DEFAULT_RDP_ORDERS)
GRID = [(1000, 10, 0.7, 100), (1000, 10, 2.0, 2000), (60000, 256, 1.1, 2000),
        (60000, 256, 5.0, 100), (10000, 1000, 1.1, 100), (500, 250, 2.0, 2000)]


def _theirs(n, batch, sigma, steps):
    acc = rdp_privacy_accountant.RdpAccountant(
        THEIR_ORDERS, privacy_accountant.NeighboringRelation.REPLACE_ONE)
    # dp_accounting reads the multiplier against the replace-one sensitivity 2C.
    acc.compose(dp_event.SampledWithoutReplacementDpEvent(
        n, batch, dp_event.GaussianDpEvent(sigma / 2)), steps)
    return acc


@pytest.mark.parametrize("n,batch,sigma,steps", GRID)
def test_matches_dp_accounting_on_their_orders(n, batch, sigma, steps):
    theirs = _theirs(n, batch, sigma, steps)
    ours = _fixed(n, batch, sigma, steps, THEIR_ORDERS)
    np.testing.assert_allclose(ours.rdp, theirs._rdp, rtol=1e-9)
    eps = ours.get_epsilon(1e-5)
    assert eps >= theirs.get_epsilon(1e-5) * (1 - 1e-9)
    assert eps <= theirs.get_epsilon(1e-5) * 1.01
    # Our default (denser) grid of orders can only lower epsilon, never raise it.
    assert _fixed(n, batch, sigma, steps).get_epsilon(1e-5) <= eps * (1 + 1e-9)


@pytest.mark.parametrize("n,batch,sigma", [(1000, 500, 20.0), (1000, 900, 50.0),
                                           (1000, 990, 1000.0)])
def test_large_noise_stays_tight(n, batch, sigma):
    # With large noise B(l) is all cancellation: a float alternating sum is noise (dp-
    # accounting's is 6x too large at some orders here, and may be too small at others)
    # and the worst-case rounding allowance alone swamps it. The Gaussian-moment bound
    # keeps the result within the factor of about 4 that Theorem 9 itself loses against
    # the realizable remove-type pair, at every order up to 256.
    orders = tuple(float(a) for a in range(2, 257))
    realizable = compute_rdp(batch / n, sigma / 2, 1, orders)
    ours = _fixed(n, batch, sigma, 1, orders).rdp
    assert np.all(ours >= realizable * (1 - 1e-12))
    assert np.all(ours <= 4.5 * realizable)


# -- Poisson-subsampled Laplace ---------------------------------------------------------
def _true_laplace_rdp(q, b, alpha, remove):
    """Renyi divergence of (1-q) Lap(0) + q Lap(1) and Lap(0), either way, by quadrature."""
    def integrand(x):
        p0 = math.exp(-abs(x) / b) / (2 * b)
        mix = (1 - q) * p0 + q * math.exp(-abs(x - 1) / b) / (2 * b)
        return p0 * (mix / p0) ** alpha if remove else mix * (p0 / mix) ** alpha
    pieces = [(-80 * b, 0.0), (0.0, 1.0), (1.0, 1 + 80 * b)]
    value = sum(integrate.quad(integrand, lo, hi, epsabs=0, epsrel=1e-13, limit=200)[0]
                for lo, hi in pieces)
    return math.log(value) / (alpha - 1)


@pytest.mark.parametrize("q,b", [(0.01, 1.0), (0.1, 0.5), (0.5, 2.0), (0.05, 0.2)])
def test_poisson_laplace_is_exact_at_integer_orders_and_above_elsewhere(q, b):
    orders = (1.5, 2.0, 3.0, 4.5, 10.0, 32.0)
    ours = poisson_laplace_rdp(q, b, orders)
    for alpha, value in zip(orders, ours):
        truth = max(_true_laplace_rdp(q, b, alpha, True), _true_laplace_rdp(q, b, alpha, False))
        assert value >= truth * (1 - 1e-9)
        if alpha == int(alpha):
            assert value == pytest.approx(truth, rel=1e-9)


def test_poisson_laplace_in_the_accountant():
    event = PoissonSampledEvent(0.05, LaplaceEvent(0.5))
    rdp = RDPAccountant().compose(event, 200)
    assert rdp.get_epsilon(1e-6) > PLDAccountant().compose(event, 200).get_epsilon(1e-6)
    # q = 1 is the Laplace mechanism itself.
    full = RDPAccountant().compose(PoissonSampledEvent(1.0, LaplaceEvent(2.0)), 3)
    np.testing.assert_allclose(full.rdp, RDPAccountant().compose(LaplaceEvent(2.0), 3).rdp)
