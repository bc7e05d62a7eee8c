"""Shadow models for LiRA: train the user's own recipe on random halves of a data pool.

``train_shadow_models`` calls ``train_fn(x_subset, y_subset)`` once per shadow model; each
call must build, initialize and train a *new* Gluon net (with or without DP-SGD, exactly
as the model under audit is trained) and return it. Every pool example is in the
training set of exactly ``round(in_fraction * num_shadow)`` shadows (the authors'
balanced design), so each example has the same number of IN and OUT reference models.

``lira_attack`` runs the whole pipeline:

- without ``target_net`` (auditing a training recipe, as in the paper's experiments):
  each shadow model in turn plays the target, and the others score it (leave-one-out).
  Every (model, example) pair is one trial with known membership, so the result's
  ``in_scores`` / ``out_scores`` go straight into
  :class:`~mxprivacy.audit.canary.CanaryScoreAuditor` (AUC, TPR at low FPR);
- with ``target_net`` (attacking one trained model): the pool holds the candidate
  examples, the shadows score the target's confidence on each of them, and you compare
  ``scores`` with the membership you know.

Evaluating trained nets costs no privacy budget, but the pool is your data: keep the
shadows and the scores as private as the data unless the pool is public.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np

from . import _validate
from .gluon import model_logits
from .lira import (MIN_SHADOWS_PER_SIDE, logit_scaled_confidence, lira_offline_scores,
                   lira_online_scores)
from ..errors import AuditInputError

__all__ = ["ShadowModels", "LiraResult", "train_shadow_models", "lira_attack"]


@dataclass(frozen=True)
class ShadowModels:
    """Shadow models trained on random subsets of a pool of n examples.

    Attributes
    ----------
    in_mask : np.ndarray of bool, ``(num_shadow, n)``
        ``in_mask[i, j]`` is True when example j was in shadow i's training set.
    confidences : np.ndarray, ``(num_shadow, n)``
        Each shadow's :func:`~mxprivacy.audit.lira.logit_scaled_confidence` on the pool.
    models : tuple
        The trained nets when ``keep_models=True``, else empty.
    """

    in_mask: np.ndarray
    confidences: np.ndarray
    models: Tuple = ()

    @property
    def num_shadow(self) -> int:
        return self.in_mask.shape[0]


@dataclass(frozen=True)
class LiraResult:
    """What :func:`lira_attack` found.

    Attributes
    ----------
    scores : np.ndarray
        LiRA scores, higher = member: ``(num_shadow, n)`` in the leave-one-out audit (row
        k: shadow k attacked by the others), ``(n,)`` when a ``target_net`` was given.
    is_member : np.ndarray of bool or None
        The true membership behind ``scores`` (leave-one-out), None for a target net.
    target_confidences : np.ndarray
        The attacked model's logit-scaled confidences, same shape as ``scores``: the
        loss attack (a decreasing function of the loss) to compare LiRA with.
    shadows : ShadowModels
        The shadow models' masks and confidences.
    """

    scores: np.ndarray
    is_member: Optional[np.ndarray]
    target_confidences: np.ndarray
    shadows: ShadowModels

    def _split(self, values):
        if self.is_member is None:
            raise AuditInputError(
                "The target net's membership is unknown to lira_attack: split `scores` "
                "with the membership you know (scores[member], scores[~member]).")
        return values[self.is_member], values[~self.is_member]

    @property
    def in_scores(self) -> np.ndarray:
        """LiRA scores of the members, flattened (leave-one-out only)."""
        return self._split(self.scores)[0]

    @property
    def out_scores(self) -> np.ndarray:
        """LiRA scores of the non-members, flattened (leave-one-out only)."""
        return self._split(self.scores)[1]

    def loss_attack_scores(self) -> Tuple[np.ndarray, np.ndarray]:
        """``(in_scores, out_scores)`` of the loss attack on the same trials."""
        return self._split(self.target_confidences)


def _count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise AuditInputError(f"{name} must be an integer >= {minimum}; got {value!r}.")
    return int(value)


def _pool(x, y):
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 0 or y.ndim != 1:
        raise AuditInputError(
            f"x must be examples on the first axis and y one label per example; got shapes "
            f"{x.shape} and {y.shape}.")
    n = _validate.same_length(x=x, y=y)
    if n < 2:
        raise AuditInputError(f"The pool needs at least 2 examples; got {n}.")
    whole = np.issubdtype(y.dtype, np.number) and y.dtype != bool and np.all(y == np.round(y))
    if not whole or y.min() < 0:
        raise AuditInputError("y must be integer class indices >= 0, one per example.")
    return x, y


def _ins_per_example(num_shadow: int, in_fraction) -> int:
    fraction = _validate.fraction("in_fraction", in_fraction)
    ins = int(round(fraction * num_shadow))
    if not 1 <= ins <= num_shadow - 1:
        raise AuditInputError(
            f"in_fraction={fraction} of num_shadow={num_shadow} puts each example in {ins} "
            "shadow training sets; it must be in at least 1 and left out of at least 1. Use "
            "in_fraction=0.5 (the paper's choice) or more shadow models.")
    return ins


def _balanced_mask(num_shadow: int, n: int, ins: int, rng) -> np.ndarray:
    """Each column has exactly ``ins`` True entries, at uniformly random rows."""
    return rng.random((num_shadow, n)).argsort(axis=0).argsort(axis=0) < ins


def train_shadow_models(train_fn: Callable, x, y, num_shadow: int, *, in_fraction=0.5,
                        seed=None, batch_size: int = 512, ctx=None,
                        keep_models: bool = False) -> ShadowModels:
    """Train ``num_shadow`` models with ``train_fn``, each on a random part of the pool.

    Parameters
    ----------
    train_fn : callable ``(x_subset, y_subset) -> gluon.Block``
        Your training recipe: builds a new net, trains it on the given numpy arrays and
        returns it. Seed MXNet inside it if you want repeatable shadows.
    x, y : arrays
        The pool: inputs (first axis the examples) and integer labels ``(n,)``.
    num_shadow : int
        Number of shadow models (>= 2). LiRA needs >= 2 IN and >= 2 OUT per example.
    in_fraction : float
        Share of the shadows that train on each example (exactly
        ``round(in_fraction * num_shadow)`` of them); 0.5 as in the paper.
    seed : int or numpy Generator, optional
        Seed of the membership draw.
    batch_size, ctx
        Passed to :func:`mxprivacy.audit.gluon.model_logits` to score the pool.
    keep_models : bool
        Keep the trained nets in the result (memory grows with num_shadow).

    Returns
    -------
    ShadowModels
        ``in_mask`` and ``confidences``, both ``(num_shadow, n)``.
    """
    if not callable(train_fn):
        raise AuditInputError(f"train_fn must be callable (x, y) -> net; got {train_fn!r}.")
    num_shadow = _count("num_shadow", num_shadow, 2)
    x, y = _pool(x, y)
    ins = _ins_per_example(num_shadow, in_fraction)
    mask = _balanced_mask(num_shadow, len(y), ins, np.random.default_rng(seed))
    confidences = np.empty(mask.shape, dtype=np.float64)
    models, previous = [], None
    for i in range(num_shadow):
        net = train_fn(x[mask[i]], y[mask[i]])
        if net is None or net is previous:
            raise AuditInputError(
                "train_fn must build, train and return a new net on every call; it "
                f"returned {'None' if net is None else 'the same net as the call before'} "
                f"for shadow {i}. Create and initialize the net inside train_fn.")
        confidences[i] = logit_scaled_confidence(
            model_logits(net, x, batch_size=batch_size, ctx=ctx), y)
        previous = net
        if keep_models:
            models.append(net)
    return ShadowModels(in_mask=mask, confidences=confidences, models=tuple(models))


def _check_enough(num_shadow: int, ins: int, online: bool, leave_one_out: bool) -> None:
    """Refuse before any training when some target would lack IN or OUT shadows."""
    spare = 1 if leave_one_out else 0  # the attacked shadow is not a reference
    fewest_out, fewest_in = num_shadow - ins - spare, ins - spare
    if fewest_out < MIN_SHADOWS_PER_SIDE or (online and fewest_in < MIN_SHADOWS_PER_SIDE):
        raise AuditInputError(
            f"num_shadow={num_shadow} with {ins} IN per example leaves some targets only "
            f"{fewest_out} OUT{f' and {fewest_in} IN' if online else ''} reference models; "
            f"LiRA needs {MIN_SHADOWS_PER_SIDE} of each. Raise num_shadow (e.g. 8 or more "
            "with in_fraction=0.5).")


def lira_attack(train_fn: Callable, x, y, *, num_shadow: int = 16, target_net=None,
                online: bool = True, fix_variance: bool = True, in_fraction=0.5,
                seed=None, batch_size: int = 512, ctx=None) -> LiraResult:
    """Train shadow models on the pool and run LiRA (see the module docstring).

    Parameters
    ----------
    train_fn, x, y, num_shadow, in_fraction, seed, batch_size, ctx
        As in :func:`train_shadow_models`.
    target_net : gluon.Block, optional
        A trained model to attack on the pool's examples. Without it, each shadow model
        is attacked by the others (leave-one-out), which audits the recipe itself.
    online : bool
        Online LiRA (IN and OUT Gaussians); False for offline (OUT only).
    fix_variance : bool
        One pooled spread for all examples (default: a small Gluon audit has few
        shadows; the paper uses per-example spreads from 64 shadows on).

    Returns
    -------
    LiraResult
    """
    num_shadow = _count("num_shadow", num_shadow, 2)
    ins = _ins_per_example(num_shadow, in_fraction)
    _check_enough(num_shadow, ins, bool(online), leave_one_out=target_net is None)
    shadows = train_shadow_models(train_fn, x, y, num_shadow, in_fraction=in_fraction,
                                  seed=seed, batch_size=batch_size, ctx=ctx)
    score = lira_online_scores if online else lira_offline_scores
    conf, mask = shadows.confidences, shadows.in_mask
    if target_net is not None:
        target = logit_scaled_confidence(
            model_logits(target_net, np.asarray(x), batch_size=batch_size, ctx=ctx), y)
        return LiraResult(score(target, conf, mask, fix_variance=fix_variance), None,
                          target, shadows)
    scores = np.empty(conf.shape)
    for k in range(num_shadow):
        others = np.arange(num_shadow) != k
        scores[k] = score(conf[k], conf[others], mask[others], fix_variance=fix_variance)
    return LiraResult(scores, mask.copy(), conf.copy(), shadows)
