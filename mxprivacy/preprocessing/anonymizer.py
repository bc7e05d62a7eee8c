"""``KAnonymizer``: k-anonymity, l-diversity and t-closeness in scikit-learn style."""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..errors import InvalidParameterError, UnreachableTargetError
from ._encode import encode_column
from ._classes import summarize
from .metrics import report
from .models import PrivacyModels, hierarchy_nodes
from .mondrian import partition, route

__all__ = ["KAnonymizer"]

SUPPRESSED = "*"


def _as_frame(X) -> pd.DataFrame:
    if isinstance(X, pd.DataFrame):
        return X
    array = np.asarray(X, dtype=object)
    if array.ndim != 2:
        raise InvalidParameterError(f"Expected a 2-D table, got shape {array.shape}.")
    return pd.DataFrame(array, columns=[f"x{i}" for i in range(array.shape[1])]).infer_objects()


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
        ``representative``: the class median (numeric) or mode, typed.

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
                 mode: str = "strict", output: str = "generalized") -> None:
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

    # -- fitting -------------------------------------------------------------------------
    def _validate(self, frame: pd.DataFrame) -> List[str]:
        if self.mode not in ("strict", "relaxed"):
            raise InvalidParameterError(f"mode must be 'strict' or 'relaxed', got {self.mode!r}.")
        if self.output not in ("generalized", "representative"):
            raise InvalidParameterError(
                f"output must be 'generalized' or 'representative', got {self.output!r}.")
        if not 0 <= self.max_suppression < 1:
            raise InvalidParameterError(
                f"max_suppression must lie in [0, 1), got {self.max_suppression!r}.")
        if (self.l is not None or self.t is not None) and self.sensitive is None:
            raise InvalidParameterError("l-diversity and t-closeness need sensitive=<column>.")
        if self.sensitive is not None and self.sensitive not in frame.columns:
            raise InvalidParameterError(f"Sensitive column {self.sensitive!r} not found.")
        qis = list(self.quasi_identifiers) if self.quasi_identifiers is not None else \
            [c for c in frame.columns if c != self.sensitive]
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
        result = partition(self.columns_, models, codes,
                           int(np.floor(self.max_suppression * rows)), self.mode == "relaxed")
        self.quasi_identifiers_ = qis
        self.feature_names_in_ = np.array([str(c) for c in frame.columns], dtype=object)
        self.n_features_in_ = frame.shape[1]
        self.tree_ = result.tree
        self.train_classes_ = np.full(rows, -2, dtype=np.int64)
        for number, members in enumerate(result.classes):
            self.train_classes_[members] = number
        self.suppressed_ = self.train_classes_ == -2
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
        keys = [c.key_of(frame[c.name]) for c in self.columns_]
        out = self._output(frame, route(self.tree_, keys))
        return out if isinstance(X, pd.DataFrame) else out.to_numpy(dtype=object)

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
