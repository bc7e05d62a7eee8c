"""What :class:`~mxprivacy.DPDataLoader` checks against its trainer and its job: the same
sampling, rate (or N and B) and secure mode, so that the accountant charges what the
loader draws; and, in a worker of a multi-worker job, the job's number of workers and
rank (see :mod:`mxprivacy.gluon.dist_data`).
"""
from __future__ import annotations

import math
import os
from typing import Optional, Tuple

import numpy as np

from ..accounting.step_sampling import RATE_TOLERANCE, StepSampling, check_sampling
from ..errors import InvalidParameterError

__all__ = ["check_rate", "loader_rate", "check_trainer_rate", "resolve_sampling",
           "fixed_batch_size", "check_trainer_fixed", "resolve_secure",
           "in_multi_worker_process", "job_shard", "resolve_shard", "check_global_size"]


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


def _started_job() -> Optional[Tuple[int, int]]:
    """(rank, W) of the distributed DPTrainer started in this process, or None."""
    from . import dist_kvstore

    return dist_kvstore._PROCESS.started


def job_shard() -> Tuple[Optional[int], Optional[int]]:
    """(W, rank) of the multi-worker job this process is a worker of, as far as known:
    W from a started dist trainer or ``DMLC_NUM_WORKER``, the rank from a started dist
    trainer only (ps-lite assigns it when the kvstore is created); (None, None) when
    this process is not a worker of a multi-worker job."""
    started = _started_job()
    if started is not None and started[1] > 1:
        return started[1], started[0]
    if os.environ.get("DMLC_ROLE") == "worker":
        declared = os.environ.get("DMLC_NUM_WORKER", "1").strip()
        if declared != "1":
            return (int(declared) if declared.isdigit() else None), None
    return None, None


def in_multi_worker_process() -> bool:
    """Whether this process is a worker of a job of more than one worker."""
    if os.environ.get("DMLC_ROLE") == "worker" and \
            os.environ.get("DMLC_NUM_WORKER", "1").strip() != "1":
        return True
    started = _started_job()
    return started is not None and started[1] > 1


def _check_job_shard(num_workers, rank) -> None:
    """Explicit (W, rank) in a worker of a multi-worker job must be the job's."""
    workers, job_rank = job_shard()
    if workers is not None and num_workers is not None and num_workers != workers:
        raise InvalidParameterError(
            f"DPDataLoader(num_workers={num_workers}) in a worker of a job of {workers} "
            f"workers: every worker would keep another part of the data set, and a record "
            f"could be sampled by several workers in one step (with num_workers=1, by "
            f"all {workers}: sensitivity {workers} C while the accountant charges C). "
            "Pass trainer=trainer (the loader reads W and the rank from the dist "
            f"trainer), or num_workers={workers} and this worker's rank.")
    if job_rank is not None and rank is not None and rank != job_rank:
        raise InvalidParameterError(
            f"DPDataLoader(rank={rank}) in worker rank {job_rank} of this job: two workers "
            "would keep the same shard and a record could be sampled twice in one step. "
            "Pass trainer=trainer (the loader reads the rank from the dist trainer), or "
            f"rank={job_rank}.")


def _check_index(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InvalidParameterError(f"{name} must be an integer >= {low}, got {value!r}.")
    return int(value)


def resolve_shard(num_workers, rank, trainer, sampling: str) -> Tuple[int, int]:
    """``(W, rank)``: given, or the trainer's; they must match a distributed trainer's,
    and in a worker of a multi-worker job, the job's."""
    if trainer is None and num_workers is None and rank is None and in_multi_worker_process():
        raise InvalidParameterError(
            "This process is a worker of a multi-worker job, but DPDataLoader was built "
            "without trainer= (and without num_workers= and rank=): it would sample the "
            "whole data set on every worker, so each record would be counted W times per "
            "step. Pass trainer=trainer (the loader then shards by the trainer's rank and "
            "announces each batch to it).")
    have = (getattr(trainer, "num_workers", 1), getattr(trainer, "rank", 0)) \
        if trainer is not None else (1, 0)
    given = (None if num_workers is None else _check_index("num_workers", num_workers, 1),
             None if rank is None else _check_index("rank", rank, 0))
    workers, rank = (have[0] if given[0] is None else given[0],
                     have[1] if given[1] is None else given[1])
    if rank >= workers:
        raise InvalidParameterError(f"rank must lie in [0, num_workers), got rank {rank} of "
                                    f"{workers} workers.")
    if trainer is not None and (workers, rank) != have:
        raise InvalidParameterError(
            f"DPDataLoader(num_workers={workers}, rank={rank}) but the trainer is worker "
            f"{have[1]} of {have[0]}: the shards would overlap or leave records out. Leave "
            "num_workers and rank unset; the loader reads them from the trainer.")
    _check_job_shard(*given)
    if workers > 1 and sampling != "poisson":
        raise InvalidParameterError(
            "sampling='fixed' cannot be sharded over workers: the union of fixed-size "
            "draws from each shard is not a uniform draw from the whole data set. Use "
            "sampling='poisson'.")
    return workers, rank


def check_global_size(trainer, size: int) -> None:
    """A dist trainer's N is global: every worker passes the whole data set."""
    expected = getattr(trainer, "dataset_size", None)
    if not getattr(trainer, "distributed", False) or expected is None or expected == size:
        return
    raise InvalidParameterError(
        f"DPDataLoader got {size} records, but the dist_sync trainer was built with "
        f"dataset_size={expected}, the size of the whole data set. Every worker must pass "
        "the whole data set (the same records; the loader keeps this worker's shard).")
