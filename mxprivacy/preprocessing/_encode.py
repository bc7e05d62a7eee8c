"""Quasi-identifier encoding: every column becomes a float key that Mondrian can cut.

- Numeric columns: the value itself. Missing values get the key +inf, so they form
  their own side of any cut, and labels say "missing" explicitly.
- Categorical columns with an order (given, or sorted labels; never row order): the
  position in the order. Missing values are the category "missing", placed last.
- Categorical columns with a hierarchy (nested dict, or a list of child-to-parent
  levels): the position of the leaf in depth-first order. Cuts are only allowed between
  children of the lowest node that covers a partition, and labels are hierarchy nodes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from ..errors import InvalidParameterError

__all__ = ["Column", "encode_column", "MISSING"]

MISSING = "missing"


@dataclass
class _Node:
    name: str
    lo: int  # leaf range [lo, hi] in depth-first order
    hi: int
    children: List["_Node"] = field(default_factory=list)


def _hierarchy_from_levels(levels: Sequence[Dict[Any, Any]]) -> Dict:
    """[{leaf: parent}, {parent: grandparent}, ...] -> nested dict under one root."""
    tree: Dict[Any, Any] = {}
    for leaf in levels[0]:
        path = [leaf]
        for level in levels:
            path.append(level.get(path[-1], "*"))
        node = tree
        for name in reversed(path[1:]):
            node = node.setdefault(name, {})
        node.setdefault(leaf, {})
    if len(tree) == 1:
        return tree
    return {"*": tree}


def _build(name: str, spec: Any, leaves: List[str]) -> _Node:
    if isinstance(spec, dict) and spec:
        start = len(leaves)
        children = [_build(str(k), v, leaves) for k, v in spec.items()]
        return _Node(name, start, len(leaves) - 1, children)
    if isinstance(spec, (list, tuple)) and spec:
        start = len(leaves)
        children = [_build(str(v), {}, leaves) for v in spec]
        return _Node(name, start, len(leaves) - 1, children)
    leaves.append(name)
    return _Node(name, len(leaves) - 1, len(leaves) - 1)


@dataclass
class Column:
    """One encoded quasi-identifier."""

    name: str
    kind: str  # "numeric", "ordered" or "hierarchy"
    keys: np.ndarray
    categories: Optional[List[str]] = None  # ordered / hierarchy: leaf labels by key
    root: Optional[_Node] = None
    span: float = 1.0  # range of keys, for normalized widths

    def key_of(self, values: pd.Series) -> np.ndarray:
        """Keys of new values (unknown categories count as missing)."""
        if self.kind == "numeric":
            keys = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
            return np.where(np.isnan(keys), np.inf, keys)
        missing = self.categories.index(MISSING) if MISSING in self.categories \
            else len(self.categories) - 1
        labels = _as_labels(values)
        codes = pd.Categorical(labels, categories=self.categories).codes.astype(np.float64)
        return np.where(codes < 0, missing, codes)  # unknown categories count as missing

    def width(self, lo: float, hi: float) -> float:
        """Normalized width of a partition whose keys span [lo, hi]."""
        if self.kind == "hierarchy":
            node = self.cover(int(lo), int(hi))
            return (node.hi - node.lo) / max(1, len(self.categories) - 1)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return 1.0 if lo != hi else 0.0
        return (hi - lo) / self.span if self.span > 0 else 0.0

    def cover(self, lo: int, hi: int) -> _Node:
        """The lowest hierarchy node whose leaves include [lo, hi]."""
        node = self.root
        while True:
            inner = [c for c in node.children if c.lo <= lo and hi <= c.hi]
            if not inner:
                return node
            node = inner[0]

    def cut(self, keys: np.ndarray) -> Optional[float]:
        """A threshold (left: key <= threshold) near the median, or None if uncuttable."""
        lo, hi = keys.min(), keys.max()
        if lo == hi:
            return None
        median = float(np.partition(keys, (len(keys) - 1) // 2)[(len(keys) - 1) // 2])
        if self.kind != "hierarchy":
            return median if median < hi else float(keys[keys < hi].max())
        node = self.cover(int(lo), int(hi))
        bounds = [c.hi for c in node.children[:-1]]
        if not bounds:
            return None
        return float(min(bounds, key=lambda b: abs(b - median)))

    def covers(self, label: str, value: Any) -> bool:
        """Whether a generalized label covers an original value (for tests and checks)."""
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        if self.kind == "numeric":
            parts = label.split("|")
            if missing:
                return MISSING in parts
            for part in parts:
                if part.startswith("["):
                    lo, hi = (float(x) for x in part.strip("[]").split(","))
                    if lo <= float(value) <= hi:
                        return True
                elif part != MISSING and float(part) == float(value):
                    return True
            return False
        text = MISSING if missing else str(value)
        if self.kind == "hierarchy":
            index = self.categories.index(text) if text in self.categories else -1
            node = self._find(label)
            if node is self.root:  # the root stands for every value, known or not
                return True
            return node is not None and node.lo <= index <= node.hi
        return label == text or text in label.strip("{}").split("|")

    def _find(self, name: str) -> Optional[_Node]:
        stack = [self.root]
        while stack:
            node = stack.pop()
            if node.name == name:
                return node
            stack.extend(node.children)
        return None


def _as_labels(values: pd.Series) -> pd.Series:
    """String labels, with missing values as MISSING (strings are not converted again)."""
    if values.dtype == object and values.map(type).eq(str).all():
        return values
    if values.dtype == object or isinstance(values.dtype, pd.CategoricalDtype):
        text = values.astype(object)
        return text.where(text.isna(), text.astype(str)).fillna(MISSING)
    return values.astype(object).where(values.notna(), MISSING).astype(str)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def encode_column(name: str, values: pd.Series, hierarchy: Any = None,
                  order: Optional[Sequence] = None) -> Column:
    """Encode one quasi-identifier column (see the module docstring)."""
    if hierarchy is not None:
        spec = _hierarchy_from_levels(hierarchy) if isinstance(hierarchy, list) else hierarchy
        if not isinstance(spec, dict) or len(spec) != 1:
            raise InvalidParameterError(
                f"The hierarchy of {name!r} must be a nested dict with one root, or a list "
                "of child-to-parent dicts.")
        leaves: List[str] = []
        root = _build(str(next(iter(spec))), next(iter(spec.values())), leaves)
        labels = values.astype(object).where(values.notna(), MISSING).astype(str)
        unknown = sorted(set(labels) - set(leaves))
        if unknown:
            raise InvalidParameterError(
                f"Values {unknown[:5]} of {name!r} are not leaves of its hierarchy "
                "(missing values need a leaf named 'missing').")
        column = Column(name, "hierarchy", np.empty(0), leaves, root)
        column.keys = column.key_of(values)
        return column
    if order is None and pd.api.types.is_numeric_dtype(values) \
            and not pd.api.types.is_bool_dtype(values):
        keys = values.to_numpy(dtype=np.float64)
        finite = keys[~np.isnan(keys)]
        span = float(finite.max() - finite.min()) if finite.size else 0.0
        return Column(name, "numeric", np.where(np.isnan(keys), np.inf, keys), span=span)
    present = sorted({str(v) for v in values.dropna().unique()} - {MISSING})
    categories = [str(c) for c in order] if order is not None else present
    extra = sorted(set(present) - set(categories))
    if extra:
        raise InvalidParameterError(f"Values {extra[:5]} of {name!r} are not in its order.")
    if MISSING not in categories:
        categories = categories + [MISSING]
    column = Column(name, "ordered", np.empty(0), categories,
                    span=float(max(1, len(categories) - 1)))
    column.keys = column.key_of(values)
    return column
