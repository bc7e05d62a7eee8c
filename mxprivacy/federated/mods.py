"""Client-side clipping of the update, as a Flower mod; and the fit-config keys.

``clip_update_mod`` wraps a ClientApp's fit (Flower's Message API). It replaces the
weights the inner app returns by the *update* ``weights - received`` clipped to L2 norm
``config["mxp-clip-norm"]`` (:func:`.params.clip_update`: the bound holds after the cast
to float32), with ``num_examples = 1`` (every client counts 1: weighted averaging would
change the sensitivity). It reports the norm before clipping in ``"mxp-update-norm"``
only when the strategy asks for it (``"mxp-report-norm": 1``, adaptive clipping without
secure aggregation, where the server sees each update anyway). With secure aggregation it runs *inside* ``secaggplus_mod``::

    ClientApp(client_fn=..., mods=[secaggplus_mod, clip_update_mod])

so the values SecAgg+ masks are already clipped.

Nothing unclipped ever leaves the mod. When the inner app raises, returns an error,
returns arrays that fail :func:`.params.check_update` (NaN/inf, wrong count, shape or
dtype), or the config lacks a valid clip norm, the mod sends a zero update (so a
SecAgg+ round goes on) with the reason in the metric ``"mxp-rejected"``. When the
server's coin says the client is not sampled this round (``"mxp-participate": 0``)
the inner app is not run at all and a zero update is sent. The inner app's own
metrics are dropped (they are computed from the client's data and would reach the
server unprotected), except ``"example_epsilon"``, which depends on settings only.

Under secure aggregation (``"mxp-secure": 1``) the mod sends no metrics at all:
``secaggplus_mod`` forwards fit metrics to the server in the clear, so a norm, a rejection
reason or an epsilon there would tell the server something about one client that the
secure sum hides. A rejection is then logged on the client only.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, List, Tuple

import numpy as np

from ..errors import FederatedError, InvalidUpdateError
from .params import check_update, clip_update, subtract_arrays, zeros_like

__all__ = ["clip_update_mod", "CLIP_NORM_KEY", "PARTICIPATE_KEY", "UPDATE_NORM_KEY",
           "REPORT_NORM_KEY", "SECURE_KEY",
           "REJECTED_KEY", "EXAMPLE_EPSILON_KEY", "LOCAL_EPOCHS_KEY", "BATCH_SIZE_KEY",
           "LEARNING_RATE_KEY", "participates"]

# Fit-config keys (sent by the strategy) and fit-metric keys (sent back): one source.
CLIP_NORM_KEY = "mxp-clip-norm"
PARTICIPATE_KEY = "mxp-participate"
UPDATE_NORM_KEY = "mxp-update-norm"
REPORT_NORM_KEY = "mxp-report-norm"
SECURE_KEY = "mxp-secure"
REJECTED_KEY = "mxp-rejected"
EXAMPLE_EPSILON_KEY = "example_epsilon"
LOCAL_EPOCHS_KEY = "local_epochs"
BATCH_SIZE_KEY = "batch_size"
LEARNING_RATE_KEY = "learning_rate"

_KEPT_METRICS = (EXAMPLE_EPSILON_KEY,)
_log = logging.getLogger(__name__)


class _Rejected(Exception):
    """Internal: the reason a zero update is sent instead."""


def participates(config) -> bool:
    """False when the fit config says this client was not sampled (``"mxp-participate"``
    is 0); True when it is 1 or absent. Any other value raises FederatedError."""
    value = (config or {}).get(PARTICIPATE_KEY, 1)
    if isinstance(value, (bool, int, float)) and value in (0, 1):
        return bool(value)
    raise FederatedError(
        f"Fit config {PARTICIPATE_KEY!r} must be 0 or 1, got {value!r}: the strategy "
        "sends 1 when the client was sampled this round and 0 otherwise.")


def _clip_norm(config) -> float:
    value = config.get(CLIP_NORM_KEY)
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise _Rejected(
            f"fit config {CLIP_NORM_KEY!r} is {value!r}, not a positive number: use "
            "clip_update_mod with a strategy that clips on the client (DPFedAvg with "
            "clipping='client' or secure_aggregation=True).")
    return float(value)


def _inner_update(msg, ctxt, call_next, received: List[np.ndarray]
                  ) -> Tuple[List[np.ndarray], Dict]:
    """Run the inner app; return (its weights - received, its metrics) or raise _Rejected."""
    from flwr.common import parameters_to_ndarrays
    from flwr.common import recordset_compat as compat

    try:
        out = call_next(msg, ctxt)
    except Exception as err:  # any failure of the user's app: never send its data
        raise _Rejected(f"the client app raised {type(err).__name__}: {err}") from err
    if out.has_error():
        raise _Rejected(f"the client app returned an error: {out.error.reason}")
    try:
        res = compat.recordset_to_fitres(out.content, keep_input=True)
        weights = parameters_to_ndarrays(res.parameters)
    except Exception as err:
        raise _Rejected(f"the client app's reply is not a fit result: {err}") from err
    try:
        check_update(weights, received)
    except InvalidUpdateError as err:
        raise _Rejected(f"invalid weights from the client app: {err}") from err
    return subtract_arrays(weights, received), dict(res.metrics)


def _reply(msg, arrays: List[np.ndarray], metrics: Dict):
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.common import recordset_compat as compat

    res = FitRes(status=Status(code=Code.OK, message="Success"),
                 parameters=ndarrays_to_parameters(arrays), num_examples=1, metrics=metrics)
    return msg.create_reply(compat.fitres_to_recordset(res, keep_input=True))


def clip_update_mod(msg, ctxt, call_next):
    """Flower mod: send the clipped update ``weights - received`` instead of the weights.

    Fit messages only (others pass through unchanged). See the module docstring for the
    config keys, the zero update on failure and the metrics sent.
    """
    from flwr.common import MessageType, parameters_to_ndarrays
    from flwr.common import recordset_compat as compat

    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    ins = compat.recordset_to_fitins(msg.content, keep_input=True)
    received = parameters_to_ndarrays(ins.parameters)
    zero = zeros_like(received)
    try:
        clip = _clip_norm(ins.config)
        if not participates(ins.config):
            return _reply(msg, zero, _metrics(ins.config, {}, 0.0))
        update, metrics = _inner_update(msg, ctxt, call_next, received)
        clipped, norm = clip_update(update, clip)
    except (_Rejected, FederatedError) as err:
        _log.warning("clip_update_mod: sending a zero update: %s", err)
        return _reply(msg, zero, _metrics(ins.config, {REJECTED_KEY: str(err)[:500]}, 0.0))
    kept = {k: v for k, v in metrics.items() if k in _KEPT_METRICS}
    return _reply(msg, clipped, _metrics(ins.config, kept, float(norm)))


def _metrics(config, metrics: Dict, norm: float) -> Dict:
    """What may leave the client next to its update: nothing under secure aggregation;
    the pre-clip norm only when the strategy asked for it."""
    if config.get(SECURE_KEY, 0):
        return {}
    if config.get(REPORT_NORM_KEY, 0):
        return dict(metrics, **{UPDATE_NORM_KEY: norm})
    return dict(metrics)
