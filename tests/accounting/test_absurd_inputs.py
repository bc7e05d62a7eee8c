"""Absurd noise multipliers, rates and step counts: a correct inf or a clear error, fast."""
import math
import subprocess
import sys
import textwrap
import warnings

import pytest
from scipy import optimize, special

from mxprivacy.accounting import (GaussianEvent, LaplaceEvent, PLDAccountant,
                                  PoissonSampledEvent, RDPAccountant,
                                  calibrate_noise_multiplier, epsilon_for)
from mxprivacy.accounting.calibration import MAX_STEPS, resolve_steps
from mxprivacy.errors import InvalidParameterError


def _run_bounded(code: str, seconds: float = 60, megabytes: int = 1500) -> str:
    """Run ``code`` in a child with an address-space limit and a timeout."""
    prelude = (f"import resource; resource.setrlimit(resource.RLIMIT_AS, "
               f"({megabytes << 20}, {megabytes << 20}))\n"
               "import warnings; warnings.simplefilter('ignore')\n")
    done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=seconds)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_tiny_noise_is_an_infinite_epsilon_in_bounded_time_and_memory():
    # Before: sigma=1e-300 looped in the fractional-order series until memory ran out.
    out = _run_bounded("""
        from mxprivacy.accounting import epsilon_for
        for acc in ("rdp", "pld"):
            for sigma in (1e-300, 5e-324, 1e-150):
                print(acc, sigma, epsilon_for(sigma, 0.01, 10, 1e-5, acc))
    """, seconds=60)
    values = [float(line.split()[-1]) for line in out.splitlines()]
    assert len(values) == 6 and all(v == math.inf or v > 1e250 for v in values), out


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_huge_noise_gives_a_tiny_epsilon_not_an_overflow(accountant):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        huge = epsilon_for(1e160, 0.01, 10, 1e-5, accountant)
        large = epsilon_for(1e6, 0.01, 10, 1e-5, accountant)
    assert 0.0 <= huge <= large + 1e-12 and huge < 0.01


def _exact_remove_epsilon(q: float, sigma: float, delta: float) -> float:
    """Exact epsilon of one Poisson-subsampled Gaussian step, remove direction.

    The loss exceeds eps where x > x* = s^2 log((e^eps - 1 + q) / q) + 1/2, so
    delta(eps) = P_mix(x > x*) - e^eps P_base(x > x*); computed in logs (e^eps overflows).
    """
    def log_delta_gap(eps):
        log_ratio = eps + math.log1p(-math.exp(-eps) * (1 - q)) - math.log(q)
        x = sigma ** 2 * log_ratio + 0.5
        mix = special.logsumexp([math.log1p(-q) + special.log_ndtr(-x / sigma),
                                 math.log(q) + special.log_ndtr((1 - x) / sigma)])
        base = eps + special.log_ndtr(-x / sigma)
        return mix + math.log1p(-math.exp(min(0.0, base - mix))) - math.log(delta)
    return optimize.brentq(log_delta_gap, 1.0, 1e5, xtol=1e-9)


@pytest.mark.parametrize("sigma", [0.02, 0.05])
def test_pld_with_small_noise_never_under_reports(sigma):
    # Before: losses above 709 overflowed in the loss-to-x inverse and PLD said 0.106 here.
    exact = _exact_remove_epsilon(0.01, sigma, 1e-5)
    pld = epsilon_for(sigma, 0.01, 1, 1e-5, "pld")
    assert exact > 100  # one included step reveals the record almost exactly
    assert exact - 1e-6 <= pld <= exact * 1.01
    assert pld <= epsilon_for(sigma, 0.01, 1, 1e-5, "rdp")


def test_small_noise_composed_pld_agrees_with_rdp_from_below():
    pld = epsilon_for(0.02, 0.01, 10, 1e-5, "pld")
    rdp = epsilon_for(0.02, 0.01, 10, 1e-5, "rdp")
    assert 0.25 * rdp < pld <= rdp  # 3862 against 12384 (before: 0.106)


@pytest.mark.parametrize("steps", [0.5, -1, True, "10", 10 ** 400, MAX_STEPS + 1])
def test_invalid_step_counts_are_refused(steps):
    with pytest.raises(InvalidParameterError, match="steps"):
        epsilon_for(1.0, 0.01, steps, 1e-5)


@pytest.mark.parametrize("epochs", [math.inf, math.nan, 0, -1, 1e300])
def test_invalid_epochs_are_refused(epochs):
    with pytest.raises(InvalidParameterError):
        resolve_steps(0.01, None, epochs)


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5, math.nan, math.inf])
def test_invalid_rates_are_refused(rate):
    with pytest.raises(InvalidParameterError, match="sample_rate"):
        epsilon_for(1.0, rate, 10, 1e-5)


@pytest.mark.parametrize("delta", [0.0, 1.0, math.nan, -1e-5])
def test_invalid_delta_is_refused(delta):
    with pytest.raises(InvalidParameterError, match="delta"):
        epsilon_for(1.0, 0.01, 10, delta)


def test_absurd_targets_calibrate_quickly():
    sigma = calibrate_noise_multiplier(1e300, 1e-5, 0.01, steps=10)
    assert epsilon_for(sigma, 0.01, 10, 1e-5) <= 1e300
    with pytest.raises(InvalidParameterError):
        calibrate_noise_multiplier(math.inf, 1e-5, 0.01, steps=10)


@pytest.mark.parametrize("make", [RDPAccountant, PLDAccountant])
def test_accountants_with_extreme_events(make):
    for event in (GaussianEvent(1e-300), LaplaceEvent(5e-324),
                  PoissonSampledEvent(0.5, GaussianEvent(5e-324))):
        assert make().compose(event, 3).get_epsilon(1e-5) == math.inf
    assert make().compose(LaplaceEvent(1e300), 3).get_epsilon(1e-5) < 0.01
    assert make().compose(PoissonSampledEvent(5e-324, GaussianEvent(1.0)), 5) \
        .get_epsilon(1e-5) < 0.01


@pytest.mark.parametrize("make", [RDPAccountant, PLDAccountant])
def test_new_events_with_extreme_noise(make):
    from mxprivacy.accounting import GDPAccountant, SampledWithoutReplacementEvent
    for acc in (make, GDPAccountant):
        fixed = acc(neighboring="replace_one")
        for sigma in (1e-300, 5e-324):
            event = SampledWithoutReplacementEvent(100, 10, GaussianEvent(sigma))
            assert fixed.empty_like().compose(event, 3).get_epsilon(1e-5) == math.inf
        event = SampledWithoutReplacementEvent(100, 10, GaussianEvent(1e300))
        assert fixed.empty_like().compose(event, 3).get_epsilon(1e-5) < 0.03
    laplace = make().compose(PoissonSampledEvent(0.1, LaplaceEvent(5e-324)), 3)
    assert laplace.get_epsilon(1e-5) == math.inf
    assert make().compose(PoissonSampledEvent(0.1, LaplaceEvent(1e300)), 3).get_epsilon(1e-5) < 0.01
