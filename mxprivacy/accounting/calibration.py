"""Noise calibration: the smallest noise multiplier that meets a target epsilon."""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Optional

from ..errors import InvalidParameterError, PrivacyWarning, UnreachableTargetError
from .events import GaussianEvent, PoissonSampledEvent
from .base import PrivacyAccountant
from .pld import PLDAccountant
from .rdp import RDPAccountant

__all__ = ["ACCOUNTANTS", "calibrate_noise_multiplier", "epsilon_for", "make_accountant",
           "resolve_steps"]

_MAX_SIGMA = 1e4
MAX_STEPS = 10 ** 18
"""Largest step count accepted (about 3e10 years at one step per millisecond)."""

ACCOUNTANTS = {"rdp": RDPAccountant, "pld": PLDAccountant}
"""Accountants by name: ``"rdp"`` (moments accountant) and ``"pld"`` (tighter, slower)."""


def make_accountant(accountant: "str | PrivacyAccountant" = "rdp") -> PrivacyAccountant:
    """An empty accountant: by name (``"rdp"`` or ``"pld"``), or like a given one."""
    if isinstance(accountant, PrivacyAccountant):
        return accountant.empty_like()
    if accountant not in ACCOUNTANTS:
        raise InvalidParameterError(
            f"Unknown accountant {accountant!r}; available: {sorted(ACCOUNTANTS)}.")
    return ACCOUNTANTS[accountant]()


def resolve_steps(sample_rate: float, steps: Optional[int], epochs: Optional[float]) -> int:
    """Number of steps from ``steps`` or from ``epochs`` (steps = ceil(epochs / q))."""
    if (steps is None) == (epochs is None):
        raise InvalidParameterError("Give exactly one of steps= or epochs=.")
    if steps is not None:
        return _check_steps(steps, minimum=1)
    if not (isinstance(epochs, numbers.Real) and math.isfinite(epochs) and epochs > 0):
        raise InvalidParameterError(f"epochs must be a finite number > 0, got {epochs!r}.")
    _check_rate(sample_rate)
    return _check_steps(int(math.ceil(min(epochs / sample_rate, 2.0 * MAX_STEPS) - 1e-9)),
                        minimum=1)


def _check_steps(steps, minimum: int = 0) -> int:
    """``steps`` as an int in [minimum, MAX_STEPS], or a clear error."""
    try:
        whole = not isinstance(steps, bool) and int(steps) == steps
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole or steps < minimum:
        raise InvalidParameterError(
            f"steps must be an integer >= {minimum}, got {steps!r}.")
    if steps > MAX_STEPS:
        raise InvalidParameterError(
            f"{float(min(steps, 1e308)):.3g} steps is beyond what accounting supports (at most {MAX_STEPS:.0e}); "
            "check the number of steps or epochs.")
    return int(steps)


def epsilon_for(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                accountant: str = "rdp") -> float:
    """Epsilon of ``steps`` Poisson-subsampled Gaussian steps (warns when infinite)."""
    _check_rate(sample_rate)
    steps = _check_steps(steps)
    acc = make_accountant(accountant)
    acc.compose(PoissonSampledEvent(sample_rate, GaussianEvent(noise_multiplier)), steps)
    eps = acc.get_epsilon(delta)
    if math.isinf(eps):
        warnings.warn(f"epsilon is infinite at delta={delta:g}: noise multiplier "
                      f"{noise_multiplier:g} does not hide a record. Add noise or raise "
                      "delta.", PrivacyWarning, stacklevel=2)
    return eps


def _check_rate(sample_rate: float) -> None:
    if not (isinstance(sample_rate, numbers.Real) and 0 < sample_rate <= 1):
        raise InvalidParameterError(f"sample_rate must lie in (0, 1], got {sample_rate!r}.")


def calibrate_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float,
                               steps: Optional[int] = None, epochs: Optional[float] = None,
                               accountant: str = "rdp", *, rtol: float = 0.005) -> float:
    """Smallest noise multiplier (within ``rtol``) whose epsilon is at most the target.

    The returned sigma never overshoots: ``epsilon_for(sigma, ...) <= target_epsilon``.
    It is within ``rtol`` (0.5 %) above the smallest such sigma.

    Raises
    ------
    UnreachableTargetError
        When even sigma = 1e4 does not reach the target.
    """
    if not target_epsilon > 0 or not math.isfinite(target_epsilon):
        raise InvalidParameterError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}.")
    _check_rate(sample_rate)
    n_steps = resolve_steps(sample_rate, steps, epochs)

    def eps(sigma: float) -> float:
        try:
            with warnings.catch_warnings():  # an infinite epsilon is just above the target
                warnings.simplefilter("ignore", PrivacyWarning)
                return epsilon_for(sigma, sample_rate, n_steps, delta, accountant)
        except InvalidParameterError:
            if accountant == "rdp" or sigma >= 1.0:  # not a resolution limit of PLD
                raise
            return math.inf  # beyond PLD resolution: epsilon in the thousands, > target

    hi = 1.0
    while eps(hi) > target_epsilon:
        hi *= 2.0
        if hi > _MAX_SIGMA:
            raise UnreachableTargetError(
                f"epsilon={target_epsilon} at delta={delta} is out of reach with "
                f"{n_steps} steps at q={sample_rate}: raise the target or delta, or train "
                "for fewer steps.")
    lo = hi / 2.0 if hi > 1.0 else 0.0
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi
