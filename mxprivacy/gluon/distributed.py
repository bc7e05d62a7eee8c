"""DP-SGD on MXNet's parameter server: ``DPTrainer(..., kvstore="dist_sync")``.

W workers (``dist_sync`` or ``dist_device_sync``, ps-lite) train one model. One step:

1. every worker Poisson-samples *its own shard* of the data set with the trainer's rate
   q (:class:`~mxprivacy.DPDataLoader` with ``trainer=`` assigns each record to one
   worker by a hash of its content, see :mod:`mxprivacy.gluon.dist_data`). The shards
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
    Each worker's push: its shard's clipped sum plus sigma C / sqrt(W) of noise. A record
    belongs to one shard by its own content, so adding or removing it changes one push
    only (the others keep their distribution): against the server it is protected by a
    Poisson-sampled Gaussian with noise multiplier sigma / sqrt(W) per step
    (:attr:`DPTrainer.server_noise_multiplier`, :meth:`DPTrainer.server_epsilon`, same
    accountant and events). This also bounds any party that learns other workers'
    noise (a curious worker knows its own share; the sum then keeps sigma C
    sqrt((W-1)/W) >= sigma C / sqrt(W)), and any coalition that does not include the
    worker holding the record. Parties that only see pulled sums, models and
    checkpoints get the full epsilon.

The number of workers of every step
    :attr:`DPTrainer.worker_counts` records W with the steps (run lengths ``[W, steps]``,
    kept in checkpoints and merged like the ledger), and ``server_epsilon`` composes each
    stretch at its own sigma / sqrt(W). A run may so resume with another number of
    workers (a host lost, or scaled out) and both numbers stay true; refusing such a
    resume would be simpler but would strand a run whose host died.

Agreement check (every step): see :mod:`mxprivacy.gluon.dist_agreement`. The settings,
the ledger (steps, run id, a SHA-256 of the accountant's state), the loaders' N and the
source of the batches must be the same on every worker, else every worker raises
:class:`~mxprivacy.WorkerMismatchError` before any gradient is pushed. Steps whose
examples were not announced by a sharded loader are refused on every worker, unless
``DPTrainer(..., dist_own_sampler=True)``: then the user guarantees that every worker
Poisson-samples, at rate ``trainer.sample_rate``, its part of a partition of the N
records, that the part of a record depends on that record only (for ``server_epsilon``),
and that the sample is secret.

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

Ending a run
    Every worker must take the same number of steps. DPDataLoader takes the noise-only
    step of an empty local batch by itself, and the loop never sees it; local batches
    are empty at other draws on every worker, so a loop left after a number of its
    iterations (``break``, ``itertools.islice``, a counter, even ``trainer.steps``
    checked in the loop body, which the loader's own steps can overshoot) ends the
    workers after different numbers of steps. Fix the number of steps with the loader
    (``num_batches=``, whole passes) and let the loops run out. A worker whose process
    ends normally takes a last round of the agreement check, marked as leaving: workers
    that began one more step instead raise :class:`~mxprivacy.WorkersOutOfStepError` at
    once (no gradient pushed; their state is the others'), and the leaving worker prints
    one line. That round is not under the watchdog: it waits for workers still busy,
    like ps-lite's shutdown barrier after it.

Any forward mode before the trainer
    A forward pass in predict mode leaves convolution weights in MKL-DNN's blocked
    layout, which the dist kvstore cannot push (the server would abort: "init 1
    first"); the broadcast pushes default-layout copies, so any forward pass may come
    before the trainer.

Refused: ``dist_async`` (each push would be applied alone by the server, with 1/sqrt(W)
of the noise), ``update_on_kvstore=True`` (the server would apply the raw sums: noise
must come between reduction and update), a kvstore with an optimizer of its own
(``KVStore.set_optimizer``: its server would not return sums; a probe push when the
trainer is built finds it) or with gradient compression, fixed-size sampling (the union
of local fixed-size draws is not a uniform draw of B of N), adaptive clipping (its
private count would be local, and the workers' bounds would drift apart), parameters
whose shapes are still deferred (rank 0's weights are broadcast when the trainer is
built), and a second distributed DPTrainer in one process (ps-lite starts once per
process, and the first trainer's kvstore keys hold its parameters).
"""
from __future__ import annotations

import dataclasses
import math
import threading
from typing import List, Optional

import numpy as np
from mxnet import nd

from ..accounting.events import GaussianEvent
from ..errors import InvalidParameterError
from . import guards
from .dist_agreement import check_workers_agree, dist_settings, farewell, round_size
from .dist_kvstore import (PROBE_KEY, create_kvstore, mark_started, probe_sums,
                           refuse_second_trainer)
from .watchdog import (TIMEOUT_EXIT_CODE, Watchdog, install_exit_guard, on_normal_exit,
                       resolve_timeout)

__all__ = ["DIST_KVSTORES", "TIMEOUT_EXIT_CODE", "DistributedMixin", "server_events",
           "add_steps"]

DIST_KVSTORES = ("dist_sync", "dist_device_sync")
SETTINGS_KEY = 2 ** 31 - 2  # far above Gluon's parameter keys 0 .. P-1
RUN_ID_KEY = 2 ** 31 - 3


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


def _uncounted(how: str) -> InvalidParameterError:
    return InvalidParameterError(
        f"The worker counts hold {how} steps than the ledger, so the number of workers of "
        "every step is not known (was trainer.accountant replaced?). Load the run's "
        "checkpoint with load_states instead.")


def server_events(ledger, worker_counts):
    """``(event with sigma / sqrt(W), count)`` for each stretch of steps of one event and
    one number of workers W, in step order."""
    segments = [[workers, count] for workers, count in worker_counts]
    events, position = [], 0
    for event, count in ledger:
        while count:
            if position == len(segments):
                raise _uncounted("fewer")
            workers, left = segments[position]
            taken = min(count, left)
            events.append((_scaled(event, 1.0 / math.sqrt(workers)), taken))
            count -= taken
            segments[position][1] -= taken
            position += segments[position][1] == 0
    if position != len(segments):
        raise _uncounted("more")
    return events


def _scaled(event, factor: float):
    """``event`` with every Gaussian's noise multiplier times ``factor``."""
    if isinstance(event, GaussianEvent):
        return GaussianEvent(event.noise_multiplier * factor)
    return dataclasses.replace(event, event=_scaled(event.event, factor))


def add_steps(counts: List[List[int]], workers: int, steps: int) -> List[List[int]]:
    """Run-length ``[[W, steps], ...]`` with ``steps`` more steps of ``workers``."""
    counts = [list(pair) for pair in counts]
    if counts and counts[-1][0] == workers:
        counts[-1][1] += steps
    elif steps:
        counts.append([workers, steps])
    return counts


def _off_main_thread(build):
    """``build()`` in a helper thread. scipy can leave errno = ERANGE in its thread, and
    MXNet's parser (dmlc::stod) then refuses the scalar inf of that thread's next
    ``nd.contrib.isfinite`` (the clip stage's): errno is per thread."""
    result = []
    helper = threading.Thread(target=lambda: result.append(build()))
    helper.start()
    helper.join()
    return result[0]


def _hex_digits(run_id: str) -> np.ndarray:
    return np.asarray([int(c, 16) for c in run_id], dtype=np.float32)


@dataclasses.dataclass
class _Job:
    kvstore: object
    rank: int
    num_workers: int
    watchdog: Watchdog
    round_size: int = 0  # of the agreement key's rounds
    left: int = 0  # workers that ended their process while this one began a step
    empty_steps: int = 0  # steps DPDataLoader took for empty local batches


class DistributedMixin:
    """The distributed side of :class:`~mxprivacy.gluon.DPTrainer` (see the module)."""

    _dist: Optional[_Job] = None

    def _setup_distributed(self, kvstore, dist_timeout, own_sampler: bool):
        """The kvstore to give Gluon: a dist one is created (or taken) here, so that the
        rank and the number of workers are known from the start."""
        self._worker_counts: List[List[int]] = []
        self._loader_size: Optional[int] = None
        self._local_expected: Optional[float] = None
        kind = kvstore_kind(kvstore)
        if kind not in DIST_KVSTORES:
            for name, value in (("dist_timeout", dist_timeout),
                                ("dist_own_sampler", own_sampler or None)):
                if value is not None:
                    raise InvalidParameterError(
                        f"{name}= only applies to a dist_sync or dist_device_sync kvstore.")
            self._own_sampler = False
            return kvstore
        self._own_sampler = bool(own_sampler)
        refuse_second_trainer()
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
        all, the probe of the server's sums, and the key of the agreement check."""
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
        mark_started(job.rank, job.num_workers, job.kvstore)  # its keys are in use now
        with job.watchdog.watch("the other workers to start (weight broadcast)"):
            probe_sums(job.kvstore, job.num_workers, PROBE_KEY)
            self._init_kvstore()
            self._broadcast_weights()
            run_id = nd.array(_hex_digits(self.run_id))
            job.kvstore.broadcast(RUN_ID_KEY, run_id, out=run_id)
            self.run_id = "".join("%x" % int(d) for d in run_id.asnumpy())
            job.round_size = round_size(dist_settings(self))
            job.kvstore.init(SETTINGS_KEY, nd.zeros((job.round_size,)))
        if job.num_workers > 1:  # the last round, at exit (see dist_agreement: Leaving)
            on_normal_exit(lambda: farewell(job, SETTINGS_KEY, job.round_size))

    def _broadcast_weights(self) -> None:
        """Rank 0's weights to every worker, under Gluon's keys (``Trainer._init_params``
        does the same), each pushed from a copy in the default layout. A forward pass in
        predict mode leaves convolution weights in MKL-DNN's blocked layout, which the
        dist kvstore cannot send: MXNet raises in its engine thread, the error is lost,
        the push never leaves, and the server aborts at the first pull ("init 1
        first"). ``set_data`` would not help: it copies into the arrays, keeping their
        layout. The pulled weights are copied back into every context's array."""
        for param in self._params:
            arrays = param.list_data()
            self._dist.kvstore.broadcast(self._param2idx[param.name], arrays[0].copy(),
                                         out=arrays)
        self._params_to_init = []

    @property
    def num_workers(self) -> int:
        """W: the number of workers of a dist kvstore (1 on one machine)."""
        return 1 if self._dist is None else self._dist.num_workers

    @property
    def rank(self) -> int:
        """This worker's kvstore rank (0 on one machine); rank 0 writes checkpoints."""
        return 0 if self._dist is None else self._dist.rank

    @property
    def distributed(self) -> bool:
        """Whether the trainer runs on a dist kvstore (``dist_sync``...)."""
        return self._dist is not None

    @property
    def worker_counts(self) -> List[List[int]]:
        """The number of workers of every step so far, run-length: ``[[W, steps], ...]``
        in step order (kept in checkpoints; see :meth:`server_epsilon`)."""
        return [list(pair) for pair in self._worker_counts]

    @property
    def server_noise_multiplier(self) -> float:
        """sigma / sqrt(W): the noise multiplier of one worker's push, which is what a
        curious parameter server sees (sigma on one machine)."""
        return self.noise_multiplier / math.sqrt(self.num_workers)

    def server_epsilon(self, delta: float) -> float:
        """Epsilon at ``delta`` against the parameter server (or anyone who knows the
        noise of all workers but the record's): each step of the ledger with its noise
        multiplier divided by sqrt(W), W the number of workers of that step
        (:attr:`worker_counts`), in the same accountant. Equals :meth:`epsilon` for a
        ledger of single-machine steps."""
        accountant = self.accountant.empty_like()
        for event, count in server_events(self.accountant.ledger, self._worker_counts):
            accountant.compose(event, count)
        return accountant.get_epsilon(delta)

    def _count_step_workers(self) -> None:
        """Record W with the step just composed into the ledger."""
        self._worker_counts = add_steps(self._worker_counts, self.num_workers, 1)

    def _noise_share(self, std: float) -> float:
        """This worker's part of the noise std: std / sqrt(W), so the W shares sum to
        std."""
        return std / math.sqrt(self.num_workers)

    def _register_loader(self, size: int, shard_size: int) -> None:
        """Called by a DPDataLoader built with ``trainer=``: its N (the same on every
        worker, checked at every step) and its shard's size (the Poisson check then
        expects q |shard|)."""
        if self._dist is None:
            return
        self._loader_size = int(size)
        expected = self.sample_rate * shard_size
        if expected != self._local_expected:
            self._local_expected = expected
            self._size_check = _off_main_thread(lambda: guards.size_check(
                self.step_sampling, max(expected, self.sample_rate)))
            self._size_check.enabled &= shard_size > 0

    def _check_workers_agree(self) -> None:
        """The agreement check (see :mod:`.dist_agreement`); raises on every worker."""
        if self._dist is not None:
            check_workers_agree(self, SETTINGS_KEY)

    def _dist_round_trip(self) -> None:
        """Push the noisy local sums, pull their sum over the workers, and wait for it."""
        job = self._dist
        with job.watchdog.watch("the other workers' gradients"):
            self._allreduce_grads()
            for param in self._trainable():
                for grad in param.list_grad():
                    grad.wait_to_read()
