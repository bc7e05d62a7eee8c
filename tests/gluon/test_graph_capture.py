"""Vectorized capture inside hybridized graphs (issue 12): results, flags, refusals.

The rule-by-rule comparison with the reference loop, imperative and hybridized, is the
``hybridize`` axis of ``test_rules.py``; here: whole DP steps, when hybridize() is
called, shape changes, and every way a parameter could escape the capture graph.
"""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

from mxprivacy import (DPTrainer, HybridizedCaptureError, PerSampleGradientError,
                       PrivateBlock, TiedParameterError, UnsupportedLayerError,
                       per_sample_grad_norms)
from mxprivacy.gluon import graph_capture

from .helpers import LOSS, Scale, allow_fixed_batches, batch, reference_grads
from .test_rules import check_shard, graph_runs

nn = gluon.nn
FLAGS = [{}, {"static_alloc": True}, {"static_alloc": True, "static_shape": True}]
FLAG_IDS = ["plain", "static_alloc", "static_shape"]


def cnn(seed=0):
    """A small version of Opacus' MNIST CNN (fused activations, pooling, flatten)."""
    mx.random.seed(seed)
    net = nn.HybridSequential()
    net.add(nn.Conv2D(4, 3, strides=2, padding=1, activation="relu"), nn.MaxPool2D(2, 1),
            nn.Conv2D(6, 2, activation="relu"), nn.Dense(8, activation="relu"), nn.Dense(3))
    net.initialize(mx.init.Xavier(magnitude=2.0))
    return net


def images(b=6, seed=1):
    rng = np.random.default_rng(seed)
    return (nd.array(rng.normal(size=(b, 1, 8, 8))),
            nd.array(rng.integers(0, 3, size=b)))


def dp_step(net, x, y, clip=0.05, when=None, flags=None):
    """One DP step (sigma 0) on ``net``; hybridized ``when`` = "before" or "after"
    wrapping, or "wrapper" (PrivateBlock.hybridize)."""
    if when == "before":
        net.hybridize(**flags)
    block = PrivateBlock(net, mode="vectorized")
    if when == "after":
        net.hybridize(**flags)
    elif when == "wrapper":
        block.hybridize(**flags)
    trainer = allow_fixed_batches(DPTrainer(
        block.collect_params(), "sgd", {"learning_rate": 1.0}, noise_multiplier=0.0,
        max_grad_norm=clip, expected_batch_size=x.shape[0], sample_rate=0.1))
    with graph_runs() as runs:
        with autograd.record():
            loss = LOSS(block(x), y)
        loss.backward()
    trainer.step(x.shape[0])
    assert bool(runs) == (when is not None)
    return [p.data().asnumpy() for p in net.collect_params().values()]


@pytest.mark.parametrize("flags", FLAGS, ids=FLAG_IDS)
@pytest.mark.parametrize("when", ["before", "after", "wrapper"])
def test_hybridized_dp_step_equals_the_clipped_reference(when, flags):
    x, y = images()
    net = cnn()
    net(x)
    before = [p.data().asnumpy() for p in net.collect_params().values()]
    ref = reference_grads(net, LOSS, x, y)
    norms = np.linalg.norm(np.concatenate([g.reshape(6, -1) for g in ref.values()], 1), axis=1)
    factors = np.minimum(1.0, 0.05 / norms)
    assert (factors < 1).all()
    after = dp_step(net, x, y, when=when, flags=flags)
    for old, new, g in zip(before, after, ref.values()):
        np.testing.assert_allclose(new, old - np.tensordot(factors, g, axes=1) / 6,
                                   rtol=1e-5, atol=1e-6)
    imperative = dp_step(cnn(), x, y)  # the same step without hybridization
    for a, b in zip(after, imperative):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_batch_size_changes_reuse_one_graph_and_stay_exact():
    net = cnn()
    net.hybridize(static_alloc=True, static_shape=True)
    block = PrivateBlock(net, mode="vectorized")
    for rows in (5, 7, 5):
        x, y = images(b=rows, seed=rows)
        net.hybridize(active=False)
        want = reference_grads(net, LOSS, x, y)
        net.hybridize(static_alloc=True, static_shape=True)
        with autograd.record():
            loss = LOSS(block(x), y)
        loss.backward()
        (shard,) = block.take_shards()
        check_shard(shard, want, rows)
    assert len(block._graphs) == 1


def test_graph_is_rebuilt_when_the_flags_change():
    net = cnn()
    block = PrivateBlock(net, mode="vectorized")
    x, y = images()
    keys = []
    for flags in FLAGS:
        net.hybridize(**flags)
        with autograd.record():
            LOSS(block(x), y).backward()
        block.discard_capture()
        keys.append(block._graphs[id(net)].key)
    assert len(set(keys)) == 3


def test_two_passes_before_backward_keep_their_own_captures():
    """Views of one example through a static_alloc graph: the second call must not
    overwrite the first one's layer inputs."""
    x, y = images(b=4)
    x2 = x * 0.5 + 0.1
    net = cnn(seed=3)
    net(x)
    ref1, ref2 = reference_grads(net, LOSS, x, y), reference_grads(net, LOSS, x2, y)
    net.hybridize(static_alloc=True, static_shape=True)
    block = PrivateBlock(net, mode="vectorized")
    with autograd.record():
        loss = LOSS(block(x), y) + LOSS(block(x2), y)
    loss.backward()
    first, second = block.take_shards()
    check_shard(first, ref1, 4)
    check_shard(second, ref2, 4)


class TwoInputs(nn.HybridBlock):
    """A hybridized net with a second array input."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = nn.Dense(5, activation="relu")
        self.last = nn.Dense(3)

    def hybrid_forward(self, F, x, shift):
        return self.last(F.broadcast_add(self.first(x), shift))


def test_extra_array_inputs_are_graph_inputs():
    x, y = batch(b=5)
    shift = nd.random.normal(shape=(5, 5))
    results = []
    for hybridize in (False, True):
        mx.random.seed(4)
        net = TwoInputs()
        net.initialize(mx.init.Xavier())
        if hybridize:
            net.hybridize(static_alloc=True)
        block = PrivateBlock(net, mode="vectorized")
        with autograd.record():
            loss = LOSS(block(x, shift), y)
        loss.backward()
        (shard,) = block.take_shards()
        results.append(shard.unit_sq_norms().asnumpy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5)
    want = []
    for i in range(5):  # the per-sample reference with the second input
        with autograd.record():
            loss = LOSS(net(x[i:i + 1], shift[i:i + 1]), y[i:i + 1])
        loss.backward()
        want.append(sum(float((p.grad() ** 2).sum().asscalar())
                        for p in net.collect_params().values()))
    np.testing.assert_allclose(results[1], want, rtol=1e-4)


def test_parameters_enter_detached_and_keep_write_for_the_trainer():
    net = cnn()
    net.hybridize(static_alloc=True)
    block = PrivateBlock(net, mode="vectorized")
    x, y = images()
    with autograd.record():
        LOSS(block(x), y).backward()
    graph = block._graphs[id(net)]
    fed = [ref for kind, ref in graph._feed if kind == "param"]
    assert {p.name for p in fed} == set(net.collect_params().keys())
    for param in net.collect_params().values():
        assert param.grad_req == "write"
        assert not param.data()._fresh_grad  # backward computed no summed gradient
        assert float(nd.abs(param.grad()).sum().asscalar()) == 0.0


# -- refusals: no layer escapes the capture graph silently ---------------------------------
class TiedDecoder(nn.HybridBlock):
    """Reuses the encoder weight in the decoder: a tie inside one graph."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.enc = nn.Dense(4, in_units=3, use_bias=False)

    def hybrid_forward(self, F, x):
        hidden = F.relu(self.enc(x))
        weight = self.enc.weight.var() if F is mx.sym else self.enc.weight.data(x.context)
        return F.dot(hidden, weight)


class Bypass(nn.HybridBlock):
    """Calls a layer's hybrid_forward directly, so the layer's call is not captured."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = nn.Dense(3, in_units=5)
        self.out = nn.Dense(3, in_units=3)

    def hybrid_forward(self, F, x):
        params = {"weight": self.dense.weight.var(), "bias": self.dense.bias.var()} \
            if F is mx.sym else {"weight": self.dense.weight.data(x.context),
                                 "bias": self.dense.bias.data(x.context)}
        return self.out(self.dense.hybrid_forward(F, x, **params))


def _tied(seed=2):
    mx.random.seed(seed)
    net = TiedDecoder()
    net.initialize(mx.init.Normal(1.0))
    return net


def test_tied_weight_inside_the_graph_is_refused():
    x, y = batch(b=5, features=3)
    net = _tied()
    net.hybridize()
    with pytest.raises(TiedParameterError, match=r"_weight.*dot.*microbatch"):
        per_sample_grad_norms(net, LOSS, x, y, mode="vectorized")
    exact = per_sample_grad_norms(net, LOSS, x, y, mode="microbatch")  # the way out
    want = np.linalg.norm(reference_grads(net, LOSS, x, y)[net.enc.weight.name].reshape(5, -1),
                          axis=1)
    np.testing.assert_allclose(exact.asnumpy(), want, rtol=1e-5)


def test_mutation_without_the_coverage_check_a_tie_escapes_clipping(monkeypatch):
    """Disable the coverage check: the tied use runs on detached data, receives no
    gradient at all, and nothing else notices; the norms are silently wrong."""
    x, y = batch(b=5, features=3)
    net = _tied()
    want = np.linalg.norm(reference_grads(net, LOSS, x, y)[net.enc.weight.name].reshape(5, -1),
                          axis=1)
    net.hybridize()
    monkeypatch.setattr(graph_capture, "_check_coverage", lambda *args: None)
    got = per_sample_grad_norms(net, LOSS, x, y, mode="vectorized").asnumpy()
    assert np.max(np.abs(got - want) / want) > 0.05  # the escaped part of the gradient


def test_layer_called_around_its_capture_is_refused():
    net = Bypass()
    net.initialize()
    net.hybridize()
    x, y = batch(b=4)
    with pytest.raises(TiedParameterError, match="outside any captured layer call"):
        per_sample_grad_norms(net, LOSS, x, y, mode="vectorized")


class Reader(nn.HybridBlock):
    """Reads the weight of a block outside its own graph."""

    def __init__(self, other, **kwargs):
        super().__init__(**kwargs)
        self.dense = nn.Dense(3, in_units=3)
        self._other = [other]  # not a child

    def hybrid_forward(self, F, x):
        weight = self._other[0].weight.var() if F is mx.sym \
            else self._other[0].weight.data(x.context)
        return self.dense(F.dot(x, weight, transpose_b=True))


class Pair(gluon.Block):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = nn.Dense(3, in_units=5)
        self.second = Reader(self.first)

    def forward(self, x):
        return self.second(x) + self.first(x)


def test_a_variable_of_another_block_is_refused():
    """Gluon's own graph would refuse it too; two rows skip the row probe, which runs
    that graph, so the capture graph's own check is what refuses here."""
    net = Pair()
    net.initialize()
    net.hybridize()
    x, y = batch(b=2)
    with pytest.raises(HybridizedCaptureError, match="neither one of its inputs"):
        per_sample_grad_norms(net, LOSS, x, y, mode="vectorized")



def test_a_layer_without_rule_made_trainable_after_wrapping_is_refused():
    net = nn.HybridSequential()
    net.add(nn.Dense(4), Scale(prefix="myscale_"), nn.Dense(3))
    net.initialize()
    net[1].factor.grad_req = "null"  # frozen: the wrapper accepts it
    block = PrivateBlock(net, mode="vectorized")
    net[1].factor.grad_req = "write"
    net.hybridize()
    x, y = batch(b=4)
    with pytest.raises(UnsupportedLayerError, match="myscale"):
        with autograd.record():
            block(x)


class Shaped(nn.HybridBlock):
    """Python that needs array shapes: cannot be traced symbolically."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = nn.Dense(3)

    def hybrid_forward(self, F, x):
        return self.dense(x.reshape((x.shape[0], -1)))


def test_an_untraceable_block_is_refused_with_a_way_out():
    net = Shaped()
    net.initialize()
    x, y = batch(b=2)  # two rows: no row probe, which would run Gluon's graph first
    net(x)
    net.hybridize()
    with pytest.raises(HybridizedCaptureError, match="hybridize\\(active=False\\)"):
        per_sample_grad_norms(net, LOSS, x, y, mode="vectorized")


# -- the other guarantee checks, hybridized ----------------------------------------------------
def test_weight_read_outside_the_hybridized_net_is_refused_at_step():
    x, y = images()
    net = cnn()
    net.hybridize(static_alloc=True)
    block = PrivateBlock(net, mode="vectorized")
    trainer = DPTrainer(block.collect_params(), "sgd", {"learning_rate": 0.1},
                        noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=6,
                        sample_rate=0.1)
    with autograd.record():
        out = block(x)
        weight = net[0].weight.data(x.context)
        loss = LOSS(out, y) + (weight * weight).sum()
    loss.backward()
    with pytest.raises(TiedParameterError):
        trainer.step(6)


class BatchMean(nn.HybridBlock):
    def hybrid_forward(self, F, x):
        return F.broadcast_sub(x, F.mean(x, axis=0, keepdims=True))


def test_row_probe_refuses_a_cross_sample_operation_inside_the_graph():
    net = nn.HybridSequential()
    net.add(nn.Dense(8), BatchMean(), nn.Dense(3))
    net.initialize()
    net.hybridize(static_alloc=True)
    block = PrivateBlock(net, mode="vectorized")
    with pytest.raises(UnsupportedLayerError, match="depends on other samples"):
        with autograd.record():
            block(batch(b=8)[0])


def test_mean_reduced_loss_is_refused_when_hybridized():
    x, y = images()
    net = cnn()
    net.hybridize(static_alloc=True, static_shape=True)
    block = PrivateBlock(net, mode="vectorized")
    trainer = DPTrainer(block.collect_params(), "sgd", {"learning_rate": 0.1},
                        noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=6,
                        sample_rate=0.1)
    with autograd.record():
        loss = LOSS(block(x), y).mean()
    loss.backward()
    with pytest.raises(PerSampleGradientError, match="loss_reduction='mean'"):
        trainer.step(6)


def test_views_with_example_ids_through_one_graph():
    x, y = images(b=4)
    x2 = x * 0.5 + 0.1
    net = cnn(seed=5)
    net(x)
    before = [p.data().asnumpy() for p in net.collect_params().values()]
    ref1, ref2 = reference_grads(net, LOSS, x, y), reference_grads(net, LOSS, x2, y)
    summed = {k: ref1[k] + ref2[k] for k in ref1}
    net.hybridize(static_alloc=True)
    block = PrivateBlock(net, mode="vectorized")
    trainer = DPTrainer(block.collect_params(), "sgd", {"learning_rate": 1.0},
                        noise_multiplier=0.0, max_grad_norm=0.05, expected_batch_size=4,
                        sample_rate=0.1)
    with autograd.record():
        loss = LOSS(block(x), y) + LOSS(block(x2), y)
    loss.backward()
    ids = np.arange(4)
    trainer.step(4, example_ids=[ids, ids])
    norms = np.linalg.norm(np.concatenate([g.reshape(4, -1) for g in summed.values()], 1),
                           axis=1)
    factors = np.minimum(1.0, 0.05 / norms)
    for old, p, g in zip(before, net.collect_params().values(), summed.values()):
        np.testing.assert_allclose(p.data().asnumpy(),
                                   old - np.tensordot(factors, g, axes=1) / 4,
                                   rtol=1e-5, atol=1e-6)


def test_inference_outside_record_uses_the_nets_own_graph():
    net = cnn()
    net.hybridize(static_alloc=True)
    block = PrivateBlock(net, mode="vectorized")
    x, _ = images()
    with graph_runs() as runs:
        out = block(x)
    assert not runs and out.shape == (6, 3)
    np.testing.assert_allclose(out.asnumpy(), net(x).asnumpy(), rtol=1e-6)


def test_release_removes_every_patch():
    net = cnn()
    block = PrivateBlock(net, mode="vectorized")
    assert "forward" in net.__dict__ and "forward" in net[0].__dict__
    block.release()
    assert not any("forward" in b.__dict__ for b in [net] + list(net._children.values()))


def test_unfreezing_a_layer_rebuilds_the_capture_graph():
    """Review finding: a graph built while a layer was frozen must not silently skip it
    once the layer trains again."""
    net = nn.HybridSequential()
    net.add(nn.Dense(4, in_units=3), nn.Dense(2, in_units=4))
    net.initialize()
    net.hybridize()
    x, y = batch(b=5, features=3)
    block = PrivateBlock(net)
    net[0].weight.grad_req = "null"
    with autograd.record():
        LOSS(block(x), y).backward()
    block.discard_capture()
    net[0].weight.grad_req = "write"
    with autograd.record():
        LOSS(block(x), y).backward()
    (shard,) = block.take_shards()
    assert net[0].weight in shard.captured_params


def test_float64_nets_are_captured_in_their_dtype():
    net = nn.HybridSequential()
    net.add(nn.Dense(4, in_units=3), nn.Dense(2, in_units=4))
    net.initialize()
    net.cast("float64")
    x, y = batch(b=5, features=3)
    norms = per_sample_grad_norms(net, LOSS, x.astype("float64"), y.astype("float64"),
                                  mode="vectorized")
    assert norms.dtype == np.float64
