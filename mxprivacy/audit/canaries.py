"""Canaries for one-run privacy audits (Steinke, Nasr & Jagielski 2023).

A canary is an extra training record that is easy to tell apart when it was trained on:
a copy of a real input with a wrong label (``"mislabeled"``), or an out-of-distribution
input with a random label (``"ood"``: random pixels; ``"ood_pattern"``: a blank image
with a sparse random pattern). Each canary is included in the training set
independently with probability 1/2; after training, every canary gets a score (higher
means "member"), and the scores of the included and excluded canaries give an
empirical lower bound on epsilon from a single training run.

The inclusion draws come from OS entropy unless ``seed`` is given (tests). A seeded
stream is derived with a canary-specific key, so that the same integer given as a
sampling or noise seed never reproduces the inclusion mask.

Nothing here imports MXNet; :func:`mxprivacy.audit.gluon.audit_training` trains on the
canaries.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import _validate
from ..errors import AuditInputError

__all__ = ["KINDS", "SCORES", "CanarySet", "make_canaries", "canary_scores"]

KINDS = ("mislabeled", "ood", "ood_pattern")
SCORES = ("log_prob", "logit")
PATTERN_FRACTION = 0.1  # share of the pixels lit in an "ood_pattern" canary
_STREAM_KEY = (0x63616E61,)  # "cana": keeps seeded inclusion apart from other seeded streams


@dataclass(frozen=True)
class CanarySet:
    """Canaries and which of them are trained on.

    Attributes
    ----------
    x, y : np.ndarray
        The ``m`` canary inputs (shaped like one input of the training set) and labels.
    included : np.ndarray of bool
        ``included[i]``: canary ``i`` joins the training set (probability 1/2 each).
    kind : str
        One of :data:`KINDS`.
    source_index : np.ndarray or None
        For ``"mislabeled"``: the row of the pool each canary copies.
    """

    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    included: np.ndarray = field(repr=False)
    kind: str
    source_index: Optional[np.ndarray] = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_included(self) -> int:
        return int(self.included.sum())

    def members(self):
        """``(x, y)`` of the included canaries: the records to add to the training set."""
        return self.x[self.included], self.y[self.included]


def _rng(seed) -> np.random.Generator:
    if seed is None:
        return np.random.default_rng()  # OS entropy: a secret draw
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise AuditInputError(f"seed must be an integer >= 0 or None; got {seed!r}.")
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=_STREAM_KEY))


def _array(name: str, values) -> np.ndarray:
    if hasattr(values, "asnumpy"):  # an MXNet NDArray
        values = values.asnumpy()
    try:
        array = np.asarray(values)
    except (TypeError, ValueError):
        raise AuditInputError(f"{name} must be an array; got {type(values).__name__}.") from None
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise AuditInputError(f"{name} must be numeric; got dtype {array.dtype}.")
    return array


def check_labels(y, num_classes=None) -> tuple:
    """``(y, num_classes)``: 1-D integral labels in ``[0, num_classes)``; ``num_classes``
    defaults to ``max(y) + 1``."""
    labels = _array("y", y)
    if labels.ndim != 1:
        raise AuditInputError(f"y must be one label per example (1-D); got shape {labels.shape}.")
    if labels.size and not (np.all(np.isfinite(labels)) and np.all(labels == np.round(labels))):
        raise AuditInputError("y must hold integer class labels 0, 1, ..., num_classes - 1.")
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 2:
        raise AuditInputError(f"num_classes must be an integer >= 2; got {num_classes!r}.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise AuditInputError(
            f"labels must lie in [0, {num_classes - 1}]; got {labels.min():g} to "
            f"{labels.max():g}. Pass num_classes= if some classes are missing from y.")
    return labels, int(num_classes)


def _inputs(x) -> np.ndarray:
    array = _array("x", x)
    if array.ndim < 2 or len(array) == 0:
        raise AuditInputError(
            f"x must be a non-empty batch of inputs (examples on the first axis); got shape "
            f"{array.shape}.")
    if not np.all(np.isfinite(array)):
        raise AuditInputError("x has non-finite values; clean the inputs first.")
    return array


def make_canaries(x, y, m: int, kind: str = "mislabeled", *, num_classes: Optional[int] = None,
                  seed: Optional[int] = None) -> CanarySet:
    """Make ``m`` canaries from a pool of inputs, each included with probability 1/2.

    Parameters
    ----------
    x, y : arrays
        A pool of training-like inputs (examples on the first axis) and their integer
        labels. ``"mislabeled"`` copies ``m`` distinct rows of ``x`` (so ``m <= len(x)``)
        and gives each a label drawn uniformly from the *other* classes. The ``"ood"``
        kinds use ``x`` only for the input shape, dtype and value range: uniform random
        pixels in ``[min(x), max(x)]`` (``"ood"``), or ``min(x)`` everywhere with a random
        10 % of the pixels at ``max(x)`` (``"ood_pattern"``); their labels are uniform
        over all classes.
    m : int
        Number of canaries, >= 2. Steinke et al. use hundreds to thousands: the lower
        bound grows with the number of confident correct guesses.
    kind : {"mislabeled", "ood", "ood_pattern"}
    num_classes : int, optional
        Number of classes; ``max(y) + 1`` by default.
    seed : int, optional
        For reproducible tests only. None (the default) draws everything, the inclusion
        mask included, from OS entropy, so the training run cannot know it.

    Returns
    -------
    CanarySet
        ``x``, ``y``, the inclusion mask ``included``, ``kind`` and ``source_index``.
    """
    array = _inputs(x)
    labels, num_classes = check_labels(y, num_classes)
    _validate.same_length(x=array, y=labels)
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 2:
        raise AuditInputError(f"m must be an integer >= 2 (the number of canaries); got {m!r}.")
    if kind not in KINDS:
        raise AuditInputError(f"kind must be one of {list(KINDS)}; got {kind!r}.")
    rng = _rng(seed)
    source = None
    if kind == "mislabeled":
        if m > len(array):
            raise AuditInputError(
                f"m = {m} mislabeled canaries need as many distinct inputs; the pool has "
                f"{len(array)}. Lower m, give a larger pool, or use kind='ood'.")
        source = rng.choice(len(array), size=m, replace=False)
        canary_x = array[source].copy()
        shift = rng.integers(1, num_classes, size=m)  # never 0: always another class
        canary_y = ((labels[source].astype(np.int64) + shift) % num_classes)
    else:
        low, high = float(array.min()), float(array.max())
        shape = (m,) + array.shape[1:]
        if kind == "ood":
            canary_x = rng.uniform(low, high, size=shape)
        else:
            canary_x = np.where(rng.random(shape) < PATTERN_FRACTION, high, low)
        canary_x = canary_x.astype(array.dtype)
        canary_y = rng.integers(0, num_classes, size=m)
    included = rng.random(m) < 0.5
    return CanarySet(x=canary_x, y=canary_y.astype(labels.dtype), included=included,
                     kind=kind, source_index=source)


def _logsumexp(values: np.ndarray) -> np.ndarray:
    top = np.max(values, axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return (top + np.log(np.sum(np.exp(values - top), axis=1, keepdims=True)))[:, 0]


def canary_scores(logits, labels, score: str = "log_prob") -> np.ndarray:
    """One membership score per example from its logits; higher means "member".

    ``"log_prob"``: log p(label), the log-softmax of the label's logit.
    ``"logit"``: the logit-scaled confidence log(p / (1 - p)) of Carlini et al. (2022),
    computed stably as z_label - logsumexp(z_other). Both rank examples the same way.
    """
    if score not in SCORES:
        raise AuditInputError(f"score must be one of {list(SCORES)}; got {score!r}.")
    z = _array("logits", logits).astype(np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise AuditInputError(
            f"logits must be (examples, classes) with >= 2 classes; got shape {z.shape}.")
    if not np.all(np.isfinite(z)):
        raise AuditInputError("logits have non-finite values; the net diverged.")
    labels, _ = check_labels(labels, z.shape[1])
    _validate.same_length(logits=z, labels=labels)
    rows = np.arange(len(z))
    target = z[rows, labels.astype(np.int64)]
    if score == "log_prob":
        return target - _logsumexp(z)
    others = z.copy()
    others[rows, labels.astype(np.int64)] = -np.inf
    return target - _logsumexp(others)
