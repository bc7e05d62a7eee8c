"""Privacy accounting: events, accountants and calibration. Pure numpy/scipy, no MXNet."""
from .base import PrivacyAccountant
from .calibration import ACCOUNTANTS, calibrate_noise_multiplier, epsilon_for, make_accountant
from .events import (ComposedEvent, DpEvent, EpsilonDeltaEvent, GaussianEvent, LaplaceEvent, PoissonSampledEvent,
                     SelfComposedEvent, event_from_dict)
from .pld import PLDAccountant
from .rdp import (DEFAULT_ORDERS, RDPAccountant, compute_rdp, rdp_to_delta, rdp_to_epsilon,
                  rdp_to_epsilon_classic)

__all__ = [
    "PrivacyAccountant", "RDPAccountant", "EpsilonDeltaEvent", "PLDAccountant", "ACCOUNTANTS", "DpEvent", "GaussianEvent", "LaplaceEvent",
    "PoissonSampledEvent", "SelfComposedEvent", "ComposedEvent", "event_from_dict",
    "compute_rdp", "rdp_to_epsilon", "rdp_to_epsilon_classic", "rdp_to_delta",
    "calibrate_noise_multiplier", "epsilon_for", "make_accountant", "DEFAULT_ORDERS",
]
