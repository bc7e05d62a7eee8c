"""DP-SGD on MXNet's parameter server: ``DPTrainer(..., kvstore="dist_sync")``.

W workers (``dist_sync`` or ``dist_device_sync``, ps-lite) train one model. One step:

1. every worker Poisson-samples *its own shard* of the data set with the trainer's rate
   q (:class:`~mxprivacy.DPDataLoader` shards deterministically by rank). The shards
   partition the data set and every record is included independently with probability
   q, so the union of the local batches is a Poisson sample of the whole data set;
2. every worker clips its per-sample gradients to C and sums them (an empty local batch
   sums to zero and still takes part: a skipped push would deadlock ``dist_sync`` and
   change the mechanism);
3. every worker adds its share of the noise, N(0, sigma^2 C^2 / W), drawn from its own
   secret stream (OS entropy; an explicit ``noise_seed`` is combined with the rank, so
   ranks never share a stream), and pushes;
4. the kvstore sums the W pushes; every worker pulls the same sum
   ``sum of clipped gradients of the union + N(0, sigma^2 C^2)``: the noise is counted
   exactly once, with the single-machine standard deviation sigma C;
5. every worker divides by the expected *global* batch size q N (``expected_batch_size``
   and ``dataset_size`` are global) and applies the same update; weights and optimizer
   states stay identical (rank 0's initial weights are broadcast when the trainer is
   built);
6. every worker composes the same event, ``PoissonSampledEvent(q, Gaussian(sigma))``:
   one record is in one shard and moves the pulled sum by at most C. Ledgers are
   identical on every worker, and so is the run id (rank 0's, broadcast), so loading
   one checkpoint on every worker takes the same decision everywhere.

Why split the noise rather than let one rank add it all
    With one noisy rank, the pushes of the others would reach the server as raw clipped
    sums. Split, every push carries noise of standard deviation sigma C / sqrt(W).

What a curious server sees
    Each worker's push: its shard's clipped sum plus sigma C / sqrt(W) of noise. Against
    the server, a record is therefore protected by a Poisson-sampled Gaussian with noise
    multiplier sigma / sqrt(W) per step (:attr:`DPTrainer.server_noise_multiplier`,
    :meth:`DPTrainer.server_epsilon`, same accountant and events). This also bounds any
    party that learns other workers' noise (a curious worker knows its own share; the
    sum then keeps sigma C sqrt((W-1)/W) >= sigma C / sqrt(W)), and any coalition that
    does not include the worker holding the record. The statement is about adding or
    removing one record of one shard, the other shards unchanged (shards by owner, or
    by a stable record index). Parties that only see pulled sums, models and
    checkpoints get the full epsilon. ``server_epsilon`` assumes every step of the
    ledger ran with the current number of workers.

Agreement check (every step)
    Before the gradients are pushed, each worker pushes a digest of its settings (sigma,
    C and the clipping mode, q, the expected batch size, N, the sampling, the loss
    reduction, the sensitivity, the accountant, secure mode, the optimizer's name and
    hyper-parameters, the parameters' shapes and learning-rate multipliers). Each setting
    is 32 bits of its SHA-256 in 4-bit digits d; the workers push (d, d^2) under a
    dedicated key and pull the sums. All workers agree on a digit iff
    ``W * sum(d^2) == sum(d)^2`` (the variance is zero); sums of small integers are
    exact in float32 for W < 74,000. Every worker reads the same sums and so takes the
    same decision: all raise :class:`~mxprivacy.WorkerMismatchError`, naming the
    settings, before any gradient is pushed. It costs one more round trip (a second
    barrier) per step: 0.6 ms alone on loopback; a 784-256-10 MLP step went from 15.6
    to 18.1 ms with 2 workers sharing 2 cores.

Bounded waits
    ps-lite never notices a dead peer: a worker waits forever in a round trip. Every wait
    for the other workers (kvstore creation, the weight broadcast, the agreement check,
    the gradient round trip) runs under a :class:`Watchdog`: after ``dist_timeout``
    seconds (``DPTrainer(dist_timeout=...)``, else ``$MXPRIVACY_DIST_TIMEOUT``, else
    600) it prints one line to stderr and ends the process with exit code
    :data:`TIMEOUT_EXIT_CODE` (75), because a blocked kvstore call cannot be
    interrupted. The last checkpoint is complete (written atomically) and the run
    resumes from it. ``float("inf")`` disables the watchdog. Set it above the longest
    time workers may legitimately drift apart (rank 0 evaluating, for example). A
    worker that ends with an uncaught exception exits at once (code 1) instead of
    waiting in ps-lite's shutdown barrier for peers that are stuck in a step;
    :class:`~mxprivacy.WorkerMismatchError`, raised on every worker, shuts down
    normally.

Refused: ``dist_async`` (each push would be applied alone by the server, with 1/sqrt(W)
of the noise), ``update_on_kvstore=True`` (the server would apply the raw sums: noise
must come between reduction and update), fixed-size sampling (the union of local
fixed-size draws is not a uniform draw of B of N), adaptive clipping (its private
count would be local, and the workers' bounds would drift apart) and parameters whose
shapes are still deferred (rank 0's weights are broadcast when the trainer is built).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Dict, List, Optional

import numpy as np
from mxnet import kv as _kv
from mxnet import nd

from ..accounting.events import GaussianEvent
from ..errors import InvalidParameterError, WorkerMismatchError
from .watchdog import TIMEOUT_EXIT_CODE, Watchdog, install_exit_guard, resolve_timeout

__all__ = ["DIST_KVSTORES", "TIMEOUT_EXIT_CODE", "settings_digest", "disagreements",
           "shard_bounds", "resolve_shard", "DistributedMixin"]

DIST_KVSTORES = ("dist_sync", "dist_device_sync")
SETTINGS_KEY = 2 ** 31 - 2  # far above Gluon's parameter keys 0 .. P-1
RUN_ID_KEY = 2 ** 31 - 3
_DIGITS = 8  # 4-bit digits per setting: 32 bits of its SHA-256
_OPTIMIZER_COUNTERS = {"num_update", "begin_num_update", "rescale_grad"}
# Hyper-parameters are the optimizer's scalars; its dicts are keyed by parameter names,
# which may differ between processes (per-parameter multipliers are checked by shape).
_SCALARS = (int, float, str, bool, type(None))
_ENV = ("DMLC_NUM_WORKER", "DMLC_NUM_SERVER", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT")


def kvstore_kind(kvstore) -> Optional[str]:
    """The kvstore's type name (a name, or a ``KVStore`` object's ``type``)."""
    if kvstore is None or isinstance(kvstore, str):
        return kvstore
    return getattr(kvstore, "type", repr(kvstore))


def check_options(kvstore, *, update_on_kvstore, sampling: str, clipping: str) -> None:
    """Refuse, before anything starts, what the distributed mechanism cannot do."""
    kind = kvstore_kind(kvstore)
    distributed = isinstance(kind, str) and kind.startswith("dist")
    if update_on_kvstore:
        where = (f"with kvstore {kind!r} the parameter server would apply the optimizer to "
                 "the raw sums the workers push, before any noise could be counted once "
                 "and without dividing by the expected global batch size"
                 if distributed else "the kvstore would update with un-noised gradients")
        raise InvalidParameterError(
            f"update_on_kvstore=True is not supported: DPTrainer adds noise between the "
            f"reduction and the update, and {where}. Leave update_on_kvstore=None (the "
            "update runs on the workers).")
    if kind not in DIST_KVSTORES:
        return
    if sampling != "poisson":
        raise InvalidParameterError(
            f"sampling={sampling!r} is not supported with kvstore {kind!r}: the union of "
            "fixed-size draws on each worker's shard is not B records drawn uniformly from "
            "the whole data set, which the accountant would charge. Use sampling='poisson' "
            "(the union of Poisson samples of the shards is a Poisson sample).")
    if clipping == "adaptive":
        raise InvalidParameterError(
            f"clipping='adaptive' is not supported with kvstore {kind!r}: its private "
            "count would be taken on each worker's batch alone, and the workers' clipping "
            "bounds would drift apart. Use clipping='flat' or 'per_layer'.")


def create_kvstore(name: str, watchdog: "Watchdog"):
    """``mx.kv.create(name)`` of a job started by a launcher (it waits for every node)."""
    missing = [variable for variable in _ENV if variable not in os.environ]
    if missing:
        raise InvalidParameterError(
            f"kvstore {name!r} needs a parameter-server job, but {', '.join(missing)} "
            "is not set. Start the script with the launcher: mxprivacy launch -n WORKERS "
            "-s SERVERS -- python script.py (it sets the DMLC_* variables).")
    with watchdog.watch("every node of the job to join (kvstore creation)"):
        return _kv.create(name)


def shard_bounds(size: int, num_workers: int, rank: int):
    """``(start, stop)`` of worker ``rank``'s contiguous block of ``size`` examples:
    ``[rank N // W, (rank + 1) N // W)``. The blocks partition the data set and differ in
    size by at most one; every worker computes the same split."""
    return rank * size // num_workers, (rank + 1) * size // num_workers


def resolve_shard(num_workers, rank, trainer, sampling: str, size: int):
    """``(W, rank)``: given, or the trainer's; they must match a distributed trainer's."""
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
    if workers > size:
        raise InvalidParameterError(
            f"{workers} workers need at least as many examples, got N = {size}.")
    return workers, rank


def settings_digest(settings: Dict[str, str]) -> np.ndarray:
    """``[1, digits of setting 1, digits of setting 2, ...]``: 8 4-bit digits (32 bits of
    SHA-256) per setting, in the dict's order; the leading 1 counts the workers."""
    digits = [1.0]
    for name, value in settings.items():
        digest = hashlib.sha256(f"{name}\0{value}".encode("utf-8")).digest()
        for byte in digest[:_DIGITS // 2]:
            digits += [float(byte >> 4), float(byte & 15)]
    return np.asarray(digits, dtype=np.float32)


def disagreements(sums: np.ndarray, num_workers: int, names: List[str]) -> List[str]:
    """The settings on which the workers differ, from the pulled sums of
    ``[digest, digest**2]`` (the same on every worker, so is the answer)."""
    total = np.asarray(sums, dtype=np.float64)
    first, second = np.split(total, 2)
    if first[0] != num_workers:
        return ["the number of workers"]
    spread = num_workers * second[1:] - first[1:] ** 2
    return [name for number, name in enumerate(names)
            if np.any(spread[number * _DIGITS:(number + 1) * _DIGITS] != 0)]


def _scaled(event, factor: float):
    """``event`` with every Gaussian's noise multiplier times ``factor``."""
    if isinstance(event, GaussianEvent):
        return GaussianEvent(event.noise_multiplier * factor)
    return dataclasses.replace(event, event=_scaled(event.event, factor))


def _hex_digits(run_id: str) -> np.ndarray:
    return np.asarray([int(c, 16) for c in run_id], dtype=np.float32)


@dataclasses.dataclass
class _Job:
    kvstore: object
    rank: int
    num_workers: int
    watchdog: Watchdog


class DistributedMixin:
    """The distributed side of :class:`~mxprivacy.gluon.DPTrainer` (see the module)."""

    _dist: Optional[_Job] = None

    def _setup_distributed(self, kvstore, dist_timeout):
        """The kvstore to give Gluon: a dist one is created (or taken) here, so that the
        rank and the number of workers are known from the start."""
        kind = kvstore_kind(kvstore)
        if kind not in DIST_KVSTORES:
            if dist_timeout is not None:
                raise InvalidParameterError(
                    "dist_timeout= only applies to a dist_sync or dist_device_sync kvstore.")
            return kvstore
        timeout = resolve_timeout(dist_timeout)
        watchdog = Watchdog(timeout, "this worker")
        if isinstance(kvstore, str):
            kvstore = create_kvstore(kvstore, watchdog)
        rank, workers = int(kvstore.rank), int(kvstore.num_workers)
        watchdog.label = f"worker rank {rank} of {workers}"
        self._dist = _Job(kvstore, rank, workers, watchdog)
        install_exit_guard()
        return kvstore

    def _start_distributed(self) -> None:
        """Collective start (every worker, same order): rank 0's weights and run id to
        all, and the key of the agreement check."""
        job = self._dist
        if job is None:
            return
        deferred = [p.name for p in self._params if p._deferred_init]
        if deferred:
            raise InvalidParameterError(
                f"With kvstore {job.kvstore.type!r} every worker must start from rank 0's "
                f"weights, which are broadcast when the trainer is built, but "
                f"{deferred[:3]} have no shape yet (deferred initialization). Give the "
                "layers their input sizes (in_units=, in_channels=) or run one forward "
                "pass before building the DPTrainer.")
        with job.watchdog.watch("the other workers to start (weight broadcast)"):
            self._init_kvstore()
            self._init_params()
            run_id = nd.array(_hex_digits(self.run_id))
            job.kvstore.broadcast(RUN_ID_KEY, run_id, out=run_id)
            self.run_id = "".join("%x" % int(d) for d in run_id.asnumpy())
            size = 2 * len(settings_digest(self._dist_settings()))
            job.kvstore.init(SETTINGS_KEY, nd.zeros((size,)))

    @property
    def num_workers(self) -> int:
        """W: the number of workers of a dist kvstore (1 on one machine)."""
        return 1 if self._dist is None else self._dist.num_workers

    @property
    def rank(self) -> int:
        """This worker's kvstore rank (0 on one machine); rank 0 writes checkpoints."""
        return 0 if self._dist is None else self._dist.rank

    @property
    def server_noise_multiplier(self) -> float:
        """sigma / sqrt(W): the noise multiplier of one worker's push, which is what a
        curious parameter server sees (sigma on one machine)."""
        return self.noise_multiplier / math.sqrt(self.num_workers)

    def server_epsilon(self, delta: float) -> float:
        """Epsilon at ``delta`` against the parameter server (or anyone who knows the
        noise of all workers but the record's): the ledger's events with every noise
        multiplier divided by sqrt(W), in the same accountant. Assumes every step of the
        ledger ran with the current W. Equals :meth:`epsilon` on one machine."""
        accountant = self.accountant.empty_like()
        factor = 1.0 / math.sqrt(self.num_workers)
        for event, count in self.accountant.ledger:
            accountant.compose(_scaled(event, factor), count)
        return accountant.get_epsilon(delta)

    def _noise_share(self, std: float) -> float:
        """This worker's part of the noise std: std / sqrt(W), so the W shares sum to
        std."""
        return std / math.sqrt(self.num_workers)

    def _dist_settings(self) -> Dict[str, str]:
        """What every worker must agree on, as strings (see the module docstring)."""
        opt = self._optimizer
        hyper = {k: v for k, v in sorted(vars(opt).items()) if not k.startswith("_")
                 and k not in _OPTIMIZER_COUNTERS and isinstance(v, _SCALARS)}
        schedule = opt.lr_scheduler
        hyper["lr_scheduler"] = None if schedule is None else [type(schedule).__name__, {
            k: v for k, v in sorted(vars(schedule).items()) if isinstance(v, _SCALARS)}]
        params = [[list(p.shape), str(np.dtype(p.dtype)), p.lr_mult, p.wd_mult]
                  for p in self._trainable()]
        bounds = getattr(self._clipping, "bounds", None)
        clip = list(bounds.values()) if bounds else self._clipping.bound
        return {"noise_multiplier": repr(float(self.noise_multiplier)),
                "max_grad_norm": json.dumps([self.clipping, clip]),
                "sensitivity": repr(float(self.sensitivity)),
                "sample_rate": repr(float(self.sample_rate)),
                "expected_batch_size": repr(float(self.expected_batch_size)),
                "dataset_size": repr(self.dataset_size),
                "sampling": self.sampling, "loss_reduction": self.loss_reduction,
                "accountant": type(self.accountant).__name__,
                "secure_mode": repr(self.secure_mode),
                "optimizer": json.dumps([type(opt).__name__, hyper, repr(self._scale)],
                                        sort_keys=True, default=repr),
                "parameters": json.dumps(params, default=repr)}

    def _check_workers_agree(self) -> None:
        """The agreement check (one round trip); raises on every worker at once."""
        job = self._dist
        if job is None:
            return
        settings = self._dist_settings()
        digest = settings_digest(settings)
        pushed = nd.array(np.concatenate([digest, digest * digest]))
        with job.watchdog.watch("the other workers' settings (agreement check)"):
            job.kvstore.pushpull(SETTINGS_KEY, pushed, out=pushed)
            sums = pushed.asnumpy()
        differ = disagreements(sums, job.num_workers, list(settings))
        if differ:
            mine = "; ".join(f"{name}={settings.get(name, job.num_workers)}"
                             for name in differ)
            raise WorkerMismatchError(
                f"The {job.num_workers} workers disagree on {', '.join(differ)} (worker "
                f"rank {job.rank} has {mine}). Every worker must run the same DP-SGD "
                "settings, or the noise, the update and the reported epsilon do not "
                "describe the step. Start every worker with the same arguments. No "
                "gradient of this step was pushed.")

    def _dist_round_trip(self) -> None:
        """Push the noisy local sums, pull their sum over the workers, and wait for it."""
        job = self._dist
        with job.watchdog.watch("the other workers' gradients"):
            self._allreduce_grads()
            for param in self._trainable():
                for grad in param.list_grad():
                    grad.wait_to_read()
