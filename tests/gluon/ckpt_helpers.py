"""A tiny DP model for checkpoint, fuzz, property and crash tests."""
import io
import json
import warnings

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

from mxprivacy import DPTrainer, PrivateBlock
from mxprivacy._io import seal

LOSS = gluon.loss.SoftmaxCrossEntropyLoss()
KIND = "dptrainer-checkpoint"


def build(optimizer="sgd", sigma=1.0, seed=0, units=3, opt_params=None):
    """(block, trainer): Dense(units, in_units=4) in a PrivateBlock, initialized."""
    mx.random.seed(seed)
    net = gluon.nn.Dense(units, in_units=4)
    net.initialize(mx.init.Xavier())
    block = PrivateBlock(net)
    params = opt_params or ({"learning_rate": 0.1, "momentum": 0.9} if optimizer == "sgd"
                            else {"learning_rate": 0.01})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DPTrainer(block.collect_params(), optimizer, params, noise_multiplier=sigma,
                            max_grad_norm=1.0, expected_batch_size=4, sample_rate=0.1)
    return block, trainer


def data(b, seed):
    rng = np.random.default_rng(seed)
    return (nd.array(rng.normal(size=(b, 4)).astype(np.float32)),
            nd.array(rng.integers(0, 3, size=b)))


def step(block, trainer, seed=0, b=None):
    """One DP step on a batch of varying size (Poisson-like, never a fixed size)."""
    b = b if b is not None else 2 + seed % 5
    x, y = data(b, seed)
    with autograd.record():
        loss = LOSS(block(x), y)
    loss.backward()
    trainer.step(b)


def params_np(block):
    return [p.data().asnumpy().copy() for p in block.collect_params().values()]


def optimizer_np(trainer):
    out = {}
    for idx, state in trainer._updaters[0].states.items():
        leaves = state if isinstance(state, (tuple, list)) else [state]
        out[idx] = [None if s is None else s.asnumpy().copy() for s in leaves]
    return out, dict(trainer._optimizer._index_update_count), trainer._optimizer.num_update


def snapshot(block, trainer):
    """Everything a load may change, as comparable values."""
    return (json.dumps(trainer.accountant.state_dict(), sort_keys=True), trainer.steps,
            trainer.nonfinite_count, params_np(block), optimizer_np(trainer))


def same(first, second):
    try:
        np.testing.assert_equal(first, second)
    except AssertionError:
        return False
    return True


def read_body(path):
    with open(path, "rb") as handle:
        return handle.read().partition(b"\n")[2]


def read_meta(path):
    with np.load(io.BytesIO(read_body(path)), allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    return json.loads(arrays.pop("meta").tobytes()), arrays


def write_meta(path, meta, arrays):
    """Re-seal edited content: a valid checksum over edited data."""
    buffer = io.BytesIO()
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(buffer, meta=blob, **arrays)
    with open(path, "wb") as handle:
        handle.write(seal(KIND, buffer.getvalue()))
