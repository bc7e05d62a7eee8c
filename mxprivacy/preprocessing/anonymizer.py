"""``KAnonymizer``: k-anonymity, l-diversity and t-closeness in scikit-learn style."""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..errors import InvalidParameterError, UnknownValueError, UnreachableTargetError
from ._encode import encode_column
from ._classes import summarize
from .metrics import report
from .models import PrivacyModels, hierarchy_nodes
from .mondrian import partition, route
from ._unknown import fit_cover, general_labels, uncovered

__all__ = ["KAnonymizer"]

SUPPRESSED = "*"


def _as_frame(X) -> pd.DataFrame:
    if isinstance(X, pd.DataFrame):
        duplicated = X.columns[X.columns.duplicated()].tolist()
        if duplicated:
            raise InvalidParameterError(
                f"Column names {duplicated[:5]} appear more than once; rename them first.")
        return X
    array = np.asarray(X, dtype=object)
    if array.ndim != 2:
        raise InvalidParameterError(f"Expected a 2-D table, got shape {array.shape}.")
    return pd.DataFrame(array, columns=[f"x{i}" for i in range(array.shape[1])]).infer_objects()


def _release_shift(models: PrivacyModels, codes, classes) -> Optional[float]:
    """None if every class passes against the kept rows' own distribution; else the EMD
    between that distribution and the whole table's (the reference that was used)."""
    if codes is None or models.t is None:
        return None  # k and l are per class: removing other rows cannot break them
    kept = np.concatenate(classes) if classes else np.empty(0, dtype=np.int64)
    reference = np.bincount(codes[kept], minlength=len(models.reference))
    check = replace(models, reference=reference)
    counts = [np.bincount(codes[c], minlength=len(reference)) for c in classes]
    if all(check.accepts(c.size, n) for c, n in zip(classes, counts)):
        return None
    return models.distance(reference)


def _released_partition(columns, models: PrivacyModels, codes, budget: int, relaxed: bool):
    """Mondrian whose released table satisfies the models *on itself*.

    Suppression changes the table's sensitive distribution, against which t-closeness
    is measured. The EMD is a metric whose ground distance is at most 1, so removing a
    fraction s of the rows moves the reference by at most s (total variation), and a
    class within t - s of the whole table is within t of the kept rows. A failed
    release is partitioned again with t lowered by twice the observed shift, then by
    the whole budget (which guarantees it); failing that, nothing is suppressed.
    """
    result = partition(columns, models, codes, budget, relaxed)
    shift = _release_shift(models, codes, result.classes)
    if shift is None:
        return result
    rows = columns[0].keys.size
    for margin in (2 * shift, budget / rows):
        if margin <= models.t:
            result = partition(columns, replace(models, t=models.t - margin), codes, budget,
                               relaxed)
            if _release_shift(models, codes, result.classes) is None:
                return result
    return partition(columns, models, codes, 0, relaxed)


class KAnonymizer(TransformerMixin, BaseEstimator):
    """Mondrian anonymization of quasi-identifiers, with l-diversity and t-closeness.

    Parameters
    ----------
    quasi_identifiers : list of str, optional
        Columns to generalize (default: every column but ``sensitive``).
    k : int
        Minimum class size.
    sensitive : str, optional
        The sensitive column, for ``l`` and ``t``. It is never changed.
    l, l_kind, c : optional
        l-diversity: ``distinct``, ``entropy`` or ``recursive`` (with ``c``).
    t : float, optional
        t-closeness: maximum EMD (ordered distance for a numeric sensitive column,
        equal distance otherwise).
    hierarchies : dict, optional
        Column -> nested dict (one root) or list of child-to-parent dicts. A hierarchy
        for the ``sensitive`` column makes t-closeness use the hierarchical distance.
    orders : dict, optional
        Column -> ordered categories. Other categorical columns use sorted labels.
    max_suppression : float
        Fraction of rows that may be suppressed to keep classes small.
    mode : {"strict", "relaxed"}
    output : {"generalized", "representative"}
        ``generalized``: "[lo, hi]" intervals, hierarchy nodes or "{a|b}" sets (strings).
        ``representative``: the class median (numeric) or mode, typed. Missing stays
        missing when it is the class's mode (or, numeric, more than half the class).
    handle_unknown : {"error", "generalize"}
        What ``transform`` does with a value that its fitted class does not cover (an
        unseen category, a missing value, a number outside the class's range).
        ``"error"`` raises :class:`~mxprivacy.errors.UnknownValueError`; ``"generalize"``
        gives it the most general label that covers it: the column's full range widened
        to the value (plus "missing" for a missing value), all categories, or the
        hierarchy's root. In representative mode such a value becomes missing.

    Notes
    -----
    ``fit`` learns the cut tree. ``transform`` places rows in the fitted cells and gives
    them their class's values. That does **not** make new data k-anonymous: only the
    fitted table is.
    """

    def __init__(self, quasi_identifiers: Optional[Sequence[str]] = None, k: int = 5, *,
                 sensitive: Optional[str] = None, l: Optional[float] = None,
                 l_kind: str = "distinct", c: Optional[float] = None,
                 t: Optional[float] = None, hierarchies: Optional[Dict] = None,
                 orders: Optional[Dict] = None, max_suppression: float = 0.0,
                 mode: str = "strict", output: str = "generalized",
                 handle_unknown: str = "error") -> None:
        self.quasi_identifiers = quasi_identifiers
        self.k = k
        self.sensitive = sensitive
        self.l = l
        self.l_kind = l_kind
        self.c = c
        self.t = t
        self.hierarchies = hierarchies
        self.orders = orders
        self.max_suppression = max_suppression
        self.mode = mode
        self.output = output
        self.handle_unknown = handle_unknown

    # -- fitting -------------------------------------------------------------------------
    def _validate(self, frame: pd.DataFrame) -> List[str]:
        if self.mode not in ("strict", "relaxed"):
            raise InvalidParameterError(f"mode must be 'strict' or 'relaxed', got {self.mode!r}.")
        if self.output not in ("generalized", "representative"):
            raise InvalidParameterError(
                f"output must be 'generalized' or 'representative', got {self.output!r}.")
        if self.handle_unknown not in ("error", "generalize"):
            raise InvalidParameterError(
                f"handle_unknown must be 'error' or 'generalize', got {self.handle_unknown!r}.")
        if not 0 <= self.max_suppression < 1:
            raise InvalidParameterError(
                f"max_suppression must lie in [0, 1), got {self.max_suppression!r}.")
        if (self.l is not None or self.t is not None) and self.sensitive is None:
            raise InvalidParameterError("l-diversity and t-closeness need sensitive=<column>.")
        if self.sensitive is not None and self.sensitive not in frame.columns:
            raise InvalidParameterError(f"Sensitive column {self.sensitive!r} not found.")
        if isinstance(self.quasi_identifiers, str):  # one column, not its letters
            qis = [self.quasi_identifiers]
        elif self.quasi_identifiers is not None:
            qis = list(self.quasi_identifiers)
        else:
            qis = [c for c in frame.columns if c != self.sensitive]
        if len(set(qis)) != len(qis):
            raise InvalidParameterError(f"Quasi-identifiers {qis} name a column twice.")
        missing = [q for q in qis if q not in frame.columns]
        if missing or not qis:
            raise InvalidParameterError(f"Quasi-identifiers {missing or qis} not found.")
        if self.sensitive in qis:
            raise InvalidParameterError("The sensitive column cannot be a quasi-identifier.")
        return [str(q) for q in qis]

    def _models(self, frame: pd.DataFrame):
        if self.sensitive is None:
            return PrivacyModels(self.k), None
        values = frame[self.sensitive]
        tree = (self.hierarchies or {}).get(self.sensitive)
        if tree is not None:  # hierarchical ground distance for t-closeness
            column = encode_column(self.sensitive, values, tree)
            codes = column.keys.astype(np.int64)
            reference = np.bincount(codes, minlength=len(column.categories))
            return PrivacyModels(self.k, self.l, self.l_kind, self.c, self.t, False, reference,
                                 hierarchy_nodes(column.root)), codes
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        labels = values.astype(object).where(values.notna(), "missing")
        ordered_values = sorted(labels.unique(), key=lambda v: (isinstance(v, str), v)) \
            if numeric else sorted(labels.astype(str).unique())
        index = {v: i for i, v in enumerate(ordered_values)}
        codes = (labels if numeric else labels.astype(str)).map(index).to_numpy(np.int64)
        reference = np.bincount(codes, minlength=len(ordered_values))
        return PrivacyModels(self.k, self.l, self.l_kind, self.c, self.t, numeric, reference), codes

    def fit(self, X, y=None):
        start = time.perf_counter()
        frame = _as_frame(X)
        qis = self._validate(frame)
        models, codes = self._models(frame)
        hierarchies, orders = self.hierarchies or {}, self.orders or {}
        self.columns_ = [encode_column(q, frame[q], hierarchies.get(q), orders.get(q))
                         for q in qis]
        rows = len(frame)
        counts = np.bincount(codes, minlength=len(models.reference)) if codes is not None else None
        if rows == 0 or not models.accepts(rows, counts):
            raise UnreachableTargetError(
                f"The whole table ({rows} rows) does not satisfy the requested models "
                f"(k={self.k}, l={self.l}, t={self.t}); no generalization can. Lower k or "
                "l, raise t, or add data.")
        result = _released_partition(self.columns_, models, codes,
                                     int(np.floor(self.max_suppression * rows)),
                                     self.mode == "relaxed")
        self.quasi_identifiers_ = qis
        self.feature_names_in_ = np.array([str(c) for c in frame.columns], dtype=object)
        self.n_features_in_ = frame.shape[1]
        self.tree_ = result.tree
        self.train_classes_ = np.full(rows, -2, dtype=np.int64)
        for number, members in enumerate(result.classes):
            self.train_classes_[members] = number
        self.suppressed_ = self.train_classes_ == -2
        self.cover_ = {c.name: fit_cover(c, self.train_classes_, len(result.classes))
                       for c in self.columns_}
        self._describe_classes(frame, result.classes)
        self.report_ = report(self, rows, result.classes, time.perf_counter() - start)
        return self

    def _describe_classes(self, frame: pd.DataFrame, classes: List[np.ndarray]) -> None:
        summary = summarize(self.columns_, frame, self.train_classes_, len(classes),
                            self.output == "representative")
        names = [c.name for c in self.columns_]
        self.class_labels_ = [dict(zip(names, row)) for row in
                              zip(*[summary[n]["labels"] for n in names])]
        self.class_values_ = ([dict(zip(names, row)) for row in
                               zip(*[summary[n]["values"] for n in names])]
                              if self.output == "representative" else None)
        self.class_ncp_ = list(np.mean([summary[n]["ncp"] for n in names], axis=0)) \
            if classes else []

    # -- transforming ----------------------------------------------------------------------
    def _output(self, frame: pd.DataFrame, classes: np.ndarray):
        out = frame.copy()
        table = self.class_labels_ if self.output == "generalized" else self.class_values_
        fill = SUPPRESSED if self.output == "generalized" else np.nan
        for column in self.columns_:
            lookup = np.array([t[column.name] for t in table] + [fill], dtype=object)
            out[column.name] = lookup[np.where(classes >= 0, classes, len(table))]
            if self.output == "representative" and column.kind == "numeric":
                out[column.name] = pd.to_numeric(out[column.name])
        return out

    def transform(self, X):
        check_is_fitted(self, "tree_")
        frame = _as_frame(X)
        if frame.shape[1] != self.n_features_in_:
            raise InvalidParameterError(
                f"X has {frame.shape[1]} columns; the anonymizer was fitted on "
                f"{self.n_features_in_}.")
        if not isinstance(X, pd.DataFrame):
            frame.columns = list(self.feature_names_in_)
        absent = [q for q in self.quasi_identifiers_ if q not in frame.columns]
        if absent:
            raise InvalidParameterError(
                f"X lacks the quasi-identifiers {absent} that the anonymizer was fitted on.")
        classes = route(self.tree_, [c.key_of(frame[c.name]) for c in self.columns_])
        out = self._output(frame, classes)
        for column in self.columns_:
            self._handle_unknown(column, frame[column.name], classes, out)
        return out if isinstance(X, pd.DataFrame) else out.to_numpy(dtype=object)

    def _handle_unknown(self, column, values: pd.Series, classes: np.ndarray,
                        out: pd.DataFrame) -> None:
        bad = uncovered(column, self.cover_[column.name], values, classes)
        if not bad.any():
            return
        if self.handle_unknown == "error":
            row = int(np.flatnonzero(bad)[0])
            raise UnknownValueError(
                f"Column {column.name!r} has value {values.iloc[row]!r} (row {row}) that no "
                f"fitted class covers ({int(bad.sum())} such rows). Fit on data that "
                "includes it, or pass handle_unknown='generalize'.")
        position = out.columns.get_loc(column.name)
        if self.output == "representative":
            out.iloc[np.flatnonzero(bad), position] = np.nan
        else:
            labels = general_labels(column, self.cover_[column.name], values[bad])
            out.iloc[np.flatnonzero(bad), position] = labels

    def fit_transform(self, X, y=None, **fit_params):
        """Fit, then return the training rows with their own classes' values (suppressed
        rows get "*", or NaN in representative mode)."""
        self.fit(X)
        frame = _as_frame(X)
        out = self._output(frame, self.train_classes_)
        return out if isinstance(X, pd.DataFrame) else out.to_numpy(dtype=object)

    def anonymize(self, X) -> pd.DataFrame:
        """Fit and return the anonymized table without the suppressed rows (input order)."""
        out = self.fit_transform(_as_frame(X))
        return out.loc[~self.suppressed_]

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "tree_")
        return np.asarray(self.feature_names_in_, dtype=object)

    def _more_tags(self):
        return {"X_types": ["2darray", "string"], "allow_nan": True}
