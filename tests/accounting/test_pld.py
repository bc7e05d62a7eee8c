"""PLD accountant: exact identities, dp-accounting 0.6.0, and pessimism."""
import itertools
import math

import numpy as np
import pytest
from scipy import optimize, stats

from mxprivacy.accounting import (ComposedEvent, GaussianEvent, LaplaceEvent, PLDAccountant,
                                  PoissonSampledEvent, RDPAccountant)
from mxprivacy.accounting._pmf import DiscretePLD
from mxprivacy.errors import InvalidParameterError


def _pld(event, count=1, **kwargs):
    return PLDAccountant(**kwargs).compose(event, count)


def _gaussian_exact_delta(eps, mu):
    """Hockey-stick divergence of N(mu, 1) vs N(0, 1) (Balle & Wang 2018, Thm 8)."""
    return stats.norm.cdf(mu / 2 - eps / mu) - math.exp(eps) * stats.norm.cdf(-mu / 2 - eps / mu)


def _gaussian_exact_epsilon(delta, mu):
    return optimize.brentq(lambda e: _gaussian_exact_delta(e, mu) - delta, 0.0, 500.0,
                           xtol=1e-12)


@pytest.mark.parametrize("sigma,steps", [(1.0, 1), (4.530877117, 1), (2.0, 50), (1.1, 30)])
@pytest.mark.parametrize("interval", [1e-4, 1e-2])
def test_gaussian_composition_matches_closed_form_from_above(sigma, steps, interval):
    # T Gaussian steps = one Gaussian with mu = sqrt(T) / sigma: the exact epsilon is known.
    exact = _gaussian_exact_epsilon(1e-6, math.sqrt(steps) / sigma)
    ours = _pld(GaussianEvent(sigma), steps, value_discretization_interval=interval)
    eps = ours.get_epsilon(1e-6)
    assert eps >= exact - 1e-9  # pessimistic: never under-reports
    assert eps <= exact * (1 + 10 * interval)  # and tight


@pytest.mark.parametrize("scale", [0.5, 1.0, 4.0])
def test_laplace_matches_closed_form(scale):
    # Laplace(b), sensitivity 1: delta(eps) = 1 - exp((eps - 1/b) / 2) for eps <= 1/b.
    acc = _pld(LaplaceEvent(scale))
    for eps in np.linspace(0.0, 1.0 / scale, 7):
        exact = max(0.0, 1.0 - math.exp((eps - 1.0 / scale) / 2.0))
        assert acc.get_delta(eps) == pytest.approx(exact, abs=1e-9)
    assert acc.get_epsilon(1e-9) == pytest.approx(1.0 / scale, abs=1e-3)


def test_zero_noise_subsampled_is_zero_epsilon_with_delta_q():
    # sigma = 0 reveals the record exactly when it is sampled: (0, q)-DP and nothing better.
    acc = _pld(PoissonSampledEvent(0.01, GaussianEvent(0.0)))
    assert acc.get_epsilon(0.0101) == 0.0
    assert acc.get_epsilon(0.0099) == math.inf
    assert acc.get_delta(3.0) == pytest.approx(0.01, rel=1e-12)


def test_identities_of_the_discrete_distribution():
    # One atom at loss 1 with mass 1-p, the rest infinite: delta(eps) = p + (1-p)(1-e^(eps-1)).
    pld = DiscretePLD(0.5, 2, np.array([0.9]), 0.1)
    assert pld.get_delta(0.0) == pytest.approx(0.1 + 0.9 * (1 - math.exp(-1.0)))
    assert pld.get_delta(1.0) == pytest.approx(0.1)
    assert pld.get_epsilon(0.1 + 0.9 * (1 - math.exp(-0.5))) == pytest.approx(0.5)
    # Self-composition equals repeated pairwise composition.
    two = DiscretePLD(0.1, -3, np.array([0.2, 0.5, 0.3]), 1e-6)
    by_fft = two.self_compose(5)
    by_pairs = two.compose(two).compose(two).compose(two).compose(two)
    assert by_fft.offset == by_pairs.offset
    np.testing.assert_allclose(by_fft.pmf, by_pairs.pmf, atol=1e-15)
    assert by_fft.inf_mass == pytest.approx(by_pairs.inf_mass, rel=1e-9)


def test_tighter_than_rdp_on_dp_sgd_settings():
    for q, sigma, steps in [(256 / 60000, 1.1, 14100), (0.04, 1.5, 2250), (0.01, 0.8, 5000)]:
        event = PoissonSampledEvent(q, GaussianEvent(sigma))
        rdp = RDPAccountant().compose(event, steps).get_epsilon(1e-5)
        pld = _pld(event, steps).get_epsilon(1e-5)
        assert 0.5 * rdp < pld < 0.95 * rdp


def test_huge_epsilon_coarsens_instead_of_failing():
    acc = _pld(PoissonSampledEvent(0.3, GaussianEvent(0.5)), 3000)
    exact_remove_lower_bound = 1000.0  # dp-accounting reports about 1186
    assert acc.get_epsilon(1e-5) > exact_remove_lower_bound


def test_cache_follows_the_ledger():
    acc = _pld(PoissonSampledEvent(0.01, GaussianEvent(1.0)), 100)
    before = acc.get_epsilon(1e-5)
    acc.compose(PoissonSampledEvent(0.01, GaussianEvent(1.0)), 100)
    assert acc.get_epsilon(1e-5) > before


def test_bad_arguments():
    with pytest.raises(InvalidParameterError):
        PLDAccountant(value_discretization_interval=0.0)
    with pytest.raises(InvalidParameterError):
        PLDAccountant().get_epsilon(1.0)
    with pytest.raises(InvalidParameterError):
        PLDAccountant().get_delta(-1.0)


# -- against dp-accounting 0.6.0 ------------------------------------------------------
dp_accounting = pytest.importorskip("dp_accounting")
from dp_accounting.pld import privacy_loss_distribution as their_pld  # noqa: E402

GRID = list(itertools.product([0.001, 0.01, 0.05], [0.7, 1.1, 2.0], [100, 2000]))


@pytest.mark.parametrize("q,sigma,steps", GRID)
def test_within_1_percent_of_dp_accounting(q, sigma, steps):
    theirs = their_pld.from_gaussian_mechanism(sigma, sampling_prob=q).self_compose(steps)
    ours = _pld(PoissonSampledEvent(q, GaussianEvent(sigma)), steps)
    assert ours.get_epsilon(1e-5) == pytest.approx(theirs.get_epsilon_for_delta(1e-5), rel=0.01)
    assert ours.get_delta(1.0) == pytest.approx(theirs.get_delta_for_epsilon(1.0), rel=0.01)


@pytest.mark.parametrize("q,sigma,steps", GRID[::4])
def test_never_below_the_optimistic_bound(q, sigma, steps):
    optimistic = their_pld.from_gaussian_mechanism(
        sigma, sampling_prob=q, pessimistic_estimate=False,
        use_connect_dots=False).self_compose(steps)
    ours = _pld(PoissonSampledEvent(q, GaussianEvent(sigma)), steps)
    assert ours.get_epsilon(1e-5) >= optimistic.get_epsilon_for_delta(1e-5)


def test_heterogeneous_history_matches_dp_accounting():
    # sigma and q change mid-training; Laplace queries in between.
    first = their_pld.from_gaussian_mechanism(1.0, sampling_prob=0.01).self_compose(300)
    second = their_pld.from_gaussian_mechanism(2.0, sampling_prob=0.05).self_compose(200)
    laplace = their_pld.from_laplace_mechanism(5.0).self_compose(3)
    theirs = first.compose(second).compose(laplace)
    ours = PLDAccountant()
    ours.compose(PoissonSampledEvent(0.01, GaussianEvent(1.0)), 300)
    ours.compose(ComposedEvent([PoissonSampledEvent(0.05, GaussianEvent(2.0))]), 200)
    ours.compose(LaplaceEvent(5.0), 3)
    assert ours.get_epsilon(1e-6) == pytest.approx(theirs.get_epsilon_for_delta(1e-6), rel=0.01)


def test_epsilon_delta_event_composition_bounds():
    from mxprivacy.accounting import EpsilonDeltaEvent, event_from_dict
    from mxprivacy.errors import UnsupportedEventError
    event = EpsilonDeltaEvent(0.1, 1e-7)
    assert event_from_dict(event.to_dict()) == event
    one = _pld(event)
    assert one.get_epsilon(1e-7) == pytest.approx(0.1, abs=1e-4)
    k, delta = 100, 1e-5
    composed = _pld(event, k).get_epsilon(delta + k * 1e-7)
    advanced = math.sqrt(2 * k * math.log(1 / delta)) * 0.1 + k * 0.1 * math.expm1(0.1)
    assert composed <= advanced < k * 0.1  # the optimal composition beats both classic bounds
    pure_rdp = RDPAccountant().compose(EpsilonDeltaEvent(0.1), k).get_epsilon(delta)
    assert composed < pure_rdp < k * 0.1
    with pytest.raises(UnsupportedEventError, match="PLDAccountant"):
        RDPAccountant().compose(event)


def test_epsilon_delta_composition_is_exact_like_dp_accounting():
    # dp_accounting's pld_pmf test: atoms 0.2 and 0.7 (infinity 0.1), composed twice, give
    # 0.04, 0.28, 0.49. EpsilonDeltaEvent(log 3.5, 0.1) has exactly those atoms. The
    # second atom used to be the remainder 1 - delta - 0.7 = 0.19999999999999996 and the
    # FFT added round-off, so the middle mass came out as 0.27999999999999997.
    from mxprivacy.accounting import EpsilonDeltaEvent
    acc = _pld(EpsilonDeltaEvent(math.log(3.5), 0.1), 2)
    composed = acc._composed().remove
    atoms = composed.pmf[composed.pmf > 0]
    assert atoms[1] == 0.28
    np.testing.assert_allclose(atoms, [0.04, 0.28, 0.49], rtol=1e-15)
    assert composed.inf_mass == pytest.approx(0.19, rel=1e-15)
    assert np.count_nonzero(composed.pmf) == 3  # no FFT round-off spread over the window


def test_sparse_self_composition_equals_the_fft():
    few = DiscretePLD(1e-3, -40, np.array([0.3, 0, 0, 0.25, 0, 0.4] + [0] * 60 + [0.04]), 1e-3)
    sparse = few.self_compose(9)
    many = DiscretePLD(1e-3, -40, np.where(few.pmf > 0, few.pmf, 1e-300), 1e-3)
    assert np.count_nonzero(many.pmf) > 64  # takes the FFT path
    by_fft = many.self_compose(9)
    assert sparse.offset == by_fft.offset and sparse.pmf.size == by_fft.pmf.size
    np.testing.assert_allclose(sparse.pmf, by_fft.pmf, atol=1e-15)
    assert sparse.inf_mass == pytest.approx(by_fft.inf_mass, rel=1e-12)
    for eps in (0.0, 0.01, 0.1):
        assert sparse.get_delta(eps) == pytest.approx(by_fft.get_delta(eps), abs=1e-15)


def test_epsilon_delta_events_against_dp_accounting():
    from dp_accounting.pld import common
    from mxprivacy.accounting import EpsilonDeltaEvent
    for eps, delta, count in [(0.5, 1e-6, 40), (1.0, 0.001, 30), (0.1, 0.0, 300)]:
        theirs = their_pld.from_privacy_parameters(
            common.DifferentialPrivacyParameters(eps, delta)).self_compose(count)
        ours = _pld(EpsilonDeltaEvent(eps, delta), count)
        for target in (1e-3, 1e-5):
            assert ours.get_epsilon(target) == pytest.approx(
                theirs.get_epsilon_for_delta(target), rel=1e-6, abs=1e-9)
