"""What a membership-inference audit runs on and what it finds: attack types, slices and
results (:func:`evaluate_scores` turns one attack's scores into every metric and, where
valid, an epsilon lower bound), with a readable table (:meth:`AttackResults.summary`)
and a JSON-safe dict (:meth:`AttackResults.to_dict`).
"""
from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import AuditInputError
from . import _validate, metrics
from .canary import CanaryScoreAuditor

__all__ = ["AttackType", "SlicingSpec", "Slice", "SingleAttackResult", "AttackResults",
           "evaluate_scores", "format_table", "HEURISTIC_NOTE", "OUTPUT_SLICE_NOTE",
           "ONE_RUN_NOTE", "BOUNDS", "FPR_TARGETS", "NO_BOUND"]

FPR_TARGETS = (0.001, 0.01)
BOUNDS = ("clopper-pearson", "one-run", None)  # what evaluate_scores may bound with
NO_BOUND = "\u2014"  # an em dash: the table's cell for a result without a bound

HEURISTIC_NOTE = (
    "The Clopper-Pearson bound (eps LB) treats every score as an independent trial: it is "
    "formal when each score comes from its own experiment with membership decided at "
    "random (e.g. one training run per score); on a train/test split, or on the examples "
    "of one training run, it is a heuristic.")
OUTPUT_SLICE_NOTE = (
    "Slices chosen from the model's outputs (loss percentiles, correct or misclassified) "
    "have no bound: they select examples by what training did to them, which voids it.")
ONE_RUN_NOTE = (
    "The one-run bound (Steinke, Nasr & Jagielski 2023) is valid only if each canary was "
    "included in one training run by an independent fair coin.")


class AttackType(str, enum.Enum):
    """Attacks, with TF Privacy's names and values (``AttackType("lr")`` works)."""
    THRESHOLD_ATTACK = "threshold"                  # low loss means member
    THRESHOLD_ENTROPY_ATTACK = "threshold-entropy"  # low (modified) entropy means member
    LOGISTIC_REGRESSION = "lr"
    RANDOM_FOREST = "rf"
    K_NEAREST_NEIGHBORS = "knn"

    @property
    def is_trained_attack(self) -> bool:
        return self.value in ("lr", "rf", "knn")

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value) -> "AttackType":
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(repr(a.value) for a in cls)
            raise AuditInputError(f"Unknown attack {value!r}; use one of {names}.") from None


@dataclasses.dataclass
class SlicingSpec:
    """Which slices of the data to attack, besides (or instead of) the whole of it.

    ``by_class``: True for every class, or one class or a list of classes (needs labels).
    ``by_percentiles``: True for 4 loss quartiles, or a number of equal-count loss bins
    (edges from the members' and non-members' losses together; each example falls in
    exactly one bin, ``[lo, hi)``, the last bin closed).
    ``by_classification_correctness``: correctly and incorrectly classified examples
    (needs labels and logits or probabilities).
    """
    entire_dataset: bool = True
    by_class: Union[bool, int, Iterable[int]] = False
    by_percentiles: Union[bool, int] = False
    by_classification_correctness: bool = False

    def percentile_bins(self) -> int:
        """Number of loss bins (0: no percentile slices)."""
        value = self.by_percentiles
        if isinstance(value, bool):
            return 4 if value else 0
        if not isinstance(value, (int, np.integer)) or not 1 <= value <= 100:
            raise AuditInputError(
                f"by_percentiles must be True, False or a number of bins in 1..100; got "
                f"{value!r}.")
        return int(value)


@dataclasses.dataclass(frozen=True)
class Slice:
    """One slice: ``feature`` is "entire", "class", "loss_percentile" (value: (lo, hi)
    in percent) or "correctly_classified" (value: bool)."""
    feature: str = "entire"
    value: Any = None

    @property
    def depends_on_outputs(self) -> bool:
        """Whether the slice is chosen from the model's outputs (loss percentile,
        correctness) rather than from the example and its label alone. Such a slice
        gets no epsilon bound: which examples land in it depends on membership, so the
        rates measured inside it are not those of a DP test (a 1-DP mechanism gave
        bounds of 1.33-1.37 on loss-quartile and correctness slices)."""
        return self.feature in ("loss_percentile", "correctly_classified")

    def __str__(self) -> str:
        if self.feature == "entire":
            return "Entire dataset"
        if self.feature == "loss_percentile":
            return "Loss percentiles %g-%g" % self.value
        if self.feature == "correctly_classified":
            return "Correctly classified" if self.value else "Misclassified"
        return f"{self.feature}={self.value}"


def _json_number(value) -> Union[float, str, None]:
    """A float for JSON; infinities as "inf"/"-inf" (strict JSON has none), NaN as None."""
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        return None
    return value if math.isfinite(value) else str(value)


@dataclasses.dataclass
class SingleAttackResult:
    """One attack on one slice. Scores: higher means member; members are positives.

    ``ppv`` follows TF Privacy (the largest PPV over thresholds, see
    :func:`mxprivacy.audit.metrics.ppv`); ``ppv_at_advantage`` is the PPV at the
    threshold that maximizes the advantage. ``tpr_at_fpr`` maps a target FPR to the
    largest TPR with FPR <= target. ``epsilon_lower_bound`` is the Clopper-Pearson bound,
    which holds with probability at least 1 - ``bound_significance`` for independent
    trials (:data:`HEURISTIC_NOTE`); None for slices chosen from the model's outputs
    (:attr:`Slice.depends_on_outputs`) and for one-run canary scores, whose bound is
    ``epsilon_one_run`` (at the same ``bound_significance``; None otherwise). ``roc``
    holds at most 1,000 points of the curve (fpr, tpr, thresholds); the metrics come
    from the full curve.
    """
    slice: Slice
    attack: str
    n_members: int
    n_nonmembers: int
    auc: float
    advantage: float
    ppv: float
    ppv_at_advantage: float
    tpr_at_fpr: Dict[float, float]
    epsilon_lower_bound: Optional[float]
    bound_significance: Optional[float]
    roc: Tuple[np.ndarray, np.ndarray, np.ndarray]
    epsilon_one_run: Optional[float] = None

    def to_dict(self, include_roc: bool = False) -> dict:
        out = {"slice": str(self.slice), "slice_feature": self.slice.feature,
               "slice_value": _json_value(self.slice.value), "attack": self.attack,
               "n_members": int(self.n_members), "n_nonmembers": int(self.n_nonmembers),
               "auc": _json_number(self.auc), "advantage": _json_number(self.advantage),
               "ppv": _json_number(self.ppv),
               "ppv_at_advantage": _json_number(self.ppv_at_advantage),
               "tpr_at_fpr": {f"{k:g}": _json_number(v) for k, v in self.tpr_at_fpr.items()},
               "epsilon_lower_bound": _json_number(self.epsilon_lower_bound),
               "bound_significance": self.bound_significance}
        if self.epsilon_one_run is not None:
            out["epsilon_one_run"] = _json_number(self.epsilon_one_run)
        if include_roc:
            out["roc"] = {name: [_json_number(v) for v in values]
                          for name, values in zip(("fpr", "tpr", "thresholds"), self.roc)}
        return out


def _json_value(value):
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _json_number(value)
    return value


_METRICS = ("epsilon_lower_bound", "auc", "advantage", "ppv", "ppv_at_advantage")


def _vulnerability(result: SingleAttackResult):
    """Sort key: a result without a bound ranks as a bound of 0."""
    bound = result.epsilon_lower_bound
    return (0.0 if bound is None else bound, result.advantage, abs(result.auc - 0.5))


def _bounded(results) -> List[SingleAttackResult]:
    return [r for r in results if r.epsilon_lower_bound is not None]


@dataclasses.dataclass
class AttackResults:
    """All results of :func:`~mxprivacy.audit.membership.run_membership_attacks`.

    ``skipped`` lists ``(slice, attack, reason)`` for attacks that a slice was too small
    for. ``significance`` is the overall level: each of the m Clopper-Pearson bounds
    (results whose ``epsilon_lower_bound`` is not None) was computed at significance / m
    (Bonferroni), so they all hold together, and so does their maximum
    :attr:`epsilon_lower_bound`, with probability at least 1 - significance. Results
    without a bound are not counted in m.
    """
    results: List[SingleAttackResult]
    significance: float
    delta: float
    skipped: List[Tuple[str, str, str]] = dataclasses.field(default_factory=list)

    @property
    def epsilon_lower_bound(self) -> Optional[float]:
        """The largest Clopper-Pearson bound (0.0 when nothing was attacked; None when
        results exist but none has a bound)."""
        bounded = _bounded(self.results)
        if not bounded:
            return None if self.results else 0.0
        return max(r.epsilon_lower_bound for r in bounded)

    def sorted(self) -> List[SingleAttackResult]:
        """Most vulnerable first: by epsilon lower bound, then advantage, then |AUC - 0.5|."""
        return sorted(self.results, key=_vulnerability, reverse=True)

    def get_best(self, metric: str = "epsilon_lower_bound") -> SingleAttackResult:
        """The result with the largest ``metric`` (one of epsilon_lower_bound, auc,
        advantage, ppv, ppv_at_advantage)."""
        if metric not in _METRICS:
            raise AuditInputError(f"Unknown metric {metric!r}; use one of {_METRICS}.")
        if not self.results:
            raise AuditInputError("No attack ran (every slice was skipped).")
        candidates = _bounded(self.results) if metric == "epsilon_lower_bound" else self.results
        if not candidates:
            raise AuditInputError("No result has an epsilon bound (slices chosen from the "
                                  "model's outputs have none); ask for another metric.")
        return max(candidates, key=lambda r: getattr(r, metric))

    def summary(self, max_rows: Optional[int] = None) -> str:
        """A table, most vulnerable slice first, with the overall bound and its caveat."""
        return format_table(self, max_rows)

    def to_dict(self, include_roc: bool = False) -> dict:
        """JSON-safe: plain floats, infinities as "inf", sorted most vulnerable first."""
        return {"epsilon_lower_bound": _json_number(self.epsilon_lower_bound),
                "significance": self.significance, "delta": self.delta,
                "bounds": len(_bounded(self.results)), "note": " ".join(_notes(self)),
                "results": [r.to_dict(include_roc) for r in self.sorted()],
                "skipped": [list(s) for s in self.skipped]}

    def to_dataframe(self):
        """One row per (slice, attack) as a pandas DataFrame (pandas imported here)."""
        import pandas as pd

        rows = []
        for r in self.sorted():
            row = r.to_dict()
            rows.append(dict(row, **{f"tpr_at_fpr_{k}": v
                                     for k, v in row.pop("tpr_at_fpr").items()}))
        return pd.DataFrame(rows)


def _cell(value: Optional[float]) -> str:
    return NO_BOUND if value is None else f"{value:.4f}" if math.isfinite(value) else str(value)


def _notes(results: AttackResults) -> List[str]:
    """The caveats that apply to ``results``."""
    notes = [HEURISTIC_NOTE] if _bounded(results.results) or not results.results else []
    if any(r.slice.depends_on_outputs for r in results.results):
        notes.append(OUTPUT_SLICE_NOTE)
    if any(r.epsilon_one_run is not None for r in results.results):
        notes.append(ONE_RUN_NOTE)
    return notes


def _bound_line(results: AttackResults, count: int) -> str:
    confidence = f"{100 * (1 - results.significance):g} % confidence at delta {results.delta:g}"
    if count == 0:
        return "No Clopper-Pearson epsilon lower bound."
    return f"Epsilon lower bound {_cell(results.epsilon_lower_bound)} (Clopper-Pearson): " + (
        f"the largest of {count} bounds that hold together with {confidence} "
        "(Bonferroni)." if count > 1 else f"holds with {confidence}.")


def format_table(results: AttackResults, max_rows: Optional[int] = None) -> str:
    """The rows of ``results`` (most vulnerable first, at most ``max_rows``), then the
    overall bound and its caveat."""
    rows = results.sorted()
    shown = rows if max_rows is None else rows[:max_rows]
    targets = list(shown[0].tpr_at_fpr) if shown else []
    one_run = [r.epsilon_one_run for r in rows if r.epsilon_one_run is not None]
    head = (["Slice", "Attack", "Members", "Non-members", "AUC", "Adv.", "PPV", "PPV@adv"]
            + [f"TPR@{100 * t:g}%" for t in targets] + ["eps LB"]
            + (["one-run LB"] if one_run else []))
    body = [[str(r.slice), r.attack, str(r.n_members), str(r.n_nonmembers), _cell(r.auc),
             _cell(r.advantage), _cell(r.ppv), _cell(r.ppv_at_advantage)]
            + [_cell(r.tpr_at_fpr[t]) for t in targets]
            + [_cell(r.epsilon_lower_bound)]
            + ([_cell(r.epsilon_one_run)] if one_run else []) for r in shown]
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in [head] + body]
    if len(shown) < len(rows):
        lines.append(f"... {len(rows) - len(shown)} more rows")
    if results.skipped:
        lines.append(f"Skipped {len(results.skipped)} (slice, attack) pairs: too few "
                     "members or non-members.")
    lines.append(_bound_line(results, len(_bounded(rows))))
    for value in one_run:
        lines.append(f"One-run epsilon lower bound {_cell(value)}: holds with "
                     f"{100 * (1 - results.significance):g} % confidence at delta "
                     f"{results.delta:g}.")
    lines.extend(_notes(results))
    return "\n".join(lines)


def _epsilon_bounds(member, nonmember, bound, significance, delta) -> tuple:
    """``(Clopper-Pearson bound, one-run bound, significance)``, None where not asked."""
    if bound not in BOUNDS:
        raise AuditInputError(f"bound must be one of {BOUNDS}; got {bound!r}.")
    if bound is None:
        return None, None, None
    auditor = CanaryScoreAuditor(member, nonmember)
    if bound == "one-run":
        return None, float(auditor.epsilon_one_run(significance, delta)), significance
    return float(auditor.epsilon_clopper_pearson(significance, delta)), None, significance


def evaluate_scores(member, nonmember, *, slice_: Slice = Slice(), attack: str = "scores",
                    bound: Optional[str] = "clopper-pearson", bound_significance: float = 0.05,
                    delta: float = 1e-5,
                    fpr_targets: Sequence[float] = FPR_TARGETS) -> SingleAttackResult:
    """Every metric of one set of scores (higher = member), and an epsilon lower bound at
    ``bound_significance``: ``"clopper-pearson"`` (independent trials, e.g. two-run
    experiments), ``"one-run"`` (canaries of one training run, each included by an
    independent fair coin: :meth:`CanaryScoreAuditor.epsilon_one_run`) or None."""
    member = _validate.scores("member scores", member)
    nonmember = _validate.scores("non-member scores", nonmember)
    fpr, tpr, thresholds = metrics.roc(member, nonmember)
    best = metrics.advantage_index(fpr, tpr)
    n_in, n_out = len(member), len(nonmember)
    clopper_pearson, one_run_bound, level = _epsilon_bounds(member, nonmember, bound,
                                                            bound_significance, delta)
    return SingleAttackResult(
        slice=slice_, attack=attack, n_members=n_in, n_nonmembers=n_out,
        auc=metrics.auc(fpr, tpr), advantage=metrics.advantage(fpr, tpr),
        ppv=metrics.ppv(fpr, tpr, n_in, n_out),
        ppv_at_advantage=metrics.ppv_at(fpr, tpr, best, n_in, n_out),
        tpr_at_fpr={t: metrics.tpr_at_fpr(fpr, tpr, t) for t in fpr_targets},
        epsilon_lower_bound=clopper_pearson, bound_significance=level,
        roc=metrics.thin_curve(fpr, tpr, thresholds), epsilon_one_run=one_run_bound)
