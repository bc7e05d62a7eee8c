"""ROC metrics of a membership-inference attack, from its scores.

Convention: a HIGHER score means "member" (a training example), and members are the
positive class. ``fpr`` and ``tpr`` are the false- and true-positive rates of the rule
"score >= threshold" over all thresholds, as ``sklearn.metrics.roc_curve`` returns them
(starting at the point (0, 0), whose threshold is +inf).
"""
from __future__ import annotations

import numpy as np
from sklearn import metrics as _sk

from ..errors import AuditInputError
from . import _validate

__all__ = ["roc", "auc", "advantage", "advantage_index", "ppv", "ppv_at", "tpr_at_fpr",
           "thin_curve"]


def roc(member_scores, nonmember_scores, *, drop_intermediate: bool = False):
    """``(fpr, tpr, thresholds)`` of members (positive) against non-members.

    Keeps every threshold by default (``drop_intermediate=False``), so that
    :func:`tpr_at_fpr` sees each attainable point; ``sklearn`` may otherwise drop points
    on straight stretches of the curve.
    """
    member = _validate.scores("member_scores", member_scores)
    nonmember = _validate.scores("nonmember_scores", nonmember_scores)
    labels = np.concatenate([np.ones(member.size), np.zeros(nonmember.size)])
    return _sk.roc_curve(labels, np.concatenate([member, nonmember]),
                         drop_intermediate=drop_intermediate)


def auc(fpr, tpr) -> float:
    """Area under the ROC curve (trapezoids): the probability that a random member
    scores above a random non-member, ties counting one half."""
    return float(_sk.auc(fpr, tpr))


def advantage_index(fpr, tpr) -> int:
    """Index of the ROC point with the largest ``|tpr - fpr|``."""
    return int(np.argmax(np.abs(np.asarray(tpr) - np.asarray(fpr))))


def advantage(fpr, tpr) -> float:
    """Attacker advantage ``max |TPR - FPR|`` over all thresholds (Yeom et al. 2018,
    Definition 4, maximized over thresholds as TF Privacy does). 0: no better than a coin;
    1: perfect. The absolute value counts an attack with its sign reversed."""
    return float(np.max(np.abs(np.asarray(tpr) - np.asarray(fpr))))


def _sizes(n_members: int, n_nonmembers: int) -> float:
    if n_members < 1 or n_nonmembers < 1:
        raise AuditInputError(
            "PPV needs at least one member and one non-member; got "
            f"{n_members} and {n_nonmembers}.")
    return n_nonmembers / n_members


def ppv_at(fpr, tpr, index: int, n_members: int, n_nonmembers: int) -> float:
    """Positive predictive value TP / (TP + FP) at one ROC point.

    With TP = TPR * n_members and FP = FPR * n_nonmembers; at a point that flags nobody
    (TPR = FPR = 0) it is the base rate n_members / (n_members + n_nonmembers).
    """
    ratio = _sizes(n_members, n_nonmembers)
    t, f = float(np.asarray(tpr)[index]), float(np.asarray(fpr)[index])
    if t + ratio * f == 0.0:
        return 1.0 / (1.0 + ratio)
    return t / (t + ratio * f)


def ppv(fpr, tpr, n_members: int, n_nonmembers: int, *, min_rate: float = 1e-3) -> float:
    """Positive predictive value as TF Privacy defines it (Jayaraman et al. 2020).

    The largest TP / (TP + FP) over all thresholds, where points with both TPR and FPR
    at most ``min_rate`` count as the base rate n_members / (n_members + n_nonmembers):
    without that rule the few highest scores alone (often one member: PPV 1) would set
    the value. It is not the PPV at the advantage-maximizing threshold (see
    :func:`ppv_at` with :func:`advantage_index`).
    """
    ratio = _sizes(n_members, n_nonmembers)
    t, f = np.asarray(tpr, dtype=float), np.asarray(fpr, dtype=float)
    den = t + ratio * f
    values = np.divide(t, den, out=np.zeros_like(den), where=den > 0)
    tiny = (t <= min_rate) & (f <= min_rate)
    return float(np.max(np.where(tiny, 1.0 / (1.0 + ratio), values)))


def tpr_at_fpr(fpr, tpr, target: float) -> float:
    """The largest TPR among ROC points with FPR <= ``target`` (no interpolation).

    This is the TPR an attacker attains with a threshold whose measured false-positive
    rate does not exceed the target. With n non-members, FPR moves in steps of 1/n, so a
    target below 1/n means FPR = 0: the members scored above every non-member.
    """
    target = _validate.fraction("target FPR", target)
    f, t = np.asarray(fpr), np.asarray(tpr)
    return float(np.max(t[f <= target]))


def thin_curve(fpr, tpr, thresholds, max_points: int = 1000):
    """At most ``max_points`` points of a ROC curve, evenly spaced in index, keeping the
    first and last and the advantage-maximizing point: enough to plot, small to store."""
    n = len(fpr)
    if n <= max_points:
        return np.asarray(fpr), np.asarray(tpr), np.asarray(thresholds)
    keep = np.unique(np.concatenate([np.linspace(0, n - 1, max_points - 1).round()
                                     .astype(int), [advantage_index(fpr, tpr)]]))
    return np.asarray(fpr)[keep], np.asarray(tpr)[keep], np.asarray(thresholds)[keep]
