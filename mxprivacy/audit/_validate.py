"""Checks shared by every auditing entry point: scores, significance and delta.

Each check returns the cleaned value or raises ``AuditInputError`` with a message that
says what to give instead.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import AuditInputError

__all__ = ["scores", "same_length", "significance", "delta", "fraction"]


def scores(name: str, values, *, allow_empty: bool = False) -> np.ndarray:
    """``values`` as a 1-D float64 array of finite numbers."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise AuditInputError(f"{name} must be numbers; got {type(values).__name__}.") from None
    if array.ndim != 1:
        array = array.reshape(-1) if array.ndim == 0 or array.size == max(array.shape) else array
    if array.ndim != 1:
        raise AuditInputError(
            f"{name} must be one score per example (1-D); got shape {array.shape}.")
    if array.size == 0 and not allow_empty:
        raise AuditInputError(f"{name} is empty: give at least one score.")
    bad = ~np.isfinite(array)
    if bad.any():
        raise AuditInputError(
            f"{name} has {int(bad.sum())} non-finite value(s) (first at index "
            f"{int(np.argmax(bad))}); drop those examples or fix the scoring (a loss of inf "
            "usually means a probability of 0: clip probabilities before the log).")
    return array


def same_length(**arrays) -> int:
    """The common first dimension of the named arrays, or an error naming them."""
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise AuditInputError(f"These must have one entry per example, but lengths differ: {shown}.")
    return next(iter(lengths.values()))


def _open_unit(name: str, value, hint: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AuditInputError(f"{name} must be a number in (0, 1); got {value!r}. {hint}") from None
    if not (math.isfinite(number) and 0.0 < number < 1.0):
        raise AuditInputError(f"{name} must be in (0, 1); got {value!r}. {hint}")
    return number


def significance(value) -> float:
    """A significance level in (0, 1): the probability that a bound is wrong."""
    return _open_unit("significance", value, "Use 0.05 for 95 % confidence.")


def delta(value, *, allow_zero: bool = True) -> float:
    """A DP delta in [0, 1) (or (0, 1) with ``allow_zero=False``)."""
    if allow_zero:
        try:
            if float(value) == 0.0:
                return 0.0
        except (TypeError, ValueError):
            pass
    return _open_unit("delta", value, "Use the delta the accountant reports, e.g. 1e-5.")


def fraction(name: str, value) -> float:
    """A rate in (0, 1), such as a false-positive rate or a split fraction."""
    return _open_unit(name, value, "")
