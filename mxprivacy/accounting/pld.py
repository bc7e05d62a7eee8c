"""Privacy loss distribution (PLD) accounting: tight epsilon by numerical composition.

Each event becomes a pair of discrete privacy loss distributions, one per neighbouring
direction: *remove* (the mixture ``(1-q) N(0, s^2) + q N(1, s^2)`` against
``N(0, s^2)``) and *add* (the reverse). Epsilon at a given delta is the larger of the
two. A pair that is its own mirror image (the plain Gaussian, replace-one pairs) keeps
a single distribution.

Discretization is the *connect-the-dots* algorithm of Doroshenko, Ghazi, Kamath, Kumar &
Manurangsi (2022). The probability mass of the loss in each grid cell ``(a, b]`` is split
between ``a`` and ``b``, and the split keeps both its P-mass and its Q-mass. The discrete
hockey-stick curve then equals the true one at every grid point and is linear in
``e^eps`` between them. The true curve is convex in ``e^eps``, so the discrete one lies
above it everywhere: the discrete pair dominates the mechanism, and domination survives
composition. Tails are handled pessimistically, as described in :mod:`._pmf`.
Composition uses FFTs. The pairs of every mechanism are built in :mod:`._pld_pairs`.

The result is pessimistic: the epsilon reported here is never below the true epsilon of
the composed mechanism, apart from floating-point round-off of about 1e-15 in delta.

Neighbouring relations
    ``"add_remove"``: Gaussian, Laplace, (epsilon, delta) events, and Poisson
    subsampling of a Gaussian or a Laplace event. ``"replace_one"``: a record of norm <= C
    replaced by another changes a sum by up to 2C, so a Gaussian or Laplace event's noise
    multiplier (noise / C) is applied to sensitivity 2C (dp_accounting's PLDAccountant
    reads ``GaussianDpEvent`` the same way); Poisson subsampling of a Gaussian uses the
    mixture-against-mixture pair of dp_accounting; sampling without replacement of a
    Gaussian uses the symmetrized pair of :func:`._pld_pairs.wor_gaussian_pair`. Poisson
    subsampling of a Laplace event under replace-one and sampling without replacement
    under add/remove are refused, as in dp_accounting.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

from ..errors import InvalidParameterError
from ._pld_pairs import (PLDPair, epsilon_delta_pair, gaussian_pair, identity, laplace_pair,
                         replace_gaussian_pair, wor_gaussian_pair)
from ._pmf import WindowTooLarge
from .base import ADD_REMOVE, REPLACE_ONE, PrivacyAccountant
from .events import (ComposedEvent, DpEvent, EpsilonDeltaEvent, GaussianEvent, LaplaceEvent,
                     PoissonSampledEvent, SampledWithoutReplacementEvent, SelfComposedEvent)

__all__ = ["PLDAccountant", "PLDPair"]

_COARSEST = 0.1


class PLDAccountant(PrivacyAccountant):
    """Tight accounting with privacy loss distributions (connect-the-dots, FFT).

    Parameters
    ----------
    value_discretization_interval : float, default 1e-4
        Grid step of the privacy loss. A smaller step is tighter and slower. Every
        step size gives a valid upper bound.
    neighboring : {"add_remove", "replace_one"}, default "add_remove"
        The neighbouring relation (see the module docstring).

    Notes
    -----
    Composition is lazy: events are kept in the ledger, and the composed distribution
    is computed once per distinct ledger, when epsilon or delta is queried.
    """

    name = "pld"
    _handlers = {
        GaussianEvent: "_pair_gaussian",
        LaplaceEvent: "_pair_laplace",
        EpsilonDeltaEvent: "_pair_epsilon_delta",
        PoissonSampledEvent: "_pair_poisson",
        SampledWithoutReplacementEvent: "_pair_without_replacement",
        SelfComposedEvent: "_pair_self_composed",
        ComposedEvent: "_pair_composed",
    }

    def __init__(self, *, value_discretization_interval: float = 1e-4,
                 neighboring: str = ADD_REMOVE) -> None:
        super().__init__(neighboring)
        interval = float(value_discretization_interval)
        if not (math.isfinite(interval) and 0 < interval <= 0.1):
            raise InvalidParameterError(
                f"value_discretization_interval must lie in (0, 0.1], got {interval!r}.")
        self.interval = interval
        self._active_interval = interval
        self._cache: Dict[tuple, Optional[PLDPair]] = {}
        # noise / sensitivity = noise_multiplier / 2 under replace-one
        self._sensitivity = 2.0 if self.neighboring == REPLACE_ONE else 1.0

    def _validate_specific(self, event: DpEvent) -> None:
        if isinstance(event, PoissonSampledEvent):
            if isinstance(event.event, LaplaceEvent) and self.neighboring != ADD_REMOVE:
                self._refuse(event, "Poisson subsampling of a LaplaceEvent is accounted "
                                    "under the add_remove relation only (as in "
                                    "dp_accounting). Use neighboring='add_remove'.")
            if not isinstance(event.event, (GaussianEvent, LaplaceEvent)):
                self._refuse(event, "Poisson subsampling is supported only of a GaussianEvent "
                                    f"or a LaplaceEvent, got sub-event {event.event!r}.")
        if isinstance(event, SampledWithoutReplacementEvent):
            self._check_without_replacement(event)

    def _apply(self, event: DpEvent, count: int) -> None:
        self._cache.clear()  # composition is lazy; see _composed

    def _reset(self) -> None:
        self._cache.clear()

    def empty_like(self) -> "PLDAccountant":
        return PLDAccountant(value_discretization_interval=self.interval,
                             neighboring=self.neighboring)

    # -- one PLD pair per (event, count); composition is commutative -----------------
    def _pair(self, event: DpEvent, count: int) -> PLDPair:
        return getattr(self, self._handlers[type(event)])(event, count)

    def _pair_gaussian(self, event: GaussianEvent, count: int) -> PLDPair:
        sigma = event.noise_multiplier / self._sensitivity
        return gaussian_pair(1.0, sigma, self._active_interval).self_compose(count)

    def _pair_laplace(self, event: LaplaceEvent, count: int) -> PLDPair:
        scale = event.noise_multiplier / self._sensitivity
        return laplace_pair(1.0, scale, self._active_interval).self_compose(count)

    def _pair_poisson(self, event: PoissonSampledEvent, count: int) -> PLDPair:
        q, noise = event.sample_rate, event.event.noise_multiplier
        if q == 0.0:
            return identity(self._active_interval)
        if isinstance(event.event, LaplaceEvent):
            pair = laplace_pair(q, noise, self._active_interval)
        elif self.neighboring == REPLACE_ONE:
            pair = replace_gaussian_pair(q, noise, self._active_interval)
        else:
            pair = gaussian_pair(q, noise, self._active_interval)
        return pair.self_compose(count)

    def _pair_without_replacement(self, event: SampledWithoutReplacementEvent,
                                  count: int) -> PLDPair:
        if event.sample_size == 0:
            return identity(self._active_interval)
        pair = wor_gaussian_pair(event.sample_rate, event.event.noise_multiplier,
                                 self._active_interval)
        return pair.self_compose(count)

    def _pair_epsilon_delta(self, event: EpsilonDeltaEvent, count: int) -> PLDPair:
        return epsilon_delta_pair(event.epsilon, event.delta,
                                  self._active_interval).self_compose(count)

    def _pair_self_composed(self, event: SelfComposedEvent, count: int) -> PLDPair:
        if event.count == 0:
            return identity(self._active_interval)
        return self._pair(event.event, count * event.count)

    def _pair_composed(self, event: ComposedEvent, count: int) -> PLDPair:
        result = identity(self._active_interval)
        for sub in event.events:
            result = result.compose(self._pair(sub, count))
        return result

    def _composed(self) -> Optional[PLDPair]:
        """The composed PLD pair of the ledger (None when empty), cached per ledger.

        If the composition needs more grid points than fit in memory (epsilon in the
        hundreds), the grid is coarsened; a coarser grid is still pessimistic.
        """
        key = tuple(self._ledger)
        if key not in self._cache:
            interval = self.interval
            while True:
                try:
                    result = self._compose_ledger(interval)
                    break
                except WindowTooLarge:
                    if interval >= _COARSEST:
                        raise InvalidParameterError(
                            "This history is beyond what PLD accounting resolves (epsilon "
                            "in the thousands or more); use the RDP accountant.") from None
                    interval = min(_COARSEST, interval * 4)
            self._cache = {key: result}
        return self._cache[key]

    def _compose_ledger(self, interval: float) -> Optional[PLDPair]:
        saved, self._active_interval = self._active_interval, interval
        try:
            result: Optional[PLDPair] = None
            for event, count in self._ledger:
                pair = self._pair(event, count)
                result = pair if result is None else result.compose(pair)
            return result
        finally:
            self._active_interval = saved

    # -- queries -------------------------------------------------------------------
    def get_epsilon(self, delta: float) -> float:
        _check_delta(delta)
        pair = self._composed()
        return 0.0 if pair is None else pair.get_epsilon(float(delta))

    def get_delta(self, epsilon: float) -> float:
        if not epsilon >= 0:
            raise InvalidParameterError(f"epsilon must be >= 0, got {epsilon!r}.")
        pair = self._composed()
        return 0.0 if pair is None else pair.get_delta(float(epsilon))


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise InvalidParameterError(f"delta must lie in (0, 1), got {delta!r}.")
