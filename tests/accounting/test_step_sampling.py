"""StepSampling: the event, relation and epoch of one DP-SGD step for each sampler, and the
replace-one convention checked against closed forms."""
import math

import numpy as np
import pytest
from scipy import optimize, stats

from mxprivacy import InvalidParameterError
from mxprivacy.accounting import (GaussianEvent, PoissonSampledEvent, RDPAccountant,
                                  SampledWithoutReplacementEvent, epsilon_for, make_accountant,
                                  rdp_to_epsilon)
from mxprivacy.accounting.step_sampling import StepSampling, step_sampling


def test_each_sampling_has_its_event_relation_and_epoch():
    poisson = StepSampling.poisson(256 / 60000)
    assert poisson.event(1.1) == PoissonSampledEvent(256 / 60000, GaussianEvent(1.1))
    assert poisson.neighboring == "add_remove" and poisson.batches_per_epoch == 235
    fixed = StepSampling.fixed(60000, 256)
    assert fixed.event(1.1) == SampledWithoutReplacementEvent(60000, 256, GaussianEvent(1.1))
    assert fixed.neighboring == "replace_one" and fixed.sample_rate == 256 / 60000
    assert fixed.batches_per_epoch == 235  # ceil(60000 / 256)
    assert StepSampling.fixed(100, 10).batches_per_epoch == 10  # exact, no float round-up
    assert StepSampling.fixed(7, 7).batches_per_epoch == 1


@pytest.mark.parametrize("args,match", [
    ((0, 1), "dataset_size"), ((10, 0), "sample_size"), ((10, 11), "cannot be drawn"),
    ((10.5, 2), "dataset_size"), ((10, 2.5), "sample_size"), ((True, 1), "dataset_size"),
])
def test_fixed_sampling_validates_n_and_b(args, match):
    with pytest.raises(InvalidParameterError, match=match):
        StepSampling.fixed(*args)


def test_the_resolver_takes_one_description():
    assert step_sampling(0.1) == StepSampling.poisson(0.1)
    scheme = StepSampling.fixed(50, 5)
    assert step_sampling(None, sampling="fixed", dataset_size=50, sample_size=5) == scheme
    assert step_sampling(0.1, sampling="fixed", dataset_size=50, sample_size=5) == scheme
    assert step_sampling(scheme) is scheme
    with pytest.raises(InvalidParameterError, match="disagrees"):
        step_sampling(0.2, sampling="fixed", dataset_size=50, sample_size=5)
    with pytest.raises(InvalidParameterError, match="dataset_size=N and sample_size=B"):
        step_sampling(0.1, sampling="fixed")
    with pytest.raises(InvalidParameterError, match="sampling='fixed'"):
        step_sampling(0.1, dataset_size=50, sample_size=5)
    with pytest.raises(InvalidParameterError, match="do not also pass"):
        step_sampling(scheme, sampling="fixed")
    with pytest.raises(InvalidParameterError, match="'poisson' or 'fixed'"):
        step_sampling(0.1, sampling="shuffle")
    for bad in (0, 1.5, True, None, "0.1"):
        with pytest.raises(InvalidParameterError, match="sample_rate"):
            step_sampling(bad)


def _gaussian_delta(mu, eps):
    """Exact delta(eps) of the Gaussian mechanism N(0,1) vs N(mu,1) (Balle & Wang 2018)."""
    return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)


def _gaussian_epsilon(mu, delta):
    return optimize.brentq(lambda e: _gaussian_delta(mu, e) - delta, 0.0, 500.0, xtol=1e-12)


@pytest.mark.parametrize("sigma,steps", [(2.0, 10), (1.1, 100), (4.0, 3)])
def test_a_full_batch_under_replace_one_is_the_gaussian_with_sensitivity_2c(sigma, steps):
    """B = N: every record is in every step. Noise std sigma*C on a sum that one replaced
    record moves by 2C: the Gaussian mechanism with mu = 2/sigma per step, i.e. noise
    multiplier sigma/2 under add/remove."""
    n, delta = 40, 1e-5
    event = StepSampling.fixed(n, n).event(sigma)
    # RDP: alpha * (2C)^2 / (2 sigma^2 C^2) = 2 alpha / sigma^2 per step, then the same
    # conversion: the accountant must give exactly this number.
    rdp = make_accountant("rdp", "replace_one").compose(event, steps)
    orders = np.asarray(rdp.orders)
    by_hand = rdp_to_epsilon(orders, steps * 2.0 * orders / sigma ** 2, delta)[0]
    assert rdp.get_epsilon(delta) == pytest.approx(by_hand, rel=1e-12)
    plain = make_accountant("rdp").compose(GaussianEvent(sigma / 2), steps)
    assert rdp.get_epsilon(delta) == pytest.approx(plain.get_epsilon(delta), rel=1e-12)
    # PLD: never below the exact Gaussian epsilon (mu = 2 sqrt(T) / sigma), and close.
    exact = _gaussian_epsilon(2.0 * math.sqrt(steps) / sigma, delta)
    pld = make_accountant("pld", "replace_one").compose(event, steps).get_epsilon(delta)
    assert exact - 1e-9 <= pld <= exact + 2e-3 * max(1.0, exact)
    # Half the data per step is cheaper than all of it (PLD; the RDP bound of Wang et
    # al. is looser than the full batch's at q = 1/2 with little noise).
    half = make_accountant("pld", "replace_one").compose(
        StepSampling.fixed(n, n // 2).event(sigma), steps)
    assert half.get_epsilon(delta) < pld


def test_mnist_poisson_against_fixed_size_batches():
    """sigma 1.1, B 256 of 60,000, 60 loader epochs (235 batches each), delta 1e-5:
    Poisson RDP 2.60, fixed-size RDP 24.1, fixed-size PLD 18.5."""
    scheme = StepSampling.fixed(60000, 256)
    steps = 60 * scheme.batches_per_epoch
    poisson = epsilon_for(1.1, 256 / 60000, steps, 1e-5)
    fixed_rdp = epsilon_for(1.1, scheme, steps, 1e-5)
    assert poisson == pytest.approx(2.600, abs=0.005)
    assert fixed_rdp == pytest.approx(24.12, abs=0.05)
    assert epsilon_for(1.1, None, steps, 1e-5, sampling="fixed", dataset_size=60000,
                       sample_size=256) == fixed_rdp
    assert RDPAccountant(neighboring="replace_one").compose(
        scheme.event(1.1), steps).get_epsilon(1e-5) == fixed_rdp
    assert epsilon_for(1.1, scheme, steps, 1e-5, "pld") == pytest.approx(18.48, abs=0.05)
