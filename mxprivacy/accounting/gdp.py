"""Gaussian differential privacy (GDP) by the central limit theorem: an approximation.

A mechanism is mu-GDP when telling neighbouring data sets apart from its output is no
easier than telling N(0, 1) from N(mu, 1) (Dong, Roth & Su 2022). The plain Gaussian
mechanism is exactly (sensitivity / noise)-GDP, and mu-GDP mechanisms compose to
``sqrt(sum mu_i^2)``-GDP. A *subsampled* Gaussian step is not GDP; the central limit
theorem says that many of them, at a small sampling rate q, approach mu-GDP with

- Poisson subsampling, add/remove (Bu, Dong, Long & Su 2020; Opacus' "gdp"
  accountant): ``mu^2 = steps q^2 (e^{1/s^2} - 1)``;
- sampling without replacement, replace-one (Dong, Roth & Su 2022, Corollary 5.4 for
  ``C_q(G_{mu0})``): ``mu^2 = 2 steps q^2 (e^{mu0^2} Phi(1.5 mu0) + 3 Phi(-mu0/2) - 2)``
  with ``mu0 = 2 / s``, the sensitivity 2C of a replaced record over the noise s C.

**This is an approximation, not a guarantee**: the limit is approached from either side,
and for realistic step counts the epsilon it gives can be *below* the true epsilon
(Opacus issue #643: 1.83 against 2.16 from RDP for one run; Gopi, Lee & Wutschitz
2021). :attr:`GDPAccountant.is_upper_bound` is False. Use it to compare with Opacus or
published GDP numbers; certify with :class:`~.rdp.RDPAccountant` or
:class:`~.pld.PLDAccountant`.
"""
from __future__ import annotations

import math

from scipy import optimize, special

from ..errors import InvalidParameterError
from .base import ADD_REMOVE, REPLACE_ONE, LedgerTotalMixin, PrivacyAccountant
from .events import (ComposedEvent, DpEvent, GaussianEvent, PoissonSampledEvent,
                     SampledWithoutReplacementEvent, SelfComposedEvent)

__all__ = ["GDPAccountant", "gdp_delta", "gdp_epsilon"]

_MU_ZERO_CEILING = 37.0  # e^{mu0^2} overflows beyond ~26.6; mu0 = 37 is already mu = inf here


def gdp_delta(mu: float, epsilon: float) -> float:
    """delta(epsilon) of mu-GDP: ``Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)``."""
    if mu == 0.0:
        return 0.0
    if math.isinf(mu):
        return 1.0
    first = special.log_ndtr(-epsilon / mu + mu / 2)
    second = epsilon + special.log_ndtr(-epsilon / mu - mu / 2)
    if second >= first:
        return 0.0
    return float(max(0.0, math.exp(first) * -math.expm1(second - first)))


def gdp_epsilon(mu: float, delta: float) -> float:
    """Smallest epsilon >= 0 with ``gdp_delta(mu, epsilon) <= delta``."""
    if mu == 0.0 or gdp_delta(mu, 0.0) <= delta:
        return 0.0
    if math.isinf(mu):
        return math.inf
    high = mu * mu / 2 + mu * (3.0 - special.ndtri(delta)) + 1.0  # delta(high) < delta
    while gdp_delta(mu, high) > delta:
        high *= 2.0
    root = optimize.brentq(lambda e: gdp_delta(mu, e) - delta, 0.0, high, xtol=1e-12,
                           rtol=1e-14)
    return float(root + 1e-12 * (1.0 + root))  # the root's upper side: delta(eps) <= delta


def _poisson_mu2(q: float, mu0: float) -> float:
    """Per-step mu^2 of a Poisson-subsampled Gaussian, ``mu0 = 1 / sigma`` (CLT; exact
    when q = 1)."""
    if q == 1.0:
        return mu0 * mu0
    if mu0 > _MU_ZERO_CEILING:
        return math.inf
    return q * q * math.expm1(mu0 * mu0)


def _without_replacement_mu2(q: float, mu0: float) -> float:
    """Per-step mu^2 of ``C_q(G_mu0)`` (CLT; exact when q = 1)."""
    if q == 1.0:
        return mu0 * mu0
    if mu0 > _MU_ZERO_CEILING:
        return math.inf
    inner = (math.exp(mu0 * mu0) * special.ndtr(1.5 * mu0) + 3 * special.ndtr(-mu0 / 2) - 2)
    return 2 * q * q * max(inner, 0.0)


class GDPAccountant(LedgerTotalMixin, PrivacyAccountant):
    """Gaussian DP through the central limit theorem: an approximation (a CLT value, not
    an upper bound; see the module docstring).

    Parameters
    ----------
    neighboring : {"add_remove", "replace_one"}, default "add_remove"
        ``PoissonSampledEvent`` (of a ``GaussianEvent``) needs ``"add_remove"``,
        ``SampledWithoutReplacementEvent`` (of a ``GaussianEvent``) needs
        ``"replace_one"``. Laplace and (epsilon, delta) events have no GDP form and are
        refused.

    Attributes
    ----------
    mu : float
        The composed GDP parameter.
    """

    name = "gdp"
    is_upper_bound = False
    _handlers = {
        GaussianEvent: "_on_gaussian",
        PoissonSampledEvent: "_on_poisson",
        SampledWithoutReplacementEvent: "_on_without_replacement",
        SelfComposedEvent: "_on_self_composed",
        ComposedEvent: "_on_composed",
    }

    def __init__(self, *, neighboring: str = ADD_REMOVE) -> None:
        super().__init__(neighboring)
        self._reset_total()
        self._sensitivity = 2.0 if self.neighboring == REPLACE_ONE else 1.0

    def _validate_specific(self, event: DpEvent) -> None:
        if isinstance(event, PoissonSampledEvent):
            if self.neighboring != ADD_REMOVE:
                self._refuse(event, "the GDP limit of Poisson subsampling is for the "
                                    "add_remove relation. Use neighboring='add_remove'.")
            if not isinstance(event.event, GaussianEvent):
                self._refuse(event, "GDP supports Poisson subsampling only of a "
                                    f"GaussianEvent, got sub-event {event.event!r}.")
        if isinstance(event, SampledWithoutReplacementEvent):
            self._check_without_replacement(event)

    _total_attr = "_mu2"

    def _zero_total(self) -> float:
        return 0.0

    def _reset(self) -> None:
        self._reset_total()

    def _add(self, mu2: float, count: int) -> None:
        self._mu2 = self._mu2 + count * mu2 if mu2 > 0 else self._mu2

    def _mu0(self, noise_multiplier: float) -> float:
        """Sensitivity over noise of one Gaussian step (inf for no noise)."""
        return self._sensitivity / noise_multiplier if noise_multiplier > 0 else math.inf

    def _on_gaussian(self, event: GaussianEvent, count: int) -> None:
        mu0 = self._mu0(event.noise_multiplier)
        self._add(mu0 * mu0, count)

    def _on_poisson(self, event: PoissonSampledEvent, count: int) -> None:
        if event.sample_rate > 0:
            self._add(_poisson_mu2(event.sample_rate, self._mu0(event.event.noise_multiplier)),
                      count)

    def _on_without_replacement(self, event: SampledWithoutReplacementEvent, count: int) -> None:
        if event.sample_size > 0:
            mu0 = self._mu0(event.event.noise_multiplier)
            self._add(_without_replacement_mu2(event.sample_rate, mu0), count)

    def _on_self_composed(self, event: SelfComposedEvent, count: int) -> None:
        self._apply(event.event, count * event.count)

    def _on_composed(self, event: ComposedEvent, count: int) -> None:
        for sub in event.events:
            self._apply(sub, count)

    @property
    def mu(self) -> float:
        """The GDP parameter of everything composed."""
        return math.sqrt(self._mu2)

    def get_epsilon(self, delta: float) -> float:
        """Epsilon at ``delta`` of :attr:`mu`-GDP (an approximation, see the class)."""
        if not (isinstance(delta, (int, float)) and 0 < delta < 1):
            raise InvalidParameterError(f"delta must lie in (0, 1), got {delta!r}.")
        return gdp_epsilon(self.mu, float(delta))

    def get_delta(self, epsilon: float) -> float:
        """Delta at ``epsilon`` of :attr:`mu`-GDP (an approximation, see the class)."""
        if not epsilon >= 0:
            raise InvalidParameterError(f"epsilon must be >= 0, got {epsilon!r}.")
        return gdp_delta(self.mu, float(epsilon))
