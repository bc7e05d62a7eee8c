"""Checkpoints of a :class:`~mxprivacy.gluon.DPTrainer`: optimizer states, the privacy
ledger and the step count in one file, written atomically.

Format
    A sealed file (see :mod:`mxprivacy._io`): a header line with a SHA-256 over the
    whole content, then a ``.npz`` archive read with ``allow_pickle=False``. It holds the
    optimizer's state arrays and ``meta``, a UTF-8 JSON document with the ledger (the
    accountant's ``state_dict``), the step count, the number of workers of every step
    (``workers``: run lengths ``[[W, steps], ...]``, see
    :attr:`~mxprivacy.gluon.DPTrainer.worker_counts`) and the optimizer's counters and
    scalar hyperparameters. Nothing in it can run code when it is loaded. Files of the
    previous format (``-2``, written before distributed training) have no ``workers``:
    their steps count as single-machine steps (W = 1).

What the checksum protects against
    Accidents (a flipped bit, a truncated copy, a crash of an older writer) and casual
    edits (changing a number by hand): such a file raises
    :class:`~mxprivacy.CheckpointError` and the trainer is left unchanged. It is not a
    signature: an owner determined to under-report can recompute it. The ledger is also
    checked for consistency (the step count matches the events; counts are integers;
    unknown fields are refused), and the checkpoint must match the trainer (number and
    shapes of the parameters, optimizer type and state layout).

What a DPTrainer ledger may hold
    Only what a DPTrainer composes, each with a count >= 1 (and at most ``2**53``): under
    the add/remove relation (Poisson sampling) ``PoissonSampledEvent(q,
    GaussianEvent(sigma))`` with ``0 < q <= 1``; under replace-one (fixed-size batches,
    the ledger's ``"neighboring"`` field) ``SampledWithoutReplacementEvent(N, B,
    GaussianEvent(sigma))`` with ``B >= 1``; ``sigma >= 0``. Any other event
    (``epsilon_delta``, ``composed``, ``self_composed``, ``q = 0``, ``B = 0``, an event of
    the other relation...) is refused, so a careless edit cannot turn the spent privacy
    into nothing; a consistent forgery under a recomputed checksum is still possible (see
    above). A checkpoint of the other sampling (a Poisson run loaded by a fixed-size
    trainer, or the reverse) is refused: its ledger counts another relation.

Bounded reading
    The archive must hold stored (uncompressed) ``.npy`` members, as ``np.savez`` writes
    them; their total size may not exceed the file's, which is checked from the zip
    headers before any member is read, and each array's declared size must match its
    member. A compressed member (a decompression bomb) is refused before it is expanded.

Pending steps
    ``load_states`` between ``allreduce_grads()`` and ``update()`` is refused: the
    privatized gradient waiting for ``update()`` belongs to the current ledger.

Distributed training (``kvstore="dist_sync"``)
    Every worker holds the same weights, optimizer states, ledger and run id, so one file
    describes them all: ``save_states`` runs its checks on every worker and only rank 0
    writes (the other ranks write nothing, not even to a shared path). To resume, every
    worker calls ``load_states`` on that file (copied to each host without a shared file
    system); every worker then takes the same decision on the ledger. A checkpoint loaded
    on some workers only is caught at the next step (the agreement check compares the
    steps, run ids and ledgers). A run may resume with another number of workers: the
    worker counts keep each step's W (``server_epsilon`` composes each at its own).

The ledger never decreases
    ``load_states`` merges the saved ledger with the trainer's current one
    (see :mod:`mxprivacy._ledger`): an older checkpoint of this run keeps the current,
    longer ledger (the weights already carry those steps); the usual resume takes the
    saved one; divergent histories are composed, with a
    :class:`~mxprivacy.PrivacyWarning`. ``steps`` and the worker counts follow the kept
    ledger.
"""
from __future__ import annotations

import io
import json
import math
import os
import zipfile
from typing import Any, Dict, Tuple

import numpy as np

from .._io import atomic_write, read_sealed, seal
from .._ledger import COMPOSE, TAKE, merge_ledgers
from ..accounting.base import ADD_REMOVE, ledger_neighboring, parse_ledger
from ..accounting.events import GaussianEvent, PoissonSampledEvent, SampledWithoutReplacementEvent
from ..errors import CheckpointError
from . import _optstate
from .distributed import add_steps

__all__ = ["CheckpointMixin"]

_KIND = "dptrainer-checkpoint"
_FORMAT, _FORMAT_2 = "mxprivacy-dptrainer-3", "mxprivacy-dptrainer-2"
_KEYS_2 = {"format", "privacy", "steps", "nonfinite_count", "config", "optimizer", "run_id"}
_KEYS = _KEYS_2 | {"workers"}
_CONFIG = {"noise_multiplier", "max_grad_norm", "expected_batch_size", "sample_rate",
           "clipping"}
_MAX_COUNT = 1 << 53  # steps, counts: far beyond any run, and exact in a float


def _strict_json(data: bytes) -> Any:
    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError(f"duplicate keys in {keys}")
        return dict(pairs)

    def no_constant(name):
        raise ValueError(f"{name} is not a number")

    return json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates,
                      parse_constant=no_constant)


def _pack(meta: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    blob = np.frombuffer(json.dumps(meta, allow_nan=False).encode("utf-8"), dtype=np.uint8)
    np.savez(buffer, meta=blob, **arrays)
    return seal(_KIND, buffer.getvalue())


def _read_npy(handle, size: int, name: str) -> np.ndarray:
    """One ``.npy`` member of ``size`` bytes: plain dtype, C order, exact length."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    else:
        raise ValueError(f"array {name} has .npy version {version}")
    if fortran or dtype.hasobject or not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError(f"array {name} is not a plain C-ordered array")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != size - handle.tell():
        raise ValueError(f"array {name} declares {nbytes} bytes, its member holds "
                         f"{size - handle.tell()}")
    data = handle.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"array {name} is truncated")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def _read_npz(body: bytes) -> Dict[str, np.ndarray]:
    """The arrays of an ``np.savez`` archive, reading no more than ``len(body)`` bytes.

    Every member must be stored (not compressed) and their sizes, from the zip headers,
    must add up to at most the archive's: checked before any member is read.
    """
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        if len(set(names)) != len(names) or not all(n.endswith(".npy") for n in names):
            raise ValueError(f"unexpected archive members {names[:10]}")
        total = 0
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED or \
                    info.file_size != info.compress_size:
                raise ValueError(f"member {info.filename} is compressed; checkpoints store "
                                 "their arrays uncompressed")
            total += info.file_size
        if total > len(body):
            raise ValueError(f"its members claim {total} bytes in a {len(body)}-byte file")
        arrays = {}
        for info in infos:
            with archive.open(info) as handle:
                arrays[info.filename[:-4]] = _read_npy(handle, info.file_size, info.filename)
    return arrays


def _unpack(body: bytes) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    arrays = _read_npz(body)
    if "meta" not in arrays:
        raise ValueError("no meta member")
    blob = arrays.pop("meta")
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise ValueError("meta is not a byte string")
    for name, value in arrays.items():
        if str(value.dtype) not in _optstate._DTYPES:
            raise ValueError(f"array {name} has dtype {value.dtype}")
    return _strict_json(blob.tobytes()), arrays


def _count(value, name: str) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_COUNT:
        shown = "a huge integer" if type(value) is int and value > _MAX_COUNT else repr(value)
        raise ValueError(f"{name} must be an integer in [0, 2**53], got {shown}")
    return value


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value):
        raise ValueError(f"{name} {value!r} is not a finite number")
    return float(value)


def _is_dp_sgd_step(event, neighboring: str) -> bool:
    """Whether ``event`` is a step a DPTrainer of this relation composes."""
    if neighboring == ADD_REMOVE:
        sampled = type(event) is PoissonSampledEvent and 0 < event.sample_rate <= 1
    else:
        sampled = type(event) is SampledWithoutReplacementEvent and event.sample_size >= 1
    return sampled and type(event.event) is GaussianEvent


def _check_dp_ledger(entries, config, neighboring: str) -> None:
    """Only DP-SGD steps of the relation, each counted at least once; finite config
    numbers."""
    for event, count in entries:
        _count(count, "a ledger count")
        if count < 1:
            raise ValueError("a ledger entry counts 0 steps")
        if not _is_dp_sgd_step(event, neighboring):
            raise ValueError(
                f"{event!r} is not a DP-SGD step under {neighboring} (a Poisson-sampled "
                "Gaussian with a sample rate in (0, 1] under add_remove, a Gaussian on B >= 1 "
                "records sampled without replacement under replace_one)")
    # The config's (q, sigma) need not be the last event's: a trainer may resume another
    # run's ledger, compose divergent histories, or change sigma, then save. (Requiring
    # equality made such a trainer refuse its own next checkpoint.)
    _number(config["sample_rate"], "config sample_rate")
    _number(config["noise_multiplier"], "config noise_multiplier")


def _worker_counts(value, steps: int) -> list:
    """``[[W, count], ...]`` with W >= 1 and count >= 1 integers, covering ``steps``."""
    if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2
                                              for p in value):
        raise ValueError(f"workers {str(value)[:80]} is not a list of [W, steps] pairs")
    counts: list = []
    for workers, count in value:
        if _count(workers, "a number of workers") < 1 or _count(count, "a step count") < 1:
            raise ValueError("a worker count entry holds 0 workers or 0 steps")
        counts = add_steps(counts, workers, count)
    if sum(count for _, count in counts) != steps:
        raise ValueError(f"the worker counts cover {sum(c for _, c in counts)} steps, the "
                         f"ledger {steps}")
    return counts


class CheckpointMixin:
    """``save_states`` / ``load_states`` for DPTrainer (Gluon's names and signatures)."""

    def save_states(self, fname: str) -> None:
        """Write optimizer states, privacy ledger and step count atomically to ``fname``.

        With a dist kvstore only rank 0 writes; the other ranks check and return."""
        if not self._kv_initialized:
            self._init_kvstore()
        if self._params_to_init:
            self._init_params()
        spent = sum(count for _, count in self.accountant.ledger)
        if spent != self.steps:
            raise CheckpointError(
                f"The ledger holds {spent} steps but the trainer made {self.steps}: a "
                "privatized gradient is waiting for update(). Call update() (or step()) "
                "before save_states.")
        optimizer, arrays = _optstate.capture(self)
        if self.rank != 0:
            return  # rank 0 writes the one checkpoint (every worker holds the same state)
        meta = {"format": _FORMAT, "privacy": self.accountant.state_dict(),
                "steps": self.steps, "nonfinite_count": self.nonfinite_count,
                "config": {"noise_multiplier": self.noise_multiplier,
                           "max_grad_norm": self.max_grad_norm,
                           "expected_batch_size": self.expected_batch_size,
                           "sample_rate": self.sample_rate, "clipping": self.clipping},
                "optimizer": optimizer, "run_id": self.run_id,
                "workers": self.worker_counts}
        atomic_write(fname, _pack(meta, arrays))

    def load_states(self, fname: str) -> None:
        """Restore what :meth:`save_states` wrote; nothing changes if the file is bad.

        The privacy ledger never decreases: see the module docstring.
        """
        if getattr(self, "_privatized_batch", None) is not None:
            raise CheckpointError(
                "A privatized gradient is waiting for update(): its step is already in the "
                "ledger, and loading now could drop that charge. Call update() (or step()) "
                "first, then load_states. The trainer is unchanged.")
        body = read_sealed(_KIND, fname)
        try:
            meta, arrays = _unpack(body)
            loaded, bound, workers = self._check_meta(meta)
            plan = _optstate.plan_restore(self, meta["optimizer"], arrays)
            run_id = meta["run_id"]
            decision, ledger = merge_ledgers(self.accountant.ledger, loaded[0],
                                             "checkpoint ledger", same_run=run_id == self.run_id)
            accountant = self.accountant.empty_like()
            for event, count in ledger:
                accountant.compose(event, count)
        except CheckpointError:
            raise
        except Exception as exc:  # untrusted content: every parse failure is a bad file
            raise CheckpointError(
                f"{fname} is not a usable DPTrainer checkpoint for this trainer "
                f"({type(exc).__name__}: {str(exc)[:300]}). The trainer is unchanged.") from exc
        if not self._kv_initialized:
            self._init_kvstore()
        if self._params_to_init:
            self._init_params()
        _optstate.apply_restore(self, plan)
        self._adopt(decision, accountant, loaded[1], bound, workers)
        if decision == TAKE:
            self.run_id = run_id  # a resume continues the saved run's lineage

    def _adopt(self, decision: str, accountant, nonfinite: int, bound, workers) -> None:
        # Seeded noise after a load gets fresh OS entropy in its key: two trainers resumed
        # from one checkpoint must not draw the same noise (a resumed seeded run is
        # therefore not bit-reproducible).
        self._loads = getattr(self, "_loads", 0) + 1
        self._load_nonce = int.from_bytes(os.urandom(8), "little")
        self._noise = None
        self.accountant = accountant
        self.steps = sum(count for _, count in accountant.ledger)
        if decision == TAKE:
            self.nonfinite_count, self._worker_counts = nonfinite, workers
        elif decision == COMPOSE:  # KEEP keeps the current counts
            self.nonfinite_count += nonfinite
            for count_workers, count in workers:
                self._worker_counts = add_steps(self._worker_counts, count_workers, count)
        if bound is not None:  # the adapted bound is part of the optimizer's state
            self._clipping.max_grad_norm = bound

    def _check_relation(self, privacy) -> None:
        """Refuse, clearly, a checkpoint of the other sampling (its ledger's relation)."""
        if not isinstance(privacy, dict):
            return  # parse_ledger refuses it
        relation = ledger_neighboring(privacy)
        if relation != self.accountant.neighboring:
            saved = "poisson" if relation == ADD_REMOVE else "fixed"
            raise CheckpointError(
                f"This checkpoint was written by a DPTrainer with sampling={saved!r} (its "
                f"ledger counts {relation} neighbours), but this trainer uses "
                f"sampling={self.sampling!r} ({self.accountant.neighboring}). Their "
                "guarantees are of different relations and cannot be composed: resume it "
                f"with DPTrainer(..., sampling={saved!r}). The trainer is unchanged.")

    def _check_meta(self, meta) -> Tuple[Tuple[list, int], Any, list]:
        """((ledger, nonfinite_count), adaptive bound or None, worker counts), all
        validated."""
        keys = _KEYS_2 if isinstance(meta, dict) and meta.get("format") == _FORMAT_2 else _KEYS
        if not isinstance(meta, dict) or set(meta) != keys:
            raise ValueError(f"fields {sorted(meta) if isinstance(meta, dict) else meta!r} "
                             f"are not {sorted(keys)}")
        if meta["format"] not in (_FORMAT, _FORMAT_2):
            raise ValueError(f"format {meta['format']!r}, expected {_FORMAT!r}")
        if not isinstance(meta["run_id"], str) or not 8 <= len(meta["run_id"]) <= 64:
            raise ValueError(f"run_id {meta['run_id']!r} is not a run identifier")
        self._check_relation(meta["privacy"])
        entries = parse_ledger(meta["privacy"], neighboring=self.accountant.neighboring)
        probe = self.accountant.empty_like()
        for event, _ in entries:
            probe._validate(event)
        steps = _count(meta["steps"], "steps")
        if steps != sum(count for _, count in entries):
            raise ValueError(f"steps={steps} but the ledger holds "
                             f"{sum(count for _, count in entries)} events")
        nonfinite = _count(meta["nonfinite_count"], "nonfinite_count")
        workers = _worker_counts(meta.get("workers", [[1, steps]] if steps else []), steps)
        config = meta["config"]
        if not isinstance(config, dict) or set(config) != _CONFIG:
            raise ValueError("the config section has missing or unknown fields")
        _check_dp_ledger(entries, config, self.accountant.neighboring)
        bound = None
        if self.clipping == "adaptive" and config["clipping"] == "adaptive":
            bound = config["max_grad_norm"]
            if isinstance(bound, bool) or not isinstance(bound, (int, float)) or \
                    not math.isfinite(bound) or bound <= 0:
                raise ValueError(f"adaptive max_grad_norm {bound!r} is not a number > 0")
            bound = float(bound)
        return (entries, nonfinite), bound, workers
