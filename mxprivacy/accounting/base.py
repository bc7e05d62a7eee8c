"""The accountant contract shared by every accountant.

``compose`` validates the whole event before it changes any state, and it keeps a
JSON-serializable ledger of what was composed so that checkpoints carry spent privacy.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Dict, List, Tuple, Type

from ..errors import InvalidParameterError, UnsupportedEventError
from .events import DpEvent, event_from_dict

__all__ = ["PrivacyAccountant", "parse_ledger"]


class PrivacyAccountant(abc.ABC):
    """Base class: counts :class:`~mxprivacy.accounting.events.DpEvent` objects.

    Subclasses register a handler per event type in ``_handlers`` (a dict from event
    class to a method name). Dispatch is per type, never an isinstance chain.
    """

    _handlers: Dict[Type[DpEvent], str] = {}
    name: str = "base"

    def __init__(self) -> None:
        self._ledger: List[Tuple[DpEvent, int]] = []

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
        """A new accountant of the same kind and settings, with nothing composed."""
        return type(self)()

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
        """JSON-serializable ledger of everything composed so far."""
        return {"accountant": self.name,
                "ledger": [{"event": e.to_dict(), "count": c} for e, c in self._ledger]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Replace this accountant's history with ``state`` (validated before mutating).

        The state must be exactly what :meth:`state_dict` writes: unknown fields, counts
        that are not integers (``7.5``, ``"7"``, ``true``) and events that do not read
        back identically are refused with :class:`InvalidParameterError`.
        """
        entries = parse_ledger(state)
        for event, _ in entries:
            self._validate(event)
        self._reset()
        self._ledger = []
        for event, count in entries:
            self.compose(event, count)

    def __repr__(self) -> str:
        steps = sum(c for _, c in self._ledger)
        return f"{type(self).__name__}(events={steps})"


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


def parse_ledger(state: Any) -> List[Tuple[DpEvent, int]]:
    """Strictly parse a :meth:`PrivacyAccountant.state_dict` into ``(event, count)`` pairs.

    Raises
    ------
    InvalidParameterError
        On unknown or missing fields, non-integer counts or malformed events.
    """
    if not isinstance(state, dict) or "ledger" not in state:
        raise InvalidParameterError(
            f"A privacy ledger is a dict with a 'ledger' list, got {type(state).__name__}.")
    unknown = sorted(set(state) - {"accountant", "ledger"})
    if unknown:
        raise InvalidParameterError(f"Unknown fields {unknown} in the privacy ledger.")
    if "accountant" in state and not isinstance(state["accountant"], str):
        raise InvalidParameterError("The ledger's 'accountant' must be a name (a string).")
    if not isinstance(state["ledger"], list):
        raise InvalidParameterError("The ledger's 'ledger' must be a list of entries.")
    return [_parse_entry(item) for item in state["ledger"]]
