"""Privacy accounting: events, accountants and calibration. Pure numpy/scipy, no MXNet."""
from .base import NEIGHBORING_RELATIONS, PrivacyAccountant
from .calibration import ACCOUNTANTS, calibrate_noise_multiplier, epsilon_for, make_accountant
from .events import (ComposedEvent, DpEvent, EpsilonDeltaEvent, GaussianEvent, LaplaceEvent, PoissonSampledEvent,
                     SampledWithoutReplacementEvent, SelfComposedEvent, event_from_dict)
from .gdp import GDPAccountant
from .pld import PLDAccountant
from .step_sampling import StepSampling
from .rdp import (DEFAULT_ORDERS, RDPAccountant, compute_rdp, rdp_to_delta, rdp_to_epsilon,
                  rdp_to_epsilon_classic)

__all__ = [
    "PrivacyAccountant", "RDPAccountant", "EpsilonDeltaEvent", "PLDAccountant", "GDPAccountant",
    "ACCOUNTANTS", "NEIGHBORING_RELATIONS", "DpEvent", "GaussianEvent", "LaplaceEvent",
    "PoissonSampledEvent", "SampledWithoutReplacementEvent", "SelfComposedEvent",
    "ComposedEvent", "event_from_dict", "StepSampling",
    "compute_rdp", "rdp_to_epsilon", "rdp_to_epsilon_classic", "rdp_to_delta",
    "calibrate_noise_multiplier", "epsilon_for", "make_accountant", "DEFAULT_ORDERS",
]
