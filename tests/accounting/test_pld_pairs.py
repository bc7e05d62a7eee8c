"""PLD pairs of fixed-size batches, replace-one Gaussians and the Poisson-subsampled
Laplace mechanism: closed forms, identities and dp-accounting 0.6.0."""
import math

import numpy as np
import pytest
from scipy import optimize, stats

from mxprivacy.accounting import (GaussianEvent, LaplaceEvent, PLDAccountant, PoissonSampledEvent,
                                  RDPAccountant, SampledWithoutReplacementEvent)
from mxprivacy.accounting._pld_pairs import (gaussian_pair, laplace_pair, replace_gaussian_pair,
                                             symmetrized, wor_gaussian_pair)
from mxprivacy.accounting._pmf import DiscretePLD

COARSE = 1e-3  # grid step of the comparisons: fast, and still within 1 %


def _fixed(n, batch, sigma, steps, interval=COARSE):
    acc = PLDAccountant(value_discretization_interval=interval, neighboring="replace_one")
    return acc.compose(SampledWithoutReplacementEvent(n, batch, GaussianEvent(sigma)), steps)


def _gaussian_epsilon(mu, delta):
    """Exact epsilon of N(mu, 1) against N(0, 1) (Balle & Wang 2018, Theorem 8)."""
    def gap(eps):
        return (stats.norm.cdf(mu / 2 - eps / mu)
                - math.exp(eps) * stats.norm.cdf(-mu / 2 - eps / mu) - delta)
    return optimize.brentq(gap, 0.0, 500.0, xtol=1e-12)


@pytest.mark.parametrize("sigma,steps", [(3.0, 1), (6.0, 20), (2.0, 5)])
def test_full_batch_is_the_gaussian_with_sensitivity_2c(sigma, steps):
    exact = _gaussian_epsilon(2 * math.sqrt(steps) / sigma, 1e-6)
    for acc in (_fixed(300, 300, sigma, steps, 1e-4),
                PLDAccountant(neighboring="replace_one").compose(GaussianEvent(sigma), steps)):
        eps = acc.get_epsilon(1e-6)
        assert exact - 1e-9 <= eps <= exact * (1 + 1e-3)


def _discrete_deltas(pld, epsilons):
    return np.array([pld.get_delta(e) for e in epsilons])


@pytest.mark.parametrize("q,sigma", [(0.001, 0.5), (0.01, 1.0), (0.1, 0.6), (0.5, 2.0),
                                     (0.9, 0.3)])
def test_remove_direction_dominates_add_for_nonnegative_epsilon(q, sigma):
    # The symmetrized pair keeps the remove direction for epsilon >= 0; that is valid only
    # if the add direction never exceeds it there. Both discrete curves are linear in
    # e^eps between grid points, so checking the grid points checks every epsilon.
    pair = gaussian_pair(q, sigma, 1e-2)
    top = (pair.remove.offset + pair.remove.pmf.size) * 1e-2
    grid = np.arange(0, int(top / 1e-2) + 2) * 1e-2
    grid = grid[:: max(1, grid.size // 300)]
    assert np.all(_discrete_deltas(pair.add, grid) <= _discrete_deltas(pair.remove, grid) + 1e-15)


def test_symmetrized_keeps_positive_part_and_mirrors_it():
    pld = gaussian_pair(0.05, 0.8, 1e-3).remove
    sym = symmetrized(pld)
    assert sym.offset == -(sym.pmf.size // 2)  # symmetric support around loss 0
    losses = sym.losses
    # A symmetric pair: w(-l) = e^-l w(l), and total P- and Q-mass of 1.
    np.testing.assert_allclose(sym.pmf[::-1] * np.exp(-losses[::-1]), sym.pmf, rtol=1e-12,
                               atol=1e-300)
    assert math.fsum(sym.pmf) + sym.inf_mass == pytest.approx(1.0, abs=1e-14)
    assert math.fsum(sym.pmf * np.exp(-losses)) == pytest.approx(1.0 - 0.0, abs=1e-12)
    for eps in (0.0, 0.01, 0.5, 2.0, 5.0):  # hockey-stick unchanged for eps >= 0
        assert sym.get_delta(eps) == pytest.approx(pld.get_delta(eps), rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("q,sigma", [(0.01, 0.5), (0.1, 1.0), (0.5, 0.4)])
def test_fixed_batch_pair_dominates_both_directions_at_every_order(q, sigma):
    # A pair that survives adaptive composition must dominate every step's pair at every
    # order e^eps, negative eps included (Zhu, Dong & Wang 2022). The remove-type pair
    # alone does not: below eps = 0 the add-type pair exceeds it.
    step = wor_gaussian_pair(q, sigma, COARSE).remove
    pair = gaussian_pair(q, sigma / 2, COARSE)
    epsilons = np.linspace(-3.0, 3.0, 61)
    remove, add = _discrete_deltas(pair.remove, epsilons), _discrete_deltas(pair.add, epsilons)
    assert np.all(_discrete_deltas(step, epsilons) >= np.maximum(remove, add) - 1e-12)
    assert np.max(add - remove) > 1e-3


def test_without_noise_a_sampled_record_is_revealed():
    acc = _fixed(1000, 10, 0.0, 1)
    assert acc.get_epsilon(0.0101) == 0.0 and acc.get_epsilon(0.0099) == math.inf
    assert _fixed(1000, 0, 1.0, 10).get_epsilon(1e-5) == 0.0


@pytest.mark.parametrize("q,sigma,steps", [(0.01, 2.0, 2000), (0.001, 0.7, 2000),
                                           (0.01, 1.1, 2000)])
def test_covers_an_adversary_that_switches_direction(q, sigma, steps):
    # Under replace-one DP-SGD can show the remove-type pair at some steps and the
    # add-type pair at others. Every such schedule stays below the symmetrized bound;
    # the pure remove schedule alone (what composing each direction separately gives) is
    # up to 25 % lower.
    ours = _fixed(int(round(1 / q)), 1, sigma, steps).get_epsilon(1e-5)
    pair = gaussian_pair(q, sigma / 2, COARSE)
    for removes in (0, steps // 2, steps):
        parts = [p for p, k in ((pair.remove, removes), (pair.add, steps - removes)) if k]
        counts = [k for k in (removes, steps - removes) if k]
        mixed = parts[0].self_compose(counts[0])
        if len(parts) == 2:
            mixed = mixed.compose(parts[1].self_compose(counts[1]))
        assert mixed.get_epsilon(1e-5) <= ours


@pytest.mark.parametrize("q,sigma", [(0.1, 0.9), (0.01, 0.4), (0.5, 2.0)])
def test_replace_gaussian_pair_against_its_exact_curve(q, sigma):
    # P = (1-q) N(0, s^2) + q N(1, s^2) against Q = (1-q) N(0, s^2) + q N(-1, s^2): the
    # loss grows with x, so delta(eps) = P(X > x*) - e^eps Q(X > x*) where L(x*) = eps.
    def loss(x):
        return (np.logaddexp(math.log1p(-q), math.log(q) + (2 * x - 1) / (2 * sigma ** 2))
                - np.logaddexp(math.log1p(-q), math.log(q) + (-2 * x - 1) / (2 * sigma ** 2)))

    def exact_delta(eps):
        x = optimize.brentq(lambda v: loss(v) - eps, -50, 50, xtol=1e-14)
        above_p = (1 - q) * stats.norm.sf(x / sigma) + q * stats.norm.sf((x - 1) / sigma)
        above_q = (1 - q) * stats.norm.sf(x / sigma) + q * stats.norm.sf((x + 1) / sigma)
        return above_p - math.exp(eps) * above_q

    pair = replace_gaussian_pair(q, sigma, 1e-4)
    assert pair.add is None  # the pair is its own mirror image
    for eps in (0.0, 0.05, 0.3, 1.0, 3.0):
        exact = exact_delta(eps)
        assert exact - 1e-12 <= pair.get_delta(eps) <= exact + 1e-4 * max(exact, 1e-9)


def test_laplace_pair_reduces_to_the_laplace_mechanism():
    # q = 1: delta(eps) = 1 - exp((eps - 1/b) / 2) (the existing closed form).
    full = laplace_pair(1.0, 0.5, 1e-4)
    assert full.add is None
    for eps in (0.0, 0.7, 1.9):
        assert full.get_delta(eps) == pytest.approx(max(0, 1 - math.exp((eps - 2) / 2)), abs=1e-9)


def test_fixed_batch_needs_more_than_the_poisson_batch():
    q, sigma, steps = 0.01, 1.0, 500
    fixed = _fixed(1000, 10, sigma, steps).get_epsilon(1e-5)
    poisson = PLDAccountant(value_discretization_interval=COARSE).compose(
        PoissonSampledEvent(q, GaussianEvent(sigma)), steps).get_epsilon(1e-5)
    rdp = RDPAccountant(neighboring="replace_one").compose(
        SampledWithoutReplacementEvent(1000, 10, GaussianEvent(sigma)), steps).get_epsilon(1e-5)
    assert poisson < fixed < rdp


# -- against dp-accounting 0.6.0 ------------------------------------------------------
dp_accounting = pytest.importorskip("dp_accounting")
from dp_accounting import dp_event  # noqa: E402
from dp_accounting.pld import pld_privacy_accountant  # noqa: E402
from dp_accounting.pld import privacy_loss_distribution as their_pld  # noqa: E402
from dp_accounting.rdp import rdp_privacy_accountant  # noqa: E402

REPLACE_ONE = pld_privacy_accountant.NeighborRel.REPLACE_ONE
GRID = [(1000, 10, 0.7, 100), (1000, 10, 2.0, 1000), (60000, 256, 1.1, 1000),
        (60000, 256, 2.0, 100), (10000, 1000, 1.1, 100)]


def _their_symmetrized(q, sigma, steps):
    """dp-accounting's remove pair (sensitivity 2C), symmetrized, composed by dp-accounting."""
    remove = their_pld.from_gaussian_mechanism(
        sigma / 2, sampling_prob=q, value_discretization_interval=COARSE)._pmf_remove
    dense = remove.to_dense_pmf()
    probs = {}
    for k, mass in enumerate(dense._probs):
        index = dense._lower_loss + k
        if index > 0 and mass > 0:
            probs[index], probs[-index] = mass, mass * math.exp(-index * COARSE)
    probs[0] = 1.0 - dense._infinity_mass - math.fsum(probs.values())
    pld = their_pld.PrivacyLossDistribution.create_from_rounded_probability(
        probs, dense._infinity_mass, COARSE)
    return pld.self_compose(steps).get_epsilon_for_delta(1e-5)


@pytest.mark.parametrize("n,batch,sigma,steps", GRID)
def test_fixed_batches_against_dp_accounting(n, batch, sigma, steps):
    # dp-accounting 0.6.0 has no PLD for sampling without replacement. Three checks:
    q = batch / n
    ours = _fixed(n, batch, sigma, steps).get_epsilon(1e-5)
    # 1. never below their composition of the remove-type pair, which an adversary
    #    realizes (other records equal to the replacing one), beyond discretization;
    realized = their_pld.from_gaussian_mechanism(
        sigma / 2, sampling_prob=q, value_discretization_interval=COARSE).self_compose(steps)
    assert ours >= realized.get_epsilon_for_delta(1e-5) - COARSE
    # 2. within 1 % of the same symmetrized pair discretized and composed by them;
    assert ours == pytest.approx(_their_symmetrized(q, sigma, steps), rel=0.01)
    # 3. below their RDP bound (Wang et al.) for the same event.
    rdp = rdp_privacy_accountant.RdpAccountant(neighboring_relation=REPLACE_ONE)
    rdp.compose(dp_event.SampledWithoutReplacementDpEvent(
        n, batch, dp_event.GaussianDpEvent(sigma / 2)), steps)
    assert ours <= rdp.get_epsilon(1e-5)


@pytest.mark.parametrize("event,theirs", [
    (GaussianEvent(1.3), dp_event.GaussianDpEvent(1.3)),
    (PoissonSampledEvent(0.02, GaussianEvent(0.9)),
     dp_event.PoissonSampledDpEvent(0.02, dp_event.GaussianDpEvent(0.9))),
    (PoissonSampledEvent(0.2, GaussianEvent(2.0)),
     dp_event.PoissonSampledDpEvent(0.2, dp_event.GaussianDpEvent(2.0)))])
def test_replace_one_gaussians_against_dp_accounting(event, theirs):
    # Same noise multiplier on both sides: dp-accounting's PLD also applies sensitivity 2C.
    acc = pld_privacy_accountant.PLDAccountant(REPLACE_ONE, value_discretization_interval=COARSE)
    acc.compose(theirs, 100)
    ours = PLDAccountant(value_discretization_interval=COARSE,
                         neighboring="replace_one").compose(event, 100)
    assert ours.get_epsilon(1e-6) == pytest.approx(acc.get_epsilon(1e-6), rel=0.01)
    assert ours.get_epsilon(1e-6) >= acc.get_epsilon(1e-6) - COARSE


@pytest.mark.parametrize("q,scale,steps", [(0.01, 0.5, 300), (0.1, 1.0, 100), (0.5, 3.0, 50),
                                           (0.05, 0.2, 200)])
def test_poisson_laplace_against_dp_accounting(q, scale, steps):
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=COARSE)
    acc.compose(dp_event.PoissonSampledDpEvent(q, dp_event.LaplaceDpEvent(scale)), steps)
    ours = PLDAccountant(value_discretization_interval=COARSE).compose(
        PoissonSampledEvent(q, LaplaceEvent(scale)), steps)
    assert ours.get_epsilon(1e-6) == pytest.approx(acc.get_epsilon(1e-6), rel=0.01)
    assert ours.get_delta(1.0) == pytest.approx(acc.get_delta(1.0), rel=0.01)
    optimistic = their_pld.from_laplace_mechanism(
        scale, sampling_prob=q, pessimistic_estimate=False,
        value_discretization_interval=COARSE).self_compose(steps)
    assert ours.get_epsilon(1e-6) >= optimistic.get_epsilon_for_delta(1e-6)


def test_discrete_pld_type_is_shared():
    assert isinstance(wor_gaussian_pair(0.01, 1.0, COARSE).remove, DiscretePLD)


def test_replace_one_sensitivity_in_the_plain_and_full_rate_events():
    # q = 1 is no subsampling; a Laplace scale b at sensitivity 2C is b / 2 at C.
    replace = PLDAccountant(value_discretization_interval=COARSE, neighboring="replace_one")
    full = replace.empty_like().compose(PoissonSampledEvent(1.0, GaussianEvent(2.0)), 5)
    plain = replace.empty_like().compose(GaussianEvent(2.0), 5)
    assert full.get_epsilon(1e-6) == pytest.approx(plain.get_epsilon(1e-6), rel=1e-6)
    laplace = replace.empty_like().compose(LaplaceEvent(2.0), 5)
    halved = PLDAccountant(value_discretization_interval=COARSE).compose(LaplaceEvent(1.0), 5)
    assert laplace.get_epsilon(1e-6) == pytest.approx(halved.get_epsilon(1e-6), rel=1e-12)
