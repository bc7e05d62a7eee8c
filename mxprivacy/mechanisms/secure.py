"""Exact samplers on the integers from a CSPRNG (Canonne, Kamath & Steinke 2020).

Floating-point Laplace or Gaussian noise leaks the input through the pattern of its
low-order bits (Mironov 2012). The samplers here use only integer arithmetic on
uniform integers drawn from the operating system's CSPRNG (``os.urandom``), so the
distribution of their output is exactly the stated one. The mechanisms put the values on
a fixed grid and add integer noise, so the set of possible outputs does not depend on the
input.

The loops of CKS Algorithms 1-3 are vectorized over lanes with numpy. Every lane runs
the same exact algorithm, and the lanes that are still running are masked.

DP-SGD's secure mode uses two faster helpers, also fed only by ``os.urandom``:

- :func:`bernoulli` is an *exact* Bernoulli(q) for any float q: a float is a dyadic
  rational, so comparing a uniform 64-bit integer U with floor(q 2^64) decides every lane
  except U == floor(q 2^64) (probability 2^-64), which recurses on the remaining bits of q.
- :func:`standard_normal` follows Holohan & Braghin (2021), as Opacus' ``secure_mode``
  does: each value is the sum of four independent Box-Muller normals, halved (an exact
  operation), computed in float64 from 53-bit uniforms and rounded once to float32.
  One transformed uniform reaches only a sparse, irregular set of floats, which is what
  Mironov's (2012) attack reads; a sum of independent draws fills the float grid, so the
  output no longer tells which input it was added to. It takes about 0.13 s per 10^6
  values here (mostly os.urandom and the transcendental functions), against 1.6 s for
  the exact discrete Gaussian above.
"""
from __future__ import annotations

import os
from fractions import Fraction

import numpy as np

__all__ = ["uniform_below", "bernoulli_exp", "discrete_laplace", "discrete_gaussian",
           "random_uint64", "bernoulli", "standard_normal"]

_MAX_BOUND = 1 << 62


def uniform_below(bound: np.ndarray) -> np.ndarray:
    """Exactly uniform integers in ``[0, bound)`` per lane (rejection on masked bits)."""
    bound = np.asarray(bound, dtype=np.int64)
    if np.any(bound < 1) or np.any(bound > _MAX_BOUND):
        raise ValueError("uniform_below needs bounds in [1, 2^62].")
    # Bit length of bound - 1 (float rounding can only widen it, never narrow it).
    bits = np.frexp((bound - 1).astype(np.float64))[1].astype(np.int64)
    mask = (np.left_shift(np.int64(1), np.minimum(bits, 62)) - 1).astype(np.uint64)
    out = np.empty(bound.shape, dtype=np.int64)
    todo = np.arange(bound.size)
    flat_bound, flat_mask = bound.ravel(), mask.ravel()
    flat_out = out.reshape(-1)
    while todo.size:
        raw = np.frombuffer(os.urandom(8 * todo.size), dtype=np.uint64) & flat_mask[todo]
        ok = raw < flat_bound[todo].astype(np.uint64)
        flat_out[todo[ok]] = raw[ok].astype(np.int64)
        todo = todo[~ok]
    return out


def _bernoulli(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Exact Bernoulli(num / den) per lane."""
    return uniform_below(den) < num


def bernoulli_exp(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Exact Bernoulli(exp(-num/den)) per lane, for integers ``num >= 0``, ``den >= 1``.

    CKS Algorithm 1: for gamma <= 1, sample Bernoulli(gamma/k) for k = 1, 2, ... until
    one fails. Then exp(-gamma) is the probability that the failure comes at an odd k.
    For gamma > 1, exp(-gamma) = exp(-1)^floor(gamma) * exp(-frac(gamma)).
    """
    num = np.asarray(num, dtype=np.int64).copy()
    den = np.broadcast_to(np.asarray(den, dtype=np.int64), num.shape).copy()
    result = np.ones(num.shape, dtype=bool)
    whole = num // den
    for _ in range(int(whole.max(initial=0))):
        live = result & (whole > 0)
        if not live.any():
            break
        result[live] &= _bernoulli_exp_at_most_one(np.ones(live.sum(), np.int64),
                                                   np.ones(live.sum(), np.int64))
        whole -= 1
    live = np.flatnonzero(result)
    result[live] = _bernoulli_exp_at_most_one(num[live] % den[live], den[live])
    return result


def _bernoulli_exp_at_most_one(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    k = np.ones(num.shape, dtype=np.int64)
    running = np.ones(num.shape, dtype=bool)
    while running.any():
        idx = np.flatnonzero(running)
        success = _bernoulli(num[idx], den[idx] * k[idx])
        k[idx[success]] += 1
        running[idx[~success]] = False
    return (k % 2) == 1


def discrete_laplace(scale: int, size: int) -> np.ndarray:
    """``size`` exact draws with P(x) proportional to exp(-|x| / scale) (CKS Algorithm 2)."""
    scale = int(scale)
    if scale < 1:
        raise ValueError("discrete_laplace needs an integer scale >= 1.")
    out = np.empty(size, dtype=np.int64)
    todo = np.arange(size)
    while todo.size:
        n = todo.size
        u = uniform_below(np.full(n, scale))
        keep = bernoulli_exp(u, np.full(n, scale))
        v = _geometric_exp_minus_one(n)
        sign = uniform_below(np.full(n, 2))
        value = u + scale * v  # X; with s = 1, Y = X
        keep &= ~((sign == 1) & (value == 0))
        out[todo[keep]] = np.where(sign[keep] == 1, -value[keep], value[keep])
        todo = todo[~keep]
    return out


def _geometric_exp_minus_one(n: int) -> np.ndarray:
    """Number of successes of Bernoulli(exp(-1)) before the first failure."""
    count = np.zeros(n, dtype=np.int64)
    running = np.ones(n, dtype=bool)
    while running.any():
        idx = np.flatnonzero(running)
        success = bernoulli_exp(np.ones(idx.size, np.int64), np.ones(idx.size, np.int64))
        count[idx[success]] += 1
        running[idx[~success]] = False
    return count


def discrete_gaussian(sigma: int, size: int) -> np.ndarray:
    """``size`` exact draws with P(x) proportional to exp(-x^2 / (2 sigma^2)) (CKS Alg. 3).

    ``sigma`` is an integer (the grid is chosen so), which keeps every quantity an
    integer: gamma = (|y| t - sigma^2)^2 / (2 sigma^2 t^2) with t = sigma + 1.
    """
    sigma = int(sigma)
    if not 1 <= sigma <= 1 << 12:
        raise ValueError("discrete_gaussian needs an integer sigma in [1, 4096].")
    t = sigma + 1
    s2 = sigma * sigma
    out = np.empty(size, dtype=np.int64)
    todo = np.arange(size)
    while todo.size:
        y = discrete_laplace(t, todo.size)
        num = (np.abs(y) * t - s2) ** 2
        keep = bernoulli_exp(num, np.full(todo.size, 2 * s2 * t * t))
        out[todo[keep]] = y[keep]
        todo = todo[~keep]
    return out


def random_uint64(size: int) -> np.ndarray:
    """``size`` uniform 64-bit integers from ``os.urandom``."""
    return np.frombuffer(os.urandom(8 * int(size)), dtype=np.uint64)


def bernoulli(rate: float, size: int) -> np.ndarray:
    """``size`` exact, independent Bernoulli(``rate``) draws (``rate`` a float in [0, 1])."""
    exact = Fraction(float(rate))  # the exact value of the float, a dyadic rational
    if not 0 <= exact <= 1:
        raise ValueError("bernoulli needs a rate in [0, 1].")
    return _bernoulli_fraction(exact, int(size))


def _bernoulli_fraction(rate: Fraction, size: int) -> np.ndarray:
    if rate == 1:
        return np.ones(size, dtype=bool)
    if rate == 0 or size == 0:
        return np.zeros(size, dtype=bool)
    scaled = rate * (1 << 64)
    threshold = int(scaled)  # floor; < 2^64 because rate < 1
    draws = random_uint64(size)
    out = draws < np.uint64(threshold)
    ties = np.flatnonzero(draws == np.uint64(threshold))
    if ties.size:  # P(U == T) = 2^-64: decide on the next 64 bits of the rate
        out[ties] = _bernoulli_fraction(scaled - threshold, ties.size)
    return out


_CHUNK = 1 << 16
_TWO_PI = 2.0 * np.pi


def standard_normal(size: int) -> np.ndarray:
    """``size`` float32 N(0, 1) values, each a halved sum of 4 CSPRNG Box-Muller draws."""
    size = int(size)
    out = np.empty(size, dtype=np.float32)
    for start in range(0, size, _CHUNK):  # chunks bound the float64 temporaries
        stop = min(size, start + _CHUNK)
        out[start:stop] = _normal_chunk(stop - start)
    return out


def _normal_chunk(n: int) -> np.ndarray:
    # 4n uniforms -> 2n Box-Muller pairs -> 4n independent normals -> n sums of four.
    # Lane i takes cos of pairs i and n+i and sin of pairs i+1 and n+i+1 (cyclically):
    # four different pairs, so four separately transformed draws. (cos + sin of one pair
    # would be a single transformed draw, sqrt(2) r sin(theta + pi/4).) The two outputs
    # of a Box-Muller pair are independent, so the lanes stay independent.
    if n < 2:
        return _normal_chunk(2)[:n]
    mantissa = (random_uint64(4 * n) >> np.uint64(11)).astype(np.float64)
    radius = np.sqrt(-2.0 * np.log((mantissa[:2 * n] + 1.0) * 2.0 ** -53))  # u in (0, 1]
    angle = (mantissa[2 * n:] * 2.0 ** -53) * _TWO_PI  # u in [0, 1)
    cos, sin = radius * np.cos(angle), radius * np.sin(angle)
    return ((cos[:n] + cos[n:]) + (np.roll(sin[:n], -1) + np.roll(sin[n:], -1))) * 0.5
