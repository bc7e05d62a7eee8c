"""Empirical epsilon lower bounds from the attack scores of member and non-member canaries.

``CanaryScoreAuditor(in_scores, out_scores)`` takes one attack score per canary (HIGHER
means "more likely a member") and turns them into

- the classic two-run lower bound (Jagielski, Ullman & Oprea 2020; Nasr et al. 2021):
  at a threshold, a Clopper-Pearson lower bound on the true-positive rate and upper
  bound on the false-positive rate give ``epsilon >= log((TPR - delta) / FPR)``
  (:meth:`~CanaryScoreAuditor.epsilon_clopper_pearson`);
- the one-run bound (Steinke, Nasr & Jagielski 2023), for canaries each included in a
  single training run by an independent fair coin
  (:meth:`~CanaryScoreAuditor.epsilon_one_run`; splits a fair coin would rarely give are
  refused), and the f-DP test of the Gaussian trade-off curve (Mahloujifar et al. 2024,
  :meth:`~CanaryScoreAuditor.epsilon_one_run_fdp`);
- descriptive metrics: ROC curve, AUROC, TPR at a fixed FPR, maximum accuracy and the
  raw-count estimate ``log(TPR / FPR)`` (not a bound).

Follows JAX Privacy's ``auditing.CanaryScoreAuditor``; ``tests/audit`` reproduces its
published test values. One difference: for a threshold chosen from the data, JAX Privacy
divides the significance by the number of ROC convex-hull thresholds, a set picked with
the membership labels. The defaults here correct for a set fixed before the labels are
seen (every order statistic for Clopper-Pearson, a grid of guess counts for one run), so
the stated confidence holds; ``bonferroni="hull"`` reproduces JAX Privacy.
"""
from __future__ import annotations

import numpy as np

from ..errors import AuditInputError
from . import _one_run, _validate
from ._clopper_pearson import (clopper_pearson_lower, clopper_pearson_upper,
                               epsilon_from_counts, max_log_ratio, scalar_or_array)

__all__ = ["CanaryScoreAuditor", "clopper_pearson_upper", "clopper_pearson_lower",
           "epsilon_from_counts"]

_CP_RULES = ("all", "hull")
_ONE_RUN_RULES = ("grid", "all", "hull")


def _roc_counts(in_scores: np.ndarray, out_scores: np.ndarray) -> tuple:
    """Every distinct decision "member iff score >= t", from t = +inf down to the lowest
    score: ``(thresholds, tp, fp)`` with ``tp`` and ``fp`` increasing from 0 to
    ``n_in`` and ``n_out``."""
    thresholds = np.concatenate(([np.inf], np.unique(np.concatenate((in_scores, out_scores)))[::-1]))
    tp = len(in_scores) - np.searchsorted(np.sort(in_scores), thresholds, side="left")
    fp = len(out_scores) - np.searchsorted(np.sort(out_scores), thresholds, side="left")
    return thresholds, tp, fp


def _upper_hull(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the vertices of the upper convex hull of points sorted by ``x``.

    Points on a hull edge (collinear) are dropped. Every pass removes, at once, each
    point that does not turn strictly clockwise from its current neighbours: such a point
    lies on or below a chord between two points of the set, so it is never a vertex.
    When no point is removed the chain is strictly concave, which is the hull.
    """
    keep = np.arange(len(x))
    while len(keep) > 2:
        dx, dy = np.diff(x[keep]), np.diff(y[keep])
        turn = dy[:-1] * dx[1:] - dy[1:] * dx[:-1]  # > 0: strictly clockwise (concave)
        drop = turn <= 0
        if not drop.any():
            break
        keep = keep[np.concatenate(([True], ~drop, [True]))]
    return keep


class CanaryScoreAuditor:
    """Privacy metrics and epsilon lower bounds from canary attack scores.

    Parameters
    ----------
    in_scores, out_scores : array-like of float
        One attack score per member ("in", trained on) and per non-member ("out")
        canary. HIGHER scores must mean "more likely a member" (negate losses). The
        decision rules considered flag a canary as a member when its score is at least a
        threshold.

    Examples
    --------
    >>> auditor = CanaryScoreAuditor(in_scores, out_scores)
    >>> auditor.epsilon_clopper_pearson(significance=0.05)   # two runs: 95 % lower bound
    >>> auditor.epsilon_one_run(significance=0.05, delta=1e-5)  # one run, inclusion 1/2
    """

    def __init__(self, in_scores, out_scores):
        self._in = _validate.scores("in_scores", in_scores)
        self._out = _validate.scores("out_scores", out_scores)
        self._thresholds, self._tp, self._fp = _roc_counts(self._in, self._out)
        self._hull = _upper_hull(self._fp, self._tp)

    @property
    def n_in(self) -> int:
        """Number of member canaries."""
        return len(self._in)

    @property
    def n_out(self) -> int:
        """Number of non-member canaries."""
        return len(self._out)

    def __repr__(self) -> str:
        return f"CanaryScoreAuditor(n_in={self.n_in}, n_out={self.n_out})"

    # ----- descriptive metrics -------------------------------------------------------

    def roc_curve(self, convex_hull: bool = False) -> tuple:
        """``(fpr, tpr)`` arrays from (0, 0) to (1, 1), one point per distinct threshold.

        With ``convex_hull=True``, only the vertices of the ROC convex hull: the rates
        reachable by randomizing between two thresholds.
        """
        keep = self._hull if convex_hull else slice(None)
        return self._fp[keep] / self.n_out, self._tp[keep] / self.n_in

    def auroc(self, convex_hull: bool = False) -> float:
        """Area under the ROC curve: the probability that a random member outscores a
        random non-member, ties counting one half (as ``sklearn.metrics.roc_auc_score``).
        ``convex_hull=True`` gives the area under the hull (JAX Privacy's
        ``attack_auroc``), which is at least as large."""
        fpr, tpr = self.roc_curve(convex_hull)
        return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)

    def tpr_at_fpr(self, fpr):
        """The highest true-positive rate at a false-positive rate ``fpr`` in [0, 1]
        (scalar or array), allowing a random choice between two thresholds (linear
        interpolation on the ROC convex hull, as JAX Privacy's ``tpr_at_given_fpr``)."""
        rates = np.asarray(fpr, dtype=np.float64)
        if not np.all(np.isfinite(rates)) or np.any(rates < 0) or np.any(rates > 1):
            raise AuditInputError(f"fpr must be in [0, 1]; got {fpr!r}.")
        tpr = _interpolate(self._fp[self._hull], self._tp[self._hull], rates * self.n_out) / self.n_in
        return scalar_or_array(tpr, fpr)

    def max_accuracy(self, prevalence: "float | None" = None) -> float:
        """Best accuracy of a threshold rule when a fraction ``prevalence`` of the canaries
        are members (default: the fraction given, ``n_in / (n_in + n_out)``)."""
        if prevalence is None:
            prevalence = self.n_in / (self.n_in + self.n_out)
        elif not isinstance(prevalence, (int, float, np.number)) or not 0.0 <= prevalence <= 1.0:
            raise AuditInputError(f"prevalence must be a number in [0, 1]; got {prevalence!r}.")
        tpr, tnr = self._tp / self.n_in, 1.0 - self._fp / self.n_out
        return float(np.max(prevalence * tpr + (1.0 - prevalence) * tnr))

    def epsilon_raw_counts(self, min_count: int = 50, delta: float = 0.0,
                           one_sided: bool = True) -> float:
        """Point ESTIMATE ``max log((TPR - delta) / FPR)`` over thresholds with at least
        ``min_count`` false positives (no confidence statement; 0 if ``min_count`` is not
        below the number of non-members). Too small a ``min_count`` gives a noisy, upward
        biased estimate; too large biases it toward 0. ``one_sided=False`` also tries the
        complementary DP inequality ``log((TNR - delta) / FNR)`` (then ``min_count``
        counts false negatives), as JAX Privacy does."""
        if not isinstance(min_count, (int, np.integer)) or isinstance(min_count, bool) or min_count < 1:
            raise AuditInputError(f"min_count must be a positive whole number; got {min_count!r}.")
        delta = _validate.delta(delta)
        eps = _raw_counts_epsilon(self._tp[self._hull], self._fp[self._hull], int(min_count), delta)
        if not one_sided:  # (FN, TN) along the same hull, reversed to increase
            fn, tn = self.n_in - self._tp[self._hull[::-1]], self.n_out - self._fp[self._hull[::-1]]
            eps = max(eps, _raw_counts_epsilon(tn, fn, int(min_count), delta))
        return float(max(eps, 0.0))

    # ----- lower bounds ---------------------------------------------------------------

    def epsilon_clopper_pearson(self, significance: float = 0.05, delta: float = 0.0,
                                one_sided: bool = True, *, threshold: "float | None" = None,
                                bonferroni: str = "all") -> float:
        """Epsilon lower bound from two-run membership tests (Jagielski et al. 2020).

        Members and non-members must come from separate experiments (each canary's
        membership fixed). With probability at least ``1 - significance`` (split evenly
        between the TPR and FPR bounds), an (epsilon, delta)-DP training has epsilon at
        least the returned value (0 when nothing is shown). ``delta`` is in [0, 1).

        Parameters
        ----------
        one_sided : bool, default True
            False also uses the complementary DP inequality ``epsilon >= log((TNR -
            delta) / FNR)``, from the same confidence bounds (no extra correction).
            Scores where members score LOWER must be negated in any case.
        threshold : float, optional
            A threshold fixed BEFORE looking at these scores: no multiple-testing
            correction. Without it every threshold is tried and the best is returned.
        bonferroni : {"all", "hull"}, default "all"
            Correction when ``threshold`` is None. ``"all"``: the TPR (FPR) bound is taken
            at ``significance / (2 n)`` for ``n`` members (non-members), one test per
            order statistic, which makes the bounds hold at every threshold at once.
            ``"hull"``: JAX Privacy's rule, ``significance / (2 h)`` with ``h`` the
            number of ROC convex-hull vertices, only those thresholds tried (the hull is
            chosen with the labels, so this is a heuristic, not a union bound).
        """
        significance = _validate.significance(significance)
        delta = _validate.delta(delta)
        _, tp, fp, sig_in, sig_out = self._cp_tests(significance, threshold, bonferroni)
        eps = max_log_ratio(tp, self.n_in, sig_in, fp, self.n_out, sig_out, delta)
        if not one_sided:  # TNR lower bound over FNR upper bound
            eps = max(eps, max_log_ratio(self.n_out - fp, self.n_out, sig_out,
                                          self.n_in - tp, self.n_in, sig_in, delta))
        return eps

    def _cp_tests(self, significance: float, threshold, bonferroni: str) -> tuple:
        """``(thresholds, tp, fp, sig_in, sig_out)``: the thresholds tried and the
        significance of each Clopper-Pearson bound on the member (``sig_in``) and
        non-member (``sig_out``) rates; all bounds hold together with probability
        ``1 - significance`` (see :meth:`epsilon_clopper_pearson`)."""
        if threshold is not None:
            cuts = _threshold(threshold)
            tp, fp = np.sum(self._in >= cuts, keepdims=True), np.sum(self._out >= cuts, keepdims=True)
            return cuts, tp, fp, significance / 2, significance / 2
        if _bonferroni(bonferroni, _CP_RULES) == "hull":
            tests = significance / (2 * len(self._hull))
            return self._thresholds[self._hull], self._tp[self._hull], self._fp[self._hull], tests, tests
        return (self._thresholds, self._tp, self._fp,
                significance / (2 * self.n_in), significance / (2 * self.n_out))

    def epsilon_one_run(self, significance: float = 0.05, delta: float = 1e-5, *,
                        threshold: "float | None" = None, bonferroni: str = "grid") -> float:
        """Epsilon lower bound from ONE training run (Steinke, Nasr & Jagielski 2023).

        Valid only if each of the ``n_in + n_out`` canaries was put in the training set
        independently with probability 1/2 (members are ``in_scores``), and the scores
        were computed without using that choice. The auditor guesses "member" for the
        canaries scoring at least a threshold; with probability at least ``1 -
        significance``, an (epsilon, delta)-DP training has epsilon at least the value
        returned (0 when nothing is shown). Theorem 5.2 of Steinke et al. charges delta
        in the p-value, so any delta in [0, 1) is valid.

        Counts that fair coins would give with probability below 1e-3 (two-sided
        binomial test, :func:`~mxprivacy.audit._one_run.check_fair_split`), such as a
        train/test split, raise ``AuditInputError``: there the bound would be positive
        even for scores that carry no information.

        Parameters
        ----------
        delta : float in [0, 1), default 1e-5
            The delta of the claim tested: give the delta the accountant reports.
        threshold : float, optional
            Fixed before looking at the scores: no multiple-testing correction.
        bonferroni : {"grid", "all", "hull"}, default "grid"
            Correction when ``threshold`` is None. ``"grid"``: guess the top ``k``
            canaries for ``k`` on a geometric grid fixed in advance (8 per doubling, 97
            values for 20,000 canaries) at ``significance / len(grid)``. ``"all"``:
            every threshold at ``significance / m``; valid too, but the delta term of
            the p-value (about ``2 m delta / guesses``) then swamps the corrected
            significance unless ``m**2 delta`` is small. ``"hull"``: JAX Privacy's
            ``significance / h`` over the ``h`` ROC convex-hull thresholds, a set chosen
            with the labels (a heuristic; use it to compare with JAX Privacy).
        """
        significance = _validate.significance(significance)
        delta = _validate.delta(delta)
        return self._one_run(_one_run.max_epsilon_one_run, significance, delta, threshold,
                             bonferroni)

    def epsilon_one_run_fdp(self, significance: float = 0.05, delta: float = 1e-5, *,
                            threshold: "float | None" = None, bonferroni: str = "grid") -> float:
        """One-run lower bound through f-DP (Mahloujifar, Melis & Chaudhuri 2024).

        Same setting, split check and parameters as :meth:`epsilon_one_run`, but the
        claim rejected is the Gaussian trade-off curve through (epsilon, delta): the
        curve of the Gaussian mechanism. It gives larger bounds from the same scores, but
        it is a lower bound on epsilon only for a mechanism with that trade-off curve,
        not for every (epsilon, delta)-DP mechanism: on randomized response at epsilon 1
        it exceeds the true epsilon in 14-17 % of runs, and on a mechanism that reveals
        everything with probability delta (true epsilon 0) in about a fraction delta
        of them. Poisson-subsampled DP-SGD is not exactly Gaussian either. Treat it as a
        test of the Gaussian curve, not as a bug signal. ``delta`` must be in (0, 1).
        """
        significance = _validate.significance(significance)
        if _validate.delta(delta) == 0.0:
            raise AuditInputError(
                "epsilon_one_run_fdp needs delta > 0: the only Gaussian trade-off curve with "
                "delta = 0 at a finite epsilon is perfect privacy, so every epsilon would be "
                "rejected. Give the delta the accountant reports, e.g. 1e-5.")
        return self._one_run(_one_run.max_epsilon_one_run_fdp, significance, delta,
                             threshold, bonferroni)

    def _one_run(self, search, significance, delta, threshold, bonferroni) -> float:
        _one_run.check_fair_split(self.n_in, self.n_out)
        m = self.n_in + self.n_out
        if threshold is not None:
            cuts = _threshold(threshold)
        else:
            rule = _bonferroni(bonferroni, _ONE_RUN_RULES)
            cuts = self._one_run_thresholds(rule)
            significance /= m if rule == "all" else len(cuts)
        tp = self.n_in - np.searchsorted(np.sort(self._in), cuts, side="left")
        fp = self.n_out - np.searchsorted(np.sort(self._out), cuts, side="left")
        return float(search(m, tp + fp, tp, significance, delta))

    def _one_run_thresholds(self, rule: str) -> np.ndarray:
        if rule == "hull":
            return self._thresholds[self._hull]
        if rule == "all":
            return self._thresholds
        pooled = np.sort(np.concatenate((self._in, self._out)))[::-1]
        return pooled[_one_run.guess_grid(len(pooled)) - 1]  # k-th highest score, k on the grid


def _threshold(value) -> np.ndarray:
    if not isinstance(value, (int, float, np.number)) or np.isnan(value):
        raise AuditInputError(f"threshold must be one number (a score); got {value!r}.")
    return np.array([float(value)])


def _bonferroni(value: str, allowed: tuple) -> str:
    if value not in allowed:
        raise AuditInputError(
            f"bonferroni must be one of {allowed}; got {value!r}. Keep the default unless "
            "you are comparing with JAX Privacy ('hull').")
    return value


def _interpolate(fp: np.ndarray, tp: np.ndarray, at):
    """TP count on the hull ``(fp, tp)`` at FP count ``at`` (the top of a vertical edge)."""
    last = np.concatenate((fp[1:] != fp[:-1], [True]))
    return np.interp(at, fp[last], tp[last])


def _raw_counts_epsilon(tp: np.ndarray, fp: np.ndarray, min_count: int, delta: float) -> float:
    """``max log((TPR - delta) / FPR)`` over the ROC hull vertices ``(fp, tp)`` (increasing)
    with at least ``min_count`` false positives, plus the hull point at exactly
    ``min_count`` false positives."""
    n_pos, n_neg = tp[-1], fp[-1]
    if min_count >= n_neg:
        return 0.0
    min_fpr = min_count / n_neg
    tpr_at_min = _interpolate(fp, tp, min_count) / n_pos
    tpr = np.append(tp[fp >= min_count] / n_pos, tpr_at_min)
    fpr = np.append(fp[fp >= min_count] / n_neg, min_fpr)
    with np.errstate(invalid="ignore", divide="ignore"):
        eps = np.log(tpr - delta) - np.log(fpr)
    eps = eps[tpr > delta]
    return float(max(np.max(eps, initial=0.0), 0.0))
