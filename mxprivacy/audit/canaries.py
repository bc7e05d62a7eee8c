"""Canaries for one-run privacy audits (Steinke, Nasr & Jagielski 2023).

A canary is an extra training record that is easy to tell apart when it was trained on:
an input of a pool that is not trained on, with a wrong label (``"mislabeled"``), or an
out-of-distribution input with a random label (``"ood"``: random pixels;
``"ood_pattern"``: a blank image with a sparse random pattern). Each canary is included
in the training set independently with probability 1/2; after training, every canary
gets a score (higher means "member"), and the scores of the included and excluded
canaries give an empirical lower bound on epsilon from a single training run.

Nothing about a canary may come from the private training data, or one private record
would change many training records: the number of classes and the range of the ood
inputs are public arguments, and the pool of ``"mislabeled"`` canaries is public data or
a held-out part of the data that is then not trained on
(:func:`mxprivacy.audit.gluon.audit_training` holds it out), so that no input is
trained on twice.

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
           "numeric_array", "canary_bounds", "AuditReport", "MAX_CANARIES", "check_num_classes"]

KINDS = ("mislabeled", "ood", "ood_pattern")
SCORES = ("log_prob", "logit")
PATTERN_FRACTION = 0.1  # share of the pixels lit in an "ood_pattern" canary
MAX_CANARIES = 10 ** 7  # more would not fit in memory as inputs, and audits need ~1e3
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
        For ``"mislabeled"``: the row of the pool each canary copies (remove those rows
        from the training data if the pool was taken from it).
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
    defaults to ``max(y) + 1`` (only for data already known to be public: anything
    trained on must get ``num_classes`` from the task, not from the labels)."""
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
            f"labels must lie in [0, {num_classes - 1}] for num_classes = {num_classes}; got "
            f"{labels.min():g} to {labels.max():g}. Fix the labels, or give the task's true "
            "number of classes.")
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


def _value_range(value_range) -> tuple:
    if value_range is None:
        raise AuditInputError(
            "ood canaries need value_range=(low, high): a public range of input values "
            "(e.g. (0.0, 1.0) for pixels scaled to [0, 1]), never the minimum and maximum "
            "of the training data (one record could then change every canary).")
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise AuditInputError(f"value_range must be two numbers (low, high); got "
                              f"{value_range!r}.") from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise AuditInputError(f"value_range must be finite numbers with low < high; got "
                              f"{value_range!r}.")
    return low, high


def _check_m(m) -> int:
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 2:
        raise AuditInputError(f"m must be an integer >= 2 (the number of canaries); got {m!r}.")
    if m > MAX_CANARIES:
        raise AuditInputError(
            f"m = {m} canaries is more than {MAX_CANARIES:,}: they would not fit in memory. "
            "Audits use hundreds to thousands (Steinke et al. 2023); lower m.")
    return int(m)


def make_canaries(x, y, m: int, kind: str = "mislabeled", *, num_classes: int,
                  value_range: Optional[tuple] = None, seed: Optional[int] = None) -> CanarySet:
    """Make ``m`` canaries, each included with probability 1/2.

    Parameters
    ----------
    x, y : arrays
        Inputs (examples on the first axis) and their integer labels. ``"mislabeled"``
        copies ``m`` distinct rows of ``x`` (so ``m <= len(x)``) and gives each a label
        drawn uniformly from the *other* classes: ``x`` must be a pool that is NOT
        trained on otherwise (public data, or a held-out part of yours: remove the rows
        ``source_index`` from the training set, as ``audit_training`` does), else the
        copied record is trained on twice. The ``"ood"`` kinds use ``x`` only for the
        input shape and dtype: uniform random values in ``value_range`` (``"ood"``), or
        ``low`` everywhere with a random 10 % of the values at ``high``
        (``"ood_pattern"``); their labels are uniform over all classes.
    m : int
        Number of canaries, 2 to 10^7. Steinke et al. use hundreds to thousands: the
        lower bound grows with the number of confident correct guesses.
    kind : {"mislabeled", "ood", "ood_pattern"}
    num_classes : int
        Number of classes of the task (the model's outputs), >= 2: a public fact, never
        ``max(y) + 1`` (which depends on the data).
    value_range : (low, high), required for the ood kinds
        A public range of input values, such as (0.0, 1.0) for pixels scaled to [0, 1];
        not computed from the data.
    seed : int, optional
        For reproducible tests only. None (the default) draws everything, the inclusion
        mask included, from OS entropy, so the training run cannot know it.

    Returns
    -------
    CanarySet
        ``x``, ``y``, the inclusion mask ``included``, ``kind`` and ``source_index``.
    """
    array = _inputs(x)
    labels, num_classes = check_labels(y, check_num_classes(num_classes))
    _validate.same_length(x=array, y=labels)
    m = _check_m(m)
    if kind not in KINDS:
        raise AuditInputError(f"kind must be one of {list(KINDS)}; got {kind!r}.")
    low_high = None if kind == "mislabeled" else _value_range(value_range)
    rng = _rng(seed)
    try:
        canary_x, canary_y, source = _draw(array, labels, m, kind, num_classes, low_high, rng)
    except MemoryError:
        raise AuditInputError(f"m = {m} canaries of shape {array.shape[1:]} do not fit in "
                              "memory; lower m.") from None
    included = rng.random(m) < 0.5
    return CanarySet(x=canary_x, y=canary_y.astype(labels.dtype), included=included,
                     kind=kind, source_index=source)


def check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 2:
        raise AuditInputError(
            f"num_classes must be an integer >= 2, the number of classes of the task (a "
            f"public fact, not max(y) + 1); got {num_classes!r}.")
    return int(num_classes)


def _draw(array, labels, m: int, kind: str, num_classes: int, low_high, rng) -> tuple:
    """``(inputs, labels, source rows or None)`` of ``m`` canaries of ``kind``."""
    if kind == "mislabeled":
        if m > len(array):
            raise AuditInputError(
                f"m = {m} mislabeled canaries need as many distinct inputs; the pool has "
                f"{len(array)}. Lower m, give a larger pool, or use kind='ood'.")
        source = rng.choice(len(array), size=m, replace=False)
        shift = rng.integers(1, num_classes, size=m)  # never 0: always another class
        return array[source].copy(), (labels[source].astype(np.int64) + shift) % num_classes, \
            source
    low, high = low_high
    shape = (m,) + array.shape[1:]
    if kind == "ood":
        canary_x = rng.uniform(low, high, size=shape)
    else:
        canary_x = np.where(rng.random(shape) < PATTERN_FRACTION, high, low)
    return canary_x.astype(array.dtype), rng.integers(0, num_classes, size=m), None


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
    """Epsilon lower bounds from one score per canary of ONE training run and the
    inclusion mask (each canary included by an independent fair coin).

    Uses :class:`mxprivacy.audit.canary.CanaryScoreAuditor` on the scores of the included
    ("in") and excluded ("out") canaries:

    - ``epsilon_lower_bound``: the one-run bound (Steinke, Nasr & Jagielski 2023), a
      lower bound on epsilon for any (epsilon, delta)-DP training, valid because each
      canary was included by an independent fair coin (an inclusion count that fair
      coins give with probability below 1e-3 raises ``AuditInputError``);
    - ``epsilon_lower_bound_fdp``: the f-DP test (Mahloujifar et al. 2024) of the
      Gaussian trade-off curve through (epsilon, delta). Larger, but a lower bound only
      for a mechanism with that curve (the Gaussian mechanism), not a generic (epsilon,
      delta) bound: it exceeded the true epsilon of randomized response in 14-17 % of
      runs. It is never the basis of a "bug" verdict;
    - ``auroc``.

    Each bound holds with probability at least ``1 - significance`` on its own (the two
    are not corrected for being reported together). No Clopper-Pearson bound is given:
    it treats canaries as independent trials, but the canaries of one run share the
    model, and on a mechanism that reveals the whole mask with probability delta = 0.2
    it exceeded the true epsilon in 19 % of runs at a claimed 5 %.
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
            "auroc": float(auditor.auroc())}


@dataclass
class AuditReport:
    """What one canary audit found, next to what the accountant promises.

    ``epsilon_lower_bound`` is the one-run bound: with probability at least ``1 -
    significance``, the training's epsilon at ``delta`` is at least this large, whatever
    the mechanism. ``epsilon_lower_bound_fdp`` tests the Gaussian trade-off curve through
    (epsilon, delta): valid for the Gaussian mechanism, not a generic (epsilon, delta)
    bound (Poisson-subsampled DP-SGD is not exactly Gaussian). Each holds at
    ``significance`` on its own (see :func:`canary_bounds`). ``epsilon`` is the
    accountant's upper bound at ``delta`` (None for the non-private baseline). Only
    ``epsilon_lower_bound`` above ``epsilon`` is reported as a privacy bug (or, with
    probability ``significance``, bad luck). Lower bounds are usually far below
    ``epsilon``: they measure one attack in one run, not the worst case.

    ``sample_rate`` and ``steps`` were fixed before the inclusion coins were drawn
    (``expected_batch_size / (n + m / 2)`` for ``n`` training records); ``dataset_size``
    is the number of records actually trained on (``n`` plus the included canaries).
    ``in_scores`` and ``out_scores`` are the scores of the included and excluded
    canaries; ``net`` is the trained net.
    """

    epsilon_lower_bound: float
    epsilon_lower_bound_fdp: float
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
    sample_rate: float
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
        confidence = f"{100 * (1 - self.significance):g} % confidence"
        lines = [
            f"{what}: {self.steps} steps at sample rate {self.sample_rate:.4g} over "
            f"{self.dataset_size} records ({self.num_included} of {self.m} {self.kind} "
            f"canaries included){accuracy}",
            f"{accountant} at delta {self.delta:g}",
            f"one-run lower bound {self.epsilon_lower_bound:.3f} at {confidence}; f-DP test "
            f"of the Gaussian curve {self.epsilon_lower_bound_fdp:.3f} (a separate "
            f"{confidence} statement); AUROC {self.auroc:.3f}",
        ]
        if self.epsilon is not None and self.epsilon_lower_bound > self.epsilon:
            lines.append("WARNING: the one-run lower bound exceeds the accountant's epsilon: "
                         "a privacy bug, or bad luck with probability <= significance.")
        return "\n".join(lines)

    def to_dict(self, with_scores: bool = False) -> Dict[str, Any]:
        """Plain numbers (JSON-ready); the scores as lists with ``with_scores=True``."""
        data = {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("in_scores", "out_scores", "net")}
        if with_scores:
            data["in_scores"] = self.in_scores.tolist()
            data["out_scores"] = self.out_scores.tolist()
        return data
