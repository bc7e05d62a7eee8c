"""A target epsilon for :class:`~mxprivacy.gluon.DPTrainer`: calibrate the noise for a
planned run, and keep the run within its plan.

``DPTrainer(..., target_epsilon=E, target_delta=D, epochs=K)`` (or ``total_steps=T``)
calibrates sigma with the trainer's accountant (see
:func:`~mxprivacy.accounting.calibrate_noise_multiplier`) so that the planned run's
epsilon at D is at most E and close below it. ``epochs=K`` plans K passes of
:class:`~mxprivacy.DPDataLoader`'s default epoch: ``ceil(K * ceil(1/q))`` steps for
Poisson sampling, ``ceil(K * ceil(N/B))`` for fixed-size batches (see
:func:`~mxprivacy.accounting.calibration.loader_steps`). Calibration charges the
trainer's own step event (see :mod:`mxprivacy.accounting.step_sampling`). A step beyond the plan would
spend more than E, so it is refused with :class:`~mxprivacy.PrivacyBudgetExceeded`
before it does anything.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

from ..accounting import make_accountant
from ..accounting.calibration import (calibrate_noise_multiplier, epsilon_for, loader_steps,
                                      resolve_steps)
from ..accounting.step_sampling import StepSampling
from ..errors import (ConflictingParametersError, InvalidParameterError, PrivacyBudgetExceeded,
                      PrivacyWarning)
from . import guards

__all__ = ["PrivacyPlan", "resolve_noise", "PlanningMixin"]


@dataclass(frozen=True)
class PrivacyPlan:
    """The run a target epsilon was calibrated for.

    ``planned_epsilon`` is the epsilon of all ``steps`` at ``target_delta`` with the
    calibrated ``noise_multiplier``: at most ``target_epsilon``, and close below it.
    ``sampling`` is ``"poisson"`` or ``"fixed"`` (``sample_rate`` is then B / N)."""

    target_epsilon: float
    target_delta: float
    steps: int
    sample_rate: float
    noise_multiplier: float
    planned_epsilon: float
    epochs: Optional[float] = None
    sampling: str = "poisson"


def resolve_noise(noise_multiplier, sampling: StepSampling, accountant, *, target_epsilon=None,
                  target_delta=None, epochs=None, total_steps=None
                  ) -> Tuple[float, Optional[PrivacyPlan]]:
    """``(sigma, plan)``: the given ``noise_multiplier`` (no plan), or sigma calibrated
    for the target with ``sampling``'s step event (with its :class:`PrivacyPlan`)."""
    planning = {"target_delta": target_delta, "epochs": epochs, "total_steps": total_steps}
    if target_epsilon is None:
        given = [name for name, value in planning.items() if value is not None]
        if given:
            raise InvalidParameterError(
                f"{', '.join(given)} only describe the run for target_epsilon=; without a "
                "target they would be ignored. Pass target_epsilon= too, or drop them.")
        if noise_multiplier is None:
            raise InvalidParameterError(
                "DPTrainer needs the noise: pass noise_multiplier=sigma, or "
                "target_epsilon=E, target_delta=D and epochs=K (or total_steps=T) to "
                "calibrate sigma for that run.")
        return guards.positive("noise_multiplier", noise_multiplier, allow_zero=True), None
    if noise_multiplier is not None:
        raise ConflictingParametersError(
            f"Both noise_multiplier={noise_multiplier!r} and target_epsilon="
            f"{target_epsilon!r} were given, and each determines the noise. Pass only one: "
            "target_epsilon= calibrates noise_multiplier for the planned run.")
    return _calibrate(sampling, accountant, target_epsilon, target_delta, epochs,
                      total_steps)


def _calibrate(sampling: StepSampling, accountant, target_epsilon, target_delta, epochs,
               total_steps):
    target = guards.positive("target_epsilon", target_epsilon)
    if target_delta is None:
        raise InvalidParameterError(
            "target_epsilon= needs target_delta= (for example 1/N or 1e-5).")
    delta = guards.positive("target_delta", target_delta)
    if not delta < 1.0:
        raise InvalidParameterError(f"target_delta must lie in (0, 1), got {target_delta!r}.")
    if (epochs is None) == (total_steps is None):
        raise InvalidParameterError(
            "target_epsilon= needs the length of the run: give exactly one of epochs= "
            "(passes of DPDataLoader) or total_steps=.")
    steps = loader_steps(sampling, epochs) if epochs is not None else \
        resolve_steps(sampling, total_steps, None)
    sigma = calibrate_noise_multiplier(target, delta, sampling, steps=steps,
                                       accountant=accountant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        planned = epsilon_for(sigma, sampling, steps, delta, accountant)
    return sigma, PrivacyPlan(target, delta, steps, sampling.sample_rate, sigma, planned,
                              None if epochs is None else float(epochs), sampling.kind)


class PlanningMixin:
    """For :class:`~mxprivacy.gluon.DPTrainer` (needs ``accountant``, ``step_sampling``,
    ``noise_multiplier``, ``steps``, ``warn_epsilon``, ``warn_delta``): the event of
    one step, the spent epsilon, its warning, :attr:`privacy_plan` and the refusal of
    steps beyond it."""

    privacy_plan: Optional[PrivacyPlan] = None
    _warned = False

    def step_event(self):
        """The privacy event one step charges: ``PoissonSampledEvent(q, Gaussian(sigma))``
        for Poisson sampling, ``SampledWithoutReplacementEvent(N, B, Gaussian(sigma))``
        (under replace-one) for fixed-size batches."""
        return self.step_sampling.event(self.noise_multiplier)

    def epsilon(self, delta: float) -> float:
        """The epsilon spent so far at ``delta``, from :attr:`accountant`."""
        return self.accountant.get_epsilon(delta)

    def _maybe_warn(self) -> None:
        """Every 50 steps: warn once when epsilon at ``warn_delta`` passed ``warn_epsilon``."""
        if self._warned or self.steps % 50:
            return
        eps = self.epsilon(self.warn_delta)
        if eps > self.warn_epsilon:
            self._warned = True
            warnings.warn(
                f"epsilon has reached {eps:.2f} at delta={self.warn_delta:g} after "
                f"{self.steps} steps: that is a weak guarantee. Raise noise_multiplier or "
                "train for fewer steps.", PrivacyWarning, stacklevel=3)

    def _check_plan(self) -> None:
        """Refuse a step that would take the run past its planned epsilon."""
        plan = self.privacy_plan
        if plan is None:
            return
        event = self.step_event()
        ledger = self.accountant.ledger
        if all(e == event for e, _ in ledger):  # the planned steps only: count them
            if sum(count for _, count in ledger) < plan.steps:
                return
        elif self._epsilon_after_one_more(event, plan.target_delta) <= plan.target_epsilon:
            return  # a resumed ledger with other events: its epsilon decides
        raise PrivacyBudgetExceeded(
            f"The trainer was calibrated for {plan.steps} steps at epsilon <= "
            f"{plan.target_epsilon:g} (delta={plan.target_delta:g}), and this step would go "
            "beyond that. Build the trainer with more epochs= or total_steps= for a longer "
            "run (the noise is then calibrated for it), or pass noise_multiplier= to train "
            "without a target.")

    def _epsilon_after_one_more(self, event, delta: float) -> float:
        future = make_accountant(self.accountant)
        future.load_state_dict(self.accountant.state_dict())
        return future.compose(event).get_epsilon(delta)
