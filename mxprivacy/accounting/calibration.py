"""Noise calibration: the smallest noise multiplier that meets a target epsilon.

Every function takes the sampling of the steps as ``sample_rate`` (Poisson sampling at
that rate), or as ``sampling="fixed", dataset_size=N, sample_size=B`` (fixed-size
batches drawn without replacement, accounted under replace-one), or as a
:class:`~mxprivacy.accounting.step_sampling.StepSampling` in place of ``sample_rate``.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Optional

from ..errors import InvalidParameterError, PrivacyWarning, UnreachableTargetError
from .base import ADD_REMOVE, PrivacyAccountant
from .gdp import GDPAccountant
from .pld import PLDAccountant
from .rdp import RDPAccountant
from .step_sampling import StepSampling, step_sampling

__all__ = ["ACCOUNTANTS", "calibrate_noise_multiplier", "epsilon_for", "make_accountant",
           "resolve_steps", "batches_per_epoch", "loader_steps"]

_MAX_SIGMA = 1e4
_SIGMA_RTOL = 1e-6  # calibration stops when sigma is known to this relative width
_MAX_BISECTIONS = 2200  # halvings from 1 down to the smallest float, and then some
MAX_STEPS = 10 ** 18
"""Largest step count accepted (about 3e10 years at one step per millisecond)."""

ACCOUNTANTS = {"rdp": RDPAccountant, "pld": PLDAccountant, "gdp": GDPAccountant}
"""Accountants by name: ``"rdp"`` (moments accountant), ``"pld"`` (tighter, slower) and
``"gdp"`` (a central-limit approximation, for comparison only: not a guarantee)."""


def make_accountant(accountant: "str | PrivacyAccountant" = "rdp",
                    neighboring: Optional[str] = None, *,
                    approximation_ok: bool = False) -> PrivacyAccountant:
    """An empty accountant: by name (``"rdp"``, ``"pld"``, ``"gdp"``), or like a given one.

    ``neighboring`` ("add_remove" by default, or "replace_one") is the adjacency relation;
    a given instance keeps its own, and a different one is refused. An accountant that
    is not an upper bound (GDP) is refused unless ``approximation_ok``: training,
    calibration and budgets must report a guarantee.
    """
    if isinstance(accountant, PrivacyAccountant):
        made = accountant.empty_like()
        if neighboring is not None and made.neighboring != neighboring:
            raise InvalidParameterError(
                f"The accountant counts {made.neighboring} neighbours, but this needs "
                f"{neighboring}: construct it with neighboring={neighboring!r}.")
    elif accountant not in ACCOUNTANTS:
        raise InvalidParameterError(
            f"Unknown accountant {accountant!r}; available: {sorted(ACCOUNTANTS)}.")
    else:
        made = ACCOUNTANTS[accountant](neighboring=neighboring or ADD_REMOVE)
    if not made.is_upper_bound and not approximation_ok:
        raise InvalidParameterError(
            f"{type(made).__name__} is an approximation (a central-limit bound), not a "
            "guarantee, so it cannot report the epsilon of a training run, a calibration "
            "or a budget. Use 'rdp' or 'pld'; compare with GDP through `mxprivacy epsilon "
            "--accountant all`.")
    return made


def resolve_steps(sample_rate: "float | StepSampling", steps: Optional[int],
                  epochs: Optional[float]) -> int:
    """Number of steps from ``steps`` or from ``epochs`` (steps = ceil(epochs / q), q
    the sample rate, B / N for fixed-size batches)."""
    if (steps is None) == (epochs is None):
        raise InvalidParameterError("Give exactly one of steps= or epochs=.")
    if steps is not None:
        return _check_steps(steps, minimum=1)
    if not (isinstance(epochs, numbers.Real) and math.isfinite(epochs) and epochs > 0):
        raise InvalidParameterError(f"epochs must be a finite number > 0, got {epochs!r}.")
    rate = step_sampling(sample_rate).sample_rate
    return _check_steps(int(math.ceil(min(epochs / rate, 2.0 * MAX_STEPS) - 1e-9)),
                        minimum=1)


def batches_per_epoch(sample_rate: "float | StepSampling") -> int:
    """Batches in one epoch of a loader: ``ceil(1/q)`` for Poisson sampling, so that an
    epoch sees N examples on average (``PoissonBatchSampler``'s and ``DPDataLoader``'s
    default); ``ceil(N/B)`` for fixed-size batches."""
    return step_sampling(sample_rate).batches_per_epoch


def loader_steps(sample_rate: "float | StepSampling", epochs: float) -> int:
    """Steps of ``epochs`` passes over a default loader:
    ``ceil(epochs * batches_per_epoch)``. At least :func:`resolve_steps`'s
    ``ceil(epochs / q)``, so a plan made with it covers a loop over ``epochs`` loader
    epochs."""
    if isinstance(epochs, bool) or not (isinstance(epochs, numbers.Real) and
                                        math.isfinite(epochs) and epochs > 0):
        raise InvalidParameterError(f"epochs must be a finite number > 0, got {epochs!r}.")
    return _check_steps(int(math.ceil(min(epochs * batches_per_epoch(sample_rate),
                                          2.0 * MAX_STEPS) - 1e-9)), minimum=1)


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


def epsilon_for(noise_multiplier: float, sample_rate: "float | StepSampling | None",
                steps: int, delta: float, accountant: str = "rdp", *,
                approximation_ok: bool = False, sampling: Optional[str] = None,
                dataset_size: Optional[int] = None,
                sample_size: Optional[int] = None) -> float:
    """Epsilon of ``steps`` subsampled Gaussian steps (warns when infinite).

    Poisson sampling at ``sample_rate`` by default; ``sampling="fixed"`` with
    ``dataset_size=N`` and ``sample_size=B`` for fixed-size batches drawn without
    replacement (``sample_rate`` may then be None), counted by an accountant under the
    replace-one relation (see :mod:`.step_sampling`).
    """
    scheme = step_sampling(sample_rate, sampling=sampling, dataset_size=dataset_size,
                           sample_size=sample_size)
    steps = _check_steps(steps)
    acc = make_accountant(accountant, scheme.neighboring, approximation_ok=approximation_ok)
    acc.compose(scheme.event(noise_multiplier), steps)
    eps = acc.get_epsilon(delta)
    if math.isinf(eps):
        warnings.warn(f"epsilon is infinite at delta={delta:g}: noise multiplier "
                      f"{noise_multiplier:g} does not hide a record. Add noise or raise "
                      "delta.", PrivacyWarning, stacklevel=2)
    return eps


def calibrate_noise_multiplier(target_epsilon: float, delta: float,
                               sample_rate: "float | StepSampling | None" = None,
                               steps: Optional[int] = None, epochs: Optional[float] = None,
                               accountant: str = "rdp", *, tolerance: Optional[float] = None,
                               rtol: Optional[float] = None, sampling: Optional[str] = None,
                               dataset_size: Optional[int] = None,
                               sample_size: Optional[int] = None) -> float:
    """The noise multiplier whose epsilon is at most the target and close below it.

    The returned sigma never overshoots: ``epsilon_for(sigma, ...) <= target_epsilon``,
    and ``epsilon_for(sigma, ...) >= target_epsilon - gap``. The gap is ``tolerance``
    (absolute), or ``rtol * target_epsilon``; by default the tighter of 0.01 and 0.1 %
    of the target (Opacus' ``get_noise_multiplier`` gets within 0.01). That holds
    unless sigma is already pinned down to a relative width of 1e-6 (then epsilon
    jumps across that window, and sigma is the upper end of that interval). Bisection on
    sigma; steps come from ``steps`` or ``epochs`` (see :func:`resolve_steps`).

    The steps are Poisson-sampled at ``sample_rate``; with ``sampling="fixed"``,
    ``dataset_size=N`` and ``sample_size=B`` they are fixed-size batches drawn without
    replacement, and epsilon is that of :func:`epsilon_for` with the same arguments.

    Raises
    ------
    UnreachableTargetError
        When even sigma = 1e4 does not reach the target.
    """
    if not target_epsilon > 0 or not math.isfinite(target_epsilon):
        raise InvalidParameterError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}.")
    gap = _gap(target_epsilon, tolerance, rtol)
    scheme = step_sampling(sample_rate, sampling=sampling, dataset_size=dataset_size,
                           sample_size=sample_size)
    n_steps = resolve_steps(scheme, steps, epochs)

    def eps(sigma: float) -> float:
        try:
            with warnings.catch_warnings():  # an infinite epsilon is just above the target
                warnings.simplefilter("ignore", PrivacyWarning)
                return epsilon_for(sigma, scheme, n_steps, delta, accountant)
        except InvalidParameterError:
            if accountant == "rdp" or sigma >= 1.0:  # not a resolution limit of PLD
                raise
            return math.inf  # beyond PLD resolution: epsilon in the thousands, > target

    lo, eps_lo, hi, eps_hi = 0.0, math.inf, 1.0, eps(1.0)
    while eps_hi > target_epsilon:
        lo, eps_lo, hi = hi, eps_hi, 2.0 * hi
        if hi > _MAX_SIGMA:
            raise UnreachableTargetError(
                f"epsilon={target_epsilon} at delta={delta} is out of reach with "
                f"{n_steps} steps of {scheme.describe()}: raise the target or delta, or train "
                "for fewer steps.")
        eps_hi = eps(hi)
    if lo == 0.0:  # sigma = 1 is enough: find a sigma that is not
        lo, eps_lo, hi, eps_hi = _bracket_below(eps, hi, eps_hi, target_epsilon)
        if lo == 0.0:  # even the smallest float is: nothing to refine
            return hi
    interpolate, width = True, hi - lo
    for _ in range(_MAX_BISECTIONS):
        if eps_hi >= target_epsilon - gap or hi - lo <= _SIGMA_RTOL * hi:
            break
        mid = _next_sigma(lo, eps_lo, hi, eps_hi, target_epsilon - gap / 2, interpolate)
        eps_mid = eps(mid)
        if eps_mid > target_epsilon:
            lo, eps_lo = mid, eps_mid
        else:
            hi, eps_hi = mid, eps_mid
        # interpolate while it at least halves the bracket, else bisect once
        interpolate, width = hi - lo <= 0.5 * width or not interpolate, hi - lo
    return hi


def _gap(target: float, tolerance, rtol) -> float:
    """How far below the target the calibrated epsilon may end (see the caller)."""
    if tolerance is not None and rtol is not None:
        raise InvalidParameterError("Give tolerance (absolute) or rtol (relative), not both.")
    if rtol is not None:
        if not 0 < rtol < 1:
            raise InvalidParameterError(f"rtol must lie in (0, 1), got {rtol!r}.")
        return rtol * target
    if tolerance is not None:
        if not (isinstance(tolerance, numbers.Real) and 0 < tolerance < target):
            raise InvalidParameterError(
                f"tolerance must lie in (0, target_epsilon), got {tolerance!r}.")
        return float(tolerance)
    return min(0.01, 1e-3 * target)


def _bracket_below(eps, hi: float, eps_hi: float, target: float):
    """(lo, eps(lo), hi, eps(hi)) with eps(lo) > target >= eps(hi), trying hi / 2,
    hi / 8, hi / 128, ... (squared steps: an absurd target needs a tiny sigma);
    lo = 0 when even the smallest float meets the target."""
    factor = 0.5
    while True:
        low = hi * factor
        if low == 0.0:
            return 0.0, math.inf, hi, eps_hi
        eps_low = eps(low)
        if eps_low > target:
            return low, eps_low, hi, eps_hi
        hi, eps_hi, factor = low, eps_low, factor * factor


def _next_sigma(lo, eps_lo, hi, eps_hi, aim, interpolate: bool) -> float:
    """The bracket's midpoint (geometric when it spans more than a factor 2); or, with
    ``interpolate``, the point where the straight line through (log sigma, log epsilon)
    at both ends meets ``aim`` (epsilon is close to a power of sigma), kept inside the
    bracket's middle 90 %."""
    if lo > 0 and hi > 2 * lo:
        return math.sqrt(lo) * math.sqrt(hi)
    if not (interpolate and lo > 0 and math.isfinite(eps_lo) and eps_hi > 0):
        return 0.5 * (lo + hi)
    slope = (math.log(eps_hi) - math.log(eps_lo)) / (math.log(hi) - math.log(lo))
    if not slope < 0:
        return 0.5 * (lo + hi)
    guess = math.exp(math.log(lo) + (math.log(aim) - math.log(eps_lo)) / slope)
    margin = 0.05 * (hi - lo)
    return min(max(guess, lo + margin), hi - margin)
