"""Privacy models on equivalence classes, shared by the anonymizer and the checkers.

Each model takes the sensitive-value counts of one class (a vector over the sensitive
domain) and says whether the class is acceptable. The models are:
- **k-anonymity**: the class has at least k rows.
- **distinct l-diversity**: at least l distinct sensitive values.
- **entropy l-diversity**: the entropy of the sensitive values is at least log(l).
- **recursive (c, l)-diversity** (Machanavajjhala et al. 2007): with counts sorted
  descending, r_1 is the *most* frequent value, and the model requires
  ``r_1 < c (r_l + r_{l+1} + ... + r_m)``.
- **t-closeness** (Li et al. 2007): the earth mover's distance between the class's
  distribution and the whole table's is at most t. The ground distance is *ordered*
  for numeric values (``|i - j| / (m - 1)``) and *equal* for categorical ones, in which
  case EMD is half the L1 distance. With a hierarchy for the sensitive column, the
  distance between two values is height(lowest common ancestor) / height(tree), and the
  EMD is ``sum over inner nodes N of height(N)/H x min(positive, negative extra of N's
  children)`` (Li et al. 2007).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import InvalidParameterError

__all__ = ["PrivacyModels", "entropy_l", "recursive_ok", "recursive_l", "emd",
           "hierarchy_nodes", "hierarchical_emd"]


def entropy_l(counts: np.ndarray) -> float:
    """exp(entropy) of a count vector: the largest l for which entropy l-diversity holds."""
    p = counts[counts > 0] / counts.sum()
    return float(math.exp(-(p * np.log(p)).sum()))


def recursive_ok(counts: np.ndarray, c: float, l: int) -> bool:
    r = np.sort(counts[counts > 0])[::-1]
    if r.size < l:
        return False
    return bool(r[0] < c * r[l - 1:].sum())


def recursive_l(counts: np.ndarray, c: float) -> int:
    """Largest l with recursive (c, l)-diversity (0 if none, not even l = 1)."""
    r = np.sort(counts[counts > 0])[::-1]
    best = 0
    for l in range(1, r.size + 1):
        if r[0] < c * r[l - 1:].sum():
            best = l
    return best


def emd(counts: np.ndarray, reference: np.ndarray, ordered: bool) -> float:
    """Earth mover's distance between two distributions over the same sensitive domain."""
    p = counts / counts.sum()
    q = reference / reference.sum()
    if not ordered:
        return float(0.5 * np.abs(p - q).sum())
    m = p.size
    if m < 2:
        return 0.0
    return float(np.abs(np.cumsum(p - q))[:-1].sum() / (m - 1))


def hierarchy_nodes(root) -> tuple:
    """(inner nodes as (children leaf ranges, height), tree height) of an encoded tree."""
    nodes = []

    def height(node) -> int:
        if not node.children:
            return 0
        h = 1 + max(height(c) for c in node.children)
        nodes.append(([(c.lo, c.hi) for c in node.children], h))
        return h

    return nodes, height(root)


def hierarchical_emd(counts: np.ndarray, reference: np.ndarray, nodes, tree_height: int) -> float:
    """EMD under the hierarchical ground distance (leaves in depth-first order)."""
    if tree_height == 0:
        return 0.0
    extra = counts / counts.sum() - reference / reference.sum()
    cumulative = np.concatenate([[0.0], np.cumsum(extra)])
    total = 0.0
    for children, h in nodes:
        sums = np.array([cumulative[hi + 1] - cumulative[lo] for lo, hi in children])
        total += h / tree_height * min(sums[sums > 0].sum(), -sums[sums < 0].sum())
    return float(total)


@dataclass
class PrivacyModels:
    """The requested models; ``accepts`` checks one class."""

    k: int
    l: Optional[float] = None
    l_kind: str = "distinct"
    c: Optional[float] = None
    t: Optional[float] = None
    ordered: bool = False
    reference: Optional[np.ndarray] = None  # whole-table sensitive counts
    hierarchy: Optional[tuple] = None  # (inner nodes, height) for hierarchical t-closeness

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or int(self.k) != self.k or self.k < 1:
            raise InvalidParameterError(f"k must be an integer >= 1, got {self.k!r}.")
        if self.l is not None and not self.l >= 1:
            raise InvalidParameterError(f"l must be >= 1, got {self.l!r}.")
        if self.l_kind not in ("distinct", "entropy", "recursive"):
            raise InvalidParameterError(
                f"l_kind must be 'distinct', 'entropy' or 'recursive', got {self.l_kind!r}.")
        if self.l_kind == "recursive" and self.l is not None and not (self.c and self.c > 0):
            raise InvalidParameterError("Recursive (c, l)-diversity needs c > 0.")
        if self.t is not None and not 0 <= self.t <= 1:
            raise InvalidParameterError(f"t must lie in [0, 1], got {self.t!r}.")

    def distance(self, counts: np.ndarray) -> float:
        if self.hierarchy is not None:
            return hierarchical_emd(counts, self.reference, *self.hierarchy)
        return emd(counts, self.reference, self.ordered)

    @property
    def needs_sensitive(self) -> bool:
        return self.l is not None or self.t is not None

    def accepts(self, size: int, counts: Optional[np.ndarray]) -> bool:
        if size < self.k:
            return False
        if self.l is not None:
            if self.l_kind == "distinct" and np.count_nonzero(counts) < self.l:
                return False
            if self.l_kind == "entropy" and entropy_l(counts) < self.l * (1 - 1e-12):
                return False
            if self.l_kind == "recursive" and not recursive_ok(counts, self.c, int(self.l)):
                return False
        if self.t is not None and self.distance(counts) > self.t + 1e-12:
            return False
        return True
