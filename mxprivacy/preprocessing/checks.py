"""Checkers that measure an (anonymized) table directly, independent of the anonymizer.

Equivalence classes are the groups of rows with equal quasi-identifier values (missing
values form their own group). Each checker returns the value it achieves, so a test
can compare it with what was requested.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ..errors import InvalidParameterError
from .models import emd, entropy_l, recursive_l

__all__ = ["check_k_anonymity", "check_l_diversity", "check_t_closeness"]


def _groups(frame: pd.DataFrame, quasi_identifiers: Sequence[str]):
    missing = [q for q in quasi_identifiers if q not in frame.columns]
    if missing:
        raise InvalidParameterError(f"Quasi-identifiers {missing} not found.")
    keys = frame[list(quasi_identifiers)].astype(object).where(frame[list(quasi_identifiers)]
                                                               .notna(), "\0missing")
    return keys.astype(str).agg("\x1f".join, axis=1)


def _sensitive_codes(frame: pd.DataFrame, sensitive: str):
    if sensitive not in frame.columns:
        raise InvalidParameterError(f"Sensitive column {sensitive!r} not found.")
    values = frame[sensitive]
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    labels = values.astype(object).where(values.notna(), "\0missing")
    domain = sorted(labels.unique(), key=lambda v: (isinstance(v, str), v)) if numeric \
        else sorted(labels.astype(str).unique())
    index = {v: i for i, v in enumerate(domain)}
    codes = (labels if numeric else labels.astype(str)).map(index).to_numpy(np.int64)
    return codes, len(domain), numeric


def _class_counts(frame, quasi_identifiers, sensitive):
    groups = _groups(frame, quasi_identifiers).to_numpy()
    codes, size, numeric = _sensitive_codes(frame, sensitive)
    _, group_ids = np.unique(groups, return_inverse=True)
    counts = np.zeros((group_ids.max() + 1 if group_ids.size else 0, size), dtype=np.int64)
    np.add.at(counts, (group_ids, codes), 1)
    return counts, numeric


def check_k_anonymity(frame: pd.DataFrame, quasi_identifiers: Sequence[str]) -> int:
    """The smallest equivalence class size (0 for an empty table)."""
    if len(frame) == 0:
        return 0
    return int(_groups(frame, quasi_identifiers).value_counts().min())


def check_l_diversity(frame: pd.DataFrame, quasi_identifiers: Sequence[str], sensitive: str,
                      kind: str = "distinct", c: Optional[float] = None) -> float:
    """The l achieved by every class: ``distinct`` (fewest distinct values), ``entropy``
    (smallest exp(entropy)) or ``recursive`` (largest l with (c, l) in every class)."""
    counts, _ = _class_counts(frame, quasi_identifiers, sensitive)
    if counts.shape[0] == 0:
        return 0.0
    if kind == "distinct":
        return float(np.count_nonzero(counts, axis=1).min())
    if kind == "entropy":
        return float(min(entropy_l(row) for row in counts))
    if kind == "recursive":
        if not (c and c > 0):
            raise InvalidParameterError("Recursive l-diversity needs c > 0.")
        return float(min(recursive_l(row, c) for row in counts))
    raise InvalidParameterError(f"kind must be distinct, entropy or recursive, got {kind!r}.")


def check_t_closeness(frame: pd.DataFrame, quasi_identifiers: Sequence[str], sensitive: str,
                      ordered: Optional[bool] = None, hierarchy=None) -> float:
    """The largest EMD between a class and the whole table: the hierarchical distance
    when a ``hierarchy`` is given, else ordered for numeric sensitive values (unless
    ``ordered`` says otherwise) and equal for categorical ones."""
    if hierarchy is not None:
        return _hierarchical_t(frame, quasi_identifiers, sensitive, hierarchy)
    counts, numeric = _class_counts(frame, quasi_identifiers, sensitive)
    if counts.shape[0] == 0:
        return 0.0
    use_ordered = numeric if ordered is None else ordered
    reference = counts.sum(axis=0)
    return float(max(emd(row, reference, use_ordered) for row in counts))


def _hierarchical_t(frame, quasi_identifiers, sensitive, hierarchy) -> float:
    from ._encode import encode_column
    from .models import hierarchical_emd, hierarchy_nodes

    column = encode_column(sensitive, frame[sensitive], hierarchy)
    codes = column.keys.astype(np.int64)
    groups = _groups(frame, quasi_identifiers).to_numpy()
    _, group_ids = np.unique(groups, return_inverse=True)
    counts = np.zeros((group_ids.max() + 1 if group_ids.size else 0, len(column.categories)))
    np.add.at(counts, (group_ids, codes), 1)
    nodes, height = hierarchy_nodes(column.root)
    reference = counts.sum(axis=0)
    return float(max((hierarchical_emd(row, reference, nodes, height) for row in counts),
                     default=0.0))
