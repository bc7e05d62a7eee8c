"""Noise calibration against independent formulas, and parameter validation."""
import math

import numpy as np
import pytest
from scipy import optimize, stats

from mxprivacy.accounting import EpsilonDeltaEvent, GaussianEvent
from mxprivacy.errors import InvalidParameterError
from mxprivacy.mechanisms import (GaussianMechanism, LaplaceMechanism, ReportNoisyMax,
                                  analytic_gaussian_sigma, classic_gaussian_sigma,
                                  gaussian_delta)


def balle_wang_algorithm_1(epsilon, delta, sensitivity):
    """Balle & Wang (2018), Algorithm 1, written independently of the library."""
    phi = stats.norm.cdf
    delta_0 = phi(0.0) - math.exp(epsilon) * phi(-math.sqrt(2 * epsilon))

    def b_plus(v):
        return phi(math.sqrt(epsilon * v)) - math.exp(epsilon) * phi(-math.sqrt(epsilon * (v + 2)))

    def b_minus(u):
        return phi(-math.sqrt(epsilon * u)) - math.exp(epsilon) * phi(-math.sqrt(epsilon * (u + 2)))

    if delta >= delta_0:
        v = optimize.brentq(lambda v: b_plus(v) - delta, 0.0, 1e6, xtol=1e-14)
        alpha = math.sqrt(1 + v / 2) - math.sqrt(v / 2)
    else:
        u = optimize.brentq(lambda u: b_minus(u) - delta, 0.0, 1e6, xtol=1e-14)
        alpha = math.sqrt(1 + u / 2) + math.sqrt(u / 2)
    return alpha * sensitivity / math.sqrt(2 * epsilon)


@pytest.mark.parametrize("epsilon,delta,sensitivity", [(1, 1e-5, 1), (0.1, 1e-6, 2),
                                                       (5, 1e-3, 0.5)])
def test_analytic_sigma_solves_balle_wang(epsilon, delta, sensitivity):
    sigma = analytic_gaussian_sigma(epsilon, delta, sensitivity)
    assert sigma == pytest.approx(balle_wang_algorithm_1(epsilon, delta, sensitivity), rel=1e-6)
    assert gaussian_delta(sigma, epsilon, sensitivity) <= delta  # never overshoots
    assert gaussian_delta(sigma * (1 - 1e-6), epsilon, sensitivity) > delta  # smallest
    mech = GaussianMechanism(epsilon, delta, sensitivity)
    assert mech.sigma == sigma
    assert mech.event == GaussianEvent(sigma / sensitivity)


def test_classic_calibration_is_larger_and_limited_to_small_epsilon():
    classic = classic_gaussian_sigma(0.5, 1e-5, 1.0)
    assert classic == pytest.approx(math.sqrt(2 * math.log(1.25e5)) / 0.5)
    assert classic > analytic_gaussian_sigma(0.5, 1e-5, 1.0)
    assert GaussianMechanism(0.5, 1e-5, 1.0, calibration="classic").sigma == classic
    with pytest.raises(InvalidParameterError, match="analytic"):
        GaussianMechanism(2.0, 1e-5, 1.0, calibration="classic")


def test_laplace_scale_and_events():
    mech = LaplaceMechanism(0.5, 3.0)
    assert mech.scale == 6.0
    assert mech.event == EpsilonDeltaEvent(0.5, 0.0)
    assert ReportNoisyMax(0.3, 1.0).event == EpsilonDeltaEvent(0.3, 0.0)


@pytest.mark.parametrize("build", [
    lambda: LaplaceMechanism(0.0, 1.0), lambda: LaplaceMechanism(-1.0, 1.0),
    lambda: LaplaceMechanism(1.0, 0.0), lambda: GaussianMechanism(1.0, 0.0, 1.0),
    lambda: GaussianMechanism(1.0, 1.0, 1.0), lambda: GaussianMechanism(1.0, -0.1, 1.0),
    lambda: GaussianMechanism(1.0, 1e-5, -2.0), lambda: GaussianMechanism(float("nan"), 1e-5, 1),
    lambda: GaussianMechanism(1.0, 1e-5, 1.0, calibration="tight"),
    lambda: LaplaceMechanism(1.0, 1.0, secure=True, random_state=0),
])
def test_bad_parameters_are_clear_errors(build):
    with pytest.raises(InvalidParameterError):
        build()


def test_gaussian_without_delta_points_to_laplace():
    with pytest.raises(InvalidParameterError, match="Laplace"):
        GaussianMechanism(1.0, 0.0, 1.0)


def test_mechanisms_keep_the_input_type():
    mx = pytest.importorskip("mxnet")
    x = mx.nd.ones((4, 3), dtype="float32")
    out = GaussianMechanism(1.0, 1e-5, 1.0, random_state=0)(x)
    assert isinstance(out, mx.nd.NDArray) and out.dtype == np.float32 and out.shape == (4, 3)
    assert isinstance(LaplaceMechanism(1.0, 1.0, random_state=0)(2.0), float)
    labels = ReportNoisyMax(50.0, 1.0, random_state=0)(np.array([[0.0, 9.0], [9.0, 0.0]]))
    assert labels.tolist() == [1, 0]
    with pytest.raises(InvalidParameterError, match="NaN"):
        LaplaceMechanism(1.0, 1.0)(np.array([np.nan]))
