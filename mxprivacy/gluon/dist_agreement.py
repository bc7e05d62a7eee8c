"""The per-step agreement check of a distributed :class:`~mxprivacy.gluon.DPTrainer`.

Before the gradients are pushed, each worker pushes a digest of what every worker must
share (:func:`dist_settings`):

- the DP-SGD settings: sigma, C and the clipping mode, q, the expected batch size, N,
  the sampling, the loss reduction, the sensitivity, the accountant, secure mode, the
  optimizer's name and hyper-parameters, the parameters' shapes and learning-rate
  multipliers;
- the privacy state: the step count, the run id and a SHA-256 of the ledger (the
  accountant's ``state_dict`` and the per-step worker counts). A checkpoint loaded on
  some workers only, or different checkpoints, stop every worker at the next step;
- the data: the N the :class:`~mxprivacy.DPDataLoader` registered and its partition,
  how many records each rank owns (see :mod:`mxprivacy.gluon.dist_data`), so workers
  holding data sets of other sizes, or copies whose encodings or contents move records
  to other owners, stop at the first step. An aggregate, not a digest of the contents:
  that would reach the parameter server, which could test candidate data sets against
  it without noise. Differences that cancel in the counts pass: every worker's copy
  must hold the same records (compare ``loader.data_digest`` out of band);
- where the step's examples come from: announced by a sharded DPDataLoader, or the
  documented opt-out ``DPTrainer(dist_own_sampler=True)``. Steps that are neither are
  refused on every worker (a loader without ``trainer=`` samples the whole data set
  on every worker).

Each setting is 32 bits of its SHA-256 in 4-bit digits d; the workers push (d, d^2) under
a dedicated key (and one more number: see *Leaving*, below) and pull the sums. All
workers agree on a digit iff ``W * sum(d^2) == sum(d)^2`` (the variance is zero); sums of
small integers are exact in float32 for W < 74,000. Every worker reads the same sums and
so takes the same decision: all raise :class:`~mxprivacy.WorkerMismatchError`, naming
the settings, before any gradient is pushed. It costs one more round trip (a second
barrier) per step: 0.6 ms alone on loopback; a 784-256-10 MLP step went from 15.6 to
18.1 ms with 2 workers sharing 2 cores. Hashing the ledger adds about 30 us per step.

Leaving
    A worker that ends its process normally takes one last round under the same key
    (:func:`farewell`), marked ``leaving``. If every worker leaves, the job ends quietly.
    If others began one more step instead (a loop left after a number of its
    iterations: DPDataLoader steps by itself on empty local batches, which the loop
    never sees, so the workers' loops count other steps), their round sees the mark and
    they raise :class:`~mxprivacy.WorkersOutOfStepError` at once, saying so, instead of
    waiting ``dist_timeout`` for a worker that is gone; the leaving worker prints one
    line. No gradient of that step is pushed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from typing import Dict, List

import numpy as np
from mxnet import nd

from ..errors import SamplingError, WorkerMismatchError, WorkersOutOfStepError

__all__ = ["settings_digest", "disagreements", "dist_settings", "check_workers_agree",
           "round_vector", "round_size", "farewell", "out_of_step", "SUMS"]

_DIGITS = 8  # 4-bit digits per setting: 32 bits of its SHA-256
_OPTIMIZER_COUNTERS = {"num_update", "begin_num_update", "rescale_grad"}
# Hyper-parameters are the optimizer's scalars; its dicts are keyed by parameter names,
# which may differ between processes (per-parameter multipliers are checked by shape).
_SCALARS = (int, float, str, bool, type(None))
SUMS = "the kvstore's sums"  # the leading count digit: not W when the server alters pushes
FROM_LOADER, OWN_SAMPLER = "DPDataLoader(..., trainer=trainer)", "own sampler"
UNANNOUNCED = "not announced by a DPDataLoader(..., trainer=trainer)"
_LEDGER_HINT = ("The workers' privacy ledgers differ: a checkpoint was loaded on some "
                "workers only, or different checkpoints. Every worker must call "
                "trainer.load_states on the same file (copy rank 0's to every host), or "
                "none.")
HINTS = {
    SUMS: "The parameter server did not return the sum of the workers' pushes: the "
          "kvstore has its own optimizer (KVStore.set_optimizer) or alters pushes. "
          "Create the kvstore without set_optimizer.",
    "steps": _LEDGER_HINT, "run_id": _LEDGER_HINT, "ledger": _LEDGER_HINT,
    "data": "Every worker must give DPDataLoader the whole data set (the same N "
            "records; their order does not matter; compare loader.data_digest).",
    "batches": f"Every worker must draw its batches from {FROM_LOADER}, or every worker "
               "must opt out with DPTrainer(..., dist_own_sampler=True).",
}


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
        return [SUMS]
    spread = num_workers * second[1:] - first[1:] ** 2
    return [name for number, name in enumerate(names)
            if np.any(spread[number * _DIGITS:(number + 1) * _DIGITS] != 0)]


def ledger_digest(trainer) -> str:
    """SHA-256 of the accountant's state and the per-step worker counts."""
    state = {"privacy": trainer.accountant.state_dict(), "workers": trainer.worker_counts}
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode("utf-8")).hexdigest()


def _batch_source(trainer) -> str:
    if trainer._own_sampler:
        return OWN_SAMPLER
    announced = trainer._loader_examples is not None and trainer._loader_size is not None
    return FROM_LOADER if announced else UNANNOUNCED


def dist_settings(trainer) -> Dict[str, str]:
    """What every worker must agree on, as strings (see the module docstring)."""
    opt = trainer._optimizer
    hyper = {k: v for k, v in sorted(vars(opt).items()) if not k.startswith("_")
             and k not in _OPTIMIZER_COUNTERS and isinstance(v, _SCALARS)}
    schedule = opt.lr_scheduler
    hyper["lr_scheduler"] = None if schedule is None else [type(schedule).__name__, {
        k: v for k, v in sorted(vars(schedule).items()) if isinstance(v, _SCALARS)}]
    params = [[list(p.shape), str(np.dtype(p.dtype)), p.lr_mult, p.wd_mult]
              for p in trainer._trainable()]
    bounds = getattr(trainer._clipping, "bounds", None)
    clip = list(bounds.values()) if bounds else trainer._clipping.bound
    return {"noise_multiplier": repr(float(trainer.noise_multiplier)),
            "max_grad_norm": json.dumps([trainer.clipping, clip]),
            "sensitivity": repr(float(trainer.sensitivity)),
            "sample_rate": repr(float(trainer.sample_rate)),
            "expected_batch_size": repr(float(trainer.expected_batch_size)),
            "dataset_size": repr(trainer.dataset_size),
            "sampling": trainer.sampling, "loss_reduction": trainer.loss_reduction,
            "accountant": type(trainer.accountant).__name__,
            "secure_mode": repr(trainer.secure_mode),
            "optimizer": json.dumps([type(opt).__name__, hyper, repr(trainer._scale)],
                                    sort_keys=True, default=repr),
            "parameters": json.dumps(params, default=repr),
            "steps": repr(trainer.steps), "run_id": trainer.run_id,
            "ledger": ledger_digest(trainer),
            "data": "no DPDataLoader(..., trainer=trainer)" if trainer._loader_size is None
            else ", ".join([f"N={trainer._loader_size}"] + (
                [trainer._loader_partition] if getattr(trainer, "_loader_partition", None)
                else [])),
            "batches": _batch_source(trainer)}


def _shown(name: str, settings: Dict[str, str], num_workers: int) -> str:
    value = settings.get(name, num_workers)
    if name == "ledger":
        return f"ledger=sha256:{str(value)[:12]}..."
    return f"{name}={value}"


def round_vector(digest: np.ndarray, leaving: bool) -> np.ndarray:
    """One worker's push in a round under the agreement key: ``[digest, digest**2,
    leaving]``, leaving = 1 for the last round of a worker that ends its process."""
    return np.concatenate([digest, digest * digest, [float(leaving)]]).astype(np.float32)


def round_size(settings: Dict[str, str]) -> int:
    """The length of :func:`round_vector` for these settings."""
    return 2 * len(settings_digest(settings)) + 1


def _round(job, key: int, vector: np.ndarray, wait) -> np.ndarray:
    """Push ``vector`` and pull the sum over the workers, inside the context ``wait``."""
    pushed = nd.array(vector)
    with wait:
        job.kvstore.pushpull(key, pushed, out=pushed)
        return pushed.asnumpy()


def check_workers_agree(trainer, key: int) -> None:
    """The agreement check (one round trip); raises on every worker at once, or on the
    workers that began a step when others ended their process."""
    job = trainer._dist
    if job.left:  # those workers are gone: a round would wait for them forever
        raise out_of_step(trainer, job.left)
    settings = dist_settings(trainer)
    digest = settings_digest(settings)
    sums = _round(job, key, round_vector(digest, leaving=False),
                  job.watchdog.watch("the other workers' settings (agreement check)"))
    if sums[-1] > 0.5:
        job.left = int(round(float(sums[-1])))
        raise out_of_step(trainer, job.left)
    differ = disagreements(sums[:-1], job.num_workers, list(settings))
    if differ:
        mine = "; ".join(_shown(name, settings, job.num_workers) for name in differ)
        hints = " ".join(dict.fromkeys(HINTS[name] for name in differ if name in HINTS))
        raise WorkerMismatchError(
            f"The {job.num_workers} workers disagree on {', '.join(differ)} (worker "
            f"rank {job.rank} has {mine}). {hints + ' ' if hints else ''}Every worker must "
            "run the same DP-SGD settings, data and ledger, or the noise, the update and "
            "the reported epsilon do not describe the step. No gradient of this step was "
            "pushed.")
    if settings["batches"] == UNANNOUNCED:
        raise SamplingError(
            f"With kvstore {job.kvstore.type!r} every step's examples must come from "
            f"{FROM_LOADER}: it keeps this worker's shard of the data set and announces "
            "each batch. This step's were not announced (a loader without trainer=, or "
            "batches made by hand), so each worker may have sampled the whole data set and "
            "a record could be counted W times. If you shard and Poisson-sample yourself, "
            "build every worker's DPTrainer with dist_own_sampler=True (see its "
            "docstring for what you must then guarantee). No gradient of this step was "
            "pushed.")
    if trainer._loader_examples == 0:  # the noise-only step DPDataLoader takes itself
        job.empty_steps += 1


def out_of_step(trainer, left: int) -> WorkersOutOfStepError:
    """The error of a worker that began a step when ``left`` workers ended instead."""
    job = trainer._dist
    this = (", this one included" if trainer._loader_examples == 0 and
            trainer._loader_size is not None else "")
    return WorkersOutOfStepError(
        f"Worker rank {job.rank} of {job.num_workers} began step {trainer.steps + 1}, but "
        f"{left} of the {job.num_workers} workers ended their process after step "
        f"{trainer.steps} instead. Every worker must take the same number of steps, and a "
        "loop left after a number of its iterations (break, itertools.islice, a counter) "
        "does not ensure it: DPDataLoader takes a noise-only step by itself for every "
        "empty local batch, which the loop never sees, and each worker's local batches "
        "are empty at other draws (this worker's loaders took "
        f"{job.empty_steps + bool(this)} such steps{this}). Fix the number of steps with "
        "the loader instead: DPDataLoader(..., num_batches=STEPS), or whole passes over "
        "it, and let every loop run out. No gradient of this step was pushed: this "
        "worker's weights and ledger are those of the other workers after their last "
        "step. Every later step raises this error at once.")


def farewell(job, key: int, size: int) -> None:
    """A worker's last round, at a normal exit: ``leaving`` = 1 under the agreement key.
    Workers that began another step instead learn it at once (they raise
    :class:`~mxprivacy.WorkersOutOfStepError`) instead of waiting ``dist_timeout`` for
    this one; this one prints one line. Not under the watchdog: like ps-lite's shutdown
    barrier that follows, it waits for workers still busy (rank 0 evaluating)."""
    if job.left or job.num_workers == 1:
        return
    digest = np.zeros((size - 1) // 2, dtype=np.float32)
    digest[0] = 1.0  # counted as a worker, like every push
    sums = _round(job, key, round_vector(digest, leaving=True), contextlib.nullcontext())
    stepping = job.num_workers - int(round(float(sums[-1])))
    if stepping:
        print(f"mxprivacy: worker rank {job.rank} of {job.num_workers} ended its process, "
              f"but {stepping} other worker(s) began one more step instead; they raise "
              "WorkersOutOfStepError, whose message says why and how to end every worker "
              "after the same step.", file=sys.stderr, flush=True)
