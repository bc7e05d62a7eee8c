"""What :class:`~mxprivacy.DPDataLoader` checks against its trainer: the same sampling,
rate (or N and B) and secure mode, so that the accountant charges what the loader draws.
"""
from __future__ import annotations

import math

import numpy as np

from ..accounting.step_sampling import RATE_TOLERANCE, StepSampling, check_sampling
from ..errors import InvalidParameterError

__all__ = ["check_rate", "loader_rate", "check_trainer_rate", "resolve_sampling",
           "fixed_batch_size", "check_trainer_fixed", "resolve_secure"]


def check_rate(sample_rate) -> float:
    rate = float(sample_rate)
    if not 0.0 < rate <= 1.0:
        raise InvalidParameterError(f"sample_rate must lie in (0, 1], got {sample_rate!r}.")
    return rate


def loader_rate(sample_rate, expected_batch_size, size: int) -> float:
    if (sample_rate is None) == (expected_batch_size is None):
        raise InvalidParameterError("Give exactly one of sample_rate= or expected_batch_size=.")
    if sample_rate is not None:
        return check_rate(sample_rate)
    try:
        batch = float(expected_batch_size)
    except (TypeError, ValueError):
        batch = math.nan
    if not 0 < batch <= size:
        raise InvalidParameterError(
            f"expected_batch_size must lie in (0, N] with N = {size}, "
            f"got {expected_batch_size!r}.")
    return batch / size


def check_trainer_rate(rate: float, trainer, expected_batch_size, size: int) -> None:
    """The accountant charges the trainer's q: the loader must sample at that q."""
    trainer_rate = getattr(trainer, "sample_rate", None)
    if trainer_rate is None or math.isclose(rate, trainer_rate, rel_tol=RATE_TOLERANCE):
        return
    given = (f"q = expected_batch_size / N = {expected_batch_size} / {size} = {rate!r}"
             if expected_batch_size is not None else f"sample_rate {rate!r}")
    raise InvalidParameterError(
        f"DPDataLoader samples at {given}, but the trainer accounts for "
        f"sample_rate {trainer_rate!r}: the reported epsilon would not match the sampling "
        f"actually done. Give the loader the trainer's rate "
        f"(DPDataLoader(..., sample_rate=trainer.sample_rate)), or build the trainer with "
        f"the loader's rate.")


def resolve_sampling(sampling, trainer) -> str:
    """The loader's sampling: the trainer's when not given; a different one is refused."""
    trainer_sampling = None if trainer is None else getattr(trainer, "sampling", "poisson")
    if sampling is None:
        return trainer_sampling or "poisson"
    sampling = check_sampling(sampling)
    if trainer_sampling is not None and sampling != trainer_sampling:
        raise InvalidParameterError(
            f"DPDataLoader(sampling={sampling!r}) but the trainer accounts for "
            f"sampling={trainer_sampling!r}: the reported epsilon would describe another "
            "sampling than the batches actually drawn. Build the trainer and the loader "
            "with the same sampling= (or leave the loader's unset: it follows the "
            "trainer).")
    return sampling


def fixed_batch_size(sample_rate, expected_batch_size, size: int) -> int:
    """B of a fixed-size loader: ``expected_batch_size``, or ``sample_rate * N`` when that
    is a whole number."""
    if (sample_rate is None) == (expected_batch_size is None):
        raise InvalidParameterError("Give exactly one of sample_rate= or expected_batch_size=.")
    if sample_rate is not None:
        rate = check_rate(sample_rate)
        batch = int(round(rate * size))
        if batch < 1 or not math.isclose(batch / size, rate, rel_tol=RATE_TOLERANCE):
            raise InvalidParameterError(
                f"sampling='fixed' draws a whole number of examples, but sample_rate * N = "
                f"{rate!r} * {size} is not one. Pass expected_batch_size=B.")
        return batch
    if isinstance(expected_batch_size, bool) or not isinstance(
            expected_batch_size, (int, np.integer, float)) or \
            int(expected_batch_size) != expected_batch_size or not 1 <= expected_batch_size <= size:
        raise InvalidParameterError(
            f"sampling='fixed' draws exactly B examples per batch: expected_batch_size "
            f"must be an integer in [1, N] with N = {size}, got {expected_batch_size!r}.")
    return int(expected_batch_size)


def check_trainer_fixed(scheme: StepSampling, trainer) -> None:
    """The accountant charges the trainer's (N, B): the loader must draw B of N."""
    want = (getattr(trainer, "dataset_size", None), getattr(trainer, "expected_batch_size", None))
    if want == (scheme.dataset_size, scheme.sample_size):
        return
    raise InvalidParameterError(
        f"DPDataLoader draws {scheme.describe()}, but the trainer accounts for "
        f"B = {want[1]} of N = {want[0]}: the reported epsilon would not match the "
        "sampling actually done. Build the trainer with dataset_size=len(data) and "
        "expected_batch_size=B, and give the loader the same data and B.")


def resolve_secure(secure_mode, trainer) -> bool:
    trainer_secure = bool(getattr(trainer, "secure_mode", False))
    if secure_mode is None:
        return trainer_secure
    if not secure_mode and trainer_secure:
        raise InvalidParameterError(
            "The trainer runs in secure mode but DPDataLoader was given secure_mode=False: "
            "the sample would come from a non-cryptographic generator. Leave secure_mode "
            "unset (it follows the trainer) or pass secure_mode=True.")
    return bool(secure_mode)
