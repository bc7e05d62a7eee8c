"""Distributed DP-SGD on loopback: samples per second of the DP step against the
non-private ``dist_sync`` step, with 1 and 2 workers (1 server, 1 scheduler).

Each measurement is one job started with :func:`mxprivacy.distributed.launch_local`;
its workers time their steps and write them to files. The variants:

- ``nonprivate``: ``gluon.Trainer(..., kvstore="dist_sync")`` as MXNet users run it (the
  server applies the optimizer), every worker on a fixed local batch of B / W;
- ``dp``: ``DPTrainer(..., kvstore="dist_sync")`` fed by ``DPDataLoader(..., trainer=
  trainer)`` (in-memory arrays; it keeps the worker's shard of N / W, draws local Poisson
  batches of mean B / W and announces them, as a dist_sync DPTrainer requires), noise
  shares, the agreement check. The loader's indexing is in the DP time.

Nets as in ``benchmarks/dp_step.py`` (``mxprivacy.train.build_model``, hybridized by the
user with ``static_alloc`` and ``static_shape``): ``mlp`` (784-256-10) and ``cnn``
(Opacus' MNIST CNN); global batch B = 256 of N = 60,000 (random MNIST-shaped data).
Every process runs one thread (``OMP_NUM_THREADS=1``, ``MXNET_CPU_WORKER_NTHREADS=1``).
A step's time is the median over ``--repeats`` steps after warm-up (each ended by
``nd.waitall``), on rank 0; a job's samples per second is B / that time. ``--rounds``
rounds each run every (net, W, variant) job once, the two variants back to back; the
report takes the median over rounds of the step times, and of each round's ratio
DP / non-private (so a slow spell on the shared machine, which hits both of a pair,
moves it little). The machine has 2 cores shared by the scheduler, the server and the
workers, so the overhead ratio DP / non-private is the result, not the scaling with W.
Prints a table, or one JSON object with ``--json``::

    {"models": {net: {"1": {"nonprivate_ms", "dp_ms", "nonprivate_samples_per_s",
                            "dp_samples_per_s", "ratio"}, "2": {...}}}, ...}
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

BATCH, DATASET = 256, 60000
MODELS = ("mlp", "cnn")
VARIANTS = ("nonprivate", "dp")
WORKERS = (1, 2)
REPEATS = {"mlp": 40, "cnn": 20}
ENV = {"OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- worker (run by launch_local) ------------------------------------------------------
def _net(model: str):
    import mxnet as mx
    from mxnet import autograd, nd

    from mxprivacy.train import build_model

    mx.random.seed(0)
    net = build_model(model)
    net.initialize(mx.init.Xavier())
    with autograd.train_mode():  # shapes now, weights not reordered by MKLDNN
        net(nd.zeros((1, 784) if model == "mlp" else (1, 1, 28, 28)))
    net.hybridize(static_alloc=True, static_shape=True)
    return net


def _trainer(net, variant: str, kvstore):
    from mxnet import gluon

    from mxprivacy import DPTrainer, PrivateBlock

    if variant == "nonprivate":
        return net, gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.05},
                                  kvstore=kvstore)
    block = PrivateBlock(net)
    return block, DPTrainer(block.collect_params(), "sgd", {"learning_rate": 0.05},
                            kvstore=kvstore, noise_multiplier=1.0, max_grad_norm=1.0,
                            expected_batch_size=BATCH, sample_rate=BATCH / DATASET,
                            dist_timeout=300)


def _batches(model: str, variant: str, trainer, workers: int, rank: int):
    """Endless (x, y): a fixed local batch of B / W, or a sharded DPDataLoader's."""
    from mxnet import nd

    from mxprivacy import DPDataLoader

    rng = np.random.default_rng(0)
    if variant == "nonprivate":
        size = (BATCH // workers, 784) if model == "mlp" else (BATCH // workers, 1, 28, 28)
        x, y = nd.array(rng.normal(size=size)), nd.array(np.arange(size[0]) % 10)
        while True:
            yield x, y
    size = (DATASET, 784) if model == "mlp" else (DATASET, 1, 28, 28)
    data = (rng.normal(size=size).astype(np.float32), np.arange(DATASET) % 10)
    yield from DPDataLoader(data, BATCH / DATASET, trainer=trainer)


def worker(model: str, variant: str, out: str, repeats: int) -> None:
    import mxnet as mx
    from mxnet import autograd, gluon, nd

    kvstore = mx.kv.create("dist_sync")
    workers, rank = kvstore.num_workers, kvstore.rank
    net, trainer = _trainer(_net(model), variant, kvstore)
    batches = _batches(model, variant, trainer, workers, rank)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    def step():
        x, y = next(batches)
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(x.shape[0])
        nd.waitall()

    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    _write_json(os.path.join(out, f"timing-{rank}.json"),
                {"ms": 1000.0 * float(np.median(times)), "workers": workers})


def _write_json(path: str, value) -> None:
    with open(path + ".tmp", "w") as handle:
        json.dump(value, handle)
    os.replace(path + ".tmp", path)


# -- driver ----------------------------------------------------------------------------
def run_job(model: str, variant: str, workers: int, repeats: int) -> float:
    """Rank 0's median step time (ms) of one job on loopback."""
    from mxprivacy.distributed import launch_local

    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, os.path.abspath(__file__), "--worker", model, variant,
                   out, str(repeats)]
        code = launch_local(command, workers, 1, env=ENV, timeout=600, grace=2.0, cwd=ROOT)
        if code != 0:
            raise SystemExit(f"{model}/{variant} with {workers} workers: job exit code {code}")
        with open(os.path.join(out, "timing-0.json")) as handle:
            timing = json.load(handle)
    if timing["workers"] != workers:
        raise SystemExit(f"expected {workers} workers, the job had {timing['workers']}")
    return timing["ms"]


def measure(models, rounds: int, scale: float) -> dict:
    runs = {(m, w, v): [] for m in models for w in WORKERS for v in VARIANTS}
    for _ in range(rounds):
        for model in models:
            for workers in WORKERS:
                for variant in VARIANTS:  # side by side: each pair back to back
                    repeats = max(5, int(REPEATS[model] * scale))
                    runs[model, workers, variant].append(
                        run_job(model, variant, workers, repeats))
    result = {}
    for model in models:
        result[model] = {}
        for workers in WORKERS:
            ms = {v: float(np.median(runs[model, workers, v])) for v in VARIANTS}
            ratios = np.divide(runs[model, workers, "dp"], runs[model, workers, "nonprivate"])
            result[model][str(workers)] = {
                "nonprivate_ms": ms["nonprivate"], "dp_ms": ms["dp"],
                "nonprivate_samples_per_s": 1000.0 * BATCH / ms["nonprivate"],
                "dp_samples_per_s": 1000.0 * BATCH / ms["dp"],
                "ratio": float(np.median(ratios)),
                "rounds_ms": {v: runs[model, workers, v] for v in VARIANTS}}
    return result


def _table(models: dict) -> str:
    lines = ["| net | workers | non-private samples/s | DP samples/s | DP / non-private "
             "(median of rounds) |", "|---|---|---|---|---|"]
    for model, by_workers in models.items():
        for workers, row in by_workers.items():
            lines.append(f"| {model} | {workers} | {row['nonprivate_samples_per_s']:.0f} "
                         f"({row['nonprivate_ms']:.1f} ms) | {row['dp_samples_per_s']:.0f} "
                         f"({row['dp_ms']:.1f} ms) | {row['ratio']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the timed steps per job (mlp 40, cnn 20)")
    parser.add_argument("--models", default=",".join(MODELS), help="mlp,cnn")
    parser.add_argument("--worker", nargs=4, metavar=("MODEL", "VARIANT", "OUT", "REPEATS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        model, variant, out, repeats = args.worker
        worker(model, variant, out, int(repeats))
        return 0
    models = [m for m in args.models.split(",") if m]
    if not models or set(models) - set(MODELS) or args.rounds < 1 or not args.scale > 0:
        parser.error(f"--models from {list(MODELS)}, --rounds >= 1, --scale > 0")
    start = time.perf_counter()
    result = {"batch": BATCH, "dataset_size": DATASET, "servers": 1, "rounds": args.rounds,
              "threads_per_process": 1, "cores": os.cpu_count(),
              "models": measure(models, args.rounds, args.scale)}
    result["seconds"] = time.perf_counter() - start
    if args.json:
        print(json.dumps(result))
    else:
        print(_table(result["models"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
