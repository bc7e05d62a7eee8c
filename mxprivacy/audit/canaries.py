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

from dataclasses import dataclass, field, fields
from typing import Any, Dict, Optional

import numpy as np
from scipy import special

from . import _validate
from ..errors import AuditInputError
from .lira import logit_scaled_confidence

__all__ = ["KINDS", "SCORES", "CanarySet", "make_canaries", "canary_scores", "check_labels",
           "numeric_array", "canary_bounds", "AuditReport"]

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


def numeric_array(name: str, values) -> np.ndarray:
    """``values`` (numpy, list or MXNet NDArray) as a numeric numpy array, or an error."""
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
    labels = numeric_array("y", y)
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
    array = numeric_array("x", x)
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


def canary_scores(logits, labels, score: str = "log_prob") -> np.ndarray:
    """One membership score per example from its logits; higher means "member".

    ``"log_prob"``: log p(label), the log-softmax of the label's logit.
    ``"logit"``: the logit-scaled confidence log(p / (1 - p)) of Carlini et al. (2022),
    computed stably as z_label - logsumexp(z_other). Both rank examples the same way.
    """
    if score not in SCORES:
        raise AuditInputError(f"score must be one of {list(SCORES)}; got {score!r}.")
    z = numeric_array("logits", logits).astype(np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise AuditInputError(
            f"logits must be (examples, classes) with >= 2 classes; got shape {z.shape}.")
    if not np.all(np.isfinite(z)):
        raise AuditInputError("logits have non-finite values; the net diverged.")
    labels, _ = check_labels(labels, z.shape[1])
    _validate.same_length(logits=z, labels=labels)
    if score == "logit":
        return logit_scaled_confidence(z, labels.astype(np.int64))
    rows = np.arange(len(z))
    return special.log_softmax(z, axis=1)[rows, labels.astype(np.int64)]


def canary_bounds(scores, included, *, significance: float = 0.05, delta: float = 1e-5) -> dict:
    """Epsilon lower bounds from one score per canary and the inclusion mask.

    Uses :class:`mxprivacy.audit.canary.CanaryScoreAuditor` on the scores of the included
    ("in") and excluded ("out") canaries:

    - ``epsilon_lower_bound``: the one-run bound (Steinke, Nasr & Jagielski 2023), valid
      because each canary was included independently with probability 1/2;
    - ``epsilon_lower_bound_fdp``: the one-run f-DP bound (Mahloujifar et al. 2024),
      which rejects DP-SGD's Gaussian trade-off curve through (epsilon, delta); larger,
      and the right test for DP-SGD;
    - ``epsilon_clopper_pearson``: the classic threshold bound, which treats canaries as
      independent trials (exact for two-run experiments, an approximation in one run);
    - ``auroc``.

    The bounds hold with probability at least ``1 - significance``.
    """
    from .canary import CanaryScoreAuditor

    values = _validate.scores("scores", scores)
    mask = numeric_array("included", included)
    if mask.dtype != bool:
        raise AuditInputError(f"included must be a boolean mask; got dtype {mask.dtype}.")
    _validate.same_length(scores=values, included=mask)
    if mask.all() or not mask.any():
        raise AuditInputError(
            f"All {len(mask)} canaries are on one side (included: {int(mask.sum())}); an "
            "audit needs included and excluded canaries. Use more canaries (hundreds).")
    significance = _validate.significance(significance)
    delta = _validate.delta(delta, allow_zero=False)
    auditor = CanaryScoreAuditor(values[mask], values[~mask])
    claim = {"significance": significance, "delta": delta}
    return {"epsilon_lower_bound": float(auditor.epsilon_one_run(**claim)),
            "epsilon_lower_bound_fdp": float(auditor.epsilon_one_run_fdp(**claim)),
            "epsilon_clopper_pearson": float(auditor.epsilon_clopper_pearson(**claim)),
            "auroc": float(auditor.auroc())}


@dataclass
class AuditReport:
    """What one canary audit found, next to what the accountant promises.

    ``epsilon_lower_bound`` (one run), ``epsilon_lower_bound_fdp`` (one run, against
    DP-SGD's Gaussian curve) and ``epsilon_clopper_pearson`` (an approximation in one
    run) are explained in :func:`canary_bounds`; they hold with probability ``1 -
    significance``. ``epsilon`` is the accountant's upper bound at ``delta`` (None for
    the non-private baseline). A lower bound above ``epsilon`` means a privacy bug (or,
    with probability ``significance``, bad luck). Lower bounds are usually far below
    ``epsilon``: they measure one attack in one run, not the worst case. ``in_scores``
    and ``out_scores`` are the scores of the included and excluded canaries; ``net`` is
    the trained net.
    """

    epsilon_lower_bound: float
    epsilon_lower_bound_fdp: float
    epsilon_clopper_pearson: float
    auroc: float
    epsilon: Optional[float]
    delta: float
    significance: float
    test_accuracy: Optional[float]
    m: int
    num_included: int
    dataset_size: int
    kind: str
    score: str
    private: bool
    noise_multiplier: Optional[float]
    max_grad_norm: Optional[float]
    expected_batch_size: int
    epochs: float
    steps: int
    seconds: float
    in_scores: np.ndarray = field(repr=False, compare=False)
    out_scores: np.ndarray = field(repr=False, compare=False)
    net: Any = field(default=None, repr=False, compare=False)

    def summary(self) -> str:
        """A few lines for a notebook or a log."""
        what = (f"DP-SGD, sigma {self.noise_multiplier:.3g}, C {self.max_grad_norm:g}"
                if self.private else "non-private baseline")
        accountant = ("no privacy guarantee (epsilon infinite)" if self.epsilon is None else
                      f"accountant epsilon {self.epsilon:.3f}")
        accuracy = "" if self.test_accuracy is None else \
            f", test accuracy {100 * self.test_accuracy:.1f} %"
        lines = [
            f"{what}: {self.steps} steps over {self.dataset_size} records "
            f"({self.num_included} of {self.m} {self.kind} canaries included){accuracy}",
            f"{accountant} at delta {self.delta:g}",
            f"one-run lower bound {self.epsilon_lower_bound:.3f} (f-DP "
            f"{self.epsilon_lower_bound_fdp:.3f}, Clopper-Pearson "
            f"{self.epsilon_clopper_pearson:.3f}) at {100 * (1 - self.significance):g} % "
            f"confidence, AUROC {self.auroc:.3f}",
        ]
        if self.epsilon is not None and self.epsilon_lower_bound > self.epsilon:
            lines.append("WARNING: the one-run lower bound exceeds the accountant's epsilon: "
                         "a privacy bug, or bad luck with probability <= significance.")
        elif self.epsilon is not None and self.epsilon_lower_bound_fdp > self.epsilon:
            lines.append("NOTE: the f-DP bound exceeds the accountant's epsilon: the run is "
                         "not as private as DP-SGD's Gaussian curve allows. Check it.")
        return "\n".join(lines)

    def to_dict(self, with_scores: bool = False) -> Dict[str, Any]:
        """Plain numbers (JSON-ready); the scores as lists with ``with_scores=True``."""
        data = {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("in_scores", "out_scores", "net")}
        if with_scores:
            data["in_scores"] = self.in_scores.tolist()
            data["out_scores"] = self.out_scores.tolist()
        return data
