"""Agreement with Google's dp-accounting 0.6.0 (a test dependency)."""
import itertools

import pytest

dp_accounting = pytest.importorskip("dp_accounting")
from dp_accounting import dp_event  # noqa: E402
from dp_accounting.pld import privacy_loss_distribution  # noqa: E402
from dp_accounting.rdp import rdp_privacy_accountant  # noqa: E402

from mxprivacy.accounting import GaussianEvent, PoissonSampledEvent, RDPAccountant  # noqa: E402

INTEGER_ORDERS = list(range(2, 256))
GRID = list(itertools.product([0.001, 0.01, 0.05], [0.7, 1.1, 2.0], [100, 2000], [1e-5, 1e-7]))


def _theirs_rdp(q, sigma, steps, delta, orders):
    acc = rdp_privacy_accountant.RdpAccountant(orders)
    acc.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
    return acc.get_epsilon(delta)


def _ours(q, sigma, steps, delta, orders=None):
    acc = RDPAccountant(orders)
    acc.compose(PoissonSampledEvent(q, GaussianEvent(sigma)), steps)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("q,sigma,steps,delta", GRID)
def test_rdp_epsilon_within_0_1_percent(q, sigma, steps, delta):
    # Integer orders: both sides are exact there, so they must agree.
    assert _ours(q, sigma, steps, delta, INTEGER_ORDERS) == pytest.approx(
        _theirs_rdp(q, sigma, steps, delta, INTEGER_ORDERS), rel=1e-3)


@pytest.mark.parametrize("q,sigma,steps,delta", GRID[::3])
def test_never_below_optimistic_pld(q, sigma, steps, delta):
    optimistic = privacy_loss_distribution.from_gaussian_mechanism(
        sigma, pessimistic_estimate=False, value_discretization_interval=1e-3,
        sampling_prob=q).self_compose(steps)
    assert _ours(q, sigma, steps, delta) >= optimistic.get_epsilon_for_delta(delta)
