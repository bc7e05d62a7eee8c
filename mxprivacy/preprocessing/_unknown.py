"""Values at transform time that the fitted classes do not cover (``handle_unknown``).

A row is routed to a fitted class by the cut tree, but that class's label only covers the
training values in it. A new value outside it (an unseen category, a missing value where
the class had none, a number outside the class's range) would get a label that does not
cover it: an invented value. These helpers find such values and give them the most
general label that covers them.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import pandas as pd

from ._encode import MISSING, Column, _as_labels, _number

__all__ = ["fit_cover", "uncovered", "general_labels"]


def fit_cover(column: Column, classes: np.ndarray, n_classes: int) -> Dict:
    """Per-class extent of the training values of ``column`` (classes: class of each row)."""
    kept = classes >= 0
    keys, cls = column.keys[kept], classes[kept]
    if column.kind == "numeric":
        finite = np.isfinite(keys)
        lo = np.full(n_classes, np.inf)
        hi = np.full(n_classes, -np.inf)
        np.minimum.at(lo, cls[finite], keys[finite])
        np.maximum.at(hi, cls[finite], keys[finite])
        missing = np.zeros(n_classes, dtype=bool)
        missing[cls[~finite]] = True
        span = column.keys[np.isfinite(column.keys)]
        return {"lo": lo, "hi": hi, "missing": missing,
                "range": (span.min(), span.max()) if span.size else (np.nan, np.nan)}
    member = np.zeros((n_classes, len(column.categories)), dtype=bool)
    member[cls, keys.astype(np.int64)] = True
    if column.kind == "hierarchy":  # a class's label is the node covering its leaves
        for c in range(n_classes):
            codes = np.flatnonzero(member[c])
            if codes.size > 1:
                node = column.cover(int(codes.min()), int(codes.max()))
                member[c, node.lo:node.hi + 1] = True
    return {"member": member}


def _codes(column: Column, values: pd.Series) -> np.ndarray:
    labels = _as_labels(values)
    return pd.Categorical(labels, categories=column.categories).codes.astype(np.int64)


def uncovered(column: Column, cover: Dict, values: pd.Series, classes: np.ndarray) -> np.ndarray:
    """Rows (in a fitted class, not suppressed) whose value the class label does not cover."""
    inside = classes >= 0
    cls = np.where(inside, classes, 0)
    if column.kind == "numeric":
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        not_numeric = values.notna().to_numpy() & np.isnan(numbers)
        nan = np.isnan(numbers)
        with np.errstate(invalid="ignore"):
            out_of_range = (numbers < cover["lo"][cls]) | (numbers > cover["hi"][cls])
        bad = np.where(nan, ~cover["missing"][cls], out_of_range) | not_numeric
        return inside & bad
    codes = _codes(column, values)
    known = codes >= 0
    bad = ~known | ~cover["member"][cls, np.where(known, codes, 0)]
    return inside & bad


def general_labels(column: Column, cover: Dict, values: pd.Series) -> List[str]:
    """The most general label covering each value: the full range widened to include it
    (with "missing" for a missing value), all categories, or the hierarchy's root."""
    if column.kind == "numeric":
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        lo, hi = cover["range"]
        labels = []
        for v in numbers:
            if np.isnan(v):
                labels.append(MISSING if np.isnan(lo) else
                              f"[{_number(lo)}, {_number(hi)}]|{MISSING}")
            else:
                a, b = (v, v) if np.isnan(lo) else (min(lo, v), max(hi, v))
                labels.append(f"[{_number(a)}, {_number(b)}]")
        return labels
    if column.kind == "hierarchy":
        return [column.root.name] * len(values)
    labels = _as_labels(values)
    everything = list(column.categories)
    return ["{" + "|".join(everything + ([v] if v not in everything else [])) + "}"
            for v in labels]
