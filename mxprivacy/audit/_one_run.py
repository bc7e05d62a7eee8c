"""One-run auditing: epsilon lower bounds from guesses about canaries each included in a
single training run with probability 1/2.

An auditor guesses "member" for ``r`` of the ``m`` canaries (those scoring at least a
threshold) and ``v`` guesses are right.

- Steinke, Nasr & Jagielski 2023 ("Privacy auditing with one (1) training run",
  Theorem 5.2): under (epsilon, delta)-DP, ``P(v or more right) <= beta + alpha 2 m
  delta`` with ``beta = P(Binomial(r, e^eps / (1 + e^eps)) >= v)`` and ``alpha =
  max_i P(v - i <= Binomial < v) / i``.
- Mahloujifar, Melis & Chaudhuri 2024 ("Auditing f-Differential Privacy in One Run",
  ``audit_rh_with_cap``): the same game against the Gaussian trade-off curve through
  (epsilon, delta), which rejects much larger epsilons from the same guesses.

The functions take candidate guess counts as arrays and a significance already
corrected for the number of candidates; they return the largest epsilon rejected at some
candidate (0 if none). Nothing here chooses thresholds; ``canary.py`` does.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import optimize, special, stats

from ..accounting.gdp import gdp_delta
from ..errors import AuditInputError

__all__ = ["one_run_p_value", "max_epsilon_one_run", "max_epsilon_one_run_fdp", "gaussian_mu",
           "guess_grid", "check_fair_split", "SPLIT_LEVEL"]

_EPS_TOL = 1e-8  # absolute tolerance of every epsilon root (JAX Privacy uses 1e-6)
GRID_PER_DOUBLING = 8
_DIRECT_TERMS = 1 << 16  # longer alpha windows are bisected (_alpha_search)
SPLIT_LEVEL = 1e-3  # a fair coin per canary fails check_fair_split with at most this chance


def check_fair_split(n_in: int, n_out: int) -> None:
    """Refuse member/non-member counts that fair coins would almost never give.

    One-run bounds are valid only if each canary was included by an independent fair
    coin, so that ``n_in ~ Binomial(m, 1/2)``. On scores that carry no information, an
    uneven split such as a 50,000/10,000 train/test split (or even 5,200/4,800) makes
    the guess "everyone is a member" look right too often, and the bounds turn
    positive. The exact two-sided binomial test at ``SPLIT_LEVEL`` (1e-3) catches such
    splits; fair coins fail it with probability at most 1e-3, and then this raises: it
    never yields a false bound. Passing it does not prove the coins were fair.
    """
    m = n_in + n_out
    p_value = min(1.0, 2.0 * float(stats.binom.cdf(min(n_in, n_out), m, 0.5)))
    if p_value < SPLIT_LEVEL:
        raise AuditInputError(
            f"{n_in} members and {n_out} non-members: independent fair coins give a split "
            f"this uneven with probability {p_value:.1e} (< {SPLIT_LEVEL:g}). One-run "
            "bounds need each canary included in training by an independent fair coin "
            "(probability 1/2, e.g. make_canaries); on another split, such as a "
            "train/test split, they report epsilon > 0 for scores that carry no "
            "information. For separate in/out experiments use epsilon_clopper_pearson; "
            "if your coins were fair (this happens with probability 1e-3), draw new ones.")


def guess_grid(m: int) -> np.ndarray:
    """The numbers of guesses tried by default: ``GRID_PER_DOUBLING`` per doubling from 1
    to ``m`` (rounded, duplicates dropped), fixed before any score or label is seen, so
    a Bonferroni correction over its length is valid."""
    steps = np.arange(int(np.floor(np.log2(m) * GRID_PER_DOUBLING)) + 1)
    return np.unique(np.round(2.0 ** (steps / GRID_PER_DOUBLING)).astype(np.int64).clip(1, m))


def one_run_p_value(m: int, n_guess: int, n_correct: int, epsilon: float, delta: float) -> float:
    """Probability, under (epsilon, delta)-DP, of ``n_correct`` or more right guesses out of
    ``n_guess`` guesses about ``m`` canaries (Steinke et al. 2023, Theorem 5.2)."""
    q = special.expit(epsilon)
    beta = float(stats.binom.sf(n_correct - 1, n_guess, q))
    if delta == 0 or n_correct == 0:
        return min(beta, 1.0)
    return min(beta + _alpha(n_guess, n_correct, q) * delta * 2 * m, 1.0)


def _alpha(n_guess: int, n_correct: int, q: float) -> float:
    """The largest average of ``P(Binomial(r, q) = j)`` over ``j = v-1, v-2, ..., v-i``.

    The terms, read from ``j = v-1`` down, rise to the mode and then fall (the binomial
    pmf is log-concave), so their running average rises until the first term below it
    and falls for good after. Only ``j`` down to ``low`` (a few standard deviations below
    the mode) are summed, unless that is not enough; when that window is longer than
    ``_DIRECT_TERMS`` (``v`` far above the mode, as when tied scores make thousands of
    guesses at once), :func:`_alpha_search` finds the peak of the average by bisection
    instead of summing every term."""
    mode = math.floor((n_guess + 1) * q)
    low = max(0, min(n_correct - 1, mode - 12 * math.ceil(math.sqrt(n_guess * q * (1 - q))) - 12))
    if n_correct - low > _DIRECT_TERMS:
        return _alpha_search(n_guess, n_correct, q, mode)
    terms = stats.binom.pmf(np.arange(n_correct - 1, low - 1, -1), n_guess, q)
    averages = np.cumsum(terms) / np.arange(1, len(terms) + 1)
    if low > 0 and not (low <= mode and terms[-1] <= averages[-1]):
        return _alpha_full(n_guess, n_correct, q)
    return float(np.max(averages))


def _alpha_full(n_guess: int, n_correct: int, q: float) -> float:
    terms = stats.binom.pmf(np.arange(n_correct - 1, -1, -1), n_guess, q)
    return float(np.max(np.cumsum(terms) / np.arange(1, n_correct + 1)))


def _alpha_search(n_guess: int, n_correct: int, q: float, mode: int) -> float:
    """:func:`_alpha` in O(log v) evaluations of the binomial CDF: the average of the
    first ``i`` terms, ``A(i) = P(v - i <= B <= v - 1) / i``, grows from ``i`` to ``i +
    1`` exactly while the next term ``P(B = v - 1 - i)`` is at least ``A(i)``, which holds
    for a prefix of ``i = 1, 2, ...`` and then never again (see :func:`_alpha`)."""
    top = n_correct - 1

    def mass(i: int) -> float:  # P(top - i < B <= top), from the tail that keeps digits
        below = special.bdtr(top - i, n_guess, q) if top - i >= 0 else 0.0
        if top - i >= mode:
            return float(special.bdtrc(top - i, n_guess, q) - special.bdtrc(top, n_guess, q))
        return float(special.bdtr(top, n_guess, q) - below)

    def rising(i: int) -> bool:
        return float(stats.binom.pmf(top - i, n_guess, q)) * i >= mass(i)

    low, high = 0, top  # rising(low) holds (or low = 0); rising(high) fails or high = top
    if rising(high):
        low = high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if rising(middle) else (low, middle)
    return mass(low + 1) / (low + 1)


def _pure_dp_epsilons(n_guess: np.ndarray, n_correct: np.ndarray, significance: float) -> np.ndarray:
    """Per candidate, the epsilon where the delta = 0 p-value equals ``significance``:
    ``P(Binomial(r, q) >= v) = I_q(v, r - v + 1)``, solved in closed form for q. A
    positive delta only adds to the p-value, so these bound the delta > 0 epsilons."""
    with np.errstate(invalid="ignore", divide="ignore"):
        q = special.betaincinv(n_correct, n_guess - n_correct + 1, significance)
        eps = special.logit(q)
    return np.where(n_correct > 0, eps, -np.inf)


def _p_value_floor(m: int, n_guess: np.ndarray, n_correct: np.ndarray, delta: float) -> np.ndarray:
    """A cheap lower bound on every candidate's p-value at epsilon = 0, hence at every
    epsilon >= 0 (the p-value grows with epsilon): alpha is at least the average over
    ``i = 1`` and over the ``i`` reaching down to the mean of the binomial."""
    beta = stats.binom.sf(n_correct - 1, n_guess, 0.5)
    first = stats.binom.pmf(n_correct - 1, n_guess, 0.5)
    mean = np.clip(n_guess // 2, 0, np.maximum(n_correct - 1, 0))
    to_mean = (stats.binom.sf(mean - 1, n_guess, 0.5) - beta) / np.maximum(n_correct - mean, 1)
    return beta + np.maximum(first, to_mean) * delta * 2 * m


def _distinct(n_guess, n_correct) -> tuple:
    """The distinct ``(n_guess, n_correct)`` candidates, as two int64 arrays."""
    pairs = np.unique(np.stack([np.asarray(n_guess, np.int64).ravel(),
                                np.asarray(n_correct, np.int64).ravel()]), axis=1)
    return pairs[0], pairs[1]


def _root_between(objective, low: float, high: float) -> float:
    """Largest epsilon in [low, ...) with ``objective > 0``, given ``objective(low) > 0``."""
    while objective(high) > 0:
        low, high = high, 2 * high
    return optimize.brentq(objective, low, high, xtol=_EPS_TOL)


def max_epsilon_one_run(m: int, n_guess, n_correct, significance: float, delta: float) -> float:
    """Largest epsilon rejected by the Steinke et al. test at any candidate.

    Candidates are visited in decreasing order of their delta = 0 epsilon, an upper bound
    on their delta > 0 epsilon, and the search stops once that bound cannot beat the best
    so far; so usually one or two root searches are run whatever the number of candidates.
    Repeated candidates (tied scores give many) are tried once.
    """
    n_guess, n_correct = _distinct(n_guess, n_correct)
    ceiling = _pure_dp_epsilons(n_guess, n_correct, significance)
    if delta == 0:
        return float(max(np.max(ceiling, initial=0.0), 0.0))
    ceiling[_p_value_floor(m, n_guess, n_correct, delta) > significance] = -np.inf
    best = 0.0
    for k in np.argsort(-ceiling, kind="stable"):
        if not ceiling[k] > best:
            break
        r, v = int(n_guess[k]), int(n_correct[k])

        def objective(eps, r=r, v=v):
            return significance - one_run_p_value(m, r, v, eps, delta)

        if objective(best) > 0:
            best = _root_between(objective, best, max(float(ceiling[k]), best + _EPS_TOL))
    return best


def gaussian_mu(epsilon: float, delta: float) -> float:
    """The mu of the mu-GDP (Gaussian) trade-off curve that passes through (epsilon,
    delta): ``gdp_delta(mu, epsilon) = delta`` (the analytic Gaussian mechanism of
    Balle & Wang 2018 has noise multiplier ``1 / mu``)."""
    if gdp_delta(1.0, epsilon) >= delta:
        low, high = 0.0, 1.0
    else:
        low, high = 1.0, 2.0
        while gdp_delta(high, epsilon) < delta:
            low, high = high, 2 * high
    return optimize.brentq(lambda mu: gdp_delta(mu, epsilon) - delta, low, high,
                           xtol=1e-14, rtol=1e-14)


def _fdp_rejects(m: int, n_guess: np.ndarray, n_correct: np.ndarray, significance: float,
                 mu: float) -> np.ndarray:
    """For each candidate, whether ``audit_rh_with_cap`` (Mahloujifar et al. 2024) rejects
    mu-GDP. Runs the recursion for all candidates at once; each stops when its bound on
    the mass of wrong guesses (``h``) stops growing."""
    right = significance * n_correct / m
    wrong = significance * (n_guess - n_correct) / m
    step = n_correct - 1  # the recursion runs i = v-1, v-2, ..., 0
    live = np.flatnonzero(step >= 0)
    while live.size:
        grown = special.ndtr(special.ndtri(right[live]) - mu)  # Gaussian blow-up inverse
        moved = grown > wrong[live]
        live = live[moved]
        i, rise = step[live], grown[moved] - wrong[live]
        right[live] = np.minimum(right[live] + i / (n_guess[live] - i) * rise, 1.0)
        wrong[live] = grown[moved]
        step[live] -= 1
        live = live[step[live] >= 0]
    return right + wrong > n_guess / m


def max_epsilon_one_run_fdp(m: int, n_guess, n_correct, significance: float, delta: float) -> float:
    """Largest epsilon whose (epsilon, delta) Gaussian trade-off curve is rejected at any
    candidate, by bisection on epsilon. A candidate not rejected at some epsilon is not
    rejected at any larger one (a larger epsilon is a weaker claim), so it is dropped."""
    n_guess, n_correct = _distinct(n_guess, n_correct)
    live = np.flatnonzero(n_correct > 0)

    def rejected(eps: float) -> np.ndarray:
        return live[_fdp_rejects(m, n_guess[live], n_correct[live], significance,
                                 gaussian_mu(eps, delta))]

    live = rejected(0.0)
    if not live.size:
        return 0.0
    low, high = 0.0, 1.0
    while (still := rejected(high)).size:
        live, low, high = still, high, 2 * high
    while high - low > _EPS_TOL * max(1.0, low):
        middle = (low + high) / 2
        still = rejected(middle)
        if still.size:
            live, low = still, middle
        else:
            high = middle
    return low

