"""Per-class summaries of the quasi-identifiers, vectorized over classes.

For each column this computes, for every class, the generalized label, the NCP, and
(on request) the representative value. Every summary is computed with sorts and
reductions over a class-sorted copy of the keys, not one pandas call per class.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import pandas as pd

from ._encode import MISSING, Column, _number

__all__ = ["summarize"]


def _segments(class_of_row: np.ndarray, n_classes: int):
    """Row order grouped by class, and each class's start offset in that order."""
    members = np.flatnonzero(class_of_row >= 0)
    order = members[np.argsort(class_of_row[members], kind="stable")]
    starts = np.searchsorted(class_of_row[order], np.arange(n_classes))
    return order, starts


def _numeric(column: Column, keys: np.ndarray, starts: np.ndarray):
    finite = np.isfinite(keys)
    lo = np.minimum.reduceat(np.where(finite, keys, np.inf), starts)
    hi = np.maximum.reduceat(np.where(finite, keys, -np.inf), starts)
    any_missing = np.logical_or.reduceat(~finite, starts)
    any_finite = np.isfinite(lo)
    labels = []
    for a, b, has_value, has_missing in zip(lo, hi, any_finite, any_missing):
        parts = [] if not has_value else [_number(a) if a == b else f"[{_number(a)}, {_number(b)}]"]
        if has_missing:
            parts.append(MISSING)
        labels.append("|".join(parts))
    span = column.span if column.span > 0 else 1.0
    ncp = np.where(any_finite & any_missing, 1.0,
                   np.where(any_finite, (hi - lo) / span, 0.0))
    if column.span == 0:
        ncp = np.where(any_finite & any_missing, 1.0, 0.0)
    return labels, ncp


def _categorical(column: Column, keys: np.ndarray, class_sorted: np.ndarray,
                 starts: np.ndarray):
    codes = keys.astype(np.int64)
    lo = np.minimum.reduceat(codes, starts)
    hi = np.maximum.reduceat(codes, starts)
    domain = max(1, len(column.categories) - 1)
    if column.kind == "hierarchy":
        nodes = [column.cover(int(a), int(b)) for a, b in zip(lo, hi)]
        labels = [column.categories[a] if a == b else node.name
                  for a, b, node in zip(lo, hi, nodes)]
        ncp = np.array([0.0 if a == b else (n.hi - n.lo) / domain
                        for a, b, n in zip(lo, hi, nodes)])
        return labels, ncp
    pairs = np.unique(class_sorted * (len(column.categories) + 1) + codes)
    pair_class = pairs // (len(column.categories) + 1)
    pair_code = pairs % (len(column.categories) + 1)
    bounds = np.searchsorted(pair_class, np.arange(len(starts) + 1))
    labels, distinct = [], np.diff(bounds)
    for a, b in zip(bounds[:-1], bounds[1:]):
        names = [column.categories[i] for i in pair_code[a:b]]
        labels.append(names[0] if len(names) == 1 else "{" + "|".join(names) + "}")
    return labels, (distinct - 1) / domain


def _representatives(column: Column, values: pd.Series, class_of_row: np.ndarray,
                     n_classes: int) -> List:
    kept = class_of_row >= 0
    series = values[kept].reset_index(drop=True)
    groups = pd.Series(class_of_row[kept])
    if column.kind == "numeric":  # missing sorts last: more than half missing -> missing
        numbers = pd.to_numeric(series)
        medians = numbers.groupby(groups).median()
        mostly_missing = numbers.isna().groupby(groups).mean() > 0.5
        return [np.nan if mostly_missing.get(i, True) else float(medians.get(i, np.nan))
                for i in range(n_classes)]
    marker = object()  # missing is a value of its own: it stays missing when it is the mode
    frame = pd.DataFrame({"g": groups, "v": series.astype(object).where(series.notna(), marker)})
    frame["key"] = frame["v"].map(lambda v: "" if v is marker else "\x01" + str(v))
    counts = frame.groupby(["g", "key"], sort=True).size().reset_index(name="n")
    best = counts.sort_values(["g", "n"], ascending=[True, False], kind="stable") \
        .drop_duplicates("g").set_index("g")["key"]
    first = frame.drop_duplicates(["g", "key"]).set_index(["g", "key"])["v"]
    return [np.nan if i not in best.index or best[i] == "" else first[(i, best[i])]
            for i in range(n_classes)]


def summarize(columns: List[Column], frame: pd.DataFrame, class_of_row: np.ndarray,
              n_classes: int, representatives: bool) -> Dict[str, Dict]:
    """Dict column -> {"labels": [...], "ncp": array, "values": [...] (optional)}."""
    order, starts = _segments(class_of_row, n_classes)
    class_sorted = class_of_row[order]
    result = {}
    for column in columns:
        keys = column.keys[order]
        if column.kind == "numeric":
            labels, ncp = _numeric(column, keys, starts)
        else:
            labels, ncp = _categorical(column, keys, class_sorted, starts)
        entry = {"labels": labels, "ncp": np.asarray(ncp, dtype=np.float64)}
        if representatives:
            entry["values"] = _representatives(column, frame[column.name], class_of_row,
                                               n_classes)
        result[column.name] = entry
    return result
