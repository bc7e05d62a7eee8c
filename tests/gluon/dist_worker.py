"""Worker of tests/gluon/test_distributed.py, started by ``launch_local`` (dist_sync on
loopback): ``python -m tests.gluon.dist_worker SCENARIO OUTDIR``.

Scenarios: ``exact`` (sigma = 0, two steps on given local batches), ``noise`` (zero
gradients, so each pulled gradient is the aggregated noise; an empty local batch; a
DPDataLoader epoch; a checkpoint by rank 0 and a load on every worker), ``mismatch-sigma``
and ``mismatch-lr`` (one worker differs), ``stuck`` (rank 1 stops answering after one
step). Each worker writes its results to OUTDIR; helpers here also build the
single-machine references in the test.
"""
import json
import os
import signal
import sys
import time
import warnings

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

from mxprivacy import DPDataLoader, DPTrainer, PrivateBlock, WorkerMismatchError

LOSS = gluon.loss.SoftmaxCrossEntropyLoss()

EXACT = dict(noise_multiplier=0.0, max_grad_norm=0.3, expected_batch_size=8, dataset_size=64)
EXACT_OPT = ("sgd", {"learning_rate": 0.5, "momentum": 0.9})
EXACT_SPLITS = ((5, 3), (2, 5))  # local batch sizes of ranks 0 and 1 at steps 1 and 2

NOISE = dict(noise_multiplier=1.3, max_grad_norm=0.7, expected_batch_size=2, dataset_size=64)
NOISE_UNITS, NOISE_INPUTS = 500, 40  # 20,000 weights, no bias: zero inputs, zero gradients
NOISE_LOCAL = ((3, 2), (4, 0), (0, 0))  # explicit steps; then one DPDataLoader epoch


def exact_net():
    mx.random.seed(0)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(6, in_units=5, activation="tanh"), gluon.nn.Dense(3, in_units=6))
    net.initialize(mx.init.Xavier())
    return PrivateBlock(net)


def exact_batch(step):
    """The global batch of ``step`` (rank 0's rows first, then rank 1's)."""
    rng = np.random.default_rng(10 + step)
    size = sum(EXACT_SPLITS[step])
    return (rng.normal(size=(size, 5)).astype("float32"),
            rng.integers(0, 3, size=size).astype("float32"))


def local_rows(step, rank):
    start = sum(EXACT_SPLITS[step][:rank])
    return slice(start, start + EXACT_SPLITS[step][rank])


def noise_net():
    net = gluon.nn.Dense(NOISE_UNITS, in_units=NOISE_INPUTS, use_bias=False)
    net.initialize(mx.init.Xavier())
    return PrivateBlock(net)


def one_step(block, trainer, x, y):
    if len(x) == 0:
        trainer.step(0)
        return
    with autograd.record():
        loss = LOSS(block(nd.array(x)), nd.array(y))
    loss.backward()
    trainer.step(len(x))


def params_of(block):
    return {name: p.data().asnumpy() for name, p in
            enumerate(block.collect_params().values())}


def save_arrays(path, arrays):
    np.savez(path, **{str(k): v for k, v in arrays.items()})


def scenario_exact(out):
    kvstore = mx.kv.create("dist_device_sync")  # a KVStore object is accepted too
    if kvstore.rank == 1:  # other parameter names (dense2_...) must not matter
        gluon.nn.Dense(2, in_units=2).initialize()
    block = exact_net()
    trainer = DPTrainer(block.collect_params(), *EXACT_OPT, kvstore=kvstore, **EXACT)
    rank = trainer.rank
    save_arrays(os.path.join(out, f"init-{rank}.npz"), params_of(block))
    for step in range(len(EXACT_SPLITS)):
        x, y = exact_batch(step)
        rows = local_rows(step, rank)
        one_step(block, trainer, x[rows], y[rows])
    save_arrays(os.path.join(out, f"final-{rank}.npz"), params_of(block))


def noise_grads(block):
    return block.collect_params()[list(block.collect_params().keys())[0]].grad().asnumpy()


def scenario_noise(out):
    block = noise_net()
    trainer = DPTrainer(block.collect_params(), "sgd", {"learning_rate": 1e-3},
                        kvstore="dist_sync", noise_seed=1234, dist_timeout=30, **NOISE)
    rank = trainer.rank
    zeros = np.zeros((NOISE["dataset_size"], NOISE_INPUTS), dtype="float32")
    labels = np.zeros(NOISE["dataset_size"], dtype="float32")
    pulled = {}
    for number, sizes in enumerate(NOISE_LOCAL):
        one_step(block, trainer, zeros[:sizes[rank]], labels[:sizes[rank]])
        pulled[f"step{number}"] = noise_grads(block)
    loader = DPDataLoader((zeros, labels), expected_batch_size=NOISE["expected_batch_size"],
                          trainer=trainer)
    for x, y in loader:  # empty local batches step inside the loader
        one_step(block, trainer, x.asnumpy(), y.asnumpy())
    saved = {"ledger": trainer.accountant.state_dict(), "epsilon": trainer.epsilon(1e-5)}
    trainer.save_states(os.path.join(out, f"ckpt-{rank}"))  # only rank 0 writes
    one_step(block, trainer, zeros[:1], labels[:1])  # rank 0 saved before its push
    trainer.load_states(os.path.join(out, "ckpt-0"))  # every worker loads rank 0's file
    report = {"rank": rank, "num_workers": trainer.num_workers, "steps": trainer.steps,
              "saved": saved, "ledger": trainer.accountant.state_dict(),
              "epsilon": trainer.epsilon(1e-5), "server_epsilon": trainer.server_epsilon(1e-5),
              "empty_batches": loader.empty_batches, "shard": list(loader.shard),
              "run_id": trainer.run_id}
    save_arrays(os.path.join(out, f"pulled-{rank}.npz"), pulled)
    write_json(os.path.join(out, f"report-{rank}.json"), report)


def write_json(path, value):
    """Whole or absent: a peer polls for the file, and the job may be stopped at once."""
    with open(path + ".tmp", "w") as handle:
        json.dump(value, handle)
    os.replace(path + ".tmp", path)


def wait_for(path, seconds=20):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)


def scenario_mismatch(out, what):
    kvstore = mx.kv.create("dist_sync")
    rank = kvstore.rank
    block = exact_net()
    settings = dict(EXACT, noise_multiplier=1.0 + 0.5 * rank) if what == "sigma" else EXACT
    learning_rate = 0.1 * (1 + rank) if what == "lr" else 0.1
    trainer = DPTrainer(block.collect_params(), "sgd", {"learning_rate": learning_rate},
                        kvstore=kvstore, dist_timeout=30, **settings)
    x, y = exact_batch(0)
    rows = local_rows(0, rank)
    try:
        one_step(block, trainer, x[rows], y[rows])
    except WorkerMismatchError as error:
        write_json(os.path.join(out, f"error-{rank}.txt"), str(error))
        for other in (0, 1):  # both files exist before either worker exits
            wait_for(os.path.join(out, f"error-{other}.txt"))
        raise
    with open(os.path.join(out, f"stepped-{rank}.txt"), "w") as handle:
        handle.write(str(trainer.steps))


def scenario_stuck(out, how):
    block = exact_net()
    trainer = DPTrainer(block.collect_params(), *EXACT_OPT, kvstore="dist_sync",
                        dist_timeout=3, **dict(EXACT, noise_multiplier=1.0))
    rank = trainer.rank
    x, y = exact_batch(0)
    one_step(block, trainer, x[local_rows(0, rank)], y[local_rows(0, rank)])
    trainer.save_states(os.path.join(out, "ckpt"))
    write_json(os.path.join(out, f"epsilon-{rank}.json"), trainer.epsilon(1e-5))
    if rank == 1 and how == "killed":
        wait_for(os.path.join(out, "epsilon-0.json"))  # rank 0 has saved its checkpoint
        os.kill(os.getpid(), signal.SIGKILL)
    if rank == 1:
        time.sleep(120)  # a hung peer: alive, never pushes again
    one_step(block, trainer, x[local_rows(0, rank)], y[local_rows(0, rank)])


def main(scenario, out):
    warnings.simplefilter("ignore")
    if scenario == "exact":
        scenario_exact(out)
    elif scenario == "noise":
        scenario_noise(out)
    elif scenario.startswith("mismatch-"):
        scenario_mismatch(out, scenario.split("-", 1)[1])
    elif scenario in ("stuck", "killed"):
        scenario_stuck(out, scenario)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
