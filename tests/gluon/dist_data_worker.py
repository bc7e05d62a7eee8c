"""Worker of tests/gluon/test_dist_data.py, started by ``launch_local`` (dist_sync on
loopback): ``python -m tests.gluon.dist_data_worker OUTDIR``.

sigma = 0, q = 1, C = 1, learning rate 0; N records, only the canary has non-zero inputs,
so the pulled gradient has norm C times the number of workers that trained the canary.
Rank 1's copy first holds one record with another content (its owner moves: the job
must stop at the first step), then the same records as float64 features, int64 labels,
big-endian, in reverse order (they must be trained once each).
"""
import json
import os
import sys
import warnings

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

from mxprivacy import DPDataLoader, DPTrainer, PrivateBlock, WorkerMismatchError
from mxprivacy.gluon.dist_data import owners, record_digests

N = 12
CANARY = 5
LOSS = gluon.loss.SoftmaxCrossEntropyLoss()


def records():
    """Zero inputs but for the canary (inputs 10); labels 0 .. N-1 (distinct records)."""
    x = np.zeros((N, 4), dtype="float32")
    x[CANARY] = 10.0
    return x, np.arange(N, dtype="float32")


def moved_record():
    """(index, value): setting that record's inputs to value moves it to the other of two
    workers (so one record on two workers, if nothing stopped the job)."""
    x, y = records()
    before = owners(record_digests(N, [x, y]), 2)
    for value in range(1, 100):
        other = x.copy()
        other[2] = value
        if owners(record_digests(N, [other, y]), 2)[2] != before[2]:
            return 2, float(value)
    raise AssertionError("no value moves record 2")


def copy_of(rank, how):
    x, y = records()
    if rank == 1 and how == "other content":
        index, value = moved_record()
        x[index] = value
    elif rank == 1 and how == "float64 copy":
        x, y = x[::-1].astype(">f8"), y[::-1].astype("int64")
    return x, y


def step_on(block, trainer, data):
    """One step on the first batch of a q = 1 loader; the labels trained on."""
    for xb, yb in DPDataLoader(data, sample_rate=1.0, trainer=trainer):
        with autograd.record():
            loss = LOSS(block(nd.array(xb.asnumpy(), dtype="float32")),
                        nd.array(yb.asnumpy(), dtype="float32"))
        loss.backward()
        trainer.step(xb.shape[0])
        return sorted(int(label) for label in yb.asnumpy())
    return []  # an empty shard: the loader stepped by itself


def main(out):
    warnings.simplefilter("ignore")
    mx.random.seed(0)
    net = gluon.nn.Dense(N, in_units=4, use_bias=False)
    net.initialize(mx.init.Xavier())
    block = PrivateBlock(net)
    trainer = DPTrainer(block.collect_params(), "sgd", {"learning_rate": 0.0},
                        kvstore="dist_sync", noise_multiplier=0.0, max_grad_norm=1.0,
                        expected_batch_size=N, dataset_size=N, dist_timeout=60)
    rank, report = trainer.rank, {}
    try:
        step_on(block, trainer, copy_of(trainer.rank, "other content"))
        report["other content"] = None
    except WorkerMismatchError as error:
        report["other content"] = str(error)
        block.discard_capture()
    report["steps after other content"] = trainer.steps
    report["records"] = step_on(block, trainer, copy_of(rank, "float64 copy"))
    grad = list(block.collect_params().values())[0].grad().asnumpy()
    report.update(steps=trainer.steps, pulled_norm=float(np.linalg.norm(grad)))
    path = os.path.join(out, f"data-{rank}.json")
    with open(path + ".tmp", "w") as handle:
        json.dump(report, handle)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main(sys.argv[1])
