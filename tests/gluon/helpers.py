"""Shared nets and the microbatch-of-one reference harness."""
import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd

LOSS = gluon.loss.SoftmaxCrossEntropyLoss()


def mlp(hidden=8, classes=3, seed=0, **dense_kwargs):
    mx.random.seed(seed)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(hidden, activation="relu", **dense_kwargs), gluon.nn.Dense(classes))
    net.initialize(mx.init.Xavier())
    return net


def reference_grads(net, loss_fn, x, y):
    """Each sample's loss differentiated alone: dict param name -> (B, *shape)."""
    params = [p for p in net.collect_params().values() if p.grad_req != "null"]
    rows = {p.name: [] for p in params}
    for i in range(x.shape[0]):
        with autograd.record():
            loss = loss_fn(net(x[i:i + 1]), y[i:i + 1])
        loss.backward()
        for p in params:
            rows[p.name].append(p.grad().asnumpy().copy())
    return {name: np.stack(v) for name, v in rows.items()}


def batch(b=6, features=5, classes=3, seed=1):
    rng = np.random.default_rng(seed)
    x = nd.array(rng.normal(size=(b, features)))
    y = nd.array(rng.integers(0, classes, size=b))
    return x, y


def allow_fixed_batches(trainer):
    """Unit tests step on one fixed batch many times; a real loader would be refused
    (see tests/gluon/test_guarantee_paths.py for the fixed-size detector itself)."""
    trainer._size_check.enabled = False
    return trainer


class Scale(gluon.nn.HybridBlock):
    """A custom layer with a parameter and no vectorized per-sample rule."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.factor = self.params.get("factor", shape=(1,), init=mx.init.One())

    def hybrid_forward(self, F, x, factor):
        return F.broadcast_mul(x, factor)
