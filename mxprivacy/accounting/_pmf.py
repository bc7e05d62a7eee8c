"""A discrete privacy loss distribution (PLD) on a uniform grid, and its composition.

The privacy loss of a pair (P, Q) is ``L = log(P(x) / Q(x))`` for ``x ~ P``. Its
hockey-stick divergence is ``delta(eps) = m_inf + E[(1 - exp(eps - L))_+]``, where
``m_inf`` is the mass of infinite loss. Every operation here is *pessimistic*: the result
dominates the exact distribution, so a delta (or epsilon) read from it is never smaller
than the true one.

- Truncating the upper tail moves its mass to ``m_inf``.
- Truncating the lower tail moves its mass up to the lowest kept loss.
- Self-composition uses one FFT on a window chosen by a Chernoff bound. Mass that falls
  outside the window is handled as follows:
  - mass below the window wraps to higher losses, which is pessimistic;
  - mass above the window is bounded, and that bound is added to ``m_inf``.
- A distribution of a few atoms (an (epsilon, delta) event, say) is self-composed by
  exact repeated convolution of its atoms instead, while the atoms stay few: an FFT would
  add round-off of about 1e-17 to every grid point of the window and perturb the atoms
  by as much.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import fft as sp_fft
from scipy import optimize, signal, special

__all__ = ["DiscretePLD", "TAIL_MASS", "WindowTooLarge"]

TAIL_MASS = 1e-20
"""Mass that truncation may move (up, or to infinity) at each truncation."""

_MAX_POINTS = 1 << 22
_SPARSE_ATOMS = 64          # at most this many atoms: exact sparse self-composition ...
_SPARSE_PRODUCT = 1 << 22   # ... while each convolution multiplies at most this many pairs


class WindowTooLarge(MemoryError):
    """The composed distribution needs more grid points than allowed."""


@dataclass(frozen=True)
class DiscretePLD:
    """Loss ``(offset + k) * interval`` has mass ``pmf[k]``; ``inf_mass`` is at +inf."""

    interval: float
    offset: int
    pmf: np.ndarray
    inf_mass: float

    @property
    def losses(self) -> np.ndarray:
        return (self.offset + np.arange(self.pmf.size)) * self.interval

    # -- hockey-stick divergence --------------------------------------------------
    def get_delta(self, epsilon: float) -> float:
        """``delta(epsilon)`` of this distribution."""
        losses = self.losses
        above = losses > epsilon
        gain = -np.expm1(epsilon - losses[above])
        return float(min(1.0, self.inf_mass + np.dot(self.pmf[above], gain)))

    def get_epsilon(self, delta: float) -> float:
        """Smallest ``epsilon >= 0`` with ``delta(epsilon) <= delta`` (``inf`` if none)."""
        if self.inf_mass > delta:
            return math.inf
        losses, pmf = self.losses, self.pmf
        # tail_mass[j] = m_inf + sum_{k >= j} p_k
        # above[j] = sum_{k > j} p_k e^(l_j - l_k), by a stable recursion (no overflow).
        tail_mass = self.inf_mass + np.cumsum(pmf[::-1])[::-1]
        decay = math.exp(-self.interval)
        shifted = np.append(pmf[1:], 0.0)[::-1]
        above = signal.lfilter([decay], [1.0, -decay], shifted)[::-1]
        next_mass = np.append(tail_mass[1:], self.inf_mass)
        delta_at_grid = next_mass - above  # delta(l_j) counts losses strictly above l_j
        j = int(np.argmax(delta_at_grid <= delta))
        # On [l_{j-1}, l_j): delta(eps) = tail_mass[j] - e^(eps - l_j) (p_j + above[j]).
        if tail_mass[j] <= delta:  # only when j == 0: every epsilon >= 0 works
            return 0.0
        at_j = pmf[j] + above[j]
        eps = float(losses[j]) + math.log((tail_mass[j] - delta) / at_j)
        return max(0.0, min(eps, float(losses[j])))

    # -- composition ----------------------------------------------------------------
    def compose(self, other: "DiscretePLD") -> "DiscretePLD":
        """The PLD of running both mechanisms (a linear convolution, then truncation)."""
        _check_same_grid(self, other)
        n = self.pmf.size + other.pmf.size - 1
        if self.pmf.size * other.pmf.size <= 1 << 16:
            pmf = np.convolve(self.pmf, other.pmf)
        else:
            size = sp_fft.next_fast_len(n, real=True)
            spectrum = sp_fft.rfft(self.pmf, size) * sp_fft.rfft(other.pmf, size)
            pmf = sp_fft.irfft(spectrum, size)[:n]
        inf_mass = 1.0 - (1.0 - self.inf_mass) * (1.0 - other.inf_mass)
        return _truncated(self.interval, self.offset + other.offset, pmf, inf_mass)

    def self_compose(self, count: int) -> "DiscretePLD":
        """The PLD of ``count`` independent runs, by one FFT power on a bounded window."""
        if count == 1:
            return self
        inf_mass = -math.expm1(count * math.log1p(-self.inf_mass)) if self.inf_mass < 1 else 1.0
        if not np.any(self.pmf > 0):  # no finite loss at all
            return DiscretePLD(self.interval, self.offset * count, self.pmf[:1], inf_mass)
        if np.count_nonzero(self.pmf) <= _SPARSE_ATOMS:
            atoms = _sparse_power(self, count)
            if atoms is not None:
                return _densified(self.interval, *atoms, inf_mass)
        lo, hi, upper_tail = _chernoff_window(self, count)
        size = sp_fft.next_fast_len(hi - lo + 1, real=True)
        if size > _MAX_POINTS:
            raise WindowTooLarge(size)
        folded = np.bincount((self.offset + np.arange(self.pmf.size)) % size,
                             weights=self.pmf, minlength=size)
        powered = sp_fft.irfft(sp_fft.rfft(folded) ** count, size)
        window = np.roll(powered, -(lo % size))[: hi - lo + 1]
        return _truncated(self.interval, lo, window, min(1.0, inf_mass + upper_tail))


def _sparse_power(pld: DiscretePLD, count: int):
    """``(indices, masses)`` of the ``count``-fold composition by exact repeated squaring
    of the atoms, or None when the atoms become too many."""
    keep = pld.pmf > 0
    base = (pld.offset + np.flatnonzero(keep), pld.pmf[keep])
    result = None
    while count:
        if count & 1:
            result = base if result is None else _convolve_atoms(result, base)
            if result is None:
                return None
        count >>= 1
        if count:
            base = _convolve_atoms(base, base)
            if base is None:
                return None
    return result


def _convolve_atoms(first, second):
    (idx_a, mass_a), (idx_b, mass_b) = first, second
    if idx_a.size * idx_b.size > _SPARSE_PRODUCT:
        return None
    idx = (idx_a[:, None] + idx_b[None, :]).ravel()
    unique, inverse = np.unique(idx, return_inverse=True)
    return unique, np.bincount(inverse, weights=(mass_a[:, None] * mass_b[None, :]).ravel())


def _densified(interval: float, idx: np.ndarray, mass: np.ndarray, inf_mass: float) -> DiscretePLD:
    """Atoms on a dense grid, with the tails of :func:`_truncated` moved before densifying."""
    cum = np.cumsum(mass)
    first = int(np.searchsorted(cum, TAIL_MASS, side="right"))
    rev = np.cumsum(mass[::-1])
    last = mass.size - 1 - int(np.searchsorted(rev, TAIL_MASS, side="right"))
    if first > last:
        first = last = max(0, min(first, mass.size - 1))
    size = int(idx[last] - idx[first]) + 1
    if size > _MAX_POINTS:
        raise WindowTooLarge(size)
    pmf = np.zeros(size)
    pmf[idx[first:last + 1] - idx[first]] = mass[first:last + 1]
    pmf[0] += cum[first - 1] if first > 0 else 0.0
    if last < mass.size - 1:
        inf_mass = min(1.0, inf_mass + rev[mass.size - 2 - last])
    return DiscretePLD(interval, int(idx[first]), pmf, inf_mass)


def _check_same_grid(a: DiscretePLD, b: DiscretePLD) -> None:
    if not math.isclose(a.interval, b.interval, rel_tol=1e-12):
        raise ValueError("PLDs on different grids cannot be composed.")


def _truncated(interval: float, offset: int, pmf: np.ndarray, inf_mass: float) -> DiscretePLD:
    """Clip round-off, then move tails of mass <= TAIL_MASS up (or to infinity)."""
    pmf = np.clip(pmf, 0.0, None)
    cum = np.cumsum(pmf)
    first = int(np.searchsorted(cum, TAIL_MASS, side="right"))
    rev = np.cumsum(pmf[::-1])
    last = pmf.size - 1 - int(np.searchsorted(rev, TAIL_MASS, side="right"))
    if first > last:  # (almost) all mass is infinite
        first = last = max(0, min(first, pmf.size - 1))
    kept = pmf[first:last + 1].copy()
    kept[0] += cum[first - 1] if first > 0 else 0.0
    inf_mass = min(1.0, inf_mass + (rev[pmf.size - 2 - last] if last < pmf.size - 1 else 0.0))
    return DiscretePLD(interval, offset + first, kept, inf_mass)


def _chernoff_window(pld: DiscretePLD, count: int) -> tuple:
    """Index window holding all but TAIL_MASS of each tail of the ``count``-fold sum.

    Chernoff: ``P(S >= u) <= exp(count * log M(t) - t u)`` for every ``t > 0`` (and
    likewise below). The best ``t`` is found on a log grid, then refined.
    Returns ``(lo, hi, upper_tail)``; ``upper_tail`` bounds the mass above ``hi``.
    """
    support_lo = count * pld.offset
    support_hi = count * (pld.offset + pld.pmf.size - 1)
    positive = pld.pmf > 0
    log_p = np.log(pld.pmf[positive])
    idx = (pld.offset + np.flatnonzero(positive)).astype(np.float64)
    hi = min(support_hi, int(math.ceil(_best_chernoff(log_p, idx, count, pld.interval))))
    lo = max(support_lo, int(math.floor(-_best_chernoff(log_p, -idx, count, pld.interval))))
    upper_tail = TAIL_MASS if hi < support_hi else 0.0
    return lo, max(hi, lo), upper_tail


def _best_chernoff(log_p: np.ndarray, idx: np.ndarray, count: int, interval: float) -> float:
    """min over t > 0 of (count * log E[e^(t idx)] - log TAIL_MASS) / t."""
    shift = idx.max()  # e^(t idx) = e^(t shift) e^(t (idx - shift)): no overflow

    def bound(log_t: float) -> float:
        t = math.exp(log_t)
        log_mgf = t * shift + special.logsumexp(log_p + t * (idx - shift))
        return (count * log_mgf - math.log(TAIL_MASS)) / t

    grid = np.linspace(math.log(1e-5 * interval), math.log(1e3 * interval), 25)
    values = [bound(x) for x in grid]
    best = int(np.argmin(values))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]
    result = optimize.minimize_scalar(bound, bounds=(lo, hi), method="bounded",
                                      options={"xatol": 1e-3})
    return float(min(min(values), result.fun))
