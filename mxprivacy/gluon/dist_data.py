"""How :class:`~mxprivacy.DPDataLoader` shards a data set over the W workers of a
``dist_sync`` job.

Every worker passes the *whole* data set (the same N records, in any order). Record r
belongs to worker ``owner(r) = int(SHA-256(r)[:8]) mod W``: a function of the record's
own bytes (every array's row, or its entry of ``record_ids``), never of its position.

- The shards partition the data set on every worker, whatever each worker's order.
- Adding or removing one record changes one shard only, its owner's: the other workers'
  pushes keep their distribution. That is what :meth:`DPTrainer.server_epsilon` (the
  guarantee against a curious parameter server) assumes. Positional blocks would not do:
  one record added at the front moves one record across every block boundary, and the
  (push_0, ..., push_W-1) tuple a server sees moves by up to sqrt(2W - 1) C.
- Equal records share an owner (both land in one shard: still a partition).
- Shards are balanced in expectation (binomial sizes, N/W +- sqrt(N/W)); a shard may be
  empty on tiny data sets (its worker then steps on empty batches). Each worker samples
  its shard at the global rate q and tells the trainer its shard's size, so the Poisson
  plausibility check expects q |shard| examples.

What the workers compare, and what they do not
    The loader registers N with the trainer, and the per-step agreement check (see
    :mod:`mxprivacy.gluon.dist_agreement`) stops every worker at the first step when N
    differs; with ``dataset_size`` set, every loader must hold exactly that many
    records. The *contents* are not compared through the kvstore: whatever each
    worker's copy holds, a record (by content) is only ever sampled by its owner, from
    its owner's copy, so no record is counted twice and the guarantee holds for the
    records actually trained on. And any deterministic digest of the records that
    reached the parameter server would let a curious server test candidate data sets
    (is this record in it?) without noise, which ``server_epsilon`` excludes. The
    loader's :attr:`~mxprivacy.DPDataLoader.data_digest` (SHA-256 of N and of the sorted
    record digests: of the multiset of records, whatever the order) is for comparing
    the workers' copies out of band (log it on every worker). Cost of the hashing, when
    the loader is built: 0.34 s for MNIST (60,000 x 784 float32, W = 2) on a 2-core
    machine. A gluon ``Dataset`` is read item by item once for it; give ``record_ids=``
    (file names, database keys: anything that identifies a record the same way on every
    worker) to skip that read. Owners and the digest then come from the ids.

Refused in a worker of a multi-worker job (``DMLC_ROLE=worker`` with
``DMLC_NUM_WORKER`` > 1, or a started dist trainer of W > 1 workers): a loader without
``trainer=`` and without ``num_workers``/``rank`` (it would sample the whole data set on
every worker: each record W times per step, sensitivity W C).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import List, Optional

import numpy as np
from mxnet import nd

from ..errors import InvalidParameterError

__all__ = ["record_digests", "owners", "data_digest", "resolve_shard", "plan_shard",
           "in_multi_worker_process", "Shard"]


def _record_column(array: np.ndarray, number: int) -> np.ndarray:
    if array.dtype.hasobject:
        raise InvalidParameterError(
            f"Array {number} holds Python objects, whose bytes differ between processes: "
            "records cannot be assigned to workers by their content. Convert it to a "
            "numeric or fixed-width string array, or pass record_ids=.")
    rows = np.ascontiguousarray(array).reshape(len(array), -1)
    return rows.view(np.uint8) if rows.size else rows.astype(np.uint8)


def _field_bytes(field) -> bytes:
    array = field.asnumpy() if isinstance(field, nd.NDArray) else np.asarray(field)
    if array.dtype.hasobject:
        raise InvalidParameterError(
            "A Dataset item holds Python objects, whose bytes differ between processes: "
            "records cannot be assigned to workers by their content. Pass record_ids=.")
    header = f"{array.dtype.str}{array.shape}".encode("ascii")
    return header + np.ascontiguousarray(array).tobytes()


def _id_bytes(value) -> bytes:
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str, bytes)):
        raise InvalidParameterError(
            f"record_ids must hold ints, strings or bytes, got {type(value).__name__}.")
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
    return f"{type(value).__name__}:".encode("ascii") + raw


def record_digests(size: int, arrays=None, dataset=None, record_ids=None) -> List[bytes]:
    """The SHA-256 of every record: its rows of ``arrays``, its ``dataset`` item, or its
    entry of ``record_ids``."""
    if record_ids is not None:
        ids = list(record_ids)
        if len(ids) != size:
            raise InvalidParameterError(
                f"record_ids has {len(ids)} entries for a data set of {size} records.")
        return [hashlib.sha256(_id_bytes(value)).digest() for value in ids]
    if arrays is None:
        digests = []
        for index in range(size):
            item = dataset[index]
            fields = item if isinstance(item, (tuple, list)) else (item,)
            digests.append(hashlib.sha256(b"".join(_field_bytes(f) for f in fields)).digest())
        return digests
    columns = [_record_column(array, number) for number, array in enumerate(arrays)]
    digests = []
    for index in range(size):
        state = hashlib.sha256()
        for column in columns:
            state.update(column[index])
        digests.append(state.digest())
    return digests


def owners(digests: List[bytes], num_workers: int) -> np.ndarray:
    """Each record's worker: the first 8 bytes of its digest, modulo W."""
    return np.asarray([int.from_bytes(d[:8], "little") % num_workers for d in digests],
                      dtype=np.int64)


def data_digest(digests: List[bytes], size: int) -> str:
    """``N=<size>;<SHA-256 of the sorted record digests>``: the same on two workers iff
    (up to hash collisions) they hold the same multiset of records."""
    state = hashlib.sha256(f"N={size};".encode("ascii"))
    for digest in sorted(digests):
        state.update(digest)
    return f"N={size};{state.hexdigest()}"


def in_multi_worker_process() -> bool:
    """Whether this process is a worker of a job of more than one worker."""
    from .dist_kvstore import started_workers

    if os.environ.get("DMLC_ROLE") == "worker" and \
            os.environ.get("DMLC_NUM_WORKER", "1").strip() != "1":
        return True
    return started_workers() > 1


def resolve_shard(num_workers, rank, trainer, sampling: str, size: int):
    """``(W, rank)``: given, or the trainer's; they must match a distributed trainer's."""
    if trainer is None and num_workers is None and rank is None and in_multi_worker_process():
        raise InvalidParameterError(
            "This process is a worker of a multi-worker job, but DPDataLoader was built "
            "without trainer= (and without num_workers= and rank=): it would sample the "
            "whole data set on every worker, so each record would be counted W times per "
            "step. Pass trainer=trainer (the loader then shards by the trainer's rank and "
            "announces each batch to it).")
    have = (getattr(trainer, "num_workers", 1), getattr(trainer, "rank", 0)) \
        if trainer is not None else (1, 0)
    workers = have[0] if num_workers is None else num_workers
    rank = have[1] if rank is None else rank
    for name, value, low in (("num_workers", workers, 1), ("rank", rank, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise InvalidParameterError(f"{name} must be an integer >= {low}, got {value!r}.")
    workers, rank = int(workers), int(rank)
    if rank >= workers:
        raise InvalidParameterError(f"rank must lie in [0, num_workers), got rank {rank} of "
                                    f"{workers} workers.")
    if trainer is not None and (workers, rank) != have:
        raise InvalidParameterError(
            f"DPDataLoader(num_workers={workers}, rank={rank}) but the trainer is worker "
            f"{have[1]} of {have[0]}: the shards would overlap or leave records out. Leave "
            "num_workers and rank unset; the loader reads them from the trainer.")
    if workers > 1 and sampling != "poisson":
        raise InvalidParameterError(
            "sampling='fixed' cannot be sharded over workers: the union of fixed-size "
            "draws from each shard is not a uniform draw from the whole data set. Use "
            "sampling='poisson'.")
    return workers, rank


def _check_global_size(trainer, size: int) -> None:
    """A dist trainer's N is global: every worker passes the whole data set."""
    expected = getattr(trainer, "dataset_size", None)
    if not getattr(trainer, "distributed", False) or expected is None or expected == size:
        return
    raise InvalidParameterError(
        f"DPDataLoader got {size} records, but the dist_sync trainer was built with "
        f"dataset_size={expected}, the size of the whole data set. Every worker must pass "
        "the whole data set (the same records; the loader keeps this worker's shard).")


@dataclasses.dataclass
class Shard:
    """This worker's part: ``indices`` into the whole data set (sorted); ``data_digest``
    of the records (None for one worker: nothing hashed)."""
    num_workers: int
    rank: int
    indices: np.ndarray
    data_digest: Optional[str]


def plan_shard(size: int, *, arrays=None, dataset=None, record_ids=None, trainer=None,
               num_workers: Optional[int] = None, rank: Optional[int] = None,
               sampling: str = "poisson") -> Shard:
    """Resolve (W, rank), check N, and pick this worker's records (see the module)."""
    if size < 1:
        raise InvalidParameterError("DPDataLoader needs at least one record.")
    workers, rank = resolve_shard(num_workers, rank, trainer, sampling, size)
    _check_global_size(trainer, size)
    if workers == 1:
        if record_ids is not None:
            record_digests(size, record_ids=record_ids)  # validated all the same
        return Shard(1, 0, np.arange(size, dtype=np.int64), None)
    digests = record_digests(size, arrays, dataset, record_ids)
    mine = np.flatnonzero(owners(digests, workers) == rank).astype(np.int64)
    return Shard(workers, rank, mine, data_digest(digests, size))
