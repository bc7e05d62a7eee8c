"""GDP accountant: Opacus' reference value, closed forms, and why it is no upper bound."""
import math

import pytest
from scipy import optimize, stats

from mxprivacy.accounting import (ComposedEvent, EpsilonDeltaEvent, GaussianEvent, GDPAccountant,
                                  LaplaceEvent, PLDAccountant, PoissonSampledEvent,
                                  SampledWithoutReplacementEvent)
from mxprivacy.accounting.gdp import gdp_delta, gdp_epsilon
from mxprivacy.errors import InvalidParameterError, UnsupportedEventError


def test_opacus_reference_value():
    # Opacus' GDP accountant test: q = 0.04, sigma = 1.5, 2249 steps, delta = 1e-5.
    acc = GDPAccountant().compose(PoissonSampledEvent(0.04, GaussianEvent(1.5)), 2249)
    assert 6.59 < acc.get_epsilon(1e-5) < 6.60
    # mu = q sqrt(T (e^{1/sigma^2} - 1)) (Bu, Dong, Long & Su 2020).
    assert acc.mu == pytest.approx(0.04 * math.sqrt(2249 * math.expm1(1 / 1.5 ** 2)), rel=1e-12)


def test_duality_formula_and_its_inverse():
    # delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2) (Dong, Roth & Su).
    for mu, eps in [(0.5, 0.3), (1.0, 1.0), (3.0, 4.0)]:
        want = stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)
        assert gdp_delta(mu, eps) == pytest.approx(want, rel=1e-12)
        found = gdp_epsilon(mu, want)
        assert found == pytest.approx(eps, rel=1e-9) and gdp_delta(mu, found) <= want
    assert gdp_epsilon(0.0, 1e-5) == 0.0 and gdp_epsilon(math.inf, 1e-5) == math.inf


@pytest.mark.parametrize("relation,mu0", [("add_remove", 1 / 1.7), ("replace_one", 2 / 1.7)])
def test_plain_gaussian_is_exact_and_matches_pld(relation, mu0):
    # Without subsampling GDP is exact: T steps are sqrt(T) mu0-GDP, mu0 = sensitivity /
    # noise (2C / sigma C under replace-one). The tight PLD value agrees.
    gdp = GDPAccountant(neighboring=relation).compose(GaussianEvent(1.7), 9)
    assert gdp.mu == pytest.approx(3 * mu0, rel=1e-12)
    pld = PLDAccountant(neighboring=relation).compose(GaussianEvent(1.7), 9)
    assert gdp.get_epsilon(1e-6) == pytest.approx(pld.get_epsilon(1e-6), rel=2e-3)
    assert gdp.get_epsilon(1e-6) <= pld.get_epsilon(1e-6)


def test_fixed_batches_use_the_uniform_subsampling_limit():
    # Dong, Roth & Su (Corollary 5.4) / Opacus' compute_mu_uniform, with mu0 = 2/sigma:
    # mu = sqrt(2) q sqrt(T) sqrt(e^{mu0^2} Phi(1.5 mu0) + 3 Phi(-mu0/2) - 2).
    n, batch, sigma, steps = 60000, 256, 2.2, 5000
    q, mu0 = batch / n, 2 / sigma
    want = math.sqrt(2) * q * math.sqrt(steps) * math.sqrt(
        math.exp(mu0 ** 2) * stats.norm.cdf(1.5 * mu0) + 3 * stats.norm.cdf(-mu0 / 2) - 2)
    acc = GDPAccountant(neighboring="replace_one").compose(
        SampledWithoutReplacementEvent(n, batch, GaussianEvent(sigma)), steps)
    assert acc.mu == pytest.approx(want, rel=1e-12)
    full = GDPAccountant(neighboring="replace_one").compose(
        SampledWithoutReplacementEvent(100, 100, GaussianEvent(sigma)), 4)
    assert full.mu == pytest.approx(2 * mu0, rel=1e-12)  # B = n: the exact Gaussian


def test_not_an_upper_bound():
    # Below a proven *lower* bound on the true epsilon: dp-accounting's optimistic PLD.
    their = pytest.importorskip("dp_accounting.pld.privacy_loss_distribution")
    optimistic = their.from_gaussian_mechanism(
        0.6, sampling_prob=0.001, pessimistic_estimate=False, use_connect_dots=False,
        value_discretization_interval=1e-3).self_compose(1000).get_epsilon_for_delta(1e-5)
    gdp = GDPAccountant().compose(PoissonSampledEvent(0.001, GaussianEvent(0.6)), 1000)
    assert gdp.get_epsilon(1e-5) < 0.5 * optimistic  # 0.43 against at least 1.13
    assert GDPAccountant.is_upper_bound is False


@pytest.mark.parametrize("relation,event,names", [
    ("add_remove", LaplaceEvent(1.0), ["GDPAccountant", "LaplaceEvent"]),
    ("add_remove", EpsilonDeltaEvent(1.0), ["EpsilonDeltaEvent"]),
    ("add_remove", PoissonSampledEvent(0.1, LaplaceEvent(1.0)), ["sub-event", "LaplaceEvent"]),
    ("add_remove", SampledWithoutReplacementEvent(10, 2, GaussianEvent(1.0)),
     ["SampledWithoutReplacementEvent", "replace_one"]),
    ("replace_one", PoissonSampledEvent(0.1, GaussianEvent(1.0)),
     ["PoissonSampledEvent", "add_remove"]),
    ("replace_one", SampledWithoutReplacementEvent(10, 2, LaplaceEvent(1.0)),
     ["sub-event", "LaplaceEvent"]),
])
def test_refusals_name_the_event(relation, event, names):
    acc = GDPAccountant(neighboring=relation)
    with pytest.raises(UnsupportedEventError) as info:
        acc.compose(ComposedEvent([GaussianEvent(2.0), event]))
    for name in names:
        assert name in str(info.value)
    assert acc.mu == 0.0


def test_zero_noise_and_bad_queries():
    assert GDPAccountant().compose(PoissonSampledEvent(0.01, GaussianEvent(0.0))).mu == math.inf
    assert GDPAccountant().compose(PoissonSampledEvent(0.01, GaussianEvent(1e-300))) \
        .get_epsilon(1e-5) == math.inf
    with pytest.raises(InvalidParameterError):
        GDPAccountant().get_epsilon(0.0)
    with pytest.raises(InvalidParameterError):
        GDPAccountant().get_delta(-1.0)


def test_get_delta_inverts_get_epsilon():
    acc = GDPAccountant().compose(PoissonSampledEvent(0.02, GaussianEvent(0.9)), 3000)
    eps = acc.get_epsilon(1e-6)
    assert acc.get_delta(eps) == pytest.approx(1e-6, rel=1e-6)
    assert acc.get_delta(eps) <= 1e-6
    assert optimize.brentq(lambda e: acc.get_delta(e) - 1e-6, 0, 100) == pytest.approx(eps)
