"""Federated learning for Gluon on Flower, with user-level DP and secure aggregation.

The unit of privacy is a whole client (DP-FedAvg, McMahan et al. 2018): every round the
server Poisson-samples clients at rate q, each client's update is clipped to norm C, the
server adds N(0, (sigma C)^2) to the sum once and divides by the expected number of
clients q K. The accountant charges one Poisson-sampled Gaussian event per round.

- ``GluonClient`` (:mod:`.client`): a Flower client for any Gluon Block.
- ``DPFedAvg`` (:mod:`.strategy`): the Flower strategy that samples, clips, noises and
  accounts; fixed or adaptive clipping (Andrew et al. 2021).
- ``clip_update_mod`` (:mod:`.mods`): client-side clipping, run inside Flower's
  ``secaggplus_mod`` so that the server only learns the sum (:mod:`.secure`, which also
  states the threat model).
- ``run_federated`` (:mod:`.runtime`): runs a server and K clients on Flower's simulation
  engine and prints accuracy and the user-level epsilon per round.
- ``partition_by_label``, ``partition_iid``, ``dirichlet_partition`` (:mod:`.partition`).

Importing this package loads neither Flower nor MXNet: names load on first use.
"""
from __future__ import annotations

from .._lazy import lazy_names

_LAZY = {
    "GluonClient": "client",
    "DPFedAvg": "strategy",
    "clip_update_mod": "mods",
    "get_weights": "params",
    "set_weights": "params",
    "parameter_names": "params",
    "secagg_workflow": "secure",
    "secagg_settings": "secure",
    "effective_clip_norm": "secure",
    "quantization_error_bound": "secure",
    "run_federated": "runtime",
    "FederatedResult": "runtime",
    "partition_by_label": "partition",
    "partition_iid": "partition",
    "dirichlet_partition": "partition",
}

__all__, __getattr__, __dir__ = lazy_names(__name__, _LAZY)
