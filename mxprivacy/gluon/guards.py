"""Checks that keep ``DPTrainer``'s reported epsilon true.

Each function here closes one way in which one record could move what the trainer
releases by more than the sensitivity its accountant assumes, or in which the
accountant could be told the wrong sampling rate. They raise classes of
:mod:`mxprivacy.errors` whose messages say what to do.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

from ..errors import InvalidParameterError, PrivacyWarning, SamplingError

__all__ = ["check_kvstore", "check_compression", "resolve_sample_rate",
           "check_warn_options", "check_secure_options", "check_loss_reduction",
           "FixedSizeDetector"]

LOSS_REDUCTIONS = ("sum", "mean")


def positive(name: str, value, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``allow_zero``), or a clear error."""
    if isinstance(value, bool):
        raise InvalidParameterError(f"{name} must be a number, got {value!r}.")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidParameterError(f"{name} must be a finite number {bound}, got {value!r}.")
    return value


def check_kvstore(kvstore) -> None:
    """Refuse distributed kvstores, given by name or as a ``KVStore`` object."""
    kind = kvstore if isinstance(kvstore, str) else getattr(kvstore, "type", "")
    if isinstance(kind, str) and "dist" in kind:
        raise InvalidParameterError(
            f"Distributed kvstores ({kind!r}) are not supported yet: every worker would add "
            "its own noise and sample on its own, which the accountant does not count. "
            "Train on one machine (several devices are fine).")


def check_compression(compression_params) -> None:
    """Refuse gradient compression: it quantizes clipped sums before the noise and
    carries the error into later steps, so one sample can move a later step by many C."""
    if compression_params:
        raise InvalidParameterError(
            f"compression_params={compression_params!r} is not supported: compression "
            "quantizes parts of the clipped sum before the noise is added and feeds the "
            "error back into later steps, which breaks the Gaussian mechanism's analysis. "
            "Leave compression_params=None.")


def resolve_sample_rate(sample_rate, dataset_size, expected_batch_size: float) -> float:
    """q from ``sample_rate`` or ``expected_batch_size / dataset_size``; both must agree."""
    if sample_rate is None and dataset_size is None:
        raise InvalidParameterError(
            "DPTrainer needs the Poisson sampling rate to account for privacy: pass "
            "sample_rate=q or dataset_size=N (then q = expected_batch_size / N).")
    implied = None
    if dataset_size is not None:
        size = positive("dataset_size", dataset_size)
        if size != int(size):
            raise InvalidParameterError(f"dataset_size must be an integer, got {dataset_size!r}.")
        implied = expected_batch_size / size
    rate = implied if sample_rate is None else positive("sample_rate", sample_rate)
    if not 0.0 < rate <= 1.0:
        raise InvalidParameterError(
            f"sample_rate must lie in (0, 1], got {rate!r} (expected_batch_size "
            f"{expected_batch_size:g} larger than dataset_size?).")
    if implied is not None and not math.isclose(rate, implied, rel_tol=1e-9):
        raise InvalidParameterError(
            f"sample_rate={rate!r} disagrees with expected_batch_size / dataset_size = "
            f"{expected_batch_size:g} / {dataset_size} = {implied!r}. The accountant and the "
            "update would assume different sampling; pass only one of them.")
    return rate


def check_warn_options(warn_epsilon, warn_delta, dataset_size) -> tuple:
    """Validated ``(warn_epsilon, warn_delta)``; delta defaults to 1/N (or 1e-5)."""
    epsilon = positive("warn_epsilon", warn_epsilon)
    if warn_delta is None:
        return epsilon, (1.0 / float(dataset_size) if dataset_size else 1e-5)
    delta = positive("warn_delta", warn_delta)
    if not delta < 1.0:
        raise InvalidParameterError(f"warn_delta must lie in (0, 1), got {warn_delta!r}.")
    return epsilon, delta


def check_secure_options(secure_mode, noise_seed, clipping_options) -> bool:
    """Secure mode excludes seeds; a seed outside it makes the noise public: warn."""
    if not isinstance(secure_mode, bool):
        raise InvalidParameterError(f"secure_mode must be True or False, got {secure_mode!r}.")
    seeds = {"noise_seed": noise_seed,
             "clipping_options['seed']": (clipping_options or {}).get("seed")}
    given = [name for name, value in seeds.items() if value is not None]
    if given and secure_mode:
        raise InvalidParameterError(
            f"secure_mode=True draws from the operating system's cryptographic generator, "
            f"so it cannot be seeded: remove {', '.join(given)}.")
    if given:
        warnings.warn(
            f"{', '.join(given)} is set: the guarantee assumes that nobody knows the noise, "
            "and anyone who knows the seed can subtract it. Use seeds only for "
            "reproducible experiments, never for a released model.", PrivacyWarning,
            stacklevel=3)
    return secure_mode


def check_loss_reduction(loss_reduction) -> str:
    """``"sum"``: ``loss.backward()`` on the per-sample loss vector (Gluon's default).
    ``"mean"``: the loss was averaged over the batch first (``loss.mean().backward()``)."""
    if loss_reduction not in LOSS_REDUCTIONS:
        raise InvalidParameterError(
            f"loss_reduction must be 'sum' or 'mean', got {loss_reduction!r}.")
    return loss_reduction


class FixedSizeDetector:
    """Notice batches that are too regular to be Poisson samples.

    A Poisson batch's size is Binomial(N, q). Two independent draws are equal with
    probability ``p_eq = sum_n P(n)^2`` (about 1 / (2 sqrt(pi) sd), so 0.018 at qN=256).
    A shuffled loader with a fixed ``batch_size`` gives the same size every step. The
    detector raises after ``run`` equal sizes in a row, where ``p_eq^(run-1) <= 1e-12``:
    a true Poisson loader trips it with probability below 1e-12 per step (1e-7 over
    100,000 steps). Where equal sizes are likely anyway (p_eq >= 0.5: q close to 1, or
    fewer than about one sample per batch) it cannot tell, and checks nothing.
    """

    FALSE_ALARM = 1e-12

    def __init__(self, sample_rate: float, expected_batch_size: float) -> None:
        p_equal = _equal_size_probability(sample_rate, expected_batch_size)
        self.run = None if p_equal >= 0.5 else \
            1 + int(math.ceil(math.log(self.FALSE_ALARM) / math.log(p_equal)))
        self._last: Optional[int] = None
        self._count = 0

    def observe(self, size: int) -> None:
        """Record one logical step's batch size; raise when the run is too long."""
        if self.run is None:
            return
        self._count = self._count + 1 if size == self._last else 1
        self._last = size
        if self._count >= self.run:
            raise SamplingError(
                f"The last {self._count} steps all had exactly {size} samples. Poisson "
                "batches vary in size, so these batches come from a fixed-size loader "
                "(such as gluon.data.DataLoader with shuffle=True), which the Poisson "
                "accountant does not describe and can under-report. Use "
                "mxprivacy.DPDataLoader(..., trainer=trainer).")


def _equal_size_probability(sample_rate: float, expected_batch_size: float) -> float:
    from scipy import stats

    size = max(1, int(round(expected_batch_size / sample_rate)))
    pmf = stats.binom(size, sample_rate).pmf
    mean, sd = size * sample_rate, math.sqrt(size * sample_rate * (1 - sample_rate))
    lo, hi = max(0, int(mean - 12 * sd) - 1), min(size, int(mean + 12 * sd) + 2)
    values = pmf(range(lo, hi + 1))
    return float((values ** 2).sum())
