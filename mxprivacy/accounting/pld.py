"""Privacy loss distribution (PLD) accounting: tight epsilon by numerical composition.

Each event becomes a pair of discrete privacy loss distributions, one per neighbouring
direction: *remove* (the mixture ``(1-q) N(0, s^2) + q N(1, s^2)`` against
``N(0, s^2)``) and *add* (the reverse). Epsilon at a given delta is the larger of the
two.

Discretization is the *connect-the-dots* algorithm of Doroshenko, Ghazi, Kamath, Kumar &
Manurangsi (2022). The probability mass of the loss in each grid cell ``(a, b]`` is split
between ``a`` and ``b``, and the split keeps both its P-mass and its Q-mass. The discrete
hockey-stick curve then equals the true one at every grid point and is linear in
``e^eps`` between them. The true curve is convex in ``e^eps``, so the discrete one lies
above it everywhere: the discrete pair dominates the mechanism, and domination survives
composition. Tails are handled pessimistically, as described in :mod:`._pmf`.
Composition uses FFTs.

The result is pessimistic: the epsilon reported here is never below the true epsilon of
the composed mechanism, apart from floating-point round-off of about 1e-15 in delta.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
from scipy import special

from ..errors import InvalidParameterError, UnsupportedEventError
from ._pmf import TAIL_MASS, DiscretePLD, WindowTooLarge
from .base import PrivacyAccountant
from .rdp import SIGMA_CEILING, SIGMA_FLOOR
from .events import (ComposedEvent, DpEvent, EpsilonDeltaEvent, GaussianEvent, LaplaceEvent,
                     PoissonSampledEvent, SelfComposedEvent)

__all__ = ["PLDAccountant", "PLDPair"]

_MAX_GRID = 1 << 22
_COARSEST = 0.1
_Z_TAIL = float(-special.ndtri(TAIL_MASS))  # P(N(0,1) > _Z_TAIL) = TAIL_MASS


@dataclass(frozen=True)
class PLDPair:
    """The discrete PLDs of both neighbouring directions (``add`` None: symmetric)."""

    remove: DiscretePLD
    add: Optional[DiscretePLD] = None

    def directions(self) -> Tuple[DiscretePLD, ...]:
        return (self.remove,) if self.add is None else (self.remove, self.add)

    def _map(self, fn: Callable[[DiscretePLD], DiscretePLD]) -> "PLDPair":
        return PLDPair(fn(self.remove), None if self.add is None else fn(self.add))

    def self_compose(self, count: int) -> "PLDPair":
        return self._map(lambda pld: pld.self_compose(count))

    def compose(self, other: "PLDPair") -> "PLDPair":
        if self.add is None and other.add is None:
            return PLDPair(self.remove.compose(other.remove))
        return PLDPair(self.remove.compose(other.remove),
                       (self.add or self.remove).compose(other.add or other.remove))

    def get_epsilon(self, delta: float) -> float:
        return max(pld.get_epsilon(delta) for pld in self.directions())

    def get_delta(self, epsilon: float) -> float:
        return max(pld.get_delta(epsilon) for pld in self.directions())


# -- connect-the-dots discretization -------------------------------------------------
@dataclass(frozen=True)
class _LossLaw:
    """CDF and survival function of the privacy loss under P and under Q."""

    cdf_p: Callable[[np.ndarray], np.ndarray]
    sf_p: Callable[[np.ndarray], np.ndarray]
    cdf_q: Callable[[np.ndarray], np.ndarray]
    sf_q: Callable[[np.ndarray], np.ndarray]


def _cell_masses(cdf: Callable, sf: Callable, grid: np.ndarray) -> np.ndarray:
    """Mass of each cell ``(g_i, g_i+1]``, from whichever of CDF and SF is more precise."""
    lower, upper = cdf(grid), sf(grid)
    use_cdf = lower[:-1] < 0.5
    return np.clip(np.where(use_cdf, np.diff(lower), -np.diff(upper)), 0.0, None)


def _connect_the_dots(law: _LossLaw, loss_lo: float, loss_hi: float,
                      interval: float) -> DiscretePLD:
    first = int(math.floor(loss_lo / interval))
    last = max(first + 1, int(math.ceil(loss_hi / interval)))
    if last - first > _MAX_GRID:
        raise WindowTooLarge(last - first)
    grid = np.arange(first, last + 1) * interval
    mass_p = _cell_masses(law.cdf_p, law.sf_p, grid)
    mass_q = _cell_masses(law.cdf_q, law.sf_q, grid)
    # Split cell mass m_p between a and b so that P- and Q-mass are both preserved:
    # w_a + w_b = m_p and w_a e^-a + w_b e^-b = m_q.
    with np.errstate(divide="ignore", over="ignore"):  # no inf * 0 at losses above 709
        q_as_p = np.exp(np.log(mass_q) + grid[:-1])
    at_upper = (mass_p - q_as_p) / -math.expm1(-interval)
    at_upper = np.clip(at_upper, 0.0, mass_p)
    pmf = np.zeros(grid.size)
    pmf[1:] += at_upper
    pmf[:-1] += mass_p - at_upper
    pmf[0] += float(law.cdf_p(grid[:1])[0])   # mass below the grid, rounded up
    inf_mass = float(law.sf_p(grid[-1:])[0])  # mass above the grid, to infinity
    return DiscretePLD(interval, first, pmf, min(1.0, inf_mass))


def _point_masses(interval: float, losses: Tuple[float, ...], masses: Tuple[float, ...],
                  inf_mass: float) -> DiscretePLD:
    """A PLD of finitely many atoms, each rounded up to the grid."""
    idx = [int(math.ceil(loss / interval - 1e-12)) for loss in losses]
    first = min(idx)
    if max(idx) - first > _MAX_GRID:
        raise WindowTooLarge(max(idx) - first)
    pmf = np.zeros(max(idx) - first + 1)
    for i, mass in zip(idx, masses):
        pmf[i - first] += mass
    return DiscretePLD(interval, first, pmf, inf_mass)


# -- mechanisms ---------------------------------------------------------------------
def _gaussian_laws(q: float, sigma: float) -> Tuple[_LossLaw, _LossLaw, float, float]:
    """Loss laws of the Poisson-subsampled Gaussian (sensitivity 1), both directions."""
    log_keep = math.log1p(-q) if q < 1 else -math.inf
    log_q, sigma2 = math.log(q), sigma * sigma

    def x_of(loss):  # inverse of L(x) = log(1 - q + q exp((2x - 1) / (2 s^2)))
        loss = np.asarray(loss, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            below = np.log1p(np.expm1(np.minimum(loss, 0.0)) / q)
            pos = np.maximum(loss, 1e-300)  # log(expm1(l) / q), without overflow at l > 709
            above = np.logaddexp(0.0, pos + np.log(-np.expm1(-pos)) - log_q)
            x = sigma2 * np.where(loss > 0, above, below) + 0.5
        return np.where(loss > log_keep, x, -np.inf)

    def loss_of(x):
        return float(np.logaddexp(log_keep, log_q + (2 * x - 1) / (2 * sigma2)))

    def mix_cdf(x):
        return (1 - q) * special.ndtr(x / sigma) + q * special.ndtr((x - 1) / sigma)

    def mix_sf(x):
        return (1 - q) * special.ndtr(-x / sigma) + q * special.ndtr((1 - x) / sigma)

    def base_cdf(x):
        return special.ndtr(x / sigma)

    def base_sf(x):
        return special.ndtr(-x / sigma)

    remove = _LossLaw(cdf_p=lambda l: mix_cdf(x_of(l)), sf_p=lambda l: mix_sf(x_of(l)),
                      cdf_q=lambda l: base_cdf(x_of(l)), sf_q=lambda l: base_sf(x_of(l)))
    add = _LossLaw(cdf_p=lambda l: base_sf(x_of(-l)), sf_p=lambda l: base_cdf(x_of(-l)),
                   cdf_q=lambda l: mix_sf(x_of(-l)), sf_q=lambda l: mix_cdf(x_of(-l)))
    z = _Z_TAIL * sigma
    remove_range = (loss_of(-z), loss_of(1 + z))
    add_range = (-loss_of(z), -loss_of(-z))
    return remove, add, remove_range, add_range


@functools.lru_cache(maxsize=8)  # a pair can hold millions of grid points
def _gaussian_pair(q: float, sigma: float, interval: float) -> PLDPair:
    sigma = min(sigma, SIGMA_CEILING)  # more noise only lowers the loss: pessimistic
    if sigma < SIGMA_FLOOR:  # sigma = 0 dominates any tiny sigma (noise is post-processing)
        if q == 1.0:
            return PLDPair(_point_masses(interval, (0.0,), (0.0,), 1.0))
        keep = math.log1p(-q)
        return PLDPair(_point_masses(interval, (keep,), (1 - q,), q),
                       _point_masses(interval, (-keep,), (1.0,), 0.0))
    remove, add, remove_range, add_range = _gaussian_laws(q, sigma)
    if q == 1.0:  # N(1) vs N(0) is symmetric
        return PLDPair(_connect_the_dots(remove, *remove_range, interval))
    return PLDPair(_connect_the_dots(remove, *remove_range, interval),
                   _connect_the_dots(add, *add_range, interval))


@functools.lru_cache(maxsize=64)
def _laplace_pair(scale: float, interval: float) -> PLDPair:
    """Laplace(0, b) against Laplace(1, b); the pair is symmetric."""
    if scale < SIGMA_FLOOR:  # scale 0 dominates: the record is revealed
        return PLDPair(_point_masses(interval, (0.0,), (0.0,), 1.0))
    scale = min(scale, SIGMA_CEILING)
    eps0 = 1.0 / scale

    def cut(loss):  # L <= loss  <=>  x >= cut(loss), for loss in [-eps0, eps0)
        return (1.0 - scale * np.clip(loss, -eps0, eps0)) / 2.0

    def cdf_p(loss):
        return np.where(loss >= eps0, 1.0, np.where(loss < -eps0, 0.0,
                                                     0.5 * np.exp(-cut(loss) / scale)))

    def cdf_q(loss):
        return np.where(loss >= eps0, 1.0, np.where(loss < -eps0, 0.0,
                                                     1 - 0.5 * np.exp((cut(loss) - 1) / scale)))

    law = _LossLaw(cdf_p, lambda l: 1.0 - cdf_p(l), cdf_q, lambda l: 1.0 - cdf_q(l))
    return PLDPair(_connect_the_dots(law, -eps0, eps0, interval))


@functools.lru_cache(maxsize=64)
def _epsilon_delta_pair(epsilon: float, delta: float, interval: float) -> PLDPair:
    """The dominating pair of any (eps, delta)-DP mechanism (Kairouz et al. 2015): with
    probability delta the record is revealed, otherwise randomized response at eps."""
    keep = (1.0 - delta) / (1.0 + math.exp(-epsilon)) if epsilon > 0 else (1.0 - delta) / 2
    return PLDPair(_point_masses(interval, (epsilon, -epsilon), (keep, 1.0 - delta - keep),
                                 delta))


class PLDAccountant(PrivacyAccountant):
    """Tight accounting with privacy loss distributions (connect-the-dots, FFT).

    Parameters
    ----------
    value_discretization_interval : float, default 1e-4
        Grid step of the privacy loss. A smaller step is tighter and slower. Every
        step size gives a valid upper bound.

    Notes
    -----
    Composition is lazy: events are kept in the ledger, and the composed distribution
    is computed once per distinct ledger, when epsilon or delta is queried.
    """

    name = "pld"
    _handlers = {
        GaussianEvent: "_pair_gaussian",
        LaplaceEvent: "_pair_laplace",
        EpsilonDeltaEvent: "_pair_epsilon_delta",
        PoissonSampledEvent: "_pair_poisson",
        SelfComposedEvent: "_pair_self_composed",
        ComposedEvent: "_pair_composed",
    }

    def __init__(self, *, value_discretization_interval: float = 1e-4) -> None:
        super().__init__()
        interval = float(value_discretization_interval)
        if not (math.isfinite(interval) and 0 < interval <= 0.1):
            raise InvalidParameterError(
                f"value_discretization_interval must lie in (0, 0.1], got {interval!r}.")
        self.interval = interval
        self._active_interval = interval
        self._cache: Dict[tuple, Optional[PLDPair]] = {}

    def _validate_specific(self, event: DpEvent) -> None:
        if isinstance(event, PoissonSampledEvent) and not isinstance(event.event, GaussianEvent):
            raise UnsupportedEventError(
                "PLDAccountant supports Poisson subsampling only of a GaussianEvent, "
                f"got sub-event {event.event!r}.")

    def _apply(self, event: DpEvent, count: int) -> None:
        self._cache.clear()  # composition is lazy; see _composed

    def _reset(self) -> None:
        self._cache.clear()

    def empty_like(self) -> "PLDAccountant":
        return PLDAccountant(value_discretization_interval=self.interval)

    # -- one PLD pair per (event, count); composition is commutative -----------------
    def _pair(self, event: DpEvent, count: int) -> PLDPair:
        return getattr(self, self._handlers[type(event)])(event, count)

    def _pair_gaussian(self, event: GaussianEvent, count: int) -> PLDPair:
        return _gaussian_pair(1.0, event.noise_multiplier, self._active_interval).self_compose(count)

    def _pair_poisson(self, event: PoissonSampledEvent, count: int) -> PLDPair:
        if event.sample_rate == 0.0:
            return _identity(self._active_interval)
        pair = _gaussian_pair(event.sample_rate, event.event.noise_multiplier, self._active_interval)
        return pair.self_compose(count)

    def _pair_laplace(self, event: LaplaceEvent, count: int) -> PLDPair:
        return _laplace_pair(event.noise_multiplier, self._active_interval).self_compose(count)

    def _pair_epsilon_delta(self, event: EpsilonDeltaEvent, count: int) -> PLDPair:
        return _epsilon_delta_pair(event.epsilon, event.delta,
                                   self._active_interval).self_compose(count)

    def _pair_self_composed(self, event: SelfComposedEvent, count: int) -> PLDPair:
        if event.count == 0:
            return _identity(self._active_interval)
        return self._pair(event.event, count * event.count)

    def _pair_composed(self, event: ComposedEvent, count: int) -> PLDPair:
        result = _identity(self._active_interval)
        for sub in event.events:
            result = result.compose(self._pair(sub, count))
        return result

    def _composed(self) -> Optional[PLDPair]:
        """The composed PLD pair of the ledger (None when empty), cached per ledger.

        If the composition needs more grid points than fit in memory (epsilon in the
        hundreds), the grid is coarsened; a coarser grid is still pessimistic.
        """
        key = tuple(self._ledger)
        if key not in self._cache:
            interval = self.interval
            while True:
                try:
                    result = self._compose_ledger(interval)
                    break
                except WindowTooLarge:
                    if interval >= _COARSEST:
                        raise InvalidParameterError(
                            "This history is beyond what PLD accounting resolves (epsilon "
                            "in the thousands or more); use the RDP accountant.") from None
                    interval = min(_COARSEST, interval * 4)
            self._cache = {key: result}
        return self._cache[key]

    def _compose_ledger(self, interval: float) -> Optional[PLDPair]:
        saved, self._active_interval = self._active_interval, interval
        try:
            result: Optional[PLDPair] = None
            for event, count in self._ledger:
                pair = self._pair(event, count)
                result = pair if result is None else result.compose(pair)
            return result
        finally:
            self._active_interval = saved

    # -- queries -------------------------------------------------------------------
    def get_epsilon(self, delta: float) -> float:
        _check_delta(delta)
        pair = self._composed()
        return 0.0 if pair is None else pair.get_epsilon(float(delta))

    def get_delta(self, epsilon: float) -> float:
        if not epsilon >= 0:
            raise InvalidParameterError(f"epsilon must be >= 0, got {epsilon!r}.")
        pair = self._composed()
        return 0.0 if pair is None else pair.get_delta(float(epsilon))


def _identity(interval: float) -> PLDPair:
    """The PLD of doing nothing: all mass at loss 0."""
    return PLDPair(_point_masses(interval, (0.0,), (1.0,), 0.0))


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise InvalidParameterError(f"delta must lie in (0, 1), got {delta!r}.")
