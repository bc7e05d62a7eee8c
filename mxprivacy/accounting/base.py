"""The accountant contract shared by every accountant.

``compose`` validates the whole event before it changes any state, and it keeps a
JSON-serializable ledger of what was composed so that checkpoints carry spent privacy.

Neighbouring relations
    ``"add_remove"``: the data sets differ by one record added or removed (the default,
    and what Poisson subsampling is accounted under). ``"replace_one"``: the data sets
    have the same size and differ in one record; fixed-size batches drawn without
    replacement are accounted under it. The relation is part of an accountant's settings
    and of its ledger: a ledger written under one relation is refused by an accountant
    of the other.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Dict, List, NoReturn, Tuple, Type

from ..errors import InvalidParameterError, UnsupportedEventError
from .events import DpEvent, GaussianEvent, event_from_dict

__all__ = ["ADD_REMOVE", "NEIGHBORING_RELATIONS", "REPLACE_ONE", "PrivacyAccountant",
           "LedgerTotalMixin",
           "check_neighboring", "ledger_neighboring", "parse_ledger"]

ADD_REMOVE = "add_remove"
REPLACE_ONE = "replace_one"
NEIGHBORING_RELATIONS = (ADD_REMOVE, REPLACE_ONE)


def check_neighboring(neighboring: Any) -> str:
    """``neighboring`` if it names a relation (``"add_remove"`` or ``"replace_one"``)."""
    if not isinstance(neighboring, str) or neighboring not in NEIGHBORING_RELATIONS:
        raise InvalidParameterError(
            f"neighboring must be one of {list(NEIGHBORING_RELATIONS)}, got {neighboring!r}.")
    return neighboring


class PrivacyAccountant(abc.ABC):
    """Base class: counts :class:`~mxprivacy.accounting.events.DpEvent` objects.

    Subclasses register a handler per event type in ``_handlers`` (a dict from event
    class to a method name). Dispatch is per type, never an isinstance chain.

    Attributes
    ----------
    neighboring : str
        ``"add_remove"`` or ``"replace_one"`` (see the module docstring).
    is_upper_bound : bool
        True when every epsilon (and delta) reported is a proven upper bound; False for an
        approximation (:class:`~mxprivacy.accounting.gdp.GDPAccountant`).
    """

    _handlers: Dict[Type[DpEvent], str] = {}
    name: str = "base"
    is_upper_bound: bool = True

    def __init__(self, neighboring: str = ADD_REMOVE) -> None:
        self._neighboring = check_neighboring(neighboring)
        self._ledger: List[Tuple[DpEvent, int]] = []

    @property
    def neighboring(self) -> str:
        """The neighbouring relation (fixed at construction: the ledger depends on it)."""
        return self._neighboring

    # -- validation ---------------------------------------------------------------
    def supports(self, event: DpEvent) -> bool:
        """Whether every part of ``event`` can be counted by this accountant."""
        try:
            self._validate(event)
        except UnsupportedEventError:
            return False
        return True

    def _validate(self, event: DpEvent) -> None:
        if type(event) not in self._handlers:
            raise UnsupportedEventError(
                f"{type(self).__name__} cannot count {type(event).__name__} ({event!r}). "
                f"Supported events: {sorted(t.__name__ for t in self._handlers)}.")
        self._validate_specific(event)
        for child in event.children():
            self._validate(child)

    def _validate_specific(self, event: DpEvent) -> None:
        """Hook for restrictions on how events nest (for example what may be subsampled)."""

    def _refuse(self, event: DpEvent, reason: str) -> NoReturn:
        """Raise :class:`UnsupportedEventError` naming this accountant, its relation and
        the offending (sub-)event."""
        raise UnsupportedEventError(
            f"{self._describe()} cannot count {type(event).__name__} ({event!r}): {reason}")

    def _check_without_replacement(self, event: DpEvent) -> None:
        """Sampling without replacement is counted under replace_one, of a Gaussian only
        (the same rule for every accountant that supports it)."""
        if self.neighboring != REPLACE_ONE:
            self._refuse(event, "sampling without replacement is accounted under the "
                                "replace_one relation only (the data set size is public). "
                                f"Use {type(self).__name__}(neighboring='replace_one').")
        if not isinstance(event.event, GaussianEvent):
            self._refuse(event, "sampling without replacement is supported only of a "
                                f"GaussianEvent, got sub-event {event.event!r}.")

    def _describe(self) -> str:
        return f"{type(self).__name__}(neighboring={self.neighboring!r})"

    # -- composition ----------------------------------------------------------------
    def compose(self, event: DpEvent, count: int = 1) -> "PrivacyAccountant":
        """Add ``count`` repetitions of ``event``; validate everything first.

        Raises
        ------
        UnsupportedEventError
            If any part of ``event`` is not supported; the accountant is unchanged.
        """
        if not isinstance(event, DpEvent):
            raise InvalidParameterError(f"compose takes a DpEvent, got {type(event).__name__}.")
        if isinstance(count, bool) or int(count) != count or count < 0:
            raise InvalidParameterError(f"count must be an integer >= 0, got {count!r}.")
        self._validate(event)
        if count:
            self._apply(event, int(count))
            self._record(event, int(count))
        return self

    def _record(self, event: DpEvent, count: int) -> None:
        if self._ledger and self._ledger[-1][0] == event:
            self._ledger[-1] = (event, self._ledger[-1][1] + count)
        else:
            self._ledger.append((event, count))

    def _apply(self, event: DpEvent, count: int) -> None:
        handler: Callable[[DpEvent, int], None] = getattr(self, self._handlers[type(event)])
        handler(event, count)

    def empty_like(self) -> "PrivacyAccountant":
        """A new accountant of the same kind and settings (including ``neighboring``),
        with nothing composed."""
        return type(self)(neighboring=self.neighboring)

    @abc.abstractmethod
    def _reset(self) -> None:
        """Forget all composed events (the ledger is handled by the base class)."""

    # -- queries -------------------------------------------------------------------
    @abc.abstractmethod
    def get_epsilon(self, delta: float) -> float:
        """Smallest epsilon this accountant can certify at ``delta``."""

    @abc.abstractmethod
    def get_delta(self, epsilon: float) -> float:
        """Smallest delta this accountant can certify at ``epsilon``."""

    @property
    def ledger(self) -> List[Tuple[DpEvent, int]]:
        """A copy of the composed history as ``(event, count)`` pairs."""
        return list(self._ledger)

    # -- persistence ---------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """JSON-serializable ledger of everything composed so far.

        A ``"neighboring"`` field is written when the relation is ``"replace_one"``; a
        ledger without it was counted under ``"add_remove"`` (as every ledger written
        before the field existed).
        """
        state: Dict[str, Any] = {"accountant": self.name}
        if self.neighboring != ADD_REMOVE:
            state["neighboring"] = self.neighboring
        state["ledger"] = [{"event": e.to_dict(), "count": c} for e, c in self._ledger]
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Replace this accountant's history with ``state`` (validated before mutating).

        The state must be exactly what :meth:`state_dict` writes: unknown fields, counts
        that are not integers (``7.5``, ``"7"``, ``true``), events that do not read
        back identically and a ledger of the other neighbouring relation are refused
        with :class:`InvalidParameterError`.
        """
        entries = parse_ledger(state, neighboring=self.neighboring)
        for event, _ in entries:
            self._validate(event)
        self._reset()
        self._ledger = []
        for event, count in entries:
            self.compose(event, count)

    def __repr__(self) -> str:
        steps = sum(c for _, c in self._ledger)
        relation = "" if self.neighboring == ADD_REMOVE else f", neighboring={self.neighboring!r}"
        return f"{type(self).__name__}(events={steps}{relation})"


def _same(first: Any, second: Any) -> bool:
    """JSON equality that also tells booleans from numbers (``true`` is not ``1.0``)."""
    if isinstance(first, bool) or isinstance(second, bool):
        return type(first) is type(second) and first == second
    if isinstance(first, dict) and isinstance(second, dict):
        return first.keys() == second.keys() and all(_same(first[k], second[k]) for k in first)
    if isinstance(first, (list, tuple)) and isinstance(second, (list, tuple)):
        return len(first) == len(second) and all(_same(a, b) for a, b in zip(first, second))
    if isinstance(first, (int, float)) and isinstance(second, (int, float)):
        return first == second
    return type(first) is type(second) and first == second


def _parse_entry(item: Any) -> Tuple[DpEvent, int]:
    if not isinstance(item, dict) or set(item) != {"event", "count"}:
        raise InvalidParameterError(
            f"Each ledger entry must be {{'event': ..., 'count': ...}}, got {item!r}.")
    count = item["count"]
    if type(count) is not int or count < 0:
        raise InvalidParameterError(
            f"A ledger count must be an integer >= 0, got {count!r}.")
    data = item["event"]
    if not isinstance(data, dict):
        raise InvalidParameterError(f"A ledger event must be a dict, got {data!r}.")
    try:
        event = event_from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidParameterError(f"Malformed ledger event {data!r}: {exc!r}.") from exc
    if not _same(event.to_dict(), data):
        raise InvalidParameterError(
            f"Ledger event {data!r} has unknown fields or values of the wrong type (it "
            f"reads back as {event.to_dict()!r}).")
    return event, count


def ledger_neighboring(state: Dict[str, Any]) -> str:
    """The neighbouring relation a ledger was counted under (``"add_remove"`` if absent)."""
    if "neighboring" not in state:
        return ADD_REMOVE
    relation = state["neighboring"]
    if not isinstance(relation, str) or relation not in NEIGHBORING_RELATIONS:
        raise InvalidParameterError(
            f"The ledger's 'neighboring' must be one of {list(NEIGHBORING_RELATIONS)}, "
            f"got {relation!r}.")
    return relation


def parse_ledger(state: Any, neighboring: str = ADD_REMOVE) -> List[Tuple[DpEvent, int]]:
    """Strictly parse a :meth:`PrivacyAccountant.state_dict` into ``(event, count)`` pairs.

    Parameters
    ----------
    state : dict
        What :meth:`PrivacyAccountant.state_dict` wrote.
    neighboring : str, default "add_remove"
        The relation of the accountant that will count the entries (its
        ``neighboring`` attribute). A ledger counted under another relation is refused:
        its events would mean a different guarantee.

    Raises
    ------
    InvalidParameterError
        On unknown or missing fields, non-integer counts, malformed events or a ledger of
        another neighbouring relation.
    """
    neighboring = check_neighboring(neighboring)
    if not isinstance(state, dict) or "ledger" not in state:
        raise InvalidParameterError(
            f"A privacy ledger is a dict with a 'ledger' list, got {type(state).__name__}.")
    unknown = sorted(set(state) - {"accountant", "neighboring", "ledger"})
    if unknown:
        raise InvalidParameterError(f"Unknown fields {unknown} in the privacy ledger.")
    if "accountant" in state and not isinstance(state["accountant"], str):
        raise InvalidParameterError("The ledger's 'accountant' must be a name (a string).")
    relation = ledger_neighboring(state)
    if relation != neighboring:
        raise InvalidParameterError(
            f"This ledger was counted under the {relation!r} relation, but the accountant "
            f"reading it uses {neighboring!r}. Build the accountant with "
            f"neighboring={relation!r} to resume it.")
    if not isinstance(state["ledger"], list):
        raise InvalidParameterError("The ledger's 'ledger' must be a list of entries.")
    return [_parse_entry(item) for item in state["ledger"]]


class LedgerTotalMixin:
    """For accountants whose state is a sum of per-event terms (an RDP curve, a GDP mu^2).

    The total is kept a function of the merged ledger alone: the sum of the closed
    entries plus ``count x term`` of the last. A run composed step by step and the same
    ledger loaded from a checkpoint then give bit-identical epsilons; adding a term n
    times and multiplying it by n differ in the last bits, which made a reloaded ledger
    1 ulp cheaper than the live one. Subclasses name the total in ``_total_attr`` and
    give ``_zero_total()``; their handlers add ``count x term`` to it.
    """

    _total_attr = ""

    def _zero_total(self):
        raise NotImplementedError

    def _reset_total(self) -> None:
        setattr(self, self._total_attr, self._zero_total())
        self._closed = self._zero_total()

    def _record(self, event: DpEvent, count: int) -> None:
        if self._ledger and self._ledger[-1][0] != event:
            last, last_count = self._ledger[-1]
            self._closed = self._closed + last_count * self._term(last)
        super()._record(event, count)
        last, last_count = self._ledger[-1]
        setattr(self, self._total_attr, self._closed + last_count * self._term(last))

    def _term(self, event: DpEvent):
        """What one ``event`` adds to the total."""
        total = getattr(self, self._total_attr)
        setattr(self, self._total_attr, self._zero_total())
        try:
            self._apply(event, 1)
            return getattr(self, self._total_attr)
        finally:
            setattr(self, self._total_attr, total)
