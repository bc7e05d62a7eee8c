"""Output-noise mechanisms with calibrated guarantees.

The mechanisms themselves need only numpy (they also accept MXNet NDArrays).
:class:`NoisyOutput`, the Gluon Block wrapper, lives in :mod:`mxprivacy.gluon`; it is
re-exported here lazily, so importing this package never imports MXNet.
"""
from .calibration import analytic_gaussian_sigma, classic_gaussian_sigma, gaussian_delta
from .mechanisms import GaussianMechanism, LaplaceMechanism, Mechanism, ReportNoisyMax

__all__ = ["Mechanism", "LaplaceMechanism", "GaussianMechanism", "ReportNoisyMax",
           "analytic_gaussian_sigma", "classic_gaussian_sigma", "gaussian_delta",
           "NoisyOutput"]


def __getattr__(name):
    if name == "NoisyOutput":
        from ..gluon.noisy_output import NoisyOutput
        return NoisyOutput
    raise AttributeError(f"module 'mxprivacy.mechanisms' has no attribute {name!r}")
