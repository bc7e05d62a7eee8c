"""Noise calibration for single releases: analytic Gaussian, classic Gaussian, Laplace."""
from __future__ import annotations

import math

from scipy import optimize, special

from ..errors import InvalidParameterError

__all__ = ["analytic_gaussian_sigma", "classic_gaussian_sigma", "gaussian_delta",
           "check_epsilon", "check_delta", "check_sensitivity"]


def check_epsilon(epsilon: float) -> float:
    epsilon = float(epsilon)
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise InvalidParameterError(f"epsilon must be a finite number > 0, got {epsilon!r}.")
    return epsilon


def check_delta(delta: float, *, allow_zero: bool) -> float:
    delta = float(delta)
    low_ok = delta >= 0 if allow_zero else delta > 0
    if not (low_ok and delta < 1):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        hint = "" if allow_zero else (" The Gaussian mechanism cannot give pure DP: use "
                                      "delta > 0 or the Laplace mechanism.")
        raise InvalidParameterError(f"delta must lie in {interval}, got {delta!r}.{hint}")
    return delta


def check_sensitivity(sensitivity: float) -> float:
    sensitivity = float(sensitivity)
    if not (math.isfinite(sensitivity) and sensitivity > 0):
        raise InvalidParameterError(
            f"sensitivity must be a finite number > 0, got {sensitivity!r}.")
    return sensitivity


def gaussian_delta(sigma: float, epsilon: float, sensitivity: float = 1.0) -> float:
    """Exact delta(epsilon) of the Gaussian mechanism (Balle & Wang 2018, Theorem 8).

    ``delta = Phi(D/(2s) - eps s/D) - e^eps Phi(-D/(2s) - eps s/D)``.
    """
    a = sensitivity / (2.0 * sigma)
    b = epsilon * sigma / sensitivity
    first = special.ndtr(a - b)
    second = math.exp(epsilon + special.log_ndtr(-a - b))
    return max(0.0, float(first - second))


def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """The smallest sigma for which the Gaussian mechanism is (epsilon, delta)-DP.

    Solves Balle & Wang's exact condition ``gaussian_delta(sigma) = delta`` for sigma. The
    result is then rounded up by a relative 1e-12 so that ``gaussian_delta(sigma) <= delta``
    holds in floating point too.
    """
    epsilon, delta = check_epsilon(epsilon), check_delta(delta, allow_zero=False)
    sensitivity = check_sensitivity(sensitivity)
    lo, hi = 1e-6 * sensitivity, sensitivity
    while gaussian_delta(hi, epsilon, sensitivity) > delta:
        lo, hi = hi, hi * 2.0
    sigma = optimize.brentq(lambda s: gaussian_delta(s, epsilon, sensitivity) - delta,
                            lo, hi, xtol=1e-15 * hi, rtol=1e-14)
    while gaussian_delta(sigma, epsilon, sensitivity) > delta:
        sigma *= 1 + 1e-12
    return sigma


def classic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """``sigma = D sqrt(2 ln(1.25/delta)) / epsilon`` (Dwork & Roth 2014, Thm A.1).

    Valid only for epsilon < 1, and never smaller than the analytic sigma.
    """
    epsilon, delta = check_epsilon(epsilon), check_delta(delta, allow_zero=False)
    sensitivity = check_sensitivity(sensitivity)
    if epsilon >= 1:
        raise InvalidParameterError(
            f"The classic Gaussian calibration holds only for epsilon < 1, got {epsilon}. "
            "Use the analytic calibration (the default).")
    return sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon
