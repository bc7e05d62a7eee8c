"""RDP accountant against published values, numerical integration and dp-accounting."""
import math

import numpy as np
import pytest
from scipy import integrate, stats

from mxprivacy.accounting import (GaussianEvent, PoissonSampledEvent, RDPAccountant, compute_rdp,
                                  rdp_to_epsilon, rdp_to_epsilon_classic)

OPACUS_ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
TF_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def test_compute_rdp_matches_tf_privacy_and_opacus():
    got = compute_rdp(0.01, 2.5, 50, [1.5, 2.5, 5, 50, 100])
    want = [6.5007e-4, 1.0854e-3, 2.1808e-3, 2.3846e-2, 1.6742e2]
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_opacus_reference_epsilon():
    eps, _ = rdp_to_epsilon(OPACUS_ALPHAS, compute_rdp(0.04, 1.5, 2250, OPACUS_ALPHAS), 1e-5)
    assert eps == pytest.approx(7.32911117143, rel=1e-9)


@pytest.mark.parametrize("n,b,sigma,epochs,delta,want", [
    (60000, 150, 1.3, 15, 1e-5, 0.7242234026109595),
    (100000, 100, 1.0, 30, 1e-7, 1.4154988495444842),
])
def test_tf_privacy_compute_dp_sgd_privacy(n, b, sigma, epochs, delta, want):
    # These published values are reproduced by the *improved* conversion (TF Privacy's
    # compute_dp_sgd_privacy now goes through dp_accounting's RdpAccountant).
    steps = int(math.ceil(epochs * n / b))
    rdp = compute_rdp(b / n, sigma, steps, TF_ORDERS)
    assert rdp_to_epsilon(TF_ORDERS, rdp, delta)[0] == pytest.approx(want, rel=1e-9)
    # The classic conversion is strictly looser on the same curve.
    assert rdp_to_epsilon_classic(TF_ORDERS, rdp, delta)[0] > want * 1.2


def test_classic_conversion_formula():
    orders, rdp = [2.0, 4.0, 8.0], [0.1, 0.3, 0.9]
    eps, order = rdp_to_epsilon_classic(orders, rdp, 1e-5)
    want = min(r - math.log(1e-5) / (a - 1) for a, r in zip(orders, rdp))
    assert eps == pytest.approx(want) and order == 8.0


def test_full_batch_gaussian_reference():
    acc = RDPAccountant().compose(GaussianEvent(4.530877117))
    assert acc.get_epsilon(1e-6) == pytest.approx(1.0, abs=1e-4)


def _true_log_a(q, sigma, alpha, remove_direction):
    """log E_{p0}[(mix/p0)^alpha] (remove) or log E_{mix}[(p0/mix)^alpha] (add) by quadrature."""
    power = alpha if remove_direction else 1 - alpha

    def integrand(z):
        ratio = (1 - q) + q * math.exp((2 * z - 1) / (2 * sigma ** 2))
        return stats.norm.pdf(z, 0, sigma) * ratio ** power
    return math.log(integrate.quad(integrand, -20 * sigma, 20 * sigma + 1, epsabs=1e-14,
                                   epsrel=1e-12, limit=400)[0])


@pytest.mark.parametrize("q,sigma", [(0.01, 2.5), (0.05, 1.0), (0.2, 0.8)])
@pytest.mark.parametrize("alpha", [1.5, 2.5, 3.7, 6.25])
def test_fractional_orders_are_exact_and_dominate_both_directions(q, sigma, alpha):
    ours = compute_rdp(q, sigma, 1, [alpha])[0]
    forward = _true_log_a(q, sigma, alpha, True) / (alpha - 1)
    backward = _true_log_a(q, sigma, alpha, False) / (alpha - 1)
    assert ours == pytest.approx(forward, rel=1e-5)
    assert ours >= backward * (1 - 1e-6)  # a valid upper bound for either neighbour


def test_integer_orders_match_integration():
    for alpha in (2, 3, 8):
        want = _true_log_a(0.02, 1.1, alpha, True) / (alpha - 1)
        assert compute_rdp(0.02, 1.1, 1, [alpha])[0] == pytest.approx(want, rel=1e-6)


def test_heterogeneous_history_adds_curves():
    acc = RDPAccountant()
    acc.compose(PoissonSampledEvent(0.01, GaussianEvent(1.0)), 100)
    acc.compose(PoissonSampledEvent(0.02, GaussianEvent(2.0)), 50)
    want = compute_rdp(0.01, 1.0, 100, acc.orders) + compute_rdp(0.02, 2.0, 50, acc.orders)
    np.testing.assert_allclose(acc.rdp, want)


def test_optimal_order_is_reported():
    acc = RDPAccountant().compose(PoissonSampledEvent(0.01, GaussianEvent(1.1)), 1000)
    eps, order = acc.get_epsilon_and_order(1e-5)
    assert order in acc.orders
    assert eps == pytest.approx(rdp_to_epsilon(acc.orders, acc.rdp, 1e-5)[0])
