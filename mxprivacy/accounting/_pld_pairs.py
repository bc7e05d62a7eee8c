"""Discrete PLD pairs of the mechanisms :class:`~.pld.PLDAccountant` counts.

Every pair is built by the connect-the-dots discretization (see :mod:`.pld`), or from
point masses rounded up to the grid, and dominates its mechanism.

Noise multipliers here are relative to the sensitivity of the pair built (the accountant
converts the per-record bound C to the sensitivity of its neighbouring relation).

Fixed-size batches, replace-one (:func:`wor_gaussian_pair`)
    A batch of B records drawn without replacement from n, a Gaussian sum of records of
    norm <= C, noise multiplier s. Conditioned on the batch's other records, the outputs
    on neighbouring data sets are ``(1-q) N(a) + q N(b)`` and ``(1-q) N(a) + q N(b')``
    (``q = B/n``, ``|a|, |b|, |b'| <= C``): the other record ``a`` that takes the changed
    record's place need not be zero, so the change is worth a sensitivity of 2C.
    ``a = b'`` gives the remove-type pair ``R = (1-q) N(0) + q N(2C)`` against ``N(0)``
    and ``a = b`` the add-type pair (the reverse), and for epsilon >= 0 no pair exceeds
    ``R`` (Balle, Barthe & Gaboardi 2018, advanced joint convexity). DP-SGD can show a
    remove-type pair at one step and an add-type pair at the next (the gradients of the
    other records change), so composing the remove and add directions separately is not a
    proven bound. The pair used is the *symmetrized* one, Dong, Roth & Su's
    ``C_q(f) = min(f_q, f_q^-1)**`` (their Theorem 4.2, sampling without replacement):
    the loss distribution of ``R`` above 0, mirrored below 0 as ``w(-l) = e^-l w(l)``, the
    rest of the mass at 0. Its hockey-stick curve is that of ``R`` for epsilon >= 0, which
    dominates the add direction there (checked on the discrete pairs in the tests), and by
    symmetry it dominates both directions for every order, so it survives adaptive
    composition (Zhu, Dong & Wang 2022). dp-accounting 0.6.0 has no PLD for this event.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np
from scipy import special

from ._pmf import TAIL_MASS, DiscretePLD, WindowTooLarge
from .rdp import SIGMA_CEILING, SIGMA_FLOOR

__all__ = ["PLDPair", "epsilon_delta_pair", "gaussian_pair", "identity", "laplace_pair",
           "replace_gaussian_pair", "symmetrized", "wor_gaussian_pair"]

_MAX_GRID = 1 << 22
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
def gaussian_pair(q: float, sigma: float, interval: float) -> PLDPair:
    """Poisson-subsampled Gaussian (rate q, noise sigma / sensitivity), add/remove."""
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


@functools.lru_cache(maxsize=8)
def replace_gaussian_pair(q: float, sigma: float, interval: float) -> PLDPair:
    """Poisson-subsampled Gaussian under replace-one: ``(1-q) N(0) + q N(1)`` against
    ``(1-q) N(0) + q N(-1)`` (records of norm <= 1, noise sigma), as dp_accounting's
    ``REPLACE`` adjacency. The pair is its own mirror image: one PLD serves both ways."""
    sigma = min(sigma, SIGMA_CEILING)
    if sigma < SIGMA_FLOOR:  # a sampled record is revealed
        return PLDPair(_point_masses(interval, (0.0,), (1.0 - q,), q))
    keep = math.log1p(-q) if q < 1 else -math.inf
    log_q, s2 = math.log(q), sigma * sigma

    def x_of(loss):  # inverse of L(x) = log(1-q + q e^{(2x-1)/2s^2}) - log(1-q + q e^{(-2x-1)/2s^2})
        half = np.asarray(loss, dtype=np.float64) / 2
        with np.errstate(over="ignore", divide="ignore"):
            log_w = keep - log_q + 1 / (2 * s2) + np.log(np.abs(np.sinh(half)))
            big = log_w > 30  # asinh(w) = log(2w) + O(w^-2)
            asinh = np.where(big, log_w + math.log(2), np.arcsinh(np.exp(np.minimum(log_w, 30))))
        return s2 * (half + np.sign(half) * asinh)

    def loss_of(x):
        return float(np.logaddexp(keep, log_q + (2 * x - 1) / (2 * s2))
                     - np.logaddexp(keep, log_q + (-2 * x - 1) / (2 * s2)))

    def cdf(shift):
        return lambda l: ((1 - q) * special.ndtr(x_of(l) / sigma)
                          + q * special.ndtr((x_of(l) - shift) / sigma))

    def sf(shift):
        return lambda l: ((1 - q) * special.ndtr(-x_of(l) / sigma)
                          + q * special.ndtr((shift - x_of(l)) / sigma))

    law = _LossLaw(cdf_p=cdf(1.0), sf_p=sf(1.0), cdf_q=cdf(-1.0), sf_q=sf(-1.0))
    z = _Z_TAIL * sigma
    return PLDPair(_connect_the_dots(law, loss_of(-z), loss_of(1 + z), interval))


def _laplace_cdf(x, mu: float, b: float):
    z = (np.asarray(x, dtype=np.float64) - mu) / b
    return np.where(z < 0, 0.5 * np.exp(np.minimum(z, 0)), 1 - 0.5 * np.exp(-np.maximum(z, 0)))


def _laplace_sf(x, mu: float, b: float):
    return _laplace_cdf(-np.asarray(x, dtype=np.float64), -mu, b)


@functools.lru_cache(maxsize=64)
def laplace_pair(q: float, scale: float, interval: float) -> PLDPair:
    """Poisson-subsampled Laplace (rate q, scale / sensitivity), add/remove.

    Remove: ``(1-q) Lap(0) + q Lap(1)`` against ``Lap(0)``; the loss
    ``L(x) = log(1-q + q e^{(|x| - |x-1|)/b})`` is non-decreasing, with atoms at both ends
    of its range (x <= 0 and x >= 1). Add: the reverse pair, loss ``-L``.
    """
    if scale < SIGMA_FLOOR:  # scale 0 dominates: a sampled record is revealed
        if q == 1.0:
            return PLDPair(_point_masses(interval, (0.0,), (0.0,), 1.0))
        keep = math.log1p(-q)
        return PLDPair(_point_masses(interval, (keep,), (1 - q,), q),
                       _point_masses(interval, (-keep,), (1.0,), 0.0))
    b = min(scale, SIGMA_CEILING)
    keep, log_q = (math.log1p(-q) if q < 1 else -math.inf), math.log(q)
    low = float(np.logaddexp(keep, log_q - 1 / b))    # the loss on x <= 0
    high = float(np.logaddexp(keep, log_q + 1 / b))   # the loss on x >= 1

    def x_of(loss):  # L(x) = loss on 0 < x < 1, clipped to [0, 1]
        loss = np.clip(np.asarray(loss, dtype=np.float64), low, high)
        return np.clip((1 + b * np.log1p(np.expm1(loss) / q)) / 2, 0.0, 1.0)

    def below(loss, inside, lower_value, upper_value):
        loss = np.asarray(loss, dtype=np.float64)
        return np.where(loss < low, lower_value, np.where(loss >= high, upper_value, inside))

    def mix_cdf(x):
        return (1 - q) * _laplace_cdf(x, 0.0, b) + q * _laplace_cdf(x, 1.0, b)

    def mix_sf(x):
        return (1 - q) * _laplace_sf(x, 0.0, b) + q * _laplace_sf(x, 1.0, b)

    remove = _LossLaw(  # P(L <= l) = P(X <= x(l)) on [low, high)
        cdf_p=lambda l: below(l, mix_cdf(x_of(l)), 0.0, 1.0),
        sf_p=lambda l: below(l, mix_sf(x_of(l)), 1.0, 0.0),
        cdf_q=lambda l: below(l, _laplace_cdf(x_of(l), 0.0, b), 0.0, 1.0),
        sf_q=lambda l: below(l, _laplace_sf(x_of(l), 0.0, b), 1.0, 0.0))
    pair_remove = _connect_the_dots(remove, low, high, interval)
    if q == 1.0:  # Lap(1) vs Lap(0) is symmetric
        return PLDPair(pair_remove)

    def flip(loss):  # add loss -L <= l  <=>  L >= -l  <=>  X >= x(-l)
        return -np.asarray(loss, dtype=np.float64)

    def above(loss, inside, lower_value, upper_value):  # regions of -l against [low, high]
        minus = flip(loss)
        return np.where(minus <= low, upper_value, np.where(minus > high, lower_value, inside))

    add = _LossLaw(
        cdf_p=lambda l: above(l, _laplace_sf(x_of(flip(l)), 0.0, b), 0.0, 1.0),
        sf_p=lambda l: above(l, _laplace_cdf(x_of(flip(l)), 0.0, b), 1.0, 0.0),
        cdf_q=lambda l: above(l, mix_sf(x_of(flip(l))), 0.0, 1.0),
        sf_q=lambda l: above(l, mix_cdf(x_of(flip(l))), 1.0, 0.0))
    return PLDPair(pair_remove, _connect_the_dots(add, -high, -low, interval))


@functools.lru_cache(maxsize=64)
def epsilon_delta_pair(epsilon: float, delta: float, interval: float) -> PLDPair:
    """The dominating pair of any (eps, delta)-DP mechanism (Kairouz et al. 2015): with
    probability delta the record is revealed, otherwise randomized response at eps.

    Both atoms are computed from their own closed form, ``(1 - delta) / (1 + e^{-+eps})``
    (as dp_accounting's ``from_privacy_parameters``), not one as the remainder of the
    other: the remainder carries a rounding error of the first (0.19999999999999996
    instead of 0.2), which composition then multiplies.
    """
    keep = (1.0 - delta) / (1.0 + math.exp(-epsilon))
    flip = (1.0 - delta) / (1.0 + math.exp(epsilon)) if epsilon < 700 else 0.0
    return PLDPair(_point_masses(interval, (epsilon, -epsilon), (keep, flip), delta))


def identity(interval: float) -> PLDPair:
    """The PLD of doing nothing: all mass at loss 0."""
    return PLDPair(_point_masses(interval, (0.0,), (1.0,), 0.0))


def symmetrized(pld: DiscretePLD) -> DiscretePLD:
    """The symmetric PLD with the same positive part as ``pld`` (see the module docstring).

    Mass ``w`` at loss ``l > 0`` is kept and mirrored as ``w e^-l`` at ``-l``; the mass
    left over goes to loss 0. The hockey-stick curve for epsilon >= 0 is unchanged.
    """
    index = pld.offset + np.arange(pld.pmf.size)
    positive = (index > 0) & (pld.pmf > 0)
    top = int(index[positive].max()) if positive.any() else 0
    pmf = np.zeros(2 * top + 1)
    pmf[top + index[positive]] = pld.pmf[positive]
    pmf[top - index[positive]] = pld.pmf[positive] * np.exp(-index[positive] * pld.interval)
    pmf[top] = max(0.0, 1.0 - pld.inf_mass - math.fsum(pmf))
    return DiscretePLD(pld.interval, -top, pmf, pld.inf_mass)


@functools.lru_cache(maxsize=8)
def wor_gaussian_pair(q: float, sigma: float, interval: float) -> PLDPair:
    """Gaussian on a batch drawn without replacement (rate q, noise sigma / C), replace-one:
    the symmetrized remove pair of sensitivity 2C (see the module docstring)."""
    return PLDPair(symmetrized(gaussian_pair(q, sigma / 2.0, interval).remove))
