"""``DataMinimizer``: GDPR data minimization guided by a trained model.

It works feature by feature, starting with the one whose removal costs the least
accuracy. For each feature it tries, in order:
- **drop**: replace the feature by one representative (median or mode), so it need not
  be collected at all;
- **generalize**: numeric values are cut into quantile bins (8, then 16, 32, 64), and
  adjacent bins where the model's majority prediction is the same are merged. Each
  range is replaced by its median, and the coarsest resolution that works is kept.
  Categories that the model treats alike (same majority prediction) are grouped and
  replaced by the group's most frequent value;
- **keep**.

A change is accepted when the model's accuracy on the minimized data stays at or
above ``target_accuracy`` times its accuracy on the original data. Accuracy is measured
against ``y`` when given, otherwise against the model's own predictions. Accepted
changes accumulate.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..errors import InvalidParameterError
from .anonymizer import _as_frame

__all__ = ["DataMinimizer"]

_RESOLUTIONS = (8, 16, 32, 64)


def _predictor(model) -> Callable[[pd.DataFrame], np.ndarray]:
    if hasattr(model, "predict"):
        return lambda frame: np.asarray(model.predict(frame))
    if hasattr(model, "collect_params"):  # a Gluon Block on numeric columns
        from mxnet import nd

        return lambda frame: model(nd.array(frame.to_numpy(dtype=np.float32))) \
            .argmax(axis=1).asnumpy().astype(np.int64)
    if callable(model):
        return lambda frame: np.asarray(model(frame))
    raise InvalidParameterError("estimator must have predict(), be a Gluon Block, or be a "
                                "function from a DataFrame to labels.")


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


class DataMinimizer(TransformerMixin, BaseEstimator):
    """Generalize or drop features while the model keeps its accuracy.

    Parameters
    ----------
    estimator : estimator, Gluon Block or callable
        The trained model. A Gluon Block gets the (numeric) columns as a float matrix
        and its arg-max is the prediction.
    target_accuracy : float
        Relative accuracy to keep, for example 0.99 for 99 % of the original accuracy.
    features : list of str, optional
        Features that may be minimized (default: all).
    """

    def __init__(self, estimator=None, *, target_accuracy: float = 0.99,
                 features: Optional[Sequence[str]] = None) -> None:
        self.estimator = estimator
        self.target_accuracy = target_accuracy
        self.features = features

    def fit(self, X, y=None):
        if not 0 < self.target_accuracy <= 1:
            raise InvalidParameterError(
                f"target_accuracy must lie in (0, 1], got {self.target_accuracy!r}.")
        frame = _as_frame(X).reset_index(drop=True)
        predict = _predictor(self.estimator)
        truth = predict(frame) if y is None else np.asarray(y)
        self.baseline_accuracy_ = float(np.mean(predict(frame) == truth))
        goal = self.target_accuracy * self.baseline_accuracy_
        features = list(self.features) if self.features is not None else list(frame.columns)
        unknown = [f for f in features if f not in frame.columns]
        if unknown:
            raise InvalidParameterError(f"Features {unknown} not found.")
        self.generalizations_: Dict[str, Dict[str, Any]] = {}
        current = frame.copy()

        def accuracy(candidate: pd.DataFrame) -> float:
            return float(np.mean(predict(candidate) == truth))

        costs = {f: accuracy(self._apply(current, f, _drop(frame[f]))) for f in features}
        for feature in sorted(features, key=lambda f: -costs[f]):
            decision = self._decide(frame, current, feature, accuracy, goal, predict)
            self.generalizations_[feature] = decision
            if decision["action"] != "keep":
                current = self._apply(current, feature, decision)
        self.accuracy_ = accuracy(current)
        self.feature_names_in_ = np.array([str(c) for c in frame.columns], dtype=object)
        self.n_features_in_ = frame.shape[1]
        return self

    def _decide(self, frame, current, feature, accuracy, goal, predict) -> Dict[str, Any]:
        dropped = _drop(frame[feature])
        score = accuracy(self._apply(current, feature, dropped))
        if score >= goal:
            return dict(dropped, accuracy=score)
        for candidate in _generalizations(frame[feature], current, feature, predict):
            score = accuracy(self._apply(current, feature, candidate))
            if score >= goal:
                return dict(candidate, accuracy=score)
        return {"action": "keep", "accuracy": accuracy(current)}

    @staticmethod
    def _apply(frame: pd.DataFrame, feature: str, decision: Dict[str, Any]) -> pd.DataFrame:
        out = frame.copy()
        out[feature] = _map(frame[feature], decision)
        return out

    def transform(self, X):
        check_is_fitted(self, "generalizations_")
        frame = _as_frame(X)
        out = frame.copy()
        for feature, decision in self.generalizations_.items():
            if decision["action"] != "keep":
                out[feature] = _map(frame[feature], decision)
        return out if isinstance(X, pd.DataFrame) else out.to_numpy(dtype=object)

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "generalizations_")
        return np.asarray(self.feature_names_in_, dtype=object)


def _drop(series: pd.Series) -> Dict[str, Any]:
    value = float(series.median()) if _is_numeric(series) else series.mode().iloc[0]
    return {"action": "drop", "representative": value}


def _generalizations(series: pd.Series, current: pd.DataFrame, feature: str,
                     predict) -> List[Dict[str, Any]]:
    labels = predict(current)
    if _is_numeric(series):
        return [c for c in (_merged_ranges(series, labels, r) for r in _RESOLUTIONS) if c]
    majority = pd.DataFrame({"v": series.astype(str), "p": labels}).groupby("v")["p"] \
        .agg(lambda s: s.value_counts().index[0])
    groups = [sorted(members.index.tolist()) for _, members in majority.groupby(majority)]
    if len(groups) >= series.nunique():
        return []
    counts = series.astype(str).value_counts()
    reps = [max(g, key=lambda v: counts.get(v, 0)) for g in groups]
    return [{"action": "generalize", "groups": groups, "representatives": reps}]


def _merged_ranges(series: pd.Series, labels: np.ndarray, resolution: int):
    """Quantile bins, merged where neighbours share the majority prediction."""
    values = series.to_numpy(dtype=float)
    edges = np.unique(np.quantile(values[~np.isnan(values)], np.linspace(0, 1, resolution + 1)))
    if edges.size < 3:
        return None
    codes = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, edges.size - 2)
    majority = pd.Series(labels).groupby(codes).agg(lambda s: s.value_counts().index[0])
    starts = [0]
    for i in range(1, edges.size - 1):
        if majority.get(i) != majority.get(i - 1):
            starts.append(i)
    lows = [float(edges[i]) for i in starts]
    highs = [float(edges[j]) for j in starts[1:]] + [float(edges[-1])]
    merged = np.searchsorted(np.array(starts), codes, side="right") - 1
    medians = pd.Series(values).groupby(merged).median()
    reps = [float(medians.get(i, lows[i])) for i in range(len(starts))]
    return {"action": "generalize", "ranges": [[a, b] for a, b in zip(lows, highs)],
            "representatives": reps}


def _map(series: pd.Series, decision: Dict[str, Any]) -> pd.Series:
    if decision["action"] == "drop":
        return pd.Series(decision["representative"], index=series.index)
    if "ranges" in decision:
        lows = np.array([r[0] for r in decision["ranges"]])
        codes = np.clip(np.searchsorted(lows, series.to_numpy(dtype=float), side="right") - 1,
                        0, lows.size - 1)
        return pd.Series(np.asarray(decision["representatives"])[codes], index=series.index)
    lookup = {v: rep for group, rep in zip(decision["groups"], decision["representatives"])
              for v in group}
    text = series.astype(str)
    return text.map(lambda v: lookup.get(v, v)).astype(series.dtype, errors="ignore")
