"""Batch samplers for DP-SGD (Poisson and fixed-size) and a fast loader for in-memory
arrays.

Poisson sampling (``sampling="poisson"``, the default) includes every example
independently with probability q, which is what the Poisson-subsampled Gaussian
accounting assumes. Batches therefore vary in size and can be empty; an empty batch must
still take a noise-only step (``trainer.step(0)``), otherwise whether a step happened
would leak. MXNet cannot hold zero-row arrays, so the loader takes that step itself when
given the trainer.

Fixed-size sampling (``sampling="fixed"``) draws, at every step, a uniformly random set
of exactly B distinct examples, independently of every other step (so one example can be
in two consecutive batches, with probability B/N). It is accounted as sampling without
replacement under the replace-one relation (see
:mod:`mxprivacy.accounting.step_sampling`). It is not a shuffled epoch: the batches of a
shuffled epoch are not independent draws, and neither analysis applies to them.

The sample must be secret: anyone who knows which steps contain a record can attack those
steps alone, and the subsampling amplification is lost (on the MNIST defaults, an
epsilon of 2.6 becomes about 56). So the generator is seeded from OS entropy by default,
and an explicit seed raises a :class:`~mxprivacy.PrivacyWarning`. With ``secure=True``
every draw comes from ``os.urandom``: an exact Bernoulli(q) per inclusion (see
:func:`mxprivacy.mechanisms.secure.bernoulli`), or exactly uniform integers for the
fixed-size subset (:func:`mxprivacy.mechanisms.secure.uniform_below`); a seed is then an
error.

Several workers (a ``dist_sync`` trainer): every worker gives :class:`DPDataLoader` the
same whole data set; the loader keeps the records its rank owns (by a hash of each
record, see :mod:`mxprivacy.gluon.dist_data`) and Poisson-samples them at the trainer's
(global) rate q, so the union over workers is a Poisson sample of the whole data set.
Every worker's epoch has the same number of batches (ceil(1/q)), and an empty local batch
still steps. An explicit seed is combined with the rank, so ranks never share a stream.
The loop then sees fewer batches than the steps taken, by a different count on every
worker: set the number of steps with ``num_batches=`` (or whole passes) and let the loop
run out; a loop left after a number of its iterations ends the workers after different
steps (the workers still stepping raise :class:`~mxprivacy.WorkersOutOfStepError`).
"""
from __future__ import annotations

import warnings
from typing import Iterator, List, Optional

import numpy as np
from mxnet import gluon, nd

from ..accounting.calibration import batches_per_epoch
from ..accounting.step_sampling import StepSampling
from ..errors import EmptyBatchError, InvalidParameterError, PrivacyWarning
from ..mechanisms import secure as _secure
from .devices import as_context_list, split_and_load, split_indices
from .dist_data import plan_shard
from .loader_checks import (check_rate, check_trainer_fixed, check_trainer_rate, fixed_batch_size,
                            loader_rate, resolve_secure, resolve_sampling)

__all__ = ["PoissonBatchSampler", "FixedSizeBatchSampler", "DPDataLoader"]

SEEDED_SAMPLE_WARNING = (
    "Batch sampling seeded with an explicit seed: the guarantee assumes a secret "
    "sample, and anyone who knows the seed knows which steps contain a record (the "
    "reported epsilon then does not hold against them). Use seed=None (OS entropy) or "
    "secure mode outside reproducible experiments.")


def _check_num_batches(num_batches) -> Optional[int]:
    if num_batches is not None and (isinstance(num_batches, bool) or
                                    int(num_batches) != num_batches or num_batches < 1):
        raise InvalidParameterError(
            f"num_batches must be a positive integer or None, got {num_batches!r}.")
    return None if num_batches is None else int(num_batches)


def _sampling_rng(seed, secure: bool):
    """None for the secure sampler; else numpy's default generator, warning if seeded."""
    if secure and seed is not None:
        raise InvalidParameterError(
            "A sampling seed cannot be combined with secure mode: a seeded sample is "
            "predictable. Pass seed=None, or drop secure mode for a reproducible "
            "(not private against whoever knows the seed) experiment.")
    if secure:
        return None
    if seed is not None:
        warnings.warn(SEEDED_SAMPLE_WARNING, PrivacyWarning, stacklevel=3)
    return np.random.default_rng(seed)  # None: seeded from OS entropy


class PoissonBatchSampler(gluon.data.Sampler):
    """Batch sampler: each batch holds each index independently with prob. ``sample_rate``.

    Parameters
    ----------
    num_examples : int
        Size of the data set, N (0 yields empty batches: a worker's empty shard).
    sample_rate : float
        q in (0, 1]; the expected batch size is q N.
    num_batches : int, optional
        Batches per epoch; ``ceil(1/q)`` by default, so an epoch sees N examples on average.
    seed : int, optional
        Seed of the sampling, for reproducible experiments only: it raises a
        :class:`~mxprivacy.PrivacyWarning`. None (the default) seeds from OS entropy.
    secure : bool
        Draw every inclusion as an exact Bernoulli(q) from the OS CSPRNG. No seed.
    """

    def __init__(self, num_examples: int, sample_rate: float, *,
                 num_batches: Optional[int] = None, seed: Optional[int] = None,
                 secure: bool = False) -> None:
        if int(num_examples) != num_examples or num_examples < 0:  # 0: an empty shard
            raise InvalidParameterError(
                f"num_examples must be a non-negative integer, got {num_examples!r}.")
        self.num_examples = int(num_examples)
        self.sample_rate = check_rate(sample_rate)
        self.num_batches = _check_num_batches(num_batches) or batches_per_epoch(self.sample_rate)
        self.secure = bool(secure)
        self._rng = _sampling_rng(seed, self.secure)

    def _mask(self) -> np.ndarray:
        if self.secure:
            return _secure.bernoulli(self.sample_rate, self.num_examples)
        return self._rng.random(self.num_examples) < self.sample_rate

    def __iter__(self) -> Iterator[List[int]]:
        for _ in range(self.num_batches):
            yield np.flatnonzero(self._mask()).tolist()

    def __len__(self) -> int:
        return self.num_batches


class FixedSizeBatchSampler(gluon.data.Sampler):
    """Batch sampler: each batch is a uniformly random set of exactly ``batch_size``
    distinct indices, drawn independently at every batch (not a shuffled epoch).

    Every subset of ``batch_size`` indices is equally likely (Floyd's algorithm on
    exactly uniform integers), so each index is in a batch with probability B / N,
    independently of the other batches. Indices come sorted.

    Parameters
    ----------
    num_examples : int
        Size of the data set, N.
    batch_size : int
        B in [1, N].
    num_batches : int, optional
        Batches per epoch; ``ceil(N/B)`` by default.
    seed : int, optional
        Seed of the sampling, for reproducible experiments only: it raises a
        :class:`~mxprivacy.PrivacyWarning`. None (the default) seeds from OS entropy.
    secure : bool
        Draw every integer from the OS CSPRNG (``os.urandom``). No seed.
    """

    def __init__(self, num_examples: int, batch_size: int, *,
                 num_batches: Optional[int] = None, seed: Optional[int] = None,
                 secure: bool = False) -> None:
        scheme = StepSampling.fixed(num_examples, batch_size)  # validates N and B
        self.num_examples, self.batch_size = scheme.dataset_size, scheme.sample_size
        self.sample_rate = scheme.sample_rate
        self.num_batches = _check_num_batches(num_batches) or scheme.batches_per_epoch
        self.secure = bool(secure)
        self._rng = _sampling_rng(seed, self.secure)

    def _uniform_below(self, bounds: np.ndarray) -> np.ndarray:
        """One exactly uniform integer in [0, b) for each bound b."""
        if self.secure:
            return _secure.uniform_below(bounds)
        return self._rng.integers(0, bounds)

    def draw(self) -> List[int]:
        """One batch: Floyd's algorithm. For j = N-B, ..., N-1 it draws t uniform in
        [0, j] and takes t, or j when t is already taken: every B-subset has
        probability 1 / binom(N, B)."""
        size, batch = self.num_examples, self.batch_size
        picks = self._uniform_below(np.arange(size - batch + 1, size + 1, dtype=np.int64))
        chosen: set = set()
        for j, t in zip(range(size - batch, size), picks.tolist()):
            chosen.add(j if t in chosen else t)
        return sorted(chosen)

    def __iter__(self) -> Iterator[List[int]]:
        for _ in range(self.num_batches):
            yield self.draw()

    def __len__(self) -> int:
        return self.num_batches


class DPDataLoader:
    """Iterate Poisson-sampled or fixed-size batches of ``arrays`` as NDArrays.

    Parameters
    ----------
    arrays : tuple of numpy arrays or NDArrays, or a gluon Dataset
        Same first dimension N. In-memory arrays are indexed directly (fast).
    sample_rate : float
        q; or give ``expected_batch_size`` instead (q = expected_batch_size / N).
    expected_batch_size : int
        qN for Poisson sampling; for ``sampling="fixed"``, the exact batch size B.
    sampling : {"poisson", "fixed"}, optional
        ``"poisson"``: each example in each batch independently with probability q
        (:class:`PoissonBatchSampler`). ``"fixed"``: each batch a uniformly random set of
        exactly B examples, drawn independently at every step
        (:class:`FixedSizeBatchSampler`; an epoch is ``ceil(N/B)`` batches). None (the
        default) follows ``trainer.sampling`` ("poisson" without a trainer); another
        sampling than the trainer's is refused.
    trainer : DPTrainer, optional
        Used to take the noise-only step of an empty batch. Without it an empty draw
        raises :class:`~mxprivacy.EmptyBatchError`. Its ``sample_rate`` must equal the
        loader's q (relative tolerance 1e-9), else :class:`~mxprivacy.InvalidParameterError`;
        with ``sampling="fixed"`` its ``dataset_size`` and ``expected_batch_size`` must be
        the loader's N and B.
    ctx : mxnet.Context or list of Context, optional
        Where the batches go. With a list, each array of a batch comes as a list of
        slices, one per device that gets rows (see :func:`mxprivacy.split_and_load`):
        ``for xs, ys in loader``, with at least two rows per slice (one slice for a
        batch of one).
    num_batches, seed : see :class:`PoissonBatchSampler` and :class:`FixedSizeBatchSampler`.
        With several workers a seed is combined with the rank (ranks never share a stream).
    num_workers, rank : int, optional
        Shard the data set over W workers: this loader keeps the records that rank owns
        (by a hash of each record's content, see :mod:`mxprivacy.gluon.dist_data`) and
        samples them at rate q = expected_batch_size / N, N being the *whole* data set's
        size (every worker passes the whole data set, in any order). Default: the
        trainer's (a ``dist_sync`` :class:`~mxprivacy.DPTrainer` knows both), else one
        worker; in a worker of a multi-worker job, a loader with neither is refused.
        Poisson sampling only. With a dist trainer, every worker's N must be the same
        (checked at every step), and the number of steps must be set here
        (``num_batches``, whole passes), never by leaving the loop early: the loop does
        not see the steps of empty local batches (see the module). ``loader.shard`` holds the kept records' indices;
        ``loader.data_digest`` (W > 1) is a SHA-256 of the multiset of records, to
        compare the workers' copies out of band.
    record_ids : sequence of int or str, optional
        With several workers: one id per record, the same on every worker, used instead
        of the records' content to assign them to workers (a ``Dataset`` is then not
        read in full when the loader is built).
    secure_mode : bool, optional
        Sample from the OS CSPRNG. None (default) follows ``trainer.secure_mode``
        (False without a trainer); False with a secure trainer is an error.
    """

    def __init__(self, arrays, sample_rate: Optional[float] = None, *,
                 expected_batch_size: Optional[int] = None, trainer=None, ctx=None,
                 num_batches: Optional[int] = None, seed: Optional[int] = None,
                 secure_mode: Optional[bool] = None, sampling: Optional[str] = None,
                 num_workers: Optional[int] = None, rank: Optional[int] = None,
                 record_ids=None) -> None:
        self._dataset = arrays if isinstance(arrays, gluon.data.Dataset) else None
        self._arrays = None if self._dataset is not None else [
            a.asnumpy() if isinstance(a, nd.NDArray) else np.asarray(a) for a in arrays]
        size = len(self._dataset) if self._dataset is not None else len(self._arrays[0])
        if self._arrays is not None and any(len(a) != size for a in self._arrays):
            raise InvalidParameterError("All arrays must have the same first dimension.")
        self.sampling = resolve_sampling(sampling, trainer)
        shard = plan_shard(size, arrays=self._arrays, dataset=self._dataset,
                           record_ids=record_ids, trainer=trainer, num_workers=num_workers,
                           rank=rank, sampling=self.sampling)
        self.num_workers, self.rank, self.shard = shard.num_workers, shard.rank, shard.indices
        if self.num_workers > 1 and seed is not None:
            seed = np.random.SeedSequence(seed, spawn_key=(self.rank,))
        if self.sampling == "fixed":
            scheme = StepSampling.fixed(size, fixed_batch_size(sample_rate,
                                                                expected_batch_size, size))
            if trainer is not None:
                check_trainer_fixed(scheme, trainer)
        else:
            rate = loader_rate(sample_rate, expected_batch_size, size)
            if trainer is not None:
                check_trainer_rate(rate, trainer, expected_batch_size, size)
        self.secure_mode = resolve_secure(secure_mode, trainer)
        options = dict(num_batches=num_batches, seed=seed, secure=self.secure_mode)
        self.sampler = FixedSizeBatchSampler(size, scheme.sample_size, **options) \
            if self.sampling == "fixed" else PoissonBatchSampler(len(self.shard), rate, **options)
        register = getattr(trainer, "_register_loader", None)
        if register is not None:  # its Poisson check expects q |shard|; data agreement
            register(size, len(self.shard))
        self.data_digest = shard.data_digest  # SHA-256 of the multiset of records (W > 1)
        self.sample_rate = self.sampler.sample_rate
        self.trainer = trainer
        self.ctx = ctx
        self._contexts = as_context_list(ctx) if isinstance(ctx, (list, tuple)) else None
        self.empty_batches = 0

    def __len__(self) -> int:
        return len(self.sampler)

    def _batch(self, indices: List[int]):
        if self._contexts is not None:
            return self._split_batch(indices)
        indices = self._global(indices)
        if self._arrays is not None:
            return tuple(nd.array(a[indices], ctx=self.ctx, dtype=a.dtype) for a in self._arrays)
        batch = self._read_dataset(indices)
        if self.ctx is None:
            return batch
        items = batch if isinstance(batch, (list, tuple)) else [batch]
        moved = [b.as_in_context(self.ctx) if isinstance(b, nd.NDArray) else b for b in items]
        return type(batch)(moved) if isinstance(batch, (list, tuple)) else moved[0]

    def _global(self, indices: List[int]) -> np.ndarray:
        """Indices into the whole data set of the shard's ``indices``."""
        return self.shard[np.asarray(indices, dtype=np.int64)]

    def _read_dataset(self, indices):
        """Items at (global) ``indices`` batched as Gluon does."""
        return gluon.data.dataloader.default_batchify_fn([self._dataset[int(i)]
                                                          for i in indices])

    def _split_batch(self, indices: List[int]):
        """Each array as a list of per-device slices."""
        indices = self._global(indices)
        if self._arrays is not None:
            chunks = split_indices(indices, len(self._contexts))
            return tuple([nd.array(a[chunk], ctx=c, dtype=a.dtype)
                          for chunk, c in zip(chunks, self._contexts)] for a in self._arrays)
        batch = self._read_dataset(indices)
        items = batch if isinstance(batch, (list, tuple)) else [batch]
        split = [split_and_load(b, self._contexts) for b in items]
        return tuple(split) if isinstance(batch, (list, tuple)) else split[0]

    def __iter__(self):
        for indices in self.sampler:
            if self.trainer is not None:  # the trainer checks step(n) against it
                self.trainer.expect_examples(len(indices))
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
