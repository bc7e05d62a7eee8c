"""The rule that keeps spent privacy from ever decreasing when a ledger is loaded.

A ledger is a run-length list of ``(event, count)`` pairs. Loading a saved ledger into an
object that already has one keeps:

- the current ledger, when the loaded one is a prefix of it (an older checkpoint of the
  same run: the weights already carry the later steps);
- the loaded ledger, when the current one is a prefix of it (the usual resume);
- otherwise both, composed one after the other (divergent histories). Sequential
  composition is a valid upper bound on their joint privacy loss; a
  :class:`~mxprivacy.PrivacyWarning` says so.

Equal event sequences cannot tell one run from two identical runs. A caller that knows
the lineage of both ledgers passes ``same_run=False`` for ledgers of different runs: a
non-empty current ledger is then always composed with the loaded one. (Two processes
that resume from the same checkpoint are still one lineage; nothing local can see that
the other exists.)
"""
from __future__ import annotations

import warnings
from typing import List, Sequence, Tuple

from .errors import PrivacyWarning

__all__ = ["normalize", "is_prefix", "merge_ledgers", "KEEP", "TAKE", "COMPOSE"]

KEEP, TAKE, COMPOSE = "keep", "take", "compose"


def normalize(ledger: Sequence[Tuple[object, int]]) -> List[Tuple[object, int]]:
    """Drop zero counts and merge equal neighbours, so equal histories compare equal."""
    out: List[Tuple[object, int]] = []
    for event, count in ledger:
        if not count:
            continue
        if out and out[-1][0] == event:
            out[-1] = (event, out[-1][1] + count)
        else:
            out.append((event, count))
    return out


def is_prefix(first, second) -> bool:
    """Whether the expanded event sequence of ``first`` is a prefix of ``second``'s."""
    first, second = normalize(first), normalize(second)
    if len(first) > len(second):
        return False
    for position, (event, count) in enumerate(first):
        other_event, other_count = second[position]
        if event != other_event:
            return False
        last = position == len(first) - 1
        if count > other_count or (count != other_count and not last):
            return False
    return True


def merge_ledgers(current, loaded, what: str = "ledger",
                  same_run: bool = True) -> Tuple[str, list]:
    """``(decision, ledger)`` by the rule of this module; warns when it composes."""
    if not normalize(current):
        return TAKE, normalize(loaded)
    if not same_run:
        warnings.warn(
            f"The loaded {what} comes from another run (lineage) than the current one, "
            "which has already spent privacy. Both histories are composed (a valid upper "
            "bound), and that is what is reported from now on.", PrivacyWarning, stacklevel=3)
        return COMPOSE, normalize(list(current) + list(loaded))
    if is_prefix(loaded, current):
        return KEEP, normalize(current)
    if is_prefix(current, loaded):
        return TAKE, normalize(loaded)
    warnings.warn(
        f"The loaded {what} and the current one are different histories (neither is a "
        "prefix of the other), for example a checkpoint of another run or settings. Both "
        "are kept and composed one after the other: a valid upper bound on the privacy "
        "spent, which is what is reported from now on.", PrivacyWarning, stacklevel=3)
    return COMPOSE, normalize(list(current) + list(loaded))
