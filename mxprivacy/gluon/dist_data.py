"""How :class:`~mxprivacy.DPDataLoader` shards a data set over the W workers of a
``dist_sync`` job.

Every worker passes the *whole* data set (the same N records, in any order). Record r
belongs to worker ``owner(r) = int(SHA-256(r)[:8]) mod W``: a function of the record's
own content (or of its entry of ``record_ids``), never of its position.

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

The canonical encoding hashed (one for arrays and for Dataset items)
    A record is its fields (its row of every array, or the fields of its Dataset item),
    each hashed as its shape without size-1 axes and its values, as numbers whatever
    their type (bool, int, float of any width and byte order), -0.0 as 0.0 and one NaN:
    little-endian float32 when every value of the field is exact in float32 (half the
    bytes to hash), else float64, and int64 for a field of integers beyond 2**53; the
    form depends on the values only. Strings are UTF-8. So a record has one owner
    whatever its container (float32 or float64 features, float or int labels, a
    big-endian file, numpy arrays or an ``ArrayDataset`` of NDArrays). Values that
    differ (0.1 parsed as float64 versus float32) are other records.

    A gluon Dataset is hashed under gluon's lazy transforms (``dataset.transform(fn)``,
    ``transform_first(fn)``, also below ``filter``/``take``/``shard``): a random
    augmentation applied there does not move records. Items are read twice, and a
    Dataset whose two reads differ (an augmentation inside ``__getitem__``, e.g.
    ``MNIST(transform=...)``) is refused with
    :class:`~mxprivacy.NondeterministicDatasetError`.

``record_ids``
    One id per record (file name, database key), the same for that record on every
    worker: the owner is then a function of the id alone. Ids must travel with their
    record: positions in each worker's own copy are not ids (two orders would give one
    record two owners). The contents are still read and hashed:
    :attr:`~mxprivacy.DPDataLoader.data_digest` then covers the (id, content) pairs, and
    the partition below also counts the pairs' owners, so workers whose ids name other
    records are caught like workers with other contents.

What the workers compare (in band, at every step, and out of band)
    The loader registers N and the *partition* with the trainer: how many records each
    rank owns (``owners=[n_0, ..., n_W-1]``, summing to N; with ``record_ids``, the
    counts by id and ``pairs=[...]``, the counts the (id, content) pairs would give).
    The per-step agreement check (see
    :mod:`mxprivacy.gluon.dist_agreement`) stops every worker at the first step when
    they differ. A record whose encoding or content differs on two workers and so moves
    to another owner (and could be trained by two workers) changes the counts, and the
    job stops. This check is on aggregates: several differing records whose moves cancel
    in the counts pass it. The workers' copies must hold the same records; compare
    :attr:`~mxprivacy.DPDataLoader.data_digest` (SHA-256 of N and of the sorted record
    digests: of the multiset of records, whatever the order) out of band. It is not
    pushed: a digest of the whole data set would let a curious server test candidate
    data sets without noise. The counts and N do reach it (as 32 bits of a SHA-256):
    they are treated as public, like N; given the other records, the counts tell which
    shard one record is in.

Cost, when the loader is built (2-core machine, MNIST 60,000 x 784 float32, W = 2):
0.33 s for arrays or an ``ArrayDataset`` of arrays (hashed in blocks); 0.8 s for a
Dataset read item by item (twice, then hashed in blocks).

Refused in a worker of a multi-worker job (``DMLC_ROLE=worker`` with
``DMLC_NUM_WORKER`` > 1, or a started dist trainer of W > 1 workers): a loader without
``trainer=`` and without ``num_workers``/``rank`` (it would sample the whole data set on
every worker: each record W times per step, sensitivity W C), and ``num_workers`` or
``rank`` other than the job's (``num_workers=1`` on every worker samples every record
W times; a rank is checked once a dist trainer has started in the process).
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
from typing import List, Optional, Tuple

import numpy as np
from mxnet import gluon, nd
from mxnet.gluon.data import dataset as _gluon_dataset

from ..errors import InvalidParameterError, NondeterministicDatasetError
from .loader_checks import check_global_size, in_multi_worker_process, resolve_shard

__all__ = ["record_digests", "content_digests", "id_digests", "owners", "owner_counts",
           "data_digest", "resolve_shard", "plan_shard", "in_multi_worker_process",
           "Shard"]

_EXACT = 2.0 ** 53  # integers up to this size are exact in float64
_NAN = {"<f4": np.uint32(0x7FC00000), "<f8": np.uint64(0x7FF8000000000000)}
_BLOCK_BYTES = 1 << 22  # canonical float64 bytes per block of records
_ITEMS = 1024  # Dataset items read per chunk


def _header(tag: bytes, shape) -> bytes:
    dims = [d for d in shape if d != 1]
    return tag + np.asarray([len(dims)] + dims, dtype="<i8").tobytes()


def _canonical(block: np.ndarray, dtype: str) -> np.ndarray:
    """``block`` as little-endian ``dtype`` (a copy), -0.0 as 0.0, one NaN."""
    values = block.astype(dtype, order="C")
    values += 0.0  # -0.0 + 0.0 is 0.0
    nan = np.isnan(values)
    if nan.any():
        values.view(dtype.replace("f", "u"))[nan] = _NAN[dtype]
    return values


def _big_integer_rows(values: np.ndarray) -> np.ndarray:
    """The records (rows of float ``values``) of integers only, one beyond 2**53: exact
    in int64 only, so encoded as int64 (as an integer array holding them is)."""
    big = np.zeros(len(values), dtype=bool)
    flat = values.ravel()  # fmax/fmin skip NaN
    if flat.size and (np.fmax.reduce(flat) > _EXACT or np.fmin.reduce(flat) < -_EXACT):
        whole = np.isfinite(values) & (values == np.floor(values)) & \
            (values >= -2.0 ** 63) & (values < 2.0 ** 63)
        big = np.all(whole, axis=1) & np.any(np.abs(values) > _EXACT, axis=1)
    return big


def _integer_values(block: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    if block.dtype.kind == "u" and block.size and block.max() >= np.uint64(2 ** 63):
        raise InvalidParameterError(
            "An array holds unsigned integers of 2**63 or more: convert it to int64 or "
            "float64.")
    ints = block.astype("<i8", order="C")
    big = np.any((ints > 2 ** 53) | (ints < -2 ** 53), axis=1)  # compared as int64
    return ints, big, ints.astype("<f8")


def _numeric_rows(block: np.ndarray, shape) -> Tuple[List[bytes], object]:
    """Per record a header (tag and shape) and its values: ``f`` and float32 bytes when
    every value is exact in float32; else ``F`` and float64; ``I`` and int64 for a
    record of integers beyond 2**53. The tier depends on the values only."""
    if block.dtype.kind in "biu":
        ints, big, wide = _integer_values(block)
    elif block.dtype.itemsize <= 4:  # float16, float32: every value exact in float32
        narrow = _canonical(block, "<f4")
        big, wide = _big_integer_rows(narrow), None
        ints = narrow.astype("<f8").astype("<i8") if big.any() else None
    else:
        wide = _canonical(block, "<f8")
        big = _big_integer_rows(wide)
        ints = wide.astype("<i8") if big.any() else None
    if wide is None:
        exact = ~big
    else:
        with np.errstate(over="ignore"):
            narrow = _canonical(wide, "<f4")
        exact = np.all((narrow == wide) | np.isnan(wide), axis=1) & ~big
    tags = {tag: _header(tag, shape) for tag in (b"f", b"F", b"I")}
    if exact.all():
        return [tags[b"f"]] * len(block), narrow.view(np.uint8)
    headers, payloads = [], []
    for index in range(len(block)):
        tag = b"I" if big[index] else b"f" if exact[index] else b"F"
        headers.append(tags[tag])
        payloads.append({b"I": ints, b"f": narrow, b"F": wide}[tag][index])
    return headers, payloads


def _text_rows(block: np.ndarray, shape) -> Tuple[List[bytes], List[bytes]]:
    rows = []
    for row in block:
        parts = []
        for value in row:
            raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            parts += [len(raw).to_bytes(8, "little"), raw]
        rows.append(b"".join(parts))
    return [_header(b"T", shape)] * len(block), rows


def _encode_rows(block: np.ndarray, shape, where: str):
    """``(headers, payloads)``: the canonical bytes of each record of ``block`` (records
    x values), whose records are fields of ``shape``."""
    _check_encodable(block.dtype, where)
    return (_numeric_rows if block.dtype.kind in "biuf" else _text_rows)(block, shape)


def _check_encodable(dtype: np.dtype, where: str) -> None:
    if dtype.kind in "biufUS":
        return
    raise InvalidParameterError(
        f"{where} holds {dtype} values (Python objects, complex numbers...), which "
        "have no canonical encoding: records cannot be assigned to workers by their "
        "content (record_ids do not skip it: the contents are compared too). Convert "
        "it to a numeric or string array (a Dataset item: numpy arrays, NDArrays, "
        "numbers or strings).")


def _record_state(fields: int):
    return hashlib.sha256(b"R" + fields.to_bytes(8, "little"))


def _array_digests(arrays, size: int, what: str = "Array") -> List[bytes]:
    widths = [int(np.prod(a.shape[1:], dtype=np.int64)) for a in arrays]
    step = max(1, _BLOCK_BYTES // max(8 * max(widths), 1))
    start_state = _record_state(len(arrays))
    digests = []
    for start in range(0, size, step):
        rows = min(step, size - start)
        columns = [_encode_rows(a[start:start + rows].reshape(rows, width), a.shape[1:],
                                f"{what} {number}")
                   for number, (a, width) in enumerate(zip(arrays, widths))]
        for index in range(rows):
            state = start_state.copy()
            for headers, payloads in columns:
                state.update(headers[index])
                state.update(payloads[index])
            digests.append(state.digest())
    return digests


def _field_array(field) -> np.ndarray:
    return field.asnumpy() if isinstance(field, nd.NDArray) else np.asarray(field)


def _base(dataset, index: int):
    """``(dataset, index)`` under gluon's lazy transforms, filters and samples."""
    while True:
        if isinstance(dataset, _gluon_dataset._LazyTransformDataset):
            dataset = dataset._data
        elif isinstance(dataset, (_gluon_dataset._FilteredDataset,
                                  _gluon_dataset._SampledDataset)):
            dataset, index = dataset._dataset, int(dataset._indices[index])
        else:
            return dataset, index


def _plain_arrays(dataset) -> Optional[list]:
    """The arrays of an ``ArrayDataset`` of numpy arrays or NDArrays (under lazy
    transforms only: they keep the indices), hashed like arrays; else None."""
    while isinstance(dataset, _gluon_dataset._LazyTransformDataset):
        dataset = dataset._data
    if type(dataset) is not gluon.data.ArrayDataset or not all(
            isinstance(a, (np.ndarray, nd.NDArray)) for a in dataset._data):
        return None
    return [a.asnumpy() if isinstance(a, nd.NDArray) else a for a in dataset._data]


def _item_fields(item) -> List[np.ndarray]:
    fields = [_field_array(field) for field in
              (item if isinstance(item, (tuple, list)) else (item,))]
    for number, field in enumerate(fields):
        _check_encodable(field.dtype, f"Dataset item field {number}")
    return fields


def _read_twice(dataset, index: int) -> List[np.ndarray]:
    """The fields of item ``index`` (under gluon's lazy transforms), read twice."""
    base, where = _base(dataset, index)
    first, second = _item_fields(base[where]), _item_fields(base[where])
    if len(first) != len(second) or any(
            a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes()
            for a, b in zip(first, second)):
        raise NondeterministicDatasetError(
            f"Item {index} of the Dataset differed between two reads (a random "
            "augmentation inside its __getitem__?), so records cannot be assigned to "
            "workers by their content: with another draw on each worker, a record "
            "could be trained on by two workers. Apply the augmentation with "
            "dataset.transform_first(fn) or dataset.transform(fn) (the loader hashes "
            "the records under gluon's lazy transforms), or to the batches after the "
            "loader.")
    return first


def _item_digests(dataset, size: int) -> List[bytes]:
    """Items read in chunks; runs of items whose fields have one dtype and shape are
    stacked and hashed as arrays (the same encoding, row by row)."""
    digests = []
    for start in range(0, size, _ITEMS):
        items = [_read_twice(dataset, i) for i in range(start, min(size, start + _ITEMS))]
        for _, run in itertools.groupby(items, key=lambda fields: [
                (f.dtype.str, f.shape) for f in fields]):
            run = list(run)
            digests += _array_digests([np.stack(column) for column in zip(*run)],
                                      len(run), "Dataset item field")
    return digests


def content_digests(size: int, arrays=None, dataset=None) -> List[bytes]:
    """The SHA-256 of every record's canonical encoding (see the module): its rows of
    ``arrays``, or its ``dataset`` item before gluon's lazy transforms (read twice; an
    item that differs is refused)."""
    if arrays is None:
        arrays = _plain_arrays(dataset)
    if arrays is not None:
        return _array_digests([np.asarray(a) for a in arrays], size)
    return _item_digests(dataset, size)


def _id_bytes(value) -> bytes:
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str, bytes)):
        raise InvalidParameterError(
            f"record_ids must hold ints, strings or bytes, got {type(value).__name__}.")
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
    return f"{type(value).__name__}:".encode("ascii") + raw


def id_digests(record_ids, size: int) -> List[bytes]:
    """The SHA-256 of every entry of ``record_ids``."""
    ids = list(record_ids)
    if len(ids) != size:
        raise InvalidParameterError(
            f"record_ids has {len(ids)} entries for a data set of {size} records.")
    return [hashlib.sha256(_id_bytes(value)).digest() for value in ids]


def record_digests(size: int, arrays=None, dataset=None, record_ids=None) -> List[bytes]:
    """What each record's owner is computed from: the digest of its entry of
    ``record_ids``, else of its content (:func:`content_digests`)."""
    if record_ids is not None:
        return id_digests(record_ids, size)
    return content_digests(size, arrays, dataset)


def owners(digests: List[bytes], num_workers: int) -> np.ndarray:
    """Each record's worker: the first 8 bytes of its digest, modulo W."""
    return np.asarray([int.from_bytes(d[:8], "little") % num_workers for d in digests],
                      dtype=np.int64)


def owner_counts(owned: np.ndarray, num_workers: int) -> List[int]:
    """How many records each rank owns (sums to N)."""
    return np.bincount(owned, minlength=num_workers).tolist()


def data_digest(digests: List[bytes], size: int) -> str:
    """``N=<size>;<SHA-256 of the sorted record digests>``: the same on two workers iff
    (up to hash collisions) they hold the same multiset of records."""
    state = hashlib.sha256(f"N={size};".encode("ascii"))
    for digest in sorted(digests):
        state.update(digest)
    return f"N={size};{state.hexdigest()}"


def _register_partition(trainer, partition: str) -> None:
    """Give a dist trainer the partition for its agreement check ("data" setting)."""
    if trainer is not None and getattr(trainer, "distributed", False):
        trainer._loader_partition = partition


@dataclasses.dataclass
class Shard:
    """This worker's part: ``indices`` into the whole data set (sorted); ``data_digest``
    of the records and ``partition`` (records per rank; None for one worker: nothing
    hashed)."""
    num_workers: int
    rank: int
    indices: np.ndarray
    data_digest: Optional[str]
    partition: Optional[str] = None


def plan_shard(size: int, *, arrays=None, dataset=None, record_ids=None, trainer=None,
               num_workers: Optional[int] = None, rank: Optional[int] = None,
               sampling: str = "poisson") -> Shard:
    """Resolve (W, rank), check N, and pick this worker's records (see the module)."""
    if size < 1:
        raise InvalidParameterError("DPDataLoader needs at least one record.")
    workers, rank = resolve_shard(num_workers, rank, trainer, sampling)
    check_global_size(trainer, size)
    if workers == 1:
        if record_ids is not None:
            id_digests(record_ids, size)  # validated all the same
        return Shard(1, 0, np.arange(size, dtype=np.int64), None)
    records = content_digests(size, arrays, dataset)
    owned = owners(records, workers)
    partition = f"owners={owner_counts(owned, workers)}"
    if record_ids is not None:  # owners by id; the (id, content) pairs are compared
        ids = id_digests(record_ids, size)
        records = [hashlib.sha256(i + c).digest() for i, c in zip(ids, records)]
        owned = owners(ids, workers)
        partition = (f"owners={owner_counts(owned, workers)} (by record_ids), "
                     f"pairs={owner_counts(owners(records, workers), workers)}")
    _register_partition(trainer, partition)
    mine = np.flatnonzero(owned == rank).astype(np.int64)
    return Shard(workers, rank, mine, data_digest(records, size), partition)
