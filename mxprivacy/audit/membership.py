"""Membership-inference attacks on a classifier's outputs, at parity with TF Privacy's
``membership_inference_attack`` (numpy, scipy and scikit-learn; no MXNet).

Give :class:`AttackInputData` the per-example losses, or the labels with logits or
probabilities, of members (``*_train``: examples the model was trained on) and
non-members (``*_test``), and call :func:`run_membership_attacks`. Every attack turns an
example into a score, HIGHER meaning "member":

- ``threshold``: minus the loss; ``threshold-entropy``: minus the prediction entropy
  (Song and Mittal's modified entropy when labels are given, Shannon's otherwise);
- ``lr``, ``rf``, ``knn``: logistic regression, random forest and k-nearest neighbours
  trained on the logits or probabilities plus the loss, evaluated by k-fold (``folds``):
  every example is scored by a model that did not see it. Each fold's model is fitted
  on a balanced set, the larger class subsampled to the size of the smaller, and at
  most ``max_fit_per_class`` examples of each class (a random subsample, for speed).

Per slice (:class:`SlicingSpec`) and attack it reports AUC, advantage, PPV, TPR at low
FPR and, for slices that depend on the example and its label alone (the entire data set,
a class), an epsilon lower bound from :class:`mxprivacy.audit.canary.CanaryScoreAuditor`
(Clopper-Pearson, corrected for the choice of threshold). Slices chosen from the model's
outputs (loss percentile, correct or misclassified) get the metrics but no bound (None,
shown as an em dash): which examples fall in them depends on membership, and on a 1-DP
mechanism their bounds reached 1.33-1.37 in 20 of 20 runs. The m bounds of a run are
each computed at significance / m, m counting the bounded (slice, attack) pairs only, so
they hold together. The Clopper-Pearson bound treats the examples as independent trials:
it is formal when each score comes from its own experiment with membership decided at
random; on a train/test split, or on the examples of one training run, it is a
heuristic (for canaries of one run, see :func:`audit_scores` with ``one_run=True``).
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, List, Optional, Sequence, Union

import numpy as np
from scipy import special

from ..errors import AuditInputError
from . import _validate
from ._slices import SIDES as _SIDES
from ._slices import SliceMasks, full_slicing, slice_indices
from .report import FPR_TARGETS, AttackResults, AttackType, SlicingSpec, evaluate_scores

__all__ = ["AttackInputData", "AttackType", "SlicingSpec", "run_membership_attacks",
           "audit_scores", "evaluate_scores", "slice_indices", "full_slicing",
           "balanced_subsample"]

PROB_FLOOR = 1e-30        # probabilities are clipped here before a log (loss <= 69.1)
MIN_TRAINED = 10          # members and non-members a slice needs for a trained attack
_FIELDS = ("loss", "logits", "probs", "labels", "entropy")


def _matrix(name: str, values) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise AuditInputError(f"{name} must be numbers; got {type(values).__name__}.") from None
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] < 2:
        raise AuditInputError(f"{name} must be (examples, classes) with at least one "
                              f"example and two classes; got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise AuditInputError(f"{name} has non-finite values; drop those examples.")
    return array


def _labels(name: str, values) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise AuditInputError(f"{name} must be a non-empty 1-D array of class indices "
                              f"(not one-hot); got shape {array.shape}.")
    if not np.issubdtype(array.dtype, np.integer):
        as_float = _validate.scores(name, array)
        if not np.array_equal(as_float, np.round(as_float)):
            raise AuditInputError(f"{name} must be integer class indices.")
        array = as_float
    if array.min() < 0:
        raise AuditInputError(f"{name} has a negative class index ({array.min()}).")
    return array.astype(np.int64)


def _log_probs(logits, probs) -> np.ndarray:
    if logits is not None:
        return special.log_softmax(logits, axis=1)  # stable: no exp overflow, no log(0)
    return np.log(np.maximum(probs, PROB_FLOOR))


def _entropy(log_p: np.ndarray, labels: Optional[np.ndarray]) -> np.ndarray:
    """Shannon entropy, or Song and Mittal's modified entropy given the labels:
    -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i). Low means confident: a member."""
    p = np.exp(log_p)
    if labels is None:
        return -(p * log_p).sum(axis=1)
    rows = np.arange(len(labels))
    terms = -p * np.log(np.maximum(1.0 - p, PROB_FLOOR))
    terms[rows, labels] = -(1.0 - p[rows, labels]) * log_p[rows, labels]
    return terms.sum(axis=1)


@dataclasses.dataclass
class AttackInputData:
    """Model outputs on members (``*_train``) and non-members (``*_test``).

    Give ``loss_*``, or ``labels_*`` (class indices) with ``logits_*`` or ``probs_*``
    (not both); each field for both sides or neither. A missing loss is computed as the
    cross-entropy (a stable log-softmax of the logits, or -log of the probability of the
    label clipped at 1e-30); a missing entropy from the logits or probabilities. After
    construction the arrays are float64 (labels int64), and ``loss_*`` is always set.
    Anything empty, non-finite or of mismatched length raises ``AuditInputError``.
    """
    loss_train: Optional[np.ndarray] = None
    loss_test: Optional[np.ndarray] = None
    logits_train: Optional[np.ndarray] = None
    logits_test: Optional[np.ndarray] = None
    probs_train: Optional[np.ndarray] = None
    probs_test: Optional[np.ndarray] = None
    labels_train: Optional[np.ndarray] = None
    labels_test: Optional[np.ndarray] = None
    entropy_train: Optional[np.ndarray] = None
    entropy_test: Optional[np.ndarray] = None

    def __post_init__(self):
        for field in _FIELDS:
            train, test = getattr(self, f"{field}_train"), getattr(self, f"{field}_test")
            if (train is None) != (test is None):
                raise AuditInputError(f"Give {field}_train and {field}_test together, "
                                      "or neither.")
        if self.logits_train is not None and self.probs_train is not None:
            raise AuditInputError("Give logits or probs, not both.")
        for side in _SIDES:
            self._clean(side)
        if self.predictions("train") is not None:
            if self.predictions("train").shape[1] != self.predictions("test").shape[1]:
                raise AuditInputError("Members and non-members have different numbers "
                                      "of classes in their logits or probs.")
        for side in _SIDES:
            self._derive(side)

    def _clean(self, side: str) -> None:
        get = lambda field: getattr(self, f"{field}_{side}")  # noqa: E731
        for field in ("loss", "entropy"):
            if get(field) is not None:
                setattr(self, f"{field}_{side}", _validate.scores(f"{field}_{side}", get(field)))
        for field in ("logits", "probs"):
            if get(field) is not None:
                setattr(self, f"{field}_{side}", _matrix(f"{field}_{side}", get(field)))
        if get("labels") is not None:
            setattr(self, f"labels_{side}", _labels(f"labels_{side}", get("labels")))
        present = {f"{f}_{side}": get(f) for f in _FIELDS if get(f) is not None}
        if not present:
            raise AuditInputError("Give loss_train/loss_test, or labels with logits or probs.")
        _validate.same_length(**present)
        probs = get("probs")
        if probs is not None and (probs.min() < 0 or probs.max() > 1 or np.abs(
                probs.sum(axis=1) - 1).max() > 1e-3):
            raise AuditInputError(f"probs_{side} rows must be probabilities summing to 1 "
                                  "(within 1e-3); for raw model outputs pass logits_*.")
        predictions, labels = self.predictions(side), get("labels")
        if predictions is not None and labels is not None and labels.max() >= predictions.shape[1]:
            raise AuditInputError(f"labels_{side} has class {labels.max()} but the model "
                                  f"outputs {predictions.shape[1]} classes.")

    def _derive(self, side: str) -> None:
        predictions, labels = self.predictions(side), getattr(self, f"labels_{side}")
        if predictions is None:
            if getattr(self, f"loss_{side}") is None:
                raise AuditInputError("Labels alone cannot give a loss: add logits_* or "
                                      "probs_*, or give loss_* directly.")
            return
        log_p = _log_probs(getattr(self, f"logits_{side}"), getattr(self, f"probs_{side}"))
        if getattr(self, f"loss_{side}") is None:
            if labels is None:
                raise AuditInputError("A loss needs labels: give labels_* (or loss_*).")
            setattr(self, f"loss_{side}", -log_p[np.arange(len(labels)), labels])
        if getattr(self, f"entropy_{side}") is None:
            setattr(self, f"entropy_{side}", _entropy(log_p, labels))

    def predictions(self, side: str) -> Optional[np.ndarray]:
        """The logits, else the probabilities, of ``side`` ("train" or "test")."""
        logits = getattr(self, f"logits_{side}")
        return logits if logits is not None else getattr(self, f"probs_{side}")

    def features(self, side: str) -> np.ndarray:
        """What trained attacks see: the logits or probabilities, then the loss."""
        loss = getattr(self, f"loss_{side}")[:, None]
        predictions = self.predictions(side)
        return loss if predictions is None else np.hstack([predictions, loss])

    @property
    def n_train(self) -> int:
        return len(self.loss_train)

    @property
    def n_test(self) -> int:
        return len(self.loss_test)


# ---- attacks --------------------------------------------------------------------------

def balanced_subsample(is_member: np.ndarray, rng: np.random.Generator,
                       max_per_class: Optional[int] = None) -> np.ndarray:
    """Sorted indices of equally many members and non-members (the smaller count, capped
    at ``max_per_class``), drawn without replacement."""
    member = np.flatnonzero(is_member)
    nonmember = np.flatnonzero(~is_member)
    k = min(len(member), len(nonmember), max_per_class or len(is_member))
    return np.sort(np.concatenate([rng.choice(member, k, replace=False),
                                   rng.choice(nonmember, k, replace=False)]))


def _make_model(attack: AttackType, seed: int):
    """Fixed hyperparameters (TF Privacy grid-searches them; this is faster)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if attack is AttackType.LOGISTIC_REGRESSION:
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    if attack is AttackType.RANDOM_FOREST:
        return RandomForestClassifier(n_estimators=30, max_depth=12, min_samples_leaf=10,
                                      random_state=seed, n_jobs=1)
    return make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=5,
                                                                algorithm="brute"))


def _trained_scores(attack: AttackType, member: np.ndarray, nonmember: np.ndarray,
                    folds: int, max_fit: Optional[int], rng: np.random.Generator):
    """Held-out member probabilities of each example, by stratified k-fold."""
    from sklearn.model_selection import StratifiedKFold

    x = np.vstack([member, nonmember])
    y = np.concatenate([np.ones(len(member), bool), np.zeros(len(nonmember), bool)])
    scores = np.full(len(y), np.nan)
    split = StratifiedKFold(folds, shuffle=True, random_state=int(rng.integers(2**31)))
    for fit, held_out in split.split(x, y):
        chosen = fit[balanced_subsample(y[fit], rng, max_fit)]
        model = _make_model(attack, int(rng.integers(2**31))).fit(x[chosen], y[chosen])
        column = list(model.classes_).index(True)
        scores[held_out] = model.predict_proba(x[held_out])[:, column]
    return scores[y], scores[~y]


def _scores(data: AttackInputData, attack: AttackType, masks, folds, max_fit, rng):
    in_mask, out_mask = masks
    if attack is AttackType.THRESHOLD_ATTACK:
        return -data.loss_train[in_mask], -data.loss_test[out_mask]
    if attack is AttackType.THRESHOLD_ENTROPY_ATTACK:
        return -data.entropy_train[in_mask], -data.entropy_test[out_mask]
    return _trained_scores(attack, data.features("train")[in_mask],
                           data.features("test")[out_mask], folds, max_fit, rng)


# ---- runs -----------------------------------------------------------------------------

def _attacks(data: AttackInputData, attacks) -> List[AttackType]:
    if isinstance(attacks, str) and attacks == "all":
        chosen = [a for a in AttackType if a is not AttackType.THRESHOLD_ENTROPY_ATTACK
                  or data.entropy_train is not None]
    else:
        chosen = [AttackType.parse(a) for a in ([attacks] if isinstance(attacks, str)
                                                else list(attacks))]
    if not chosen:
        raise AuditInputError("No attack given; use e.g. attacks=('threshold',) or 'all'.")
    if AttackType.THRESHOLD_ENTROPY_ATTACK in chosen and data.entropy_train is None:
        raise AuditInputError("The entropy attack needs entropy_*, logits_* or probs_*.")
    return list(dict.fromkeys(chosen))


def _plan(slices: List[SliceMasks], attacks: List[AttackType]):
    """The (slice masks, attack) pairs to run, and the skipped ones with a reason. A
    task gets a bound unless its slice is chosen from the model's outputs."""
    tasks, skipped = [], []
    for slice_, in_mask, out_mask in slices:
        n_in, n_out = int(in_mask.sum()), int(out_mask.sum())
        for attack in attacks:
            need = MIN_TRAINED if attack.is_trained_attack else 1
            if min(n_in, n_out) < need:
                skipped.append((str(slice_), attack.value,
                                f"{n_in} members and {n_out} non-members; the attack needs "
                                f"at least {need} of each"))
            else:
                tasks.append(((slice_, in_mask, out_mask), attack))
    return tasks, skipped


def _count(name: str, value, low: int, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise AuditInputError(f"{name} must be an integer >= {low}; got {value!r}.")
    return int(value)


def run_membership_attacks(data: AttackInputData,
                           attacks: Union[str, Iterable] = ("threshold",),
                           slicing: Optional[SlicingSpec] = None, *,
                           significance: float = 0.05, delta: float = 1e-5,
                           random_state: Optional[int] = 0, folds: int = 2,
                           max_fit_per_class: Optional[int] = 5000,
                           fpr_targets: Sequence[float] = FPR_TARGETS) -> AttackResults:
    """Run ``attacks`` (AttackType values or names, or "all" that the data supports) on
    every slice of ``slicing`` (default: the entire dataset).

    Slices with no member or no non-member, and slices with fewer than 10 of either for
    a trained attack, are listed in ``skipped``. ``random_state`` seeds the folds and
    subsamples of trained attacks (None: fresh entropy). Slices chosen from the model's
    outputs (loss percentiles, correctness) get no bound. The m other (slice, attack)
    pairs get a Clopper-Pearson bound at ``significance / m`` each: together they hold
    with probability 1 - significance.
    """
    if not isinstance(data, AttackInputData):
        raise AuditInputError(f"data must be an AttackInputData; got {type(data).__name__}.")
    significance = _validate.significance(significance)
    delta = _validate.delta(delta)
    folds = _count("folds", folds, 2)
    max_fit = _count("max_fit_per_class", max_fit_per_class, 1, allow_none=True)
    targets = [_validate.fraction("fpr_targets", t) for t in fpr_targets]
    if random_state is not None:
        _count("random_state", random_state, 0)
    tasks, skipped = _plan(slice_indices(data, slicing), _attacks(data, attacks))
    rng = np.random.default_rng(random_state)
    bounded = sum(not slice_.depends_on_outputs for (slice_, _, _), _ in tasks)
    level = significance / max(bounded, 1)
    results = []
    for (slice_, in_mask, out_mask), attack in tasks:
        member, nonmember = _scores(data, attack, (in_mask, out_mask), folds, max_fit, rng)
        bound = None if slice_.depends_on_outputs else "clopper-pearson"
        results.append(evaluate_scores(member, nonmember, slice_=slice_, attack=attack.value,
                                       bound=bound, bound_significance=level, delta=delta,
                                       fpr_targets=targets))
    return AttackResults(results, significance, delta, skipped)


def audit_scores(in_scores, out_scores, *, significance: float = 0.05,
                 delta: float = 1e-5, one_run: bool = False) -> AttackResults:
    """Metrics and an epsilon lower bound of given scores (higher = member).

    By default the scores are independent trials (e.g. one training run per score, each
    score's membership decided at random): the bound is Clopper-Pearson's. With
    ``one_run=True`` you assert that they are canaries of ONE training run, each included
    by an independent fair coin: the bound is then ``epsilon_one_run`` (in
    ``results[0].epsilon_one_run``; member/non-member counts that fair coins would give
    with probability below 1e-3 raise ``AuditInputError``), and no Clopper-Pearson bound
    is given (canaries of one run are not independent trials).
    """
    significance = _validate.significance(significance)
    delta = _validate.delta(delta)
    if not isinstance(one_run, (bool, np.bool_)):
        raise AuditInputError(f"one_run must be True or False; got {one_run!r}.")
    result = evaluate_scores(in_scores, out_scores, bound="one-run" if one_run
                             else "clopper-pearson", bound_significance=significance,
                             delta=delta)
    return AttackResults([result], significance, delta)
