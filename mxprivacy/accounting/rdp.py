"""Rényi DP (the moments accountant) for subsampled Gaussian and Laplace mechanisms.

Events
    The Poisson-subsampled Gaussian (below), the Poisson-subsampled Laplace and
    fixed-size batches drawn without replacement (Wang, Balle & Kasiviswanathan 2019)
    use the bounds of :mod:`._rdp_bounds`. Under ``neighboring="replace_one"`` a sum of
    records bounded by C has sensitivity 2C: a Gaussian or Laplace event's noise
    multiplier (noise / C) is halved before its RDP is computed. dp_accounting's
    RdpAccountant does not halve it (it reads the multiplier of a
    ``SampledWithoutReplacementDpEvent`` relative to the replace-one sensitivity), so the
    same run is described there by ``noise_multiplier / 2``. Poisson subsampling is
    accounted under add/remove only and sampling without replacement under replace-one
    only, as in dp_accounting.

Orders
    Integer orders use the exact binomial expansion of Mironov, Talwar & Zhang (2019),
    eq. (2). Fractional orders use their two-series expansion (Section 3.3), which is
    exact up to truncation of terms below e^-30 relative size. ``tests/accounting``
    checks both against direct numerical integration of the Rényi divergence in *both*
    directions: the series equals the true divergence, and the other direction is
    smaller, so the value is a valid (and tight) upper bound. dp-accounting 0.6.0
    returns a larger value at fractional orders (6.7058e-4 against the exact 6.5007e-4
    at q=0.01, sigma=2.5, 50 steps, alpha=1.5): valid, but looser.

Conversion
    RDP to (epsilon, delta) uses the improved conversion of Balle et al. (2020) /
    Canonne, Kamath & Steinke (2020), Proposition 12:
    ``eps = rdp + log((a-1)/a) - (log(delta) + log(a)) / (a-1)``.
    The classic ``rdp - log(delta)/(a-1)`` is :func:`rdp_to_epsilon_classic`, kept only
    to reproduce published numbers.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence, Tuple

import numpy as np
from scipy import special

from ..errors import InvalidParameterError
from ._rdp_bounds import poisson_laplace_rdp, wor_gaussian_rdp
from .base import ADD_REMOVE, REPLACE_ONE, LedgerTotalMixin, PrivacyAccountant
from .events import (ComposedEvent, DpEvent, EpsilonDeltaEvent, GaussianEvent, LaplaceEvent,
                     PoissonSampledEvent, SampledWithoutReplacementEvent, SelfComposedEvent)

__all__ = [
    "DEFAULT_ORDERS",
    "RDPAccountant",
    "compute_rdp",
    "rdp_to_epsilon",
    "rdp_to_epsilon_classic",
    "rdp_to_delta",
]

DEFAULT_ORDERS: Tuple[float, ...] = tuple(
    [1.0 + x / 20.0 for x in range(1, 20)]          # 1.05 .. 1.95
    + [2.0 + x / 10.0 for x in range(0, 90)]        # 2.0 .. 10.9
    + list(range(11, 64))
    + [64, 72, 80, 96, 112, 128, 160, 192, 256, 384, 512, 768, 1024]
)

_TRUNCATION_LOG = -30.0
_MAX_CHUNKS = 256  # 16,384 series terms; a series still above e^-30 there counts as inf
SIGMA_FLOOR = 1e-100
"""Below this noise multiplier a step counts as sigma = 0 (infinite RDP; epsilon above 1e190)."""
SIGMA_CEILING = 1e100
"""Above this noise multiplier a step counts as sigma = 1e100 (more noise only lowers RDP)."""


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    k = np.arange(alpha + 1, dtype=np.float64)
    log_binom = special.gammaln(alpha + 1) - special.gammaln(k + 1) - special.gammaln(alpha - k + 1)
    terms = log_binom + k * math.log(q) + (alpha - k) * math.log1p(-q) + (k * k - k) / (2 * sigma ** 2)
    return float(special.logsumexp(terms))


def _log_a_frac(q: float, sigma: float, alphas: np.ndarray) -> np.ndarray:
    """Mironov et al. (2019) Section 3.3 for many fractional orders at once.

    Two signed series per order, summed in chunks of 64 terms until every order's
    terms fall below e^-30 relative size (and past the order itself).
    """
    alpha = np.asarray(alphas, dtype=np.float64)[:, None]
    z0 = sigma ** 2 * math.log(1.0 / q - 1.0) + 0.5
    chunks_0, chunks_1, chunk_signs = [], [], []
    start = 0
    while True:
        i = np.arange(start, start + 64, dtype=np.float64)[None, :]
        j = alpha - i
        coef = special.binom(alpha, i)
        log_coef = np.log(np.abs(coef))
        log_s0 = (log_coef + i * math.log(q) + j * math.log1p(-q)
                  + (i * i - i) / (2 * sigma ** 2) + special.log_ndtr(-(i - z0) / sigma))
        log_s1 = (log_coef + j * math.log(q) + i * math.log1p(-q)
                  + (j * j - j) / (2 * sigma ** 2) + special.log_ndtr(-(z0 - j) / sigma))
        chunks_0.append(log_s0)
        chunks_1.append(log_s1)
        chunk_signs.append(np.sign(coef))
        start += 64
        last = np.maximum(log_s0[:, -1], log_s1[:, -1])
        if start > alpha.max() and np.all(last < _TRUNCATION_LOG):
            break
        if start >= _MAX_CHUNKS * 64 or np.isnan(last).any():  # pessimistic: infinite RDP
            return np.full(alpha.shape[0], np.inf)
    sign = np.concatenate(chunk_signs, axis=1)
    log_a0, s0 = special.logsumexp(np.concatenate(chunks_0, axis=1), b=sign, axis=1,
                                   return_sign=True)
    log_a1, s1 = special.logsumexp(np.concatenate(chunks_1, axis=1), b=sign, axis=1,
                                   return_sign=True)
    return np.logaddexp(np.where(s0 > 0, log_a0, -np.inf), np.where(s1 > 0, log_a1, -np.inf))


def _rdp_curve(q: float, sigma: float, orders: Tuple[float, ...]) -> np.ndarray:
    """RDP of one Poisson-subsampled Gaussian step at each order."""
    alphas = np.asarray(orders, dtype=np.float64)
    if q == 0.0:
        return np.zeros_like(alphas)
    if sigma < SIGMA_FLOOR:  # sigma = 0 dominates: the step is a post-processing of it
        return np.full_like(alphas, np.inf)
    sigma = min(sigma, SIGMA_CEILING)  # likewise, sigma = 1e100 dominates any larger one
    if q == 1.0:
        return alphas / (2 * sigma ** 2)
    log_a = np.full_like(alphas, np.inf)  # infinite orders stay infinite
    integer = np.isfinite(alphas) & (alphas == np.floor(alphas))
    fractional = np.isfinite(alphas) & ~integer
    for k in np.flatnonzero(integer):
        log_a[k] = _log_a_int(q, sigma, int(alphas[k]))
    if fractional.any():
        log_a[fractional] = _log_a_frac(q, sigma, alphas[fractional])
    with np.errstate(invalid="ignore"):
        curve = np.maximum(log_a, 0.0) / (alphas - 1)
    return np.where(np.isfinite(alphas), curve, np.inf)


@functools.lru_cache(maxsize=256)
def _rdp_cached(q: float, sigma: float, orders: Tuple[float, ...]) -> np.ndarray:
    values = _rdp_curve(q, sigma, orders)
    values.setflags(write=False)
    return values


def _clamped(noise: float) -> float:
    """0 below SIGMA_FLOOR (dominates), SIGMA_CEILING above it (is dominated)."""
    return 0.0 if noise < SIGMA_FLOOR else min(noise, SIGMA_CEILING)


@functools.lru_cache(maxsize=256)
def _wor_cached(q: float, sigma: float, orders: Tuple[float, ...]) -> np.ndarray:
    values = wor_gaussian_rdp(q, _clamped(sigma), orders)
    values.setflags(write=False)
    return values


@functools.lru_cache(maxsize=64)
def _poisson_laplace_cached(q: float, scale: float, orders: Tuple[float, ...]) -> np.ndarray:
    values = (_laplace_rdp(scale, orders) if q == 1.0
              else poisson_laplace_rdp(q, _clamped(scale), orders))
    values.setflags(write=False)
    return values


def _as_orders(orders: Sequence[float] | None) -> Tuple[float, ...]:
    result = tuple(float(a) for a in (DEFAULT_ORDERS if orders is None else orders))
    if not result or any(not a > 1 for a in result):
        raise InvalidParameterError("RDP orders must all be > 1.")
    return result


def compute_rdp(q: float, noise_multiplier: float, steps: int = 1,
                orders: Sequence[float] | None = None) -> np.ndarray:
    """RDP of ``steps`` Poisson-subsampled Gaussian steps at each order.

    Parameters
    ----------
    q : float
        Sampling rate in [0, 1].
    noise_multiplier : float
        Noise std divided by the sensitivity.
    steps : int
        Number of compositions.
    orders : sequence of float, optional
        Rényi orders (> 1); :data:`DEFAULT_ORDERS` when omitted.
    """
    event = PoissonSampledEvent(q, GaussianEvent(noise_multiplier))  # validates
    return steps * _rdp_cached(event.sample_rate, event.event.noise_multiplier,
                               _as_orders(orders))


def _check_delta(delta: float) -> float:
    delta = float(delta)
    if not 0.0 < delta < 1.0:
        raise InvalidParameterError(f"delta must lie in (0, 1), got {delta!r}.")
    return delta


def rdp_to_epsilon(orders: Sequence[float], rdp: Sequence[float], delta: float) -> Tuple[float, float]:
    """Improved RDP to (epsilon, delta) conversion; returns ``(epsilon, best_order)``."""
    delta = _check_delta(delta)
    a = np.asarray(orders, dtype=np.float64)
    r = np.asarray(rdp, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        eps = r + np.log1p(-1.0 / a) - (math.log(delta) + np.log(a)) / (a - 1)
    eps = np.where(np.isnan(eps), np.inf, eps)
    idx = int(np.argmin(eps))
    return max(float(eps[idx]), 0.0), float(a[idx])


def rdp_to_epsilon_classic(orders: Sequence[float], rdp: Sequence[float],
                           delta: float) -> Tuple[float, float]:
    """The original moments-accountant conversion ``rdp - log(delta)/(a-1)`` (looser)."""
    delta = _check_delta(delta)
    a = np.asarray(orders, dtype=np.float64)
    eps = np.asarray(rdp, dtype=np.float64) - math.log(delta) / (a - 1)
    idx = int(np.nanargmin(eps))
    return float(eps[idx]), float(a[idx])


def rdp_to_delta(orders: Sequence[float], rdp: Sequence[float], epsilon: float) -> Tuple[float, float]:
    """Inverse of :func:`rdp_to_epsilon`: smallest delta at ``epsilon``, and its order."""
    epsilon = float(epsilon)
    if not epsilon >= 0:
        raise InvalidParameterError(f"epsilon must be >= 0, got {epsilon!r}.")
    a = np.asarray(orders, dtype=np.float64)
    r = np.asarray(rdp, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        log_delta = (a - 1) * (r - epsilon + np.log1p(-1.0 / a)) - np.log(a)
    log_delta = np.where(np.isnan(log_delta), np.inf, log_delta)
    idx = int(np.argmin(log_delta))
    return float(min(math.exp(min(log_delta[idx], 0.0)), 1.0)), float(a[idx])


def _laplace_rdp(b: float, orders: Tuple[float, ...]) -> np.ndarray:
    """RDP of the Laplace mechanism with scale/sensitivity ``b`` (Mironov 2017, Prop. 6)."""
    if b < SIGMA_FLOOR:
        return np.full(len(orders), np.inf)
    a = np.asarray(orders)
    b = min(b, SIGMA_CEILING)
    log_terms = np.logaddexp(np.log(a / (2 * a - 1)) + (a - 1) / b,
                             np.log((a - 1) / (2 * a - 1)) - a / b)
    return log_terms / (a - 1)


class RDPAccountant(LedgerTotalMixin, PrivacyAccountant):
    """Moments accountant: sums RDP curves of composed events over a grid of orders.

    Parameters
    ----------
    orders : sequence of float, optional
        Rényi orders; the default grid is dense (0.05 apart near 1, 0.1 up to 11).
    neighboring : {"add_remove", "replace_one"}, default "add_remove"
        The neighbouring relation. ``PoissonSampledEvent`` needs ``"add_remove"``;
        ``SampledWithoutReplacementEvent`` (of a ``GaussianEvent``) needs
        ``"replace_one"``, where a noise multiplier is relative to the per-record bound C
        and the sensitivity 2C is applied here.
    """

    name = "rdp"
    _handlers = {
        GaussianEvent: "_on_gaussian",
        LaplaceEvent: "_on_laplace",
        EpsilonDeltaEvent: "_on_epsilon_delta",
        PoissonSampledEvent: "_on_poisson",
        SampledWithoutReplacementEvent: "_on_without_replacement",
        SelfComposedEvent: "_on_self_composed",
        ComposedEvent: "_on_composed",
    }

    def __init__(self, orders: Sequence[float] | None = None, *,
                 neighboring: str = ADD_REMOVE) -> None:
        super().__init__(neighboring)
        self.orders = _as_orders(orders)
        self._reset_total()
        # noise / (replace-one sensitivity 2C) = noise_multiplier / 2
        self._sensitivity = 2.0 if self.neighboring == REPLACE_ONE else 1.0

    def _validate_specific(self, event: DpEvent) -> None:
        if isinstance(event, EpsilonDeltaEvent) and event.delta > 0:
            self._refuse(event, "an (epsilon, delta>0) guarantee has no RDP curve. Use "
                                "PLDAccountant.")
        if isinstance(event, PoissonSampledEvent):
            if self.neighboring != ADD_REMOVE:
                self._refuse(event, "Poisson subsampling is accounted under the add_remove "
                                    "relation only (no RDP bound for it under replace_one). "
                                    "Use PLDAccountant(neighboring='replace_one'), or "
                                    "neighboring='add_remove'.")
            if not isinstance(event.event, (GaussianEvent, LaplaceEvent)):
                self._refuse(event, "Poisson subsampling is supported only of a GaussianEvent "
                                    f"or a LaplaceEvent, got sub-event {event.event!r}.")
        if isinstance(event, SampledWithoutReplacementEvent):
            self._check_without_replacement(event)

    _total_attr = "_rdp"

    def _zero_total(self) -> np.ndarray:
        return np.zeros(len(self.orders))

    def _reset(self) -> None:
        self._reset_total()

    def empty_like(self) -> "RDPAccountant":
        return RDPAccountant(self.orders, neighboring=self.neighboring)

    def _relative(self, noise_multiplier: float) -> float:
        """Noise relative to this relation's sensitivity."""
        return noise_multiplier / self._sensitivity

    def _on_gaussian(self, event: GaussianEvent, count: int) -> None:
        curve = _rdp_cached(1.0, self._relative(event.noise_multiplier), self.orders)
        self._rdp = self._rdp + count * curve

    def _on_laplace(self, event: LaplaceEvent, count: int) -> None:
        curve = _laplace_rdp(self._relative(event.noise_multiplier), self.orders)
        self._rdp = self._rdp + count * curve

    def _on_epsilon_delta(self, event: EpsilonDeltaEvent, count: int) -> None:
        # Pure eps-DP implies (alpha, min(eps, alpha eps^2 / 2))-RDP (Bun & Steinke 2016).
        eps = event.epsilon
        curve = np.minimum(eps, np.asarray(self.orders) * eps * eps / 2.0)
        self._rdp = self._rdp + count * curve

    def _on_poisson(self, event: PoissonSampledEvent, count: int) -> None:
        noise = event.event.noise_multiplier  # add_remove only: sensitivity C
        if isinstance(event.event, LaplaceEvent):
            curve = _poisson_laplace_cached(event.sample_rate, noise, self.orders)
        else:
            curve = _rdp_cached(event.sample_rate, noise, self.orders)
        self._rdp = self._rdp + count * curve

    def _on_without_replacement(self, event: SampledWithoutReplacementEvent, count: int) -> None:
        curve = _wor_cached(event.sample_rate, self._relative(event.event.noise_multiplier),
                            self.orders)
        self._rdp = self._rdp + count * curve

    def _on_self_composed(self, event: SelfComposedEvent, count: int) -> None:
        self._apply(event.event, count * event.count)

    def _on_composed(self, event: ComposedEvent, count: int) -> None:
        for sub in event.events:
            self._apply(sub, count)

    @property
    def rdp(self) -> np.ndarray:
        """The accumulated RDP curve over :attr:`orders` (a copy)."""
        return np.array(self._rdp)

    def get_epsilon_and_order(self, delta: float) -> Tuple[float, float]:
        """Epsilon at ``delta`` and the Rényi order that attains it."""
        if not np.any(self._rdp):
            return 0.0, float(self.orders[0])
        return rdp_to_epsilon(self.orders, self._rdp, delta)

    def get_epsilon(self, delta: float) -> float:
        return self.get_epsilon_and_order(delta)[0]

    def get_delta(self, epsilon: float) -> float:
        if not np.any(self._rdp):
            return 0.0
        return rdp_to_delta(self.orders, self._rdp, epsilon)[0]
