"""The arithmetic of one DP-FedAvg round, apart from Flower: contributions, noise, release.

Everything is computed in float64. A client's contribution is its update clipped to
L2 norm C over all arrays together; the round releases

    global + server_learning_rate * (sum of contributions + N(0, (z C)^2)) / (q K)

with the noise drawn once per round, whatever the number of contributions (none
included). :class:`RoundTally` records who was sampled, received, rejected and failed.
The argument checks of ``DPFedAvg`` are at the end.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import secrets
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InvalidParameterError, InvalidUpdateError, PrivacyWarning
from .params import check_update, clip_update

__all__ = ["RoundTally", "client_contribution", "secure_sum", "release", "wide",
           "positive", "in_range", "integer", "resolve_clipping", "initial_arrays",
           "generators", "describe_failure", "SEEDED_WARNING"]


@dataclasses.dataclass
class RoundTally:
    """What happened in one round (one row of ``DPFedAvg.history_`` once released)."""

    round: int
    clip_norm: float
    sampled: int = 0
    available: int = 0
    sampled_cids: Tuple[str, ...] = ()
    received: int = 0
    contributed: int = 0
    unclipped: int = 0  # contributions whose norm was <= C (adaptive clipping's b = 1)
    rejected: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    failures: List[str] = dataclasses.field(default_factory=list)
    aggregated: bool = False  # aggregate_fit ran (else: released as noise only)
    released: bool = False

    def row(self, epsilon: float) -> Dict[str, object]:
        return {"round": self.round, "sampled": self.sampled, "available": self.available,
                "received": self.received, "contributed": self.contributed,
                "rejected": len(self.rejected), "rejected_reasons": list(self.rejected),
                "failures": len(self.failures), "failure_reasons": list(self.failures),
                "clip_norm": self.clip_norm, "aggregated": self.aggregated,
                "epsilon": epsilon}


def wide(arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
    """float64 copies of ``arrays``."""
    return [np.array(a, dtype=np.float64) for a in arrays]


def client_contribution(arrays: Sequence[np.ndarray], global_arrays: Sequence[np.ndarray],
                        clip_norm: float, sends_update: bool
                        ) -> Tuple[List[np.ndarray], float]:
    """(clipped float64 update, its norm before clipping) of one client's result.

    ``arrays`` are the client's weights (``sends_update=False``: the update is weights
    minus ``global_arrays``) or its update already (client-side clipping: clipped again
    here, so a client that did not clip still adds at most C). Raises
    InvalidUpdateError for a wrong count, shape, non-float dtype or NaN/inf.
    """
    check_update(arrays, global_arrays)
    update = wide(arrays)
    if not sends_update:
        update = [u - g for u, g in zip(update, wide(global_arrays))]
    clipped, norm = clip_update(update, clip_norm)
    if not np.isfinite(norm):  # finite weights minus finite global can overflow
        raise InvalidUpdateError(f"The update's norm is {norm}: send finite, moderate values.")
    return clipped, norm


def secure_sum(results, global_arrays: Sequence[np.ndarray], radius: float
               ) -> Tuple[Optional[List[np.ndarray]], Optional[str]]:
    """(sum of the clipped updates, note) from SecAgg's results.

    SecAggPlusWorkflow puts the same aggregate in every FitRes: the sum of the active
    clients' vectors divided by their count (:func:`.secure.secagg_workflow` makes the
    divisor the server's count, whatever weights the clients claim). The sum is that
    mean times the count. Nothing here decides on the sum before the noise except a
    projection onto the ball of the fixed, public radius K x C: a projection never
    stretches distances, so one honest client still moves the result by at most C,
    while a client that did not clip cannot push the model past the bound. A
    non-finite aggregate or one of the wrong shapes is replaced by zeros (noise only).
    The note never quotes the aggregate (it is not noised).
    """
    if not results:
        return None, None
    from flwr.common import parameters_to_ndarrays

    try:
        mean = parameters_to_ndarrays(results[0][1].parameters)
        check_update(mean, global_arrays)
    except (InvalidUpdateError, ValueError) as err:
        return None, f"secure aggregate discarded: {err}"
    total = [a * len(results) for a in wide(mean)]
    norm = float(np.sqrt(sum(float(np.dot(t.ravel(), t.ravel())) for t in total)))
    if norm <= radius:
        return total, None
    return ([t * (radius / norm) for t in total],
            "secure aggregate projected onto the K x C ball (a client did not clip)")


def release(global_arrays: Sequence[np.ndarray], total: Optional[List[np.ndarray]],
            noise_std: float, expected_clients: float, server_learning_rate: float,
            rng: np.random.Generator) -> List[np.ndarray]:
    """New global arrays: global + lr * (total + N(0, noise_std^2)) / expected_clients.

    ``total`` None (no contribution) releases the noise alone. The noise is drawn here,
    once, for every coordinate. Arrays keep the global model's dtypes.
    """
    out = []
    for index, g in enumerate(global_arrays):
        base = np.zeros(g.shape) if total is None else total[index]
        noisy = base + rng.normal(0.0, noise_std, size=g.shape)
        step = server_learning_rate * noisy / expected_clients
        out.append((np.asarray(g, dtype=np.float64) + step).astype(g.dtype))
    return out


SEEDED_WARNING = ("DPFedAvg(seed=...) makes the client sampling and the noise predictable: "
                  "anyone who knows the seed can subtract the noise, so the run has no "
                  "privacy guarantee. Use seed=None (OS entropy) outside tests.")


# -- argument checks ----------------------------------------------------------------
def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise InvalidParameterError(f"{name} must be a number, got {value!r}.")
    return float(value)


def positive(name: str, value) -> float:
    number = _number(name, value)
    if not (math.isfinite(number) and number > 0):
        raise InvalidParameterError(f"{name} must be a finite number > 0, got {value!r}.")
    return number


def in_range(name, value, low, high, *, low_open=False, high_open=False) -> float:
    number = _number(name, value)
    ok = (number > low if low_open else number >= low) and \
         (number < high if high_open else number <= high) and math.isfinite(number)
    if not ok:
        raise InvalidParameterError(
            f"{name} must lie in {'(' if low_open else '['}{low:g}, {high:g}"
            f"{')' if high_open else ']'}, got {value!r}.")
    return number


def integer(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InvalidParameterError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def resolve_clipping(clipping: Optional[str], secure: bool) -> str:
    if clipping is None:
        return "client" if secure else "server"
    if clipping not in ("server", "client"):
        raise InvalidParameterError(f"clipping must be 'server' or 'client', got {clipping!r}.")
    if secure and clipping == "server":
        raise InvalidParameterError(
            "secure_aggregation=True needs clipping='client': the server never sees a "
            "single update under SecAgg+, so clients clip (clip_update_mod).")
    return clipping


def initial_arrays(initial) -> List[np.ndarray]:
    from flwr.common import parameters_to_ndarrays

    if hasattr(initial, "tensors") and hasattr(initial, "tensor_type"):
        initial = parameters_to_ndarrays(initial)
    if not isinstance(initial, Sequence) or not initial or \
            not all(isinstance(a, np.ndarray) for a in initial):
        raise InvalidParameterError(
            "initial_parameters must be a non-empty list of numpy arrays (e.g. "
            "mxprivacy.federated.get_weights(net)) or flwr Parameters.")
    try:
        check_update(initial, initial)
    except InvalidUpdateError as err:
        raise InvalidParameterError(f"initial_parameters: {err}") from err
    return [a.copy() for a in initial]


def generators(seed):
    if seed is None:
        sequence = np.random.SeedSequence(secrets.randbits(128))
    else:
        warnings.warn(SEEDED_WARNING, PrivacyWarning, stacklevel=3)
        sequence = np.random.SeedSequence(integer("seed", seed, 0))
    sample, noise = sequence.spawn(2)
    return np.random.default_rng(sample), np.random.default_rng(noise)


def describe_failure(failure) -> str:
    if isinstance(failure, BaseException):
        return f"{type(failure).__name__}: {failure}"
    proxy, res = failure
    return f"client {getattr(proxy, 'cid', '?')}: {getattr(res, 'status', res)}"
