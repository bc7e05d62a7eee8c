"""Slices of a membership-inference audit: which members and non-members each slice of a
:class:`~mxprivacy.audit.report.SlicingSpec` holds (re-exported by
:mod:`mxprivacy.audit.membership`). Slices by loss percentile or by correctness are
chosen from the model's outputs and get no epsilon bound
(:attr:`~mxprivacy.audit.report.Slice.depends_on_outputs`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Tuple

import numpy as np

from ..errors import AuditInputError
from .report import Slice, SlicingSpec

if TYPE_CHECKING:
    from .membership import AttackInputData

__all__ = ["SliceMasks", "slice_indices", "full_slicing"]

SIDES = ("train", "test")  # members, non-members: the suffixes of AttackInputData's fields

SliceMasks = Tuple[Slice, np.ndarray, np.ndarray]  # the slice, its members, its non-members


def _need(data: AttackInputData, what: str, labels: bool, predictions: bool) -> None:
    if labels and data.labels_train is None:
        raise AuditInputError(f"Slicing {what} needs labels_train and labels_test.")
    if predictions and data.predictions("train") is None:
        raise AuditInputError(f"Slicing {what} needs logits or probs.")


def _classes(data: AttackInputData, by_class) -> List[int]:
    if isinstance(by_class, (bool, np.bool_)):
        return sorted(set(np.unique(data.labels_train)) | set(np.unique(data.labels_test)))
    chosen = [by_class] if isinstance(by_class, (int, np.integer)) else list(by_class)
    if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in chosen):
        raise AuditInputError(f"by_class must be True or class indices; got {by_class!r}.")
    return [int(c) for c in chosen]


def _percentile_masks(data: AttackInputData, bins: int) -> List[SliceMasks]:
    edges = np.percentile(np.concatenate([data.loss_train, data.loss_test]),
                          np.linspace(0, 100, bins + 1))
    out = []
    for i in range(bins):
        last = i == bins - 1
        inside = (lambda loss: (loss >= edges[i]) & ((loss <= edges[i + 1]) if last
                                                     else (loss < edges[i + 1])))
        out.append((Slice("loss_percentile", (100 * i / bins, 100 * (i + 1) / bins)),
                    inside(data.loss_train), inside(data.loss_test)))
    return out


def slice_indices(data: AttackInputData, spec: Optional[SlicingSpec] = None) -> List[SliceMasks]:
    """``(slice, member mask, non-member mask)`` for every slice ``spec`` asks for."""
    spec = SlicingSpec() if spec is None else spec
    out: List[SliceMasks] = []
    if spec.entire_dataset:
        out.append((Slice(), np.ones(data.n_train, bool), np.ones(data.n_test, bool)))
    if spec.by_class is not False:
        _need(data, "by class", labels=True, predictions=False)
        out += [(Slice("class", c), data.labels_train == c, data.labels_test == c)
                for c in _classes(data, spec.by_class)]
    bins = spec.percentile_bins()
    if bins:
        out += _percentile_masks(data, bins)
    if spec.by_classification_correctness:
        _need(data, "by correctness", labels=True, predictions=True)
        right = [data.predictions(s).argmax(axis=1) == getattr(data, f"labels_{s}")
                 for s in SIDES]
        out += [(Slice("correctly_classified", True), right[0], right[1]),
                (Slice("correctly_classified", False), ~right[0], ~right[1])]
    return out


def full_slicing(data: AttackInputData, bins: int = 4) -> SlicingSpec:
    """Every slicing ``data`` supports: entire, loss bins, and (with labels) by class and
    (with labels and logits or probs) by correctness."""
    labels = data.labels_train is not None
    return SlicingSpec(entire_dataset=True, by_class=labels, by_percentiles=bins,
                       by_classification_correctness=labels and data.predictions("train")
                       is not None)
