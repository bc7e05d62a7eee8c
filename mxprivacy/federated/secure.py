"""Secure aggregation with Flower's SecAgg+: settings, quantization slack and threat model.

Under secure aggregation the server learns only the sum of the clients' clipped updates,
then adds the DP noise. Flower's ``secaggplus_mod`` (client) and ``SecAggPlusWorkflow``
(server) run the protocol; this module chooses their settings so that the user-level
sensitivity stays exactly ``C`` and the sum cannot wrap around the modulus. It is the one
source of the quantization slack, the client-side clip norm ``C_eff`` and the error
bound. Nothing here touches crypto or transport.

How the numbers flow (flwr 1.12)
    Every client sends its clipped update ``x`` (norm <= ``C_eff``) with
    ``num_examples = 1`` and the workflow uses ``max_weight = 1``, so the weight factor
    is exactly ``Q`` and Flower's ``q_ratio`` scaling multiplies by 1.0. The mod clips each
    coordinate to ``[-R, R]`` (``R = clipping_range = C``: never active, since
    ``|x_i| <= ||x|| < C``) and stochastically rounds ``(x_i + R) Q / (2R)`` to an
    integer in ``[0, Q]``. The server unmasks the sum and hands ``Strategy.aggregate_fit``
    the *mean* of the dequantized vectors over the ``n`` clients active in the
    masked-vector stage, as every result's parameters; the strategy multiplies by ``n``.

Quantization slack and ``C_eff``
    A dequantized coordinate differs from ``x_i`` by less than
    ``e = 2R/Q + 16 R u`` where ``u`` is the unit roundoff of the update's dtype
    (``2**-24`` for float32, ``2**-53`` for float64): Flower quantizes in the array's own
    dtype, so a float32 update loses float32 precision before the rounding (measured up
    to 18 steps of ``2R/Q`` at ``Q = 2**28``). The dequantized vector's norm is then below
    ``||x|| + e sqrt(d)``; the client clips to ``C_eff = C - e sqrt(d) - 2 u C`` (the last
    term covers casting the clipped float64 update to its dtype), so every contribution
    to the sum has norm < ``C``. Settings whose slack exceeds 1 % of ``C`` are refused.

Modulus
    The sum of ``n <= K`` quantized vectors and of the ``n`` weight factors ``Q`` must stay
    below the modulus ``M`` (``M`` a power of two, ``<= 2**32``): this module requires
    ``K (Q (1 + 2**-20) + 1) < M`` (float32 rounding can push a value a few steps above
    ``Q``), which also gives Flower's own ``num_shares <= M / Q``.

Threat model (honest-but-curious server, semi-honest clients)
    - *Server*: sees, per client, a vector masked by pairwise masks and a private mask
      (uniform-looking mod ``M``), plus the plaintext metadata of the fit result
      (``num_examples``, which is ignored, and fit metrics, which ``clip_update_mod``
      empties under SecAgg+). It
      learns the sum of the active clients' quantized updates and which clients dropped.
      It sees the sum **before** the DP noise: user-level DP protects against everyone
      who sees the released models (clients, users of the model), not against the
      aggregator, which is trusted to add the noise. A malicious server (lying about
      who dropped) is outside this model.
    - *One client*: learns nothing about others' updates beyond the released model.
    - *Colluding clients* (optionally with the server): fewer than the reconstruction
      threshold ``t`` of a client's ``num_shares`` neighbours hold too few Shamir shares
      to rebuild its mask seeds, so they learn only the sum (minus their own updates);
      ``t`` or more colluding neighbours can unmask that client's update.
    - *Clients are trusted to run the protocol*: the DP guarantee of an honest client
      assumes the other clients run ``clip_update_mod`` inside an unmodified
      ``secaggplus_mod``. A client that deviates can spoil utility, and can also break
      another client's guarantee:
        * by claiming a weight factor other than ``Q`` (Flower divides the sum by the sum
          of the claimed factors, so an honest update could count ``n`` times):
          **closed** here, :func:`secagg_workflow` divides by the server's own count of
          active clients and logs a client whose claim differs;
        * by sending integers chosen near the modulus, so that an honest client's
          quantized values make the sum wrap around ``M`` (its contribution then jumps by
          about ``M 2R/Q``): **open**, SecAgg+ sums modulo ``M`` and cannot tell;
        * by dropping out, or not, depending on which other clients take part (see
          below): **open**.
    - *Dropouts mid-round*: a client lost before it sends its masked vector counts as a
      zero update (its pairwise masks are removed with the shares of ``>= t`` surviving
      neighbours); one lost after it is still summed. If some client keeps fewer than
      ``t`` live neighbours the workflow halts the round; the strategy still releases a
      noise-only update and charges the round. Whether a round halts can depend on
      whether one client is present (every client is contacted every round, and its
      presence can be what keeps a neighbour at ``t``): one client can then move the
      release by the sum of the others. The guarantee assumes dropouts do not sit at the
      threshold: keep ``t`` well below the expected survivors (the defaults tolerate 4 of
      10 dropouts) and treat a halted round (``history_`` row with ``aggregated`` false)
      as an incident.
    - flwr 1.12 seeds its mask generator with a 32-bit fold of each 256-bit secret
      (``numpy.random.RandomState``): the masks' computational security is that of a
      32-bit seed, not of the key exchange. Treat SecAgg+ here as protection against
      casual inspection of single updates, not against a determined server.
"""
from __future__ import annotations

import math
import threading
from typing import Optional

import numpy as np

from ..errors import SecureAggregationSettingsError

__all__ = [
    "MAX_SLACK_FRACTION",
    "DEFAULT_QUANTIZATION_RANGE",
    "DEFAULT_MODULUS_RANGE",
    "coordinate_error",
    "quantization_slack",
    "effective_clip_norm",
    "largest_quantization_range",
    "check_no_wraparound",
    "default_num_shares",
    "default_reconstruction_threshold",
    "quantization_error_bound",
    "secagg_settings",
    "secagg_workflow",
]

MAX_SLACK_FRACTION = 0.01
DEFAULT_QUANTIZATION_RANGE = 2**22  # Flower's default; fits up to 1023 clients
DEFAULT_MODULUS_RANGE = 2**32
MAX_MODULUS_RANGE = 2**32
MAX_QUANTIZATION_RANGE = 2**30  # Flower rounds into int32
_ROUNDING_HEADROOM = 2.0**-20  # float32 rounding may push a level a few steps above Q
WORKFLOW_KEYS = ("num_shares", "reconstruction_threshold", "max_weight",
                 "clipping_range", "quantization_range", "modulus_range", "timeout")


def _unit_roundoff(dtype) -> float:
    try:
        info = np.finfo(np.dtype(dtype))
    except (TypeError, ValueError):
        raise SecureAggregationSettingsError(
            f"dtype={dtype!r} is not a floating dtype; pass the dtype the clients send "
            "their updates in ('float32' or 'float64').") from None
    return float(info.eps) / 2.0


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
            or not math.isfinite(value) or value <= 0:
        raise SecureAggregationSettingsError(f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)


def _count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise SecureAggregationSettingsError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def coordinate_error(clipping_range: float, quantization_range: int, dtype="float32") -> float:
    """Bound on |dequantized - sent| for one coordinate of one client's update:
    ``2R/Q`` (stochastic rounding) plus ``16 R u`` (Flower quantizes in the update's dtype,
    unit roundoff ``u``; the server's float64 arithmetic is inside the same term)."""
    r = _positive("clipping_range", clipping_range)
    q = _count("quantization_range", quantization_range, 2)
    return 2.0 * r / q + 16.0 * r * _unit_roundoff(dtype)


def quantization_slack(clip_norm: float, num_params: int,
                       quantization_range: int = DEFAULT_QUANTIZATION_RANGE, *,
                       clipping_range: Optional[float] = None, dtype="float32") -> float:
    """How much norm quantization can add to a clipped update: ``e sqrt(d) + 2 u C``."""
    c = _positive("clip_norm", clip_norm)
    d = _count("num_params", num_params, 1)
    r = c if clipping_range is None else clipping_range
    return coordinate_error(r, quantization_range, dtype) * math.sqrt(d) \
        + 2.0 * _unit_roundoff(dtype) * c


def effective_clip_norm(clip_norm: float, num_params: int,
                        quantization_range: int = DEFAULT_QUANTIZATION_RANGE, *,
                        clipping_range: Optional[float] = None, dtype="float32") -> float:
    """The norm clients clip their update to under SecAgg+, so that the dequantized
    update has norm < ``clip_norm``: ``C_eff = C - quantization_slack(...)``.

    ``clipping_range`` (Flower's ``R``) defaults to ``clip_norm``; with adaptive clipping
    pass the workflow's fixed ``R``. Raises SecureAggregationSettingsError when the slack
    exceeds 1 % of ``clip_norm``."""
    c = _positive("clip_norm", clip_norm)
    slack = quantization_slack(c, num_params, quantization_range,
                               clipping_range=clipping_range, dtype=dtype)
    if slack > MAX_SLACK_FRACTION * c:
        needed = 2.0 * (c if clipping_range is None else clipping_range) * math.sqrt(num_params) \
            / (0.5 * MAX_SLACK_FRACTION * c)
        raise SecureAggregationSettingsError(
            f"SecAgg+ quantization would cost {slack:.4g} of the clip norm {c:g} "
            f"({100 * slack / c:.2f} % > {100 * MAX_SLACK_FRACTION:g} %) for {num_params} "
            f"parameters at quantization_range={quantization_range}: use a larger "
            f"quantization_range (about {2 ** math.ceil(math.log2(needed))}; the modulus must "
            "grow with it) or float64 updates.")
    return c - slack


def check_no_wraparound(num_clients: int, quantization_range: int,
                        modulus_range: int = DEFAULT_MODULUS_RANGE) -> None:
    """Refuse settings where the sum of ``num_clients`` quantized vectors (each entry in
    ``[0, Q]``, a few float32 steps more at most) or of their weight factors could reach
    the modulus; also Flower's own ``num_shares <= modulus_range / quantization_range``."""
    k = _count("num_clients", num_clients, 1)
    q = _count("quantization_range", quantization_range, 2)
    m = _count("modulus_range", modulus_range, 4)
    if m & (m - 1) or m > MAX_MODULUS_RANGE:
        raise SecureAggregationSettingsError(
            f"modulus_range must be a power of two <= 2**32 (Flower's masks), got {m}.")
    if q > MAX_QUANTIZATION_RANGE:
        raise SecureAggregationSettingsError(
            f"quantization_range={q} is above 2**30, which Flower's int32 rounding cannot hold.")
    if k * (q * (1.0 + _ROUNDING_HEADROOM) + 1.0) >= m:
        raise SecureAggregationSettingsError(
            f"The sum of {k} clients' quantized updates can reach {k} x {q} >= "
            f"modulus_range={m} and wrap around (a silently wrong aggregate): use "
            f"quantization_range <= {largest_quantization_range(k, m)} (in the strategy too) or a larger modulus_range.")


def largest_quantization_range(num_clients: int, modulus_range: int = DEFAULT_MODULUS_RANGE
                               ) -> int:
    """The largest power of two ``Q <= 2**30`` with no wrap-around for ``num_clients``
    (a suggestion in error messages; the default stays DEFAULT_QUANTIZATION_RANGE so that
    the strategy's ``C_eff`` and the workflow use the same ``Q``)."""
    k = _count("num_clients", num_clients, 1)
    q = MAX_QUANTIZATION_RANGE
    while q >= 2 and k * (q * (1.0 + _ROUNDING_HEADROOM) + 1.0) >= modulus_range:
        q //= 2
    if q < 2:
        raise SecureAggregationSettingsError(
            f"modulus_range={modulus_range} is too small for {k} clients; use 2**32.")
    return q


def default_num_shares(num_clients: int) -> int:
    """Neighbours per client (itself included): all ``K`` clients (plain SecAgg) up to
    ``K = 4 ceil(log2 K) + 1``, else that odd ``O(log K)`` neighbourhood (SecAgg+)."""
    k = _count("num_clients", num_clients, 3)
    return min(k, 4 * math.ceil(math.log2(k)) + 1)


def default_reconstruction_threshold(num_shares: int) -> int:
    """A strict majority of the neighbours: ``num_shares // 2 + 1``."""
    return _count("num_shares", num_shares, 3) // 2 + 1


def quantization_error_bound(clipping_range: float, quantization_range: int, *,
                             num_summed: int = 1, dtype="float32") -> float:
    """Max abs per-coordinate error of the secure aggregate vs the plain one.

    With ``num_summed=1`` (default) it bounds the secure *mean* that
    ``aggregate_fit`` receives minus the plain mean of the sent updates:
    ``2R/Q + 16 R u``. With ``num_summed=n`` it bounds the *sum* of ``n`` updates:
    ``n`` times that. The strategy's global step (sum / m, times the server learning
    rate ``eta``) is off by at most ``eta n / m`` times the per-client bound."""
    n = _count("num_summed", num_summed, 1)
    return n * coordinate_error(clipping_range, quantization_range, dtype)


def secagg_settings(clip_norm: float, num_params: int, num_clients: int, *,
                    quantization_range: Optional[int] = None,
                    modulus_range: int = DEFAULT_MODULUS_RANGE,
                    num_shares: Optional[int] = None,
                    reconstruction_threshold: Optional[int] = None,
                    timeout: Optional[float] = None, dtype="float32") -> dict:
    """Checked SecAgg+ settings for ``num_clients`` (K, all contacted each round) clients
    with ``num_params`` parameters and clip norm ``clip_norm``.

    ``quantization_range`` None is DEFAULT_QUANTIZATION_RANGE (``2**22``, Flower's
    default): give DPFedAvg the same value, since its ``C_eff`` depends on it.
    Returns a dict with the ``SecAggPlusWorkflow`` arguments (``num_shares``,
    ``reconstruction_threshold``, ``max_weight=1.0``, ``clipping_range=clip_norm``,
    ``quantization_range``, ``modulus_range``, ``timeout``) and the derived
    ``effective_clip_norm``, ``quantization_slack``, ``error_bound`` (per coordinate,
    for the mean) and ``max_dropouts`` (per neighbourhood before a round halts)."""
    c = _positive("clip_norm", clip_norm)
    k = _count("num_clients", num_clients, 1)
    if k < 3:
        raise SecureAggregationSettingsError(
            f"SecAgg+ needs at least 3 clients (Flower's num_shares > 2), got num_clients={k}; "
            "run without secure aggregation or add clients.")
    q = DEFAULT_QUANTIZATION_RANGE if quantization_range is None \
        else _count("quantization_range", quantization_range, 2)
    check_no_wraparound(k, q, modulus_range)
    shares = default_num_shares(k) if num_shares is None else _count("num_shares", num_shares, 3)
    if shares > k:
        raise SecureAggregationSettingsError(f"num_shares={shares} exceeds num_clients={k}.")
    t = default_reconstruction_threshold(shares) if reconstruction_threshold is None \
        else _count("reconstruction_threshold", reconstruction_threshold, 2)
    if t >= shares:
        raise SecureAggregationSettingsError(
            f"reconstruction_threshold={t} must be below num_shares={shares} (Flower), and "
            "above half of it for collusion resistance.")
    if timeout is not None:
        timeout = _positive("timeout", timeout)
    c_eff = effective_clip_norm(c, num_params, q, dtype=dtype)
    return dict(num_shares=shares, reconstruction_threshold=t, max_weight=1.0,
                clipping_range=c, quantization_range=q, modulus_range=int(modulus_range),
                timeout=timeout, effective_clip_norm=c_eff, quantization_slack=c - c_eff,
                error_bound=quantization_error_bound(c, q, dtype=dtype),
                max_dropouts=shares - t)


def secagg_workflow(clip_norm: float, num_params: int, num_clients: int, **kwargs):
    """Flower's SecAgg+ workflow built from :func:`secagg_settings` (same arguments),
    dividing by the server's own count of active clients. Use it as
    ``DefaultWorkflow(fit_workflow=secagg_workflow(...))``."""
    settings = secagg_settings(clip_norm, num_params, num_clients, **kwargs)
    args = {key: settings[key] for key in WORKFLOW_KEYS}
    workflow_class = counted_weight_workflow_class()
    return workflow_class(args.pop("num_shares"), args.pop("reconstruction_threshold"), **args)


def counted_factor_extract(extract, expected: int, log=None):
    """Flower's ``factor_extract`` with the summed weight factor replaced by
    ``expected`` (active clients x Q): a client's claimed weight then cannot rescale the
    others' updates. A claim that differs is logged."""
    def extract_counted(parameters):
        claimed, rest = extract(parameters)
        if int(claimed) != expected and log is not None:
            log(f"SecAgg+ weight factors sum to {int(claimed)}, not {expected} (active "
                "clients x Q): some client changed its weight; the server's count is used.")
        return expected, rest
    return extract_counted


_FACTOR_PATCH_LOCK = threading.Lock()


def counted_weight_workflow_class():
    """``SecAggPlusWorkflow`` whose unmask stage divides by (active clients x Q)."""
    import logging

    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.secure_aggregation import secaggplus_workflow as flower

    class CountedWeightSecAggPlusWorkflow(SecAggPlusWorkflow):
        """SecAgg+ that ignores the weight factors the clients claim (see the threat model)."""

        def unmask_stage(self, driver, context, state):
            expected = len(state.active_node_ids) * self.quantization_range
            with _FACTOR_PATCH_LOCK:  # the patch is module-wide: one unmask at a time
                original = flower.factor_extract
                flower.factor_extract = counted_factor_extract(
                    original, expected, logging.getLogger(__name__).warning)
                try:
                    return super().unmask_stage(driver, context, state)
                finally:
                    flower.factor_extract = original

    return CountedWeightSecAggPlusWorkflow
