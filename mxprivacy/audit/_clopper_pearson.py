"""Clopper-Pearson confidence bounds on binomial rates, and the two-run epsilon lower
bound ``log((TPR_lower - delta) / FPR_upper)`` built from them (Jagielski, Ullman & Oprea
2020). The public names are re-exported by :mod:`mxprivacy.audit.canary`.
"""
from __future__ import annotations

import numpy as np
from scipy import special

from ..errors import AuditInputError
from . import _validate

__all__ = ["clopper_pearson_upper", "clopper_pearson_lower", "epsilon_from_counts",
           "max_log_ratio", "scalar_or_array"]


def _counts(k, n) -> tuple:
    """``k`` and ``n`` as int arrays with ``0 <= k <= n`` and ``n >= 1``."""
    k_arr, n_arr = np.asarray(k), np.asarray(n)
    for name, arr in (("k", k_arr), ("n", n_arr)):
        if arr.dtype.kind not in "iuf" or not np.all(np.isfinite(arr)) or \
                not np.all(arr == np.round(arr)):
            raise AuditInputError(f"{name} must be whole numbers (counts); got {arr!r}.")
    if np.any(n_arr < 1) or np.any(k_arr < 0) or np.any(k_arr > n_arr):
        raise AuditInputError(
            f"Need 0 <= k <= n and n >= 1 (k successes out of n trials); got k={k!r}, n={n!r}.")
    return k_arr.astype(np.float64), n_arr.astype(np.float64)


def scalar_or_array(value: np.ndarray, *inputs):
    return float(value) if all(np.ndim(x) == 0 for x in inputs) else value


def _cp_upper(k: np.ndarray, n: np.ndarray, significance: float) -> np.ndarray:
    """Unchecked :func:`clopper_pearson_upper` on float arrays."""
    with np.errstate(invalid="ignore", divide="ignore"):
        upper = special.betainccinv(k + 1, n - k, significance)
    return np.where(k >= n, 1.0, upper)


def _cp_lower(k: np.ndarray, n: np.ndarray, significance: float) -> np.ndarray:
    """Unchecked :func:`clopper_pearson_lower`: ``1 - upper(n - k)``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        lower = special.betaincinv(k, n - k + 1, significance)
    return np.where(k <= 0, 0.0, lower)


def clopper_pearson_upper(k, n, significance: float = 0.05):
    """One-sided Clopper-Pearson upper confidence bound on a binomial rate.

    Returns the ``p`` with ``P(Binomial(n, p) <= k) = significance`` (1 when ``k = n``):
    the true rate is above it with probability at most ``significance``. ``k`` and ``n``
    may be arrays (broadcast); scalars give a float.
    """
    significance = _validate.significance(significance)
    k_arr, n_arr = _counts(k, n)
    return scalar_or_array(_cp_upper(k_arr, n_arr, significance), k, n)


def clopper_pearson_lower(k, n, significance: float = 0.05):
    """One-sided Clopper-Pearson lower confidence bound on a binomial rate.

    Returns the ``p`` with ``P(Binomial(n, p) >= k) = significance`` (0 when ``k = 0``).
    """
    significance = _validate.significance(significance)
    k_arr, n_arr = _counts(k, n)
    return scalar_or_array(_cp_lower(k_arr, n_arr, significance), k, n)


def _log_ratio_bound(tpr_lb: np.ndarray, fpr_ub: np.ndarray, delta: float) -> np.ndarray:
    """``max(0, log((tpr_lb - delta) / fpr_ub))``, 0 where ``tpr_lb <= delta``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        eps = np.log(tpr_lb - delta) - np.log(fpr_ub)
    return np.where((tpr_lb > delta) & (eps > 0), eps, 0.0)


def max_log_ratio(hits, n_hits: int, sig_hits: float, alarms, n_alarms: int,
                   sig_alarms: float, delta: float) -> float:
    """Largest ``log((lower(hits / n_hits) - delta) / upper(alarms / n_alarms))`` over the
    candidates, or 0. Exact bounds are computed in blocks, in decreasing order of the same
    ratio of point estimates, until no remaining candidate can beat the best: with a
    significance below 1/2 a lower bound is below its estimate and an upper bound above."""
    hits, alarms = np.asarray(hits, np.float64), np.asarray(alarms, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ceiling = np.log(hits / n_hits - delta) - np.log(alarms / n_alarms)
    order = np.flatnonzero(ceiling > 0)
    order = order[np.argsort(-ceiling[order], kind="stable")]
    best, start, size = 0.0, 0, 256
    while start < len(order) and ceiling[order[start]] > best:
        block = order[start:start + size]
        exact = _log_ratio_bound(_cp_lower(hits[block], n_hits, sig_hits),
                                 _cp_upper(alarms[block], n_alarms, sig_alarms), delta)
        best, start, size = max(best, float(np.max(exact))), start + size, size * 2
    return best


def epsilon_from_counts(tp, n_pos, fp, n_neg, significance: float = 0.05, delta: float = 0.0):
    """Clopper-Pearson epsilon lower bound at ONE threshold fixed before seeing the data.

    ``tp`` of ``n_pos`` members and ``fp`` of ``n_neg`` non-members were flagged. With
    probability at least ``1 - significance`` (split evenly between the two rates), an
    (epsilon, delta)-DP mechanism has ``epsilon >= log((TPR_lower - delta) / FPR_upper)``;
    the result is that bound, or 0 when it is negative. A threshold chosen by looking at
    these same counts needs a multiple-testing correction: use
    :meth:`CanaryScoreAuditor.epsilon_clopper_pearson` instead. Arrays broadcast.
    """
    significance = _validate.significance(significance)
    delta = _validate.delta(delta)
    tp_arr, pos_arr = _counts(tp, n_pos)
    fp_arr, neg_arr = _counts(fp, n_neg)
    eps = _log_ratio_bound(_cp_lower(tp_arr, pos_arr, significance / 2),
                           _cp_upper(fp_arr, neg_arr, significance / 2), delta)
    return scalar_or_array(eps, tp, n_pos, fp, n_neg)
