"""Worker of tests/gluon/test_distributed.py, started by ``launch_local`` (dist_sync on
loopback): ``python -m tests.gluon.dist_worker SCENARIO OUTDIR``.

Scenarios: ``exact`` (sigma = 0, two steps on given local batches), ``noise`` (zero
gradients, so each pulled gradient is the aggregated noise; an empty local batch; a
DPDataLoader epoch; a checkpoint by rank 0 and a load on every worker), ``mismatch`` (one
worker differs in sigma, then in learning rate), ``stuck`` (rank 1 stops answering after one
step), ``misuse`` (a loader without trainer=, second trainers, a step not drawn by a
loader, other data on rank 1, then the same data in another order), ``server-optimizer``
(a KVStore with set_optimizer), ``partial-resume CKPT`` (rank 0 alone loads a
checkpoint), ``predict-first`` (a CNN run in predict mode before the trainer is built),
``break`` (loops left with ``break``: after equal steps, then with one worker ahead).
Steps on given local batches use ``dist_own_sampler=True`` (the documented
opt-out). Each worker writes its results to OUTDIR; helpers here also build the
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

from mxprivacy import (DPDataLoader, DPTrainer, InvalidParameterError, PrivateBlock,
                       SamplingError, WorkerMismatchError)

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
    trainer = DPTrainer(block.collect_params(), *EXACT_OPT, kvstore=kvstore,
                        dist_own_sampler=True, **EXACT)
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
                        kvstore="dist_sync", noise_seed=1234, dist_timeout=30,
                        dist_own_sampler=True, **NOISE)
    rank = trainer.rank
    zeros = np.zeros((NOISE["dataset_size"], NOISE_INPUTS), dtype="float32")
    labels = np.arange(NOISE["dataset_size"], dtype="float32")  # distinct records
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
              "empty_batches": loader.empty_batches, "shard": loader.shard.tolist(),
              "run_id": trainer.run_id, "worker_counts": trainer.worker_counts}
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


def scenario_mismatch(out):
    """Rank 1 first has another sigma, then (sigma fixed) another learning rate: each
    step raises on both workers; the second error is left uncaught (the job fails)."""
    kvstore = mx.kv.create("dist_sync")
    rank = kvstore.rank
    block = exact_net()
    trainer = DPTrainer(block.collect_params(), "sgd", {"learning_rate": 0.1},
                        kvstore=kvstore, dist_timeout=30, dist_own_sampler=True,
                        **dict(EXACT, noise_multiplier=1.0 + 0.5 * rank))
    x, y = exact_batch(0)
    rows = local_rows(0, rank)
    for what in ("sigma", "lr"):
        if what == "lr":
            trainer.noise_multiplier = 1.0
            trainer.set_learning_rate(0.1 * (1 + rank))
        try:
            one_step(block, trainer, x[rows], y[rows])
        except WorkerMismatchError as error:
            write_json(os.path.join(out, f"error-{what}-{rank}.txt"), str(error))
            if what == "sigma":
                block.discard_capture()  # the next attempt forwards the batch again
                continue
            for other in (0, 1):  # both files exist before either worker exits
                wait_for(os.path.join(out, f"error-{what}-{other}.txt"))
            raise
        with open(os.path.join(out, f"stepped-{rank}.txt"), "w") as handle:
            handle.write(str(trainer.steps))


def scenario_stuck(out, how):
    block = exact_net()
    trainer = DPTrainer(block.collect_params(), *EXACT_OPT, kvstore="dist_sync",
                        dist_timeout=3, dist_own_sampler=True,
                        **dict(EXACT, noise_multiplier=1.0))
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


MISUSE_N = 12  # records; record i has label i, and only the canary has non-zero inputs


def misuse_data(rank, how):
    """Every worker's copy of the data set: zero inputs but for the canary (record 5,
    inputs 10), labels 0 .. N-1 (distinct records). ``how`` changes rank 1's copy."""
    x = np.zeros((MISUSE_N, 4), dtype="float32")
    x[5] = 10.0
    y = np.arange(MISUSE_N, dtype="float32")
    if rank == 1 and how == "other":  # one record differs
        x[2] = 1.0
    elif rank == 1 and how == "shorter":  # the same file minus its last two rows (N = 10)
        x, y = x[:-2], y[:-2]
    elif rank == 1 and how == "reversed":  # the same records in another order
        x, y = x[::-1].copy(), y[::-1].copy()
    return x, y


def misuse_net():
    mx.random.seed(0)
    net = gluon.nn.Dense(MISUSE_N, in_units=4, use_bias=False)
    net.initialize(mx.init.Xavier())
    return PrivateBlock(net)


def refused(errors, name, error_type, call):
    """Run ``call``; record the message of the expected error (anything else raises)."""
    try:
        call()
    except error_type as error:
        errors[name] = str(error)
    else:
        errors[name] = None


def loader_step(block, trainer, data):
    """One step on the first batch of a q = 1 DPDataLoader over ``data``."""
    loader = DPDataLoader(data, sample_rate=1.0, trainer=trainer)
    for x, y in loader:
        one_step(block, trainer, x.asnumpy(), y.asnumpy())
        return sorted(y.asnumpy().astype(int).tolist())


def scenario_misuse(out):
    """sigma = 0, q = 1, C = 1, learning rate 0 (the weights stay; gradients are read)."""
    errors = {}
    x, y = misuse_data(0, "same")
    refused(errors, "no trainer", InvalidParameterError,
            lambda: DPDataLoader((x, y), expected_batch_size=4))
    block = misuse_net()
    options = dict(noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=MISUSE_N,
                   sample_rate=1.0, dist_timeout=30)
    trainer = DPTrainer(block.collect_params(), "sgd", {"learning_rate": 0.0},
                        kvstore="dist_sync", **options)
    rank = trainer.rank
    for name, kvstore in (("second by name", "dist_sync"), ("second, shared", trainer._kvstore)):
        refused(errors, name, InvalidParameterError, lambda: DPTrainer(
            misuse_net().collect_params(), "sgd", kvstore=kvstore, **options))
    refused(errors, "by hand", SamplingError, lambda: one_step(block, trainer, x, y))
    block.discard_capture()
    refused(errors, "shorter", WorkerMismatchError,
            lambda: loader_step(block, trainer, misuse_data(rank, "shorter")))
    block.discard_capture()
    refused(errors, "other", WorkerMismatchError,  # one record differs: owners move
            lambda: loader_step(block, trainer, misuse_data(rank, "other")))
    block.discard_capture()
    records = loader_step(block, trainer, misuse_data(rank, "reversed"))
    pulled = block.collect_params()[list(block.collect_params().keys())[0]].grad().asnumpy()
    write_json(os.path.join(out, f"misuse-{rank}.json"), {
        "errors": errors, "records": records, "steps": trainer.steps,
        "pulled_norm": float(np.linalg.norm(pulled))})


def scenario_server_optimizer(out):
    kvstore = mx.kv.create("dist_sync")
    kvstore.set_optimizer(mx.optimizer.SGD(learning_rate=0.5))
    errors = {}
    refused(errors, "server optimizer", InvalidParameterError, lambda: DPTrainer(
        exact_net().collect_params(), "sgd", kvstore=kvstore, dist_timeout=30, **EXACT))
    write_json(os.path.join(out, f"server-optimizer-{kvstore.rank}.json"), errors)


def scenario_partial_resume(out, checkpoint):
    """Rank 0 alone loads ``checkpoint`` (of the noise scenario), then both step."""
    block = noise_net()
    trainer = DPTrainer(block.collect_params(), "sgd", {"learning_rate": 1e-3},
                        kvstore="dist_sync", dist_timeout=30, dist_own_sampler=True, **NOISE)
    rank = trainer.rank
    if rank == 0:
        trainer.load_states(checkpoint)
    errors = {}
    zeros = np.zeros((1, NOISE_INPUTS), dtype="float32")
    refused(errors, "step", WorkerMismatchError,
            lambda: one_step(block, trainer, zeros, np.zeros(1, dtype="float32")))
    write_json(os.path.join(out, f"resume-{rank}.json"),
               {"errors": errors, "steps": trainer.steps, "epsilon": trainer.epsilon(1e-5)})


def conv_net(seed):
    """A CNN whose convolution MKL-DNN reorders in predict mode (8 filters, 3x3, 8x8)."""
    mx.random.seed(seed)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(8, 3, in_channels=1, activation="relu"),
            gluon.nn.Dense(3, in_units=8 * 6 * 6))
    net.initialize(mx.init.Xavier())
    return net


def mkldnn_layout(array):
    """Whether ``array`` is in MKL-DNN's blocked layout (DLPack export refuses it)."""
    try:
        nd.to_dlpack_for_read(array)
    except mx.base.MXNetError:
        return True
    return False


def scenario_predict_first(out):
    """A predict-mode forward pass before the trainer (each rank's own initial weights),
    then two loader steps with a predict-mode evaluation after each."""
    kvstore = mx.kv.create("dist_sync")
    rank = kvstore.rank
    net = conv_net(seed=rank)
    before = params_of(net)
    images = np.random.default_rng(0).random((32, 1, 8, 8)).astype("float32")
    labels = (np.arange(32) % 3).astype("float32")
    net(nd.array(images[:2]))  # predict mode: MKL-DNN reorders the weight in the engine,
    nd.waitall()  # after the forward
    layouts = [mkldnn_layout(p.data()) for p in net.collect_params().values()]
    block = PrivateBlock(net)
    trainer = DPTrainer(block.collect_params(), "sgd", {"learning_rate": 0.5},
                        kvstore=kvstore, dist_timeout=30, noise_multiplier=0.5,
                        max_grad_norm=1.0, expected_batch_size=16, dataset_size=32)
    start = params_of(block)
    for x, y in DPDataLoader((images, labels), expected_batch_size=16, trainer=trainer,
                             num_batches=2):
        one_step(block, trainer, x.asnumpy(), y.asnumpy())
        block(nd.array(images[:2]))  # evaluation, in predict mode
    for name, arrays in (("before", before), ("start", start), ("final", params_of(block))):
        save_arrays(os.path.join(out, f"{name}-{rank}.npz"), arrays)
    write_json(os.path.join(out, f"report-{rank}.json"),
               {"layouts": layouts, "steps": trainer.steps})


def owned_ids(rank_of, count=4):
    """``count`` record ids; the i-th is owned (W = 2) by rank ``rank_of[i]``."""
    from mxprivacy.gluon.dist_data import owners, record_digests

    candidates = list(range(200))
    owner = owners(record_digests(len(candidates), record_ids=candidates), 2)
    pools = {r: [c for c, o in zip(candidates, owner) if o == r] for r in (0, 1)}
    return [pools[r].pop(0) for r in rank_of]


def scenario_break(out):
    """q = 1. A loop over records of both ranks, left with ``break`` after 2 iterations:
    no batch is empty, both take 2 steps and go on. Then a loop over records of rank 0
    only, left after 2 iterations: rank 1's batches are all empty, so its loader steps by
    itself (its loop body never runs) and begins step 5 as rank 0 ends its process."""
    block = exact_net()
    trainer = DPTrainer(block.collect_params(), "sgd", {"learning_rate": 0.1},
                        kvstore="dist_sync", dist_timeout=60, noise_multiplier=1.0,
                        max_grad_norm=1.0, expected_batch_size=4, sample_rate=1.0)
    rank = trainer.rank
    x, y = exact_batch(0)
    x, y = x[:4], y[:4]
    report = {}
    for phase, rank_of in (("equal", (0, 0, 1, 1)), ("ahead", (0, 0, 0, 0))):
        loader = DPDataLoader((x, y), sample_rate=1.0, trainer=trainer, num_batches=50,
                              record_ids=owned_ids(rank_of))
        try:
            for number, (xb, yb) in enumerate(loader):
                one_step(block, trainer, xb.asnumpy(), yb.asnumpy())
                if number == 1:
                    break
        except WorkerMismatchError as error:
            report["error"] = [type(error).__name__, str(error)]
        report[phase] = {"steps": trainer.steps, "empty_batches": loader.empty_batches}
    save_arrays(os.path.join(out, f"final-{rank}.npz"), params_of(block))
    write_json(os.path.join(out, f"break-{rank}.json"), report)


def main(scenario, out):
    warnings.simplefilter("ignore")
    if scenario == "exact":
        scenario_exact(out)
    elif scenario == "noise":
        scenario_noise(out)
    elif scenario == "mismatch":
        scenario_mismatch(out)
    elif scenario in ("stuck", "killed"):
        scenario_stuck(out, scenario)
    elif scenario == "misuse":
        scenario_misuse(out)
    elif scenario == "server-optimizer":
        scenario_server_optimizer(out)
    elif scenario == "predict-first":
        scenario_predict_first(out)
    elif scenario == "break":
        scenario_break(out)
    elif scenario.startswith("partial-resume="):
        scenario_partial_resume(out, scenario.split("=", 1)[1])
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
