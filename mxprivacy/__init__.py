"""mxprivacy: differential privacy for Apache MXNet Gluon.

Importing the package is cheap: the MXNet-dependent parts (``PrivateBlock``,
``DPTrainer``, samplers) load on first attribute access, so the accounting CLI runs
without importing MXNet.
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import *  # noqa: F401,F403
from .errors import __all__ as _error_names

__version__ = "0.1.0"

_LAZY = {
    "PrivateBlock": "mxprivacy.gluon",
    "DPTrainer": "mxprivacy.gluon",
    "per_sample_grad_norms": "mxprivacy.gluon",
    "register_grad_rule": "mxprivacy.gluon",
    "PoissonBatchSampler": "mxprivacy.gluon",
    "FixedSizeBatchSampler": "mxprivacy.gluon",
    "DPDataLoader": "mxprivacy.gluon",
    "validate": "mxprivacy.gluon",
    "fix": "mxprivacy.gluon",
    "DPLSTM": "mxprivacy.gluon",
    "DPGRU": "mxprivacy.gluon",
    "DPRNN": "mxprivacy.gluon",
    "ChannelAffine": "mxprivacy.gluon",
    "ParameterAverage": "mxprivacy.gluon",
    "split_and_load": "mxprivacy.gluon",
    "RDPAccountant": "mxprivacy.accounting",
    "PLDAccountant": "mxprivacy.accounting",
    "NoisyOutput": "mxprivacy.gluon.noisy_output",
    "KAnonymizer": "mxprivacy.preprocessing",
    "DataMinimizer": "mxprivacy.preprocessing",
    "LaplaceMechanism": "mxprivacy.mechanisms",
    "GaussianMechanism": "mxprivacy.mechanisms",
    "ReportNoisyMax": "mxprivacy.mechanisms",
    "epsilon_for": "mxprivacy.accounting",
    "calibrate_noise_multiplier": "mxprivacy.accounting",
}

__all__ = sorted(list(_LAZY) + list(_error_names) + ["accounting", "datasets", "mechanisms", "preprocessing"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in ("accounting", "datasets", "gluon", "mechanisms", "preprocessing"):
        return importlib.import_module(f"mxprivacy.{name}")
    raise AttributeError(f"module 'mxprivacy' has no attribute {name!r}")


def __dir__():
    return __all__
