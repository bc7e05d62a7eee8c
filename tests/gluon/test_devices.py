"""Several devices: split_and_load for Poisson batches of any size, and a two-device DP
step equal to the one-device step on the same batch and the same noise."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

from mxprivacy import DPTrainer, InvalidParameterError, PrivateBlock, split_and_load
from mxprivacy.gluon.devices import split_sizes

from .helpers import LOSS, allow_fixed_batches, batch, mlp

pytestmark = pytest.mark.filterwarnings("ignore::mxprivacy.PrivacyWarning")
TWO = [mx.cpu(0), mx.cpu(1)]


@pytest.mark.parametrize("size,parts,sizes", [
    (7, 2, [4, 3]), (1, 2, [1]), (0, 2, []), (3, 2, [3]), (2, 2, [2]), (4, 2, [2, 2]),
    (5, 3, [3, 2]), (6, 3, [2, 2, 2]), (2, 4, [2]), (9, 4, [3, 2, 2, 2]), (9, 1, [9])])
def test_split_sizes_table(size, parts, sizes):
    assert split_sizes(size, parts) == sizes


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 7, 8])
def test_split_and_load_any_size(size):
    data = np.arange(size * 3, dtype=np.float32).reshape(size, 3)
    parts = split_and_load(data, TWO)
    assert len(parts) == (2 if size >= 4 else min(size, 1))
    assert [p.context for p in parts] == TWO[:len(parts)]
    if size:
        np.testing.assert_array_equal(np.concatenate([p.asnumpy() for p in parts]), data)
    if size >= 4:  # Gluon's own split (even_split=False) for 2+ rows each: the same slices
        theirs = gluon.utils.split_and_load(nd.array(data), TWO, even_split=False)
        for ours, ref in zip(parts, theirs):
            np.testing.assert_array_equal(ours.asnumpy(), ref.asnumpy())
            assert ours.context == ref.context


def test_split_and_load_ndarray_other_axis_and_dtype():
    data = nd.array(np.arange(2 * 5).reshape(2, 5), dtype="int32")  # 5 along axis 1
    parts = split_and_load(data, TWO, batch_axis=1)
    assert [p.shape for p in parts] == [(2, 3), (2, 2)]
    assert all(p.dtype == np.int32 for p in parts)
    np.testing.assert_array_equal(np.concatenate([p.asnumpy() for p in parts], 1),
                                  data.asnumpy())
    (only,) = split_and_load(data, mx.cpu(1))
    assert only.context == mx.cpu(1)


@pytest.mark.parametrize("args,match", [
    ((np.ones((3, 2)), []), "ctx_list"), ((np.ones((3, 2)), [mx.cpu(0), mx.cpu(0)]), "twice"),
    ((np.ones((3, 2)), ["cpu"]), "ctx_list"), ((np.ones((3, 2)), TWO, 2), "batch_axis"),
    (([1, 2, 3], TWO), "numpy"), ((np.ones((3, 2)), TWO, True), "batch_axis")])
def test_split_and_load_refuses_bad_input(args, match):
    with pytest.raises(InvalidParameterError, match=match):
        split_and_load(*args)


def _setup(contexts, source=None):
    net = mlp(seed=5)
    net(batch(b=1)[0])  # finish deferred initialization
    if source is not None:
        for mine, theirs in zip(net.collect_params().values(),
                                source.collect_params().values()):
            mine.set_data(theirs.data())
    net.collect_params().reset_ctx(contexts)
    block = PrivateBlock(net)
    trainer = DPTrainer(block.collect_params(), "sgd", {"learning_rate": 0.5, "momentum": 0.9},
                        noise_multiplier=0.7, max_grad_norm=0.5, expected_batch_size=5,
                        sample_rate=0.1, noise_seed=11)
    return net, block, allow_fixed_batches(trainer)


def _step(block, trainer, x, y, contexts):
    xs, ys = split_and_load(x, contexts), split_and_load(y, contexts)
    if xs:  # an empty batch: no forward pass anywhere, only the noise-only step
        with autograd.record():
            losses = [LOSS(block(a), b) for a, b in zip(xs, ys)]
        autograd.backward(losses)
    trainer.step(sum(len(a) for a in xs))


@pytest.mark.parametrize("size", [0, 1, 3, 7])
def test_two_devices_step_like_one(size):
    net1, block1, trainer1 = _setup([mx.cpu(0)])
    net2, block2, trainer2 = _setup(TWO, source=net1)
    x, y = batch(b=max(size, 1), seed=size)
    x, y = x.asnumpy()[:size], y.asnumpy()[:size]
    for _ in range(2):  # the second step also checks the momentum states per device
        _step(block1, trainer1, x, y, [mx.cpu(0)])
        _step(block2, trainer2, x, y, TWO)
    moved = False
    for one, two, start in zip(net1.collect_params().values(), net2.collect_params().values(),
                               _setup([mx.cpu(0)])[0].collect_params().values()):
        want = one.data().asnumpy()
        for ctx in TWO:
            np.testing.assert_allclose(two.data(ctx).asnumpy(), want, rtol=1e-5, atol=1e-5)
        moved |= np.abs(want - start.data().asnumpy()).max() > 1e-3
    assert moved and trainer1.steps == trainer2.steps == 2
