"""RDP upper bounds for subsampled mechanisms beyond the Poisson-subsampled Gaussian.

Integer orders are computed from closed forms; a fractional order ``a`` between the
integers ``f < a < f + 1`` uses the linear interpolation of ``log A`` (``A`` the Rényi
moment, ``log A_1 = 0``). ``log A`` is convex in the order (Hölder's inequality), so the
chord lies above it: the interpolation is an upper bound (Wang, Balle & Kasiviswanathan
2019, Corollary 10).

Sampling without replacement, replace-one relation (Wang, Balle & Kasiviswanathan 2019,
Theorem 9, with the Gaussian refinement of their Theorem 27 as dp_accounting applies it)
    ``A_a <= 1 + q^2 C(a,2) min(4 (e^{e(2)} - 1), 2 e^{e(2)})
    + sum_{j>=3} q^j C(a,j) min(4 sqrt(B(2 floor(j/2)) B(2 ceil(j/2))), 2 e^{(j-1) e(j)})``
    where ``e(j) = j / (2 s^2)`` is the RDP of the Gaussian with noise ``s`` relative to
    the replace-one sensitivity, and ``B(l) = sum_i (-1)^i C(l,i) e^{(i-1) e(i)}``. For even
    ``l``, ``B(l) = E[(e^Y - 1)^l]`` with ``Y ~ N(-e(1), 2 e(1))`` the log-likelihood ratio,
    so it is >= 0. The alternating sum loses digits to cancellation (all of them for large
    noise), so a rigorous bound on its floating-point error is added to it (never
    subtracted); and since ``|e^y - 1| <= |y| e^{max(y, 0)}``, also
    ``B(l) <= E[Y^l] + E[Y^l e^{lY}]``, two Gaussian moments with positive terms only. The
    smaller of the two upper bounds is used. Above order 256 the ``B`` terms are dropped
    (the minimum is at most its other argument), as in dp_accounting.

Poisson subsampling of the Laplace mechanism, add/remove relation
    Remove direction: ``A_a = E_{P0}[((1-q) + q L)^a]`` with ``L`` the Laplace likelihood
    ratio, expanded binomially; every term is positive and ``E_{P0}[L^k]`` has a closed
    form. Add direction: ``E_{P0}[((1-q) + q L)^{1-a}]``, in closed form on ``x <= 0`` and
    ``x >= 1`` and by adaptive quadrature (plus its error estimate) on ``0 < x < 1``. The
    larger of the two directions is used.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Callable, Tuple

import numpy as np
from scipy import integrate, special

__all__ = ["wor_gaussian_rdp", "poisson_laplace_rdp"]

_EXACT_MAX_ORDER = 256
_EPS = np.finfo(np.float64).eps


@functools.lru_cache(maxsize=1)
def _log_binomials(size: int = _EXACT_MAX_ORDER) -> np.ndarray:
    """``table[l, i] = log C(l, i)`` for ``0 <= i <= l <= size`` (exact binomials, one rounding)."""
    table = np.full((size + 1, size + 1), -np.inf)
    for l in range(size + 1):
        table[l, :l + 1] = [math.log(math.comb(l, i)) for i in range(l + 1)]
    return table


def _log_binom(n: int, k: np.ndarray) -> np.ndarray:
    return special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)


def _by_interpolation(orders: Tuple[float, ...], log_a: Callable[[int], float]) -> np.ndarray:
    """RDP at ``orders`` from ``log A`` at integer orders (chords above a convex function)."""
    cache = {1: 0.0}

    def at(order: int) -> float:
        if order not in cache:
            cache[order] = log_a(order)
        return cache[order]

    result = np.empty(len(orders))
    for idx, alpha in enumerate(orders):
        if not math.isfinite(alpha):
            result[idx] = math.inf
            continue
        low, high = math.floor(alpha), math.ceil(alpha)
        t = alpha - low
        value = at(low) if t == 0 else (1 - t) * at(low) + t * at(high)
        result[idx] = max(value, 0.0) / (alpha - 1)
    return result


# -- sampling without replacement, Gaussian ---------------------------------------------
def _log_normal_moment(length: int, mean: float, variance: float) -> float:
    """``log E[X^l]`` for ``X ~ N(mean, variance)`` and even ``l`` (every term is >= 0)."""
    k = np.arange(length // 2 + 1, dtype=np.float64)
    log_double_factorial = special.gammaln(2 * k + 1) - k * math.log(2) - special.gammaln(k + 1)
    with np.errstate(divide="ignore"):
        log_mean = np.where(length - 2 * k > 0, (length - 2 * k) * math.log(abs(mean)), 0.0)
    return float(special.logsumexp(_log_binom(length, 2 * k) + log_mean
                                   + k * math.log(variance) + log_double_factorial))


def _log_b_by_moments(length: int, c: float) -> float:
    """``log(E[Y^l] + E[Y^l e^{lY}])`` for ``Y ~ N(-c, 2c)``: an upper bound on ``log B(l)``."""
    plain = _log_normal_moment(length, -c, 2 * c)
    tilted = length * (length - 1) * c + _log_normal_moment(length, (2 * length - 1) * c, 2 * c)
    return float(np.logaddexp(plain, tilted))


def _log_b_upper(c: float) -> np.ndarray:
    """Upper bounds on ``log B(l)`` for even ``l <= 256``, with ``e(i) = i c`` (-inf elsewhere)."""
    table = _log_binomials()
    out = np.full(_EXACT_MAX_ORDER + 1, -np.inf)
    for l in range(2, _EXACT_MAX_ORDER + 1, 2):
        i = np.arange(l + 1, dtype=np.float64)
        terms = table[l, :l + 1] + (i - 1) * i * c
        if not np.all(np.isfinite(terms)):
            out[l] = np.inf
            continue
        moments = _log_b_by_moments(l, c)
        signs = np.where(i % 2 == 0, 1.0, -1.0)
        log_sum, sign = special.logsumexp(terms, b=signs, return_sign=True)
        # Rounding error of the alternating sum: each term is off by at most
        # (l + 8 + 8 |t_i| + 8 max|t|) eps relative; a factor 4 on top for safety.
        peak = float(np.max(np.abs(terms)))
        slack = np.log(4 * _EPS * (l + 8 + 8 * np.abs(terms) + 8 * peak))
        log_err = special.logsumexp(terms + slack)
        out[l] = min(np.logaddexp(log_sum if sign > 0 else -np.inf, log_err), moments)
    return out


def _wor_log_a(q: float, c: float, log_b: np.ndarray, alpha: int) -> float:
    """Theorem 9/27 of Wang et al. (2019) at integer ``alpha >= 2`` (``e(j) = j c``)."""
    e2 = 2 * c
    log_q = math.log(q)
    second = 2 * log_q + math.log(alpha * (alpha - 1) / 2) + min(
        math.log(4) + e2 + math.log(-math.expm1(-e2)), math.log(2) + e2)
    if alpha == 2:
        return float(np.logaddexp(0.0, second))
    j = np.arange(3, alpha + 1, dtype=np.float64)
    general = math.log(2) + (j - 1) * j * c
    if alpha <= _EXACT_MAX_ORDER:
        lo = 2 * np.floor(j / 2).astype(int)
        hi = 2 * np.ceil(j / 2).astype(int)
        general = np.minimum(general, math.log(4) + 0.5 * (log_b[lo] + log_b[hi]))
    terms = _log_binom(alpha, j) + j * log_q + general
    return float(special.logsumexp(np.concatenate(([0.0, second], terms))))


def wor_gaussian_rdp(q: float, sigma: float, orders: Tuple[float, ...]) -> np.ndarray:
    """RDP of one Gaussian step on a sample drawn without replacement (rate ``q``).

    ``sigma`` is the noise std relative to the *replace-one* sensitivity.
    """
    alphas = np.asarray(orders, dtype=np.float64)
    if q == 0.0:
        return np.zeros_like(alphas)
    if sigma == 0.0:
        return np.full_like(alphas, np.inf)
    c = 1.0 / (2.0 * sigma * sigma)
    if q == 1.0:
        return alphas * c
    log_b = _log_b_upper(c)
    return _by_interpolation(orders, lambda a: _wor_log_a(q, c, log_b, a))


# -- Poisson subsampling, Laplace ---------------------------------------------------------
def _laplace_log_moments(b: float, k: np.ndarray) -> np.ndarray:
    """``log E_{P0}[L^k]`` for Laplace(0, b) against Laplace(1, b), ``L = p1 / p0``."""
    below = math.log(0.5) - k / b                      # x <= 0: L = e^{-1/b}
    above = math.log(0.5) + (k - 1) / b                # x >= 1: L = e^{1/b}
    width = 2 * k - 1                                  # 0 < x < 1: L = e^{(2x - 1)/b}
    with np.errstate(divide="ignore"):
        middle = np.where(
            k >= 1,
            (k - 1) / b + np.log1p(-np.exp(-np.abs(width) / b)) - np.log(2 * np.abs(width)),
            np.log(-np.expm1(-1.0 / b)) - math.log(2))
    return np.logaddexp(np.logaddexp(below, above), middle)


def _laplace_remove_log_a(q: float, b: float, alpha: int) -> float:
    k = np.arange(alpha + 1, dtype=np.float64)
    terms = (_log_binom(alpha, k) + (alpha - k) * math.log1p(-q) + k * math.log(q)
             + _laplace_log_moments(b, k))
    return float(special.logsumexp(terms))


def _laplace_add_log_a(q: float, b: float, alpha: int) -> float:
    """``log E_{P0}[r^{1-a}]``, ``r = (1-q) + q L``, by quadrature of ``r^{1-a} - 1`` (the
    quadrature's error estimate is added, never subtracted)."""
    power = 1.0 - alpha

    def excess(x):  # r(x)^{1-a} - 1 on 0 < x < 1, accurate when it is small
        return math.expm1(power * math.log1p(q * math.expm1((2 * x - 1) / b)))

    def density_times_excess(x):
        return math.exp(-x / b) / (2 * b) * excess(x)

    with warnings.catch_warnings():
        warnings.simplefilter("error", integrate.IntegrationWarning)
        try:
            middle, error = integrate.quad(density_times_excess, 0.0, 1.0, epsabs=1e-15,
                                           epsrel=1e-12, limit=200)
        except (OverflowError, integrate.IntegrationWarning):
            return math.inf  # pessimistic: this order is then unusable
    total = middle + abs(error) + 0.5 * excess(0.0) + 0.5 * math.exp(-1.0 / b) * excess(1.0)
    return math.log1p(total) if total > -1 else -math.inf


def poisson_laplace_rdp(q: float, b: float, orders: Tuple[float, ...]) -> np.ndarray:
    """RDP of the Poisson-subsampled Laplace mechanism (scale ``b`` / sensitivity, rate ``q``)."""
    alphas = np.asarray(orders, dtype=np.float64)
    if q == 0.0:
        return np.zeros_like(alphas)
    if b == 0.0:
        return np.full_like(alphas, np.inf)

    def log_a(alpha: int) -> float:
        return max(_laplace_remove_log_a(q, b, alpha), _laplace_add_log_a(q, b, alpha))
    return _by_interpolation(orders, log_a)
