"""The Likelihood Ratio Attack (LiRA) of Carlini, Chien, Nasr, Song, Terzis and Tramèr,
"Membership Inference Attacks From First Principles" (IEEE S&P 2022).

A plain loss attack asks "is the model confident on this example?". Some examples are
easy (every model is confident on them, member or not) and some are hard, so one global
threshold mixes the two. LiRA calibrates per example: shadow models trained with and
without the example show how confident a model is on *that* example when it is, and when
it is not, a member. The target model's confidence is then compared with those two
distributions, each fitted by a Gaussian.

The statistic is the logit-scaled confidence ``phi = log(p_y) - log(1 - p_y)`` of the true
label, which is close to Gaussian across training runs where ``p_y`` itself is not.

Every array here is indexed by example on its last axis:

- ``target_conf``: ``(n,)``, the target model's ``phi`` on the n examples;
- ``shadow_conf``: ``(num_shadow, n)``, one row per shadow model;
- ``shadow_in_mask``: ``(num_shadow, n)`` booleans, True where the example was in that
  shadow model's training set.

Scores are oriented like everything in :mod:`mxprivacy.audit`: higher means "member".
They feed :class:`mxprivacy.audit.canary.CanaryScoreAuditor` and the metrics directly.
"""
from __future__ import annotations

import numpy as np
from scipy import special, stats

from . import _validate
from ..errors import AuditInputError

__all__ = ["logit_scaled_confidence", "lira_offline_scores", "lira_online_scores",
           "MIN_SHADOWS_PER_SIDE", "MIN_STD"]

#: Shadow models each Gaussian needs per target: two give a mean and a spread.
MIN_SHADOWS_PER_SIDE = 2

#: Floor on a fitted standard deviation. Shadows that agree to float32 precision (a
#: saturated example) would otherwise give a zero spread and infinite scores.
MIN_STD = 1e-6


def _labels(labels, n: int, num_classes: int) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1 or len(array) != n:
        raise AuditInputError(
            f"labels must be one class index per example, shape ({n},); got shape "
            f"{array.shape}.")
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise AuditInputError(f"labels must be integer class indices; got dtype {array.dtype}.")
    if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
        raise AuditInputError("labels must be integer class indices; some are not whole numbers.")
    array = array.astype(np.int64)
    bad = (array < 0) | (array >= num_classes)
    if bad.any():
        raise AuditInputError(
            f"labels must be in [0, {num_classes}) for {num_classes} logits per example; "
            f"label {array[np.argmax(bad)]} at index {int(np.argmax(bad))} is not.")
    return array


def logit_scaled_confidence(logits, labels) -> np.ndarray:
    """``log(p_y) - log(1 - p_y)`` of the true label, computed stably from logits.

    With ``p = softmax(z)`` this is ``z_y - logsumexp_{j != y} z_j``, exact for any logit
    size (the naive formula gives ``inf`` or ``nan`` once ``p_y`` rounds to 1).

    Parameters
    ----------
    logits : array, ``(n, num_classes)`` or ``(num_augmentations, n, num_classes)``
        A model's outputs before the softmax. With a leading augmentation axis the
        confidences of the views of each example are averaged.
    labels : array of int, ``(n,)``
        True class of each example.

    Returns
    -------
    np.ndarray
        ``(n,)`` float64. It decreases with the cross-entropy loss
        (``loss = log1p(exp(-phi))``), so as an attack score on its own it is the loss
        attack.
    """
    try:
        z = np.asarray(logits, dtype=np.float64)
    except (TypeError, ValueError):
        raise AuditInputError(f"logits must be numbers; got {type(logits).__name__}.") from None
    if z.ndim not in (2, 3):
        raise AuditInputError(
            "logits must be (n, num_classes), or (num_augmentations, n, num_classes); got "
            f"shape {z.shape}.")
    if z.shape[-1] < 2:
        raise AuditInputError(
            f"logits need at least 2 classes (last axis); got {z.shape[-1]}. For a single "
            "sigmoid output, stack [0, z] as two-class logits.")
    _validate.scores("logits", z.reshape(-1))
    y = _labels(labels, z.shape[-2], z.shape[-1])
    index = np.broadcast_to(y[:, None], z.shape[:-1] + (1,))
    true_logit = np.take_along_axis(z, index, axis=-1)[..., 0]
    others = z.copy()
    np.put_along_axis(others, index, -np.inf, axis=-1)
    phi = true_logit - special.logsumexp(others, axis=-1)
    return phi.mean(axis=0) if z.ndim == 3 else phi


def _shadow_inputs(target_conf, shadow_conf, shadow_in_mask):
    """Cleaned ``(target (n,), shadow (m, n), in_mask (m, n) bool)``."""
    target = _validate.scores("target_conf", target_conf)
    try:
        shadow = np.asarray(shadow_conf, dtype=np.float64)
    except (TypeError, ValueError):
        raise AuditInputError(
            f"shadow_conf must be numbers; got {type(shadow_conf).__name__}.") from None
    if shadow.ndim != 2 or shadow.shape[1] != len(target):
        raise AuditInputError(
            f"shadow_conf must be (num_shadow, n) = (num_shadow, {len(target)}): one row per "
            f"shadow model, one column per target example; got shape {shadow.shape}.")
    for row, values in enumerate(shadow):
        _validate.scores(f"shadow_conf[{row}]", values)
    if shadow_in_mask is None:
        return target, shadow, np.zeros(shadow.shape, dtype=bool)
    mask = np.asarray(shadow_in_mask)
    if mask.shape != shadow.shape:
        raise AuditInputError(
            f"shadow_in_mask must have the shape of shadow_conf, {shadow.shape}; got "
            f"{mask.shape}.")
    if mask.dtype != bool:
        if not np.issubdtype(mask.dtype, np.number) or not np.all((mask == 0) | (mask == 1)):
            raise AuditInputError(
                "shadow_in_mask must be booleans (True = the example was in that shadow "
                "model's training set), or 0/1.")
        mask = mask.astype(bool)
    return target, shadow, mask


def _gaussian_fit(shadow, member, side: str, fix_variance: bool):
    """Per-example mean and standard deviation of ``shadow`` where ``member`` is True.

    The spread is the sample standard deviation (ddof 1) of each example's shadows, or
    with ``fix_variance`` one pooled spread for all examples: the residuals around each
    example's own mean, pooled (degrees of freedom: shadows minus examples).
    """
    count = member.sum(axis=0)
    short = count < MIN_SHADOWS_PER_SIDE
    if short.any():
        first = int(np.argmax(short))
        raise AuditInputError(
            f"{int(short.sum())} target example(s) have fewer than {MIN_SHADOWS_PER_SIDE} "
            f"{side} shadow models (example {first} has {int(count[first])}); LiRA needs "
            f"at least {MIN_SHADOWS_PER_SIDE} per target to fit a mean and a spread. Train "
            "more shadow models, or drop those examples.")
    mean = np.where(member, shadow, 0.0).sum(axis=0) / count
    squares = np.where(member, (shadow - mean) ** 2, 0.0).sum(axis=0)
    if fix_variance:
        std = np.full(mean.shape, np.sqrt(squares.sum() / (count.sum() - len(count))))
    else:
        std = np.sqrt(squares / (count - 1))
    return mean, np.maximum(std, MIN_STD)


def _fix_variance(value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise AuditInputError(f"fix_variance must be True or False; got {value!r}.")
    return bool(value)


def lira_offline_scores(target_conf, shadow_conf, shadow_in_mask=None, *,
                        fix_variance: bool = False) -> np.ndarray:
    """Offline LiRA: how far the target's confidence sits above the OUT distribution.

    For each example, a Gaussian ``N(mu_out, sigma_out^2)`` is fitted to the confidences
    of the shadow models that did *not* train on it. The paper's one-sided test asks how
    unlikely a confidence at least as high as the target's is under that Gaussian; the
    score is ``-log p`` with ``p = P(Z >= target_conf)``, a monotone transform of the
    paper's ``1 - p`` that does not saturate at 1 (so ranks survive at tiny p).

    Parameters
    ----------
    target_conf : array, ``(n,)``
        The target model's :func:`logit_scaled_confidence` on the n examples.
    shadow_conf : array, ``(num_shadow, n)``
        The shadow models' confidences on the same examples, one row per shadow.
    shadow_in_mask : array of bool, ``(num_shadow, n)``, optional
        True where the example was in the shadow's training set; those entries are
        ignored. None (the offline setting proper) means no shadow trained on any target.
    fix_variance : bool
        Use one spread for all examples, pooled from every example's residuals, instead of
        each example's own. The paper recommends it with few (< 64) shadow models.

    Returns
    -------
    np.ndarray
        ``(n,)`` scores ``>= 0``; higher means "member".

    Raises
    ------
    AuditInputError
        On shape mismatches, non-finite values, or an example with fewer than 2 OUT
        shadow models.
    """
    target, shadow, member = _shadow_inputs(target_conf, shadow_conf, shadow_in_mask)
    mean, std = _gaussian_fit(shadow, ~member, "OUT", _fix_variance(fix_variance))
    return -stats.norm.logsf(target, loc=mean, scale=std)


def lira_online_scores(target_conf, shadow_conf, shadow_in_mask, *,
                       fix_variance: bool = False) -> np.ndarray:
    """Online LiRA: the Gaussian log-likelihood ratio of IN over OUT.

    For each example, Gaussians are fitted to the confidences of the shadow models that
    trained on it (IN) and of those that did not (OUT); the score is
    ``log N(c; mu_in, sigma_in^2) - log N(c; mu_out, sigma_out^2)`` at the target's
    confidence ``c``. With unequal spreads the ratio is quadratic in ``c``, as in the
    paper: a confidence far above both means can score lower than one at ``mu_in``.

    Parameters
    ----------
    target_conf, shadow_conf : arrays, ``(n,)`` and ``(num_shadow, n)``
        As in :func:`lira_offline_scores`.
    shadow_in_mask : array of bool, ``(num_shadow, n)``
        True where the example was in that shadow model's training set (required).
    fix_variance : bool
        One IN spread and one OUT spread for all examples, each pooled from the residuals
        around the examples' own means (recommended with few shadow models).

    Returns
    -------
    np.ndarray
        ``(n,)`` log-likelihood ratios; higher means "member".

    Raises
    ------
    AuditInputError
        On shape mismatches, non-finite values, or an example with fewer than 2 IN or 2
        OUT shadow models.
    """
    if shadow_in_mask is None:
        raise AuditInputError(
            "lira_online_scores needs shadow_in_mask (which shadow trained on which "
            "example); with shadows that never saw the targets use lira_offline_scores.")
    target, shadow, member = _shadow_inputs(target_conf, shadow_conf, shadow_in_mask)
    fix = _fix_variance(fix_variance)
    mean_in, std_in = _gaussian_fit(shadow, member, "IN", fix)
    mean_out, std_out = _gaussian_fit(shadow, ~member, "OUT", fix)
    return (stats.norm.logpdf(target, loc=mean_in, scale=std_in)
            - stats.norm.logpdf(target, loc=mean_out, scale=std_out))
