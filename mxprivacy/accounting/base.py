"""The accountant contract shared by every accountant.

``compose`` validates the whole event before it changes any state, and it keeps a
JSON-serializable ledger of what was composed so that checkpoints carry spent privacy.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Dict, List, Tuple, Type

from ..errors import InvalidParameterError, UnsupportedEventError
from .events import DpEvent, event_from_dict

__all__ = ["PrivacyAccountant"]


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
        """Replace this accountant's history with ``state`` (validated before mutating)."""
        try:
            entries = [(event_from_dict(item["event"]), int(item["count"]))
                       for item in state["ledger"]]
        except (KeyError, TypeError) as exc:
            raise InvalidParameterError(f"Malformed privacy ledger: {exc!r}.") from exc
        for event, _ in entries:
            self._validate(event)
        self._reset()
        self._ledger = []
        for event, count in entries:
            self.compose(event, count)

    def __repr__(self) -> str:
        steps = sum(c for _, c in self._ledger)
        return f"{type(self).__name__}(events={steps})"
