"""Immutable privacy events: what happened, kept apart from the accountants that count it.

Events serialize to plain JSON-compatible dicts (`to_dict` / `event_from_dict`) so a
privacy ledger can travel inside a checkpoint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Tuple

from ..errors import InvalidParameterError

__all__ = [
    "DpEvent",
    "GaussianEvent",
    "LaplaceEvent",
    "EpsilonDeltaEvent",
    "PoissonSampledEvent",
    "SampledWithoutReplacementEvent",
    "SelfComposedEvent",
    "ComposedEvent",
    "event_from_dict",
]


class DpEvent:
    """Base class of privacy events."""

    def to_dict(self) -> Dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def children(self) -> Tuple["DpEvent", ...]:
        """Sub-events, for validation walks."""
        return ()


def _check_count(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (booleans and fractional numbers are refused)."""
    try:
        whole = not isinstance(value, bool) and int(value) == value
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole or value < minimum:
        raise InvalidParameterError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_finite_nonneg(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise InvalidParameterError(f"{name} must be a finite number >= 0, got {value!r}.")
    return value


@dataclass(frozen=True)
class GaussianEvent(DpEvent):
    """The Gaussian mechanism with noise std = ``noise_multiplier`` x C.

    C bounds the L2 norm of each record's contribution (the clipping bound of DP-SGD), so
    C is the sensitivity under the add/remove relation. Under the replace-one relation a
    sum's sensitivity is 2C; the accountants apply that factor themselves, so the same
    ``noise_multiplier`` describes the same noise under both relations (as dp_accounting's
    ``GaussianDpEvent`` and its ``PLDAccountant`` read it).
    """

    noise_multiplier: float

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "noise_multiplier", _check_finite_nonneg("noise_multiplier", self.noise_multiplier)
        )

    def to_dict(self) -> Dict[str, Any]:
        return {"type": "gaussian", "noise_multiplier": self.noise_multiplier}


@dataclass(frozen=True)
class LaplaceEvent(DpEvent):
    """The Laplace mechanism with scale b = ``noise_multiplier`` x C, C the L1 bound of a
    record's contribution (the sensitivity is C under add/remove, 2C under replace-one)."""

    noise_multiplier: float

    def __post_init__(self) -> None:
        value = _check_finite_nonneg("noise_multiplier", self.noise_multiplier)
        object.__setattr__(self, "noise_multiplier", value)

    def to_dict(self) -> Dict[str, Any]:
        return {"type": "laplace", "noise_multiplier": self.noise_multiplier}


@dataclass(frozen=True)
class EpsilonDeltaEvent(DpEvent):
    """Any (epsilon, delta)-DP mechanism, for example the exponential mechanism (delta 0)."""

    epsilon: float
    delta: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", _check_finite_nonneg("epsilon", self.epsilon))
        delta = float(self.delta)
        if not 0.0 <= delta < 1.0:
            raise InvalidParameterError(f"delta must lie in [0, 1), got {delta!r}.")
        object.__setattr__(self, "delta", delta)

    def to_dict(self) -> Dict[str, Any]:
        return {"type": "epsilon_delta", "epsilon": self.epsilon, "delta": self.delta}


@dataclass(frozen=True)
class PoissonSampledEvent(DpEvent):
    """``event`` applied to a Poisson subsample: each record is in with prob. ``sample_rate``."""

    sample_rate: float
    event: DpEvent

    def __post_init__(self) -> None:
        q = float(self.sample_rate)
        if not (0.0 <= q <= 1.0) or math.isnan(q):
            raise InvalidParameterError(f"sample_rate must lie in [0, 1], got {q!r}.")
        if not isinstance(self.event, DpEvent):
            raise InvalidParameterError(f"event must be a DpEvent, got {type(self.event).__name__}.")
        object.__setattr__(self, "sample_rate", q)

    def children(self) -> Tuple[DpEvent, ...]:
        return (self.event,)

    def to_dict(self) -> Dict[str, Any]:
        return {"type": "poisson_sampled", "sample_rate": self.sample_rate,
                "event": self.event.to_dict()}


@dataclass(frozen=True)
class SampledWithoutReplacementEvent(DpEvent):
    """``event`` applied to ``sample_size`` records drawn uniformly without replacement
    from ``dataset_size`` records (a fixed-size batch, drawn afresh at every step).

    The size of the data set is public, so this event is accounted under the replace-one
    relation only (an accountant built with ``neighboring="replace_one"``).
    """

    dataset_size: int
    sample_size: int
    event: DpEvent

    def __post_init__(self) -> None:
        size = _check_count("dataset_size", self.dataset_size, 1)
        sample = _check_count("sample_size", self.sample_size, 0)
        if sample > size:
            raise InvalidParameterError(
                f"sample_size ({sample}) cannot exceed dataset_size ({size}).")
        if not isinstance(self.event, DpEvent):
            raise InvalidParameterError(f"event must be a DpEvent, got {type(self.event).__name__}.")
        object.__setattr__(self, "dataset_size", size)
        object.__setattr__(self, "sample_size", sample)

    @property
    def sample_rate(self) -> float:
        """The probability that a given record is in the sample, ``sample_size / dataset_size``."""
        return self.sample_size / self.dataset_size

    def children(self) -> Tuple[DpEvent, ...]:
        return (self.event,)

    def to_dict(self) -> Dict[str, Any]:
        return {"type": "sampled_without_replacement", "dataset_size": self.dataset_size,
                "sample_size": self.sample_size, "event": self.event.to_dict()}


@dataclass(frozen=True)
class SelfComposedEvent(DpEvent):
    """``event`` repeated ``count`` times."""

    event: DpEvent
    count: int

    def __post_init__(self) -> None:
        count = _check_count("count", self.count, 0)
        if not isinstance(self.event, DpEvent):
            raise InvalidParameterError(f"event must be a DpEvent, got {type(self.event).__name__}.")
        object.__setattr__(self, "count", count)

    def children(self) -> Tuple[DpEvent, ...]:
        return (self.event,)

    def to_dict(self) -> Dict[str, Any]:
        return {"type": "self_composed", "count": self.count, "event": self.event.to_dict()}


@dataclass(frozen=True)
class ComposedEvent(DpEvent):
    """Several events, one after the other."""

    events: Tuple[DpEvent, ...]

    def __post_init__(self) -> None:
        events = tuple(self.events)
        for event in events:
            if not isinstance(event, DpEvent):
                raise InvalidParameterError(
                    f"ComposedEvent takes DpEvents, got {type(event).__name__}.")
        object.__setattr__(self, "events", events)

    def children(self) -> Tuple[DpEvent, ...]:
        return self.events

    def to_dict(self) -> Dict[str, Any]:
        return {"type": "composed", "events": [e.to_dict() for e in self.events]}


def event_from_dict(data: Dict[str, Any]) -> DpEvent:
    """Rebuild an event from :meth:`DpEvent.to_dict` output."""
    kind = data.get("type")
    if kind == "gaussian":
        return GaussianEvent(data["noise_multiplier"])
    if kind == "laplace":
        return LaplaceEvent(data["noise_multiplier"])
    if kind == "epsilon_delta":
        return EpsilonDeltaEvent(data["epsilon"], data["delta"])
    if kind == "poisson_sampled":
        return PoissonSampledEvent(data["sample_rate"], event_from_dict(data["event"]))
    if kind == "sampled_without_replacement":
        return SampledWithoutReplacementEvent(data["dataset_size"], data["sample_size"],
                                              event_from_dict(data["event"]))
    if kind == "self_composed":
        return SelfComposedEvent(event_from_dict(data["event"]), data["count"])
    if kind == "composed":
        return ComposedEvent(tuple(event_from_dict(e) for e in data["events"]))
    raise InvalidParameterError(f"Unknown privacy event type {kind!r} in ledger.")
