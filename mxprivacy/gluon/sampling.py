"""Poisson sampling for ``gluon.data.DataLoader`` and a fast loader for in-memory arrays.

Poisson sampling includes every example independently with probability q, which is
what the subsampled-Gaussian accounting assumes. Batches therefore vary in size and can
be empty; an empty batch must still take a noise-only step (``trainer.step(0)``),
otherwise whether a step happened would leak. MXNet cannot hold zero-row arrays, so the
loader takes that step itself when given the trainer.
"""
from __future__ import annotations

import math
from typing import Iterator, List, Optional

import numpy as np
from mxnet import gluon, nd

from ..errors import EmptyBatchError, InvalidParameterError

__all__ = ["PoissonBatchSampler", "DPDataLoader"]


def _check_rate(sample_rate) -> float:
    rate = float(sample_rate)
    if not 0.0 < rate <= 1.0:
        raise InvalidParameterError(f"sample_rate must lie in (0, 1], got {sample_rate!r}.")
    return rate


class PoissonBatchSampler(gluon.data.Sampler):
    """Batch sampler: each batch holds each index independently with prob. ``sample_rate``.

    Parameters
    ----------
    num_examples : int
        Size of the data set, N.
    sample_rate : float
        q in (0, 1]; the expected batch size is q N.
    num_batches : int, optional
        Batches per epoch; ``ceil(1/q)`` by default, so an epoch sees N examples on average.
    seed : int, optional
        Seed of the sampling; use None (OS entropy) in production.
    """

    def __init__(self, num_examples: int, sample_rate: float, *,
                 num_batches: Optional[int] = None, seed: Optional[int] = None) -> None:
        if int(num_examples) != num_examples or num_examples < 1:
            raise InvalidParameterError(f"num_examples must be a positive integer, got {num_examples!r}.")
        self.num_examples = int(num_examples)
        self.sample_rate = _check_rate(sample_rate)
        self.num_batches = int(num_batches) if num_batches else int(math.ceil(1.0 / self.sample_rate))
        self._rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[List[int]]:
        for _ in range(self.num_batches):
            mask = self._rng.random(self.num_examples) < self.sample_rate
            yield np.flatnonzero(mask).tolist()

    def __len__(self) -> int:
        return self.num_batches


class DPDataLoader:
    """Iterate Poisson-sampled batches of ``arrays`` as NDArrays.

    Parameters
    ----------
    arrays : tuple of numpy arrays or NDArrays, or a gluon Dataset
        Same first dimension N. In-memory arrays are indexed directly (fast).
    sample_rate : float
        q; or give ``expected_batch_size`` instead (q = expected_batch_size / N).
    trainer : DPTrainer, optional
        Used to take the noise-only step of an empty batch. Without it an empty draw
        raises :class:`~mxprivacy.EmptyBatchError`.
    ctx : mxnet.Context, optional
    num_batches, seed : see :class:`PoissonBatchSampler`.
    """

    def __init__(self, arrays, sample_rate: Optional[float] = None, *,
                 expected_batch_size: Optional[int] = None, trainer=None, ctx=None,
                 num_batches: Optional[int] = None, seed: Optional[int] = None) -> None:
        self._dataset = arrays if isinstance(arrays, gluon.data.Dataset) else None
        self._arrays = None if self._dataset is not None else [
            a.asnumpy() if isinstance(a, nd.NDArray) else np.asarray(a) for a in arrays]
        size = len(self._dataset) if self._dataset is not None else len(self._arrays[0])
        if self._arrays is not None and any(len(a) != size for a in self._arrays):
            raise InvalidParameterError("All arrays must have the same first dimension.")
        if (sample_rate is None) == (expected_batch_size is None):
            raise InvalidParameterError("Give exactly one of sample_rate= or expected_batch_size=.")
        rate = sample_rate if sample_rate is not None else expected_batch_size / size
        self.sampler = PoissonBatchSampler(size, rate, num_batches=num_batches, seed=seed)
        self.sample_rate = self.sampler.sample_rate
        self.trainer = trainer
        self.ctx = ctx
        self.empty_batches = 0

    def __len__(self) -> int:
        return len(self.sampler)

    def _batch(self, indices: List[int]):
        if self._arrays is not None:
            return tuple(nd.array(a[indices], ctx=self.ctx, dtype=a.dtype) for a in self._arrays)
        return gluon.data.dataloader.default_batchify_fn([self._dataset[i] for i in indices])

    def __iter__(self):
        for indices in self.sampler:
            if indices:
                yield self._batch(indices)
                continue
            self.empty_batches += 1
            if self.trainer is None:
                raise EmptyBatchError(
                    "Poisson sampling drew an empty batch, which must still take a "
                    "noise-only step: pass trainer= to DPDataLoader, or call "
                    "trainer.step(0) yourself.")
            self.trainer.step(0)
