"""Paths where the reported epsilon could fall below the real privacy loss (issue 11).

Each test fails when its protection is removed; the test names carry the path numbers.
"""
import math
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

from mxprivacy import (BatchSizeMismatchError, DPTrainer, InvalidParameterError,
                       PerSampleGradientError, PrivacyWarning, PrivateBlock, SamplingError,
                       TiedParameterError, UnsupportedLayerError, fix, per_sample_grad_norms,
                       validate)
from mxprivacy.distributed.launch import DMLC_VARIABLES
from mxprivacy.gluon.guards import FixedSizeDetector

from .helpers import LOSS, allow_fixed_batches, batch, mlp, reference_grads


def make(net=None, mode="vectorized", sigma=0.0, clip=1.0, expected=6, **kwargs):
    block = PrivateBlock(net or mlp(), mode=mode, **kwargs.pop("block", {}))
    trainer = DPTrainer(block.collect_params(), "sgd", {"learning_rate": 1.0},
                        noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=expected,
                        sample_rate=kwargs.pop("sample_rate", 0.1), **kwargs)
    return block, trainer


def flat_norms(grads, rows):
    return np.linalg.norm(np.concatenate([g.reshape(rows, -1) for g in grads.values()],
                                         axis=1), axis=1)


def params_np(block):
    return [p.data().asnumpy().copy() for p in block.collect_params().values()]


# -- path 2: embedding ids that MXNet truncates and clips ----------------------------------
class EmbedHead(gluon.nn.Block):
    def __init__(self, vocab=5, **kwargs):
        super().__init__(**kwargs)
        self.embed = gluon.nn.Embedding(vocab, 3)
        self.out = gluon.nn.Dense(2, flatten=True)

    def forward(self, x):
        return self.out(self.embed(x))


def test_path2_embedding_norms_use_the_rows_mxnet_reads():
    mx.random.seed(3)
    net = EmbedHead(vocab=5)
    net.initialize(mx.init.Normal(1.0))
    # 7, 8, 9 and 1000 all read row 4; -1 and -0.5 read row 0; 1.7 reads row 1.
    x = nd.array([[7, 8, 9, 1000], [-1, 0, -0.5, 2], [1.7, 1, 1.2, 3], [4, 4, 5, 6]])
    y = nd.array([0, 1, 0, 1])
    want = flat_norms(reference_grads(net, LOSS, x, y), 4)
    got = per_sample_grad_norms(net, LOSS, x, y, mode="vectorized").asnumpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # the raw-id rule would have seen four distinct rows in sample 0
    assert want[0] > 1.05 * np.sqrt(np.sum(np.square(got[0])) / 2)


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
def test_path2_embedding_clipped_sum_matches_reference(hybridize):
    mx.random.seed(4)
    net = EmbedHead(vocab=5)
    net.initialize(mx.init.Normal(1.0))
    x = nd.array([[7, 8, 9, 1000], [-1, -1, -1, 2], [1.7, 1, 1.2, 3]])
    y = nd.array([0, 1, 0])
    ref = reference_grads(net, LOSS, x, y)
    norms = flat_norms(ref, 3)
    clip = float(np.min(norms)) / 2  # every sample clipped
    if hybridize:  # the embedding and the head each run a capture graph
        net.hybridize(static_alloc=True)
    block, trainer = make(net, clip=clip, expected=3)
    before = params_np(block)
    with autograd.record():
        loss = LOSS(block(x), y)
    loss.backward()
    trainer.step(3)
    factors = clip / norms
    for (name, g), old, p in zip(ref.items(), before, block.collect_params().values()):
        want = old - np.tensordot(factors, g, axes=1) / 3.0
        np.testing.assert_allclose(p.data().asnumpy(), want, rtol=1e-4, atol=1e-6)


# -- path 3: layers that use batch statistics ------------------------------------------------
class CustomBN(gluon.HybridBlock):
    """Computes batch statistics through the operator, with no BatchNorm in its name."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.scale = self.params.get("scale", shape=(4,), init="ones")
            self.shift = self.params.get("shift", shape=(4,), init="zeros")
            self.mean = self.params.get("mu", shape=(4,), init="zeros", grad_req="null")
            self.var = self.params.get("sigma", shape=(4,), init="ones", grad_req="null")

    def hybrid_forward(self, F, x, scale, shift, mean, var):
        return F.BatchNorm(x, scale, shift, mean, var)


class MyBatchNorm(gluon.nn.BatchNorm):
    pass


@pytest.mark.parametrize("layer", [
    lambda: gluon.nn.BatchNormReLU(in_channels=4),
    lambda: MyBatchNorm(in_channels=4),
    lambda: gluon.contrib.nn.SyncBatchNorm(in_channels=4),
    CustomBN,
], ids=["BatchNormReLU", "subclass", "SyncBatchNorm", "custom-op"])
def test_path3_batch_statistics_found_by_base_class_and_operator(layer):
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(4), layer(), gluon.nn.Dense(2))
    net.initialize()
    problems = validate(net, "microbatch")
    assert len(problems) == 1 and "batch statistics" in problems[0]
    with pytest.raises(UnsupportedLayerError, match="batch statistics"):
        PrivateBlock(net, mode="microbatch")


def test_path3_fix_replaces_batchnormrelu_with_groupnorm_and_relu():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(4, 1), gluon.nn.BatchNormReLU(in_channels=4), gluon.nn.Dense(2))
    net.initialize()
    fixed = fix(net)
    assert validate(fixed) == []
    from mxprivacy.gluon.affine import ChannelAffine, PlainGroupNorm
    replaced = fixed[1]
    norm, affine, relu = replaced
    assert isinstance(norm, PlainGroupNorm) and isinstance(affine, ChannelAffine)
    assert isinstance(relu, gluon.nn.Activation) and relu._act_type == "relu"
    out = replaced(nd.random.normal(shape=(2, 4, 3, 3))).asnumpy()
    assert (out >= 0).all() and (out == 0).mean() > 0.2  # normalized, then rectified


# -- path 4: adaptive clipping with microbatches of several samples ---------------------
def test_path4_adaptive_clipping_refuses_multi_sample_microbatches():
    with pytest.raises(InvalidParameterError, match="sensitivity of 1"):
        make(mode="microbatch", block={"num_microbatches": 3}, clipping="adaptive",
             sigma=1.0, clipping_options={"count_noise": 5.0})
    make(mode="microbatch", clipping="adaptive", sigma=1.0,
         clipping_options={"count_noise": 5.0})  # one sample per unit is fine


# -- path 5 and 10: compression and distributed kvstore objects --------------------------
def test_path5_compression_refused():
    with pytest.raises(InvalidParameterError, match="compression"):
        make(compression_params={"type": "2bit", "threshold": 0.5})


def kvstore_of_type(kind):
    """A real local KVStore that reports ``type == kind`` (no job needed)."""
    class Typed(mx.kvstore.KVStore):
        type = kind

    store = mx.kv.create("local")
    store.__class__ = Typed
    return store


class DuckStore:
    """A KVStore-like object: only its ``type`` says what it is."""
    type = "dist_async"


@pytest.fixture
def not_launched(monkeypatch):
    for name in DMLC_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("kvstore", [lambda: "dist_async", lambda: kvstore_of_type("dist_async"),
                                     DuckStore], ids=["name", "KVStore", "duck"])
def test_path10_dist_async_is_refused_with_its_reason(not_launched, kvstore):
    """dist_async (a name, a KVStore, or any object whose type says so): the server would
    apply each worker's push alone, with 1/sqrt(W) of the noise. Refused when the trainer
    is built, before any kvstore is contacted."""
    with pytest.raises(InvalidParameterError,
                       match=r"'dist_async' is not supported: .*push on its own.*counted "
                             r"once.*dist_sync"):
        make(kvstore=kvstore())


@pytest.mark.parametrize("kvstore", ["horovod", "byteps"])
def test_path10_other_reductions_are_refused(not_launched, kvstore):
    with pytest.raises(InvalidParameterError, match="not supported: its reduction does not "
                                                    "follow DPTrainer's protocol"):
        make(kvstore=kvstore)


@pytest.mark.parametrize("kvstore", ["dist_sync", "dist_device_sync"])
def test_path10_dist_sync_outside_a_launched_job_says_how_to_launch(not_launched, kvstore):
    """Supported, but only on the workers of a job: outside one, a clear error that names
    the missing DMLC_* variables and the launcher (MXNet would fail with a ps-lite check)."""
    with pytest.raises(InvalidParameterError,
                       match=rf"kvstore '{kvstore}' needs a parameter-server job, but "
                             r"DMLC_NUM_WORKER.* not set.*mxprivacy launch -n WORKERS"):
        make(mlp(), kvstore=kvstore)


# -- path 6: one example forwarded more than once ---------------------------------------
def views_setup(clip):
    x, y = batch(b=4, seed=5)
    x2 = x * 0.5 + 0.1  # a second "augmented" view of the same four examples
    net = mlp(seed=7)
    ref1, ref2 = reference_grads(net, LOSS, x, y), reference_grads(net, LOSS, x2, y)
    summed = {k: ref1[k] + ref2[k] for k in ref1}
    block, trainer = make(net, clip=clip, expected=4)
    with autograd.record():
        loss = LOSS(block(x), y) + LOSS(block(x2), y)
    loss.backward()
    return block, trainer, summed


def test_path6_views_are_refused_without_example_ids():
    block, trainer, _ = views_setup(0.1)
    with pytest.raises(PerSampleGradientError, match="example_ids"):
        trainer.step(4)
    with pytest.raises(PerSampleGradientError, match="example_ids"):
        trainer.step(8)  # counting each view as an example is refused too
    assert trainer.steps == 0


def test_path6_views_are_clipped_together_per_example():
    clip = 0.1
    block, trainer, summed = views_setup(clip)
    before = params_np(block)
    ids = np.arange(4)
    trainer.step(4, example_ids=[ids, ids])
    factors = np.minimum(1.0, clip / flat_norms(summed, 4))
    assert (factors < 1).all()  # clipping acts on the per-example sums
    for (name, g), old, p in zip(summed.items(), before, block.collect_params().values()):
        want = old - np.tensordot(factors, g, axes=1) / 4.0
        np.testing.assert_allclose(p.data().asnumpy(), want, rtol=1e-4, atol=1e-6)


def test_path6_mismatch_message_no_longer_suggests_counting_views():
    block, trainer = make()
    x, y = batch(b=6)
    with autograd.record():
        loss = LOSS(block(nd.concat(x, x, dim=0)), nd.concat(y, y, dim=0))
    loss.backward()
    with pytest.raises(BatchSizeMismatchError, match="example_ids"):
        trainer.step(6)
    trainer.step(6, example_ids=np.concatenate([np.arange(6), np.arange(6)]))
    assert trainer.steps == 1


# -- path 8b: sample_rate against dataset_size -----------------------------------------
def test_path8_sample_rate_must_match_batch_over_dataset_size():
    with pytest.raises(InvalidParameterError, match="disagrees"):
        make(sample_rate=0.01, dataset_size=60, expected=6)
    _, trainer = make(sample_rate=0.1, dataset_size=60, expected=6)
    assert trainer.sample_rate == pytest.approx(0.1)


# -- path 9: a captured weight used outside its layer -------------------------------------
class TiedDecoder(gluon.nn.Block):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.enc = gluon.nn.Dense(4, in_units=3, use_bias=False)

    def forward(self, x):
        hidden = nd.relu(self.enc(x))
        return nd.dot(hidden, self.enc.weight.data(x.context))  # ties the weight


def tied_net():
    mx.random.seed(2)
    net = TiedDecoder()
    net.initialize(mx.init.Normal(1.0))
    return net


def test_path9_tied_weight_is_detected_in_vectorized_mode():
    x, y = batch(b=5, features=3)
    with pytest.raises(TiedParameterError, match="microbatch"):
        per_sample_grad_norms(tied_net(), LOSS, x, y, mode="vectorized")
    block, trainer = make(tied_net(), expected=5)
    with autograd.record():
        loss = LOSS(block(x), y)
    loss.backward()
    with pytest.raises(TiedParameterError):
        trainer.step(5)


def test_path9_microbatch_mode_is_exact_for_tied_weights():
    x, y = batch(b=5, features=3)
    net = tied_net()
    want = flat_norms(reference_grads(net, LOSS, x, y), 5)
    got = per_sample_grad_norms(net, LOSS, x, y, mode="microbatch").asnumpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)


# -- path 11: a mean-reduced loss ---------------------------------------------------------
def step_with(reduce, loss_reduction="sum", hybridize=False):
    x, y = batch(b=6)
    net = mlp(seed=9)
    if hybridize:
        net.hybridize(static_alloc=True, static_shape=True)
    block, trainer = make(net, clip=100.0, loss_reduction=loss_reduction)
    with autograd.record():
        loss = reduce(LOSS(block(x), y))
    loss.backward()
    return block, trainer


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
def test_path11_mean_reduced_loss_refused_by_default(hybridize):
    block, trainer = step_with(lambda loss: loss.mean(), hybridize=hybridize)
    with pytest.raises(PerSampleGradientError, match="loss_reduction='mean'"):
        trainer.step(6)
    block, trainer = step_with(lambda loss: loss.mean() * 2, hybridize=hybridize)
    with pytest.raises(PerSampleGradientError, match="other than sum"):
        trainer.step(6)
    block, trainer = step_with(lambda loss: loss, loss_reduction="mean", hybridize=hybridize)
    with pytest.raises(PerSampleGradientError, match="expects loss.mean"):
        trainer.step(6)


def test_path11_declared_mean_trains_at_the_per_sample_scale():
    results = []
    for reduce, kind in [(lambda loss: loss, "sum"), (lambda loss: loss.sum(), "sum"),
                         (lambda loss: loss.mean(), "mean")]:
        block, trainer = step_with(reduce, kind)
        trainer.step(6)
        results.append(params_np(block))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# -- path 12: a fixed-size loader accounted as Poisson --------------------------------------
def test_path12_shuffled_fixed_size_loader_is_refused():
    x, y = batch(b=1280, seed=3)
    block, trainer = make(expected=64, dataset_size=1280, sample_rate=None)
    loader = gluon.data.DataLoader(gluon.data.ArrayDataset(x, y), batch_size=64, shuffle=True)
    run = trainer._size_check.run
    assert 5 <= run <= 12  # qN=64: p_eq = 0.037, so about 9 equal sizes
    with pytest.raises(SamplingError, match="DPDataLoader"):
        for _ in range(3):
            for xb, yb in loader:
                with autograd.record():
                    loss = LOSS(block(xb), yb)
                loss.backward()
                trainer.step(xb.shape[0])
    assert trainer.steps == run - 1


def test_path12_detector_false_alarm_rate_on_poisson_sizes():
    rng = np.random.default_rng(0)
    for q, n in [(0.01, 25_600), (0.1, 60), (0.5, 40)]:
        detector = FixedSizeDetector(q, q * n)
        for size in rng.binomial(n, q, size=20_000):
            detector.observe(int(size))  # never raises on true Poisson sizes
    assert FixedSizeDetector(1.0, 100).run is None  # q = 1: sizes are constant


# -- construction-time checks, seeds, retries ---------------------------------------------
@pytest.mark.parametrize("kwargs", [{"warn_delta": 5.0}, {"warn_delta": 0.0},
                                    {"warn_epsilon": float("nan")}, {"warn_epsilon": -1.0},
                                    {"loss_reduction": "avg"}, {"secure_mode": "yes"}])
def test_invalid_warning_and_mode_options_refused_at_construction(kwargs):
    with pytest.raises(InvalidParameterError):
        make(**kwargs)


def test_noise_seed_warns_and_secure_mode_refuses_it():
    with pytest.warns(PrivacyWarning, match="subtract"):
        make(noise_seed=1)
    with pytest.raises(InvalidParameterError, match="secure_mode"):
        make(noise_seed=1, secure_mode=True)
    with pytest.raises(InvalidParameterError, match="secure_mode"):
        make(clipping="adaptive", sigma=1.0, clipping_options={"seed": 3}, secure_mode=True)


def test_a_step_that_raises_keeps_the_captured_batch():
    x, y = batch(b=6)
    blocks = []
    for _ in range(2):
        blocks.append(make(clip=0.5))
        with autograd.record():
            loss = LOSS(blocks[-1][0](x), y)
        loss.backward()
    (block, trainer), (reference_block, reference) = blocks
    with pytest.raises(BatchSizeMismatchError):
        trainer.step(5)
    trainer.step(6)  # the corrected retry needs no new forward and backward
    reference.step(6)
    for a, b in zip(params_np(block), params_np(reference_block)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_secure_mode_step_runs_and_is_noisy():
    x, y = batch(b=6)
    block, trainer = make(sigma=1.0, secure_mode=True)
    block(x)  # initializes
    before = params_np(block)
    with autograd.record():
        loss = LOSS(block(x), y)
    loss.backward()
    with pytest.raises(SamplingError, match="DPDataLoader"):
        trainer.step(6)  # secure mode takes batches from a secure DPDataLoader only
    trainer.expect_examples(6)  # what DPDataLoader(..., trainer=trainer) does
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrivacyWarning)
        trainer.step(6)
    moved = np.concatenate([(a - b).ravel() for a, b in zip(params_np(block), before)])
    assert np.std(moved) > 0.05 and math.isfinite(float(np.sum(moved)))


def test_path1_microbatch_assignment_seed_warns():
    with pytest.warns(PrivacyWarning, match="assignment public"):
        PrivateBlock(mlp(), mode="microbatch", num_microbatches=3, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrivacyWarning)
        PrivateBlock(mlp(), mode="microbatch", num_microbatches=3)


def test_private_block_save_parameters_is_atomic_and_keeps_the_mode(tmp_path, monkeypatch):
    import os
    block = PrivateBlock(mlp())
    block(batch()[0])
    target = tmp_path / "model.params"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)

    def crash(self, filename, deduplicate=False):
        with open(filename, "wb") as out:
            out.write(b"half")
        raise KeyboardInterrupt  # a crash in the middle of MXNet's write

    monkeypatch.setattr(gluon.Block, "save_parameters", crash)
    with pytest.raises(KeyboardInterrupt):
        block.save_parameters(str(target))
    assert target.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1
    monkeypatch.undo()
    block.save_parameters(str(target))
    assert os.stat(target).st_mode & 0o777 == 0o640
    block.load_parameters(str(target))


def test_path2_embedding_rows_above_float32_precision_stay_apart():
    class Wide(gluon.nn.Block):
        def __init__(self, vocab, **kwargs):
            super().__init__(**kwargs)
            self.embed = gluon.nn.Embedding(vocab, 1)
            self.out = gluon.nn.Dense(2, in_units=2)

        def forward(self, x):
            return self.out(self.embed(x).reshape((x.shape[0], -1)))

    net = Wide(2 ** 24 + 8)  # float32 cannot tell 2^24 from 2^24 + 1
    net.initialize(mx.init.One())
    net.embed.weight.set_data(nd.zeros(net.embed.weight.shape))  # updates exact in float32
    net.out.weight.set_data(nd.array([[1.0, 2.0], [-1.0, 0.5]]))
    x = nd.array(np.array([[2 ** 24, 2 ** 24 + 1]]), dtype="int64")
    y = nd.array([0])
    block, trainer = make(net, clip=0.1, expected=1)
    before = net.embed.weight.data()[2 ** 24:2 ** 24 + 2].asnumpy().ravel()
    ref = reference_grads(net, LOSS, x, y)
    with autograd.record():
        loss = LOSS(block(x), y)
    loss.backward()
    trainer.step(1)
    moved = before - net.embed.weight.data()[2 ** 24:2 ** 24 + 2].asnumpy().ravel()
    factor = 0.1 / flat_norms(ref, 1)[0]
    want = factor * ref[net.embed.weight.name][0, 2 ** 24:2 ** 24 + 2].ravel()
    np.testing.assert_allclose(moved, want, rtol=1e-4)  # both rows, each its own share


def test_path9_weight_read_by_the_loss_outside_the_net_is_refused_in_microbatch_mode():
    x, y = batch(b=4)
    net = mlp(seed=3)
    block, trainer = make(net, mode="microbatch", expected=4)
    with autograd.record():
        out = block(x)
        first = net[0].weight.data(x.context)  # read outside the wrapped forward
        loss = LOSS(out, y) + (first * first).sum()
    loss.backward()
    with pytest.raises(TiedParameterError):
        trainer.step(4)


def test_path11_backward_path_not_seen_is_refused(monkeypatch):
    from mxprivacy.gluon import reduction
    x, y = batch(b=6)
    block, trainer = make()
    with autograd.record():
        loss = LOSS(block(x), y)
    monkeypatch.setattr(reduction, "_WAITING", type(reduction._WAITING)())  # hook bypassed
    loss.backward()
    with pytest.raises(PerSampleGradientError, match="could not observe"):
        trainer.step(6)


def test_path11_explicit_head_gradient_on_a_mean_is_still_a_mean():
    x, y = batch(b=6)
    block, trainer = make(mlp(seed=9))
    with autograd.record():
        loss = LOSS(block(x), y).mean()
    loss.backward(nd.ones((1,)))
    with pytest.raises(PerSampleGradientError, match="averaged"):
        trainer.step(6)


def test_path11_a_batch_of_one_takes_either_reduction():
    x, y = batch(b=1)
    for kind in ("sum", "mean"):
        block, trainer = make(mlp(seed=9), loss_reduction=kind, expected=1)
        with autograd.record():
            loss = LOSS(block(x), y).mean()
        loss.backward()
        trainer.step(1)
        assert trainer.steps == 1


def sizes_refused(detector, sizes):
    try:
        for size in sizes:
            detector.check(size)
            detector.observe(size)
    except SamplingError:
        return True
    return False


def test_path12_detector_catches_keep_last_batch_alternating_and_filtered_loaders():
    rng = np.random.default_rng(1)
    keep = [256, 256, 256, 232] * 100  # N = 1000, B = 256, last_batch='keep'
    assert sizes_refused(FixedSizeDetector(256 / 1000, 256), keep)
    alternating = [255, 257] * 100
    assert sizes_refused(FixedSizeDetector(256 / 60000, 256), alternating)
    filtered = list(256 - rng.binomial(256, 0.01, size=300))  # 1 % dropped per batch
    assert sizes_refused(FixedSizeDetector(256 / 60000, 256), filtered)
    detector = FixedSizeDetector(256 / 60000, 256)
    with pytest.raises(SamplingError, match="implausible"):
        detector.check(512)  # two views of a batch counted as examples
    poisson = rng.binomial(60000, 256 / 60000, size=5000)
    assert not sizes_refused(FixedSizeDetector(256 / 60000, 256), poisson)


def test_adaptive_count_of_a_failed_step_is_not_counted_twice():
    x, y = batch(b=6)
    block, trainer = make(clipping="adaptive", sigma=1.0, expected=6,
                          clipping_options={"count_noise": 5.0})
    with autograd.record():
        loss = LOSS(block(x), y)
    loss.backward()
    with pytest.raises(BatchSizeMismatchError):
        trainer.step(7)
    original = trainer._size_check.observe

    def fail_once(size):
        trainer._size_check.observe = original
        raise SamplingError("simulated")

    trainer._size_check.observe = fail_once
    with pytest.raises(SamplingError):
        trainer.step(6)  # fails after the clipping factors were computed
    counts = []
    trainer._clipping.update = lambda b: counts.append(list(trainer._clipping._unclipped))
    trainer.step(6)
    assert len(counts[0]) == 1  # one shard counted once, not once per attempt


def test_path6_loader_batch_size_binds_the_step():
    from mxprivacy import DPDataLoader
    x, y = batch(b=60, seed=2)
    block, trainer = make(expected=6, dataset_size=60, sample_rate=None)
    loader = DPDataLoader((x.asnumpy(), y.asnumpy()), expected_batch_size=6, trainer=trainer)
    xb, yb = next(iter(loader))
    doubled = nd.concat(xb, xb, dim=0)  # two views in one pass, counted as examples
    with autograd.record():
        loss = LOSS(block(doubled), nd.concat(yb, yb, dim=0))
    loss.backward()
    with pytest.raises(BatchSizeMismatchError, match="DPDataLoader drew"):
        trainer.step(2 * xb.shape[0])
    n = xb.shape[0]
    trainer.step(n, example_ids=np.concatenate([np.arange(n), np.arange(n)]))
    assert trainer.steps == 1


class PlainBatchNorm(gluon.Block):
    """A plain Block calling nd.BatchNorm; its statistics are not named running_*."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stats = [self.params.get(n, shape=(8,), init=i, grad_req="null")
                      for n, i in (("g", "ones"), ("b", "zeros"), ("m", "zeros"), ("v", "ones"))]

    def forward(self, x):
        return nd.BatchNorm(x, *[p.data(x.context) for p in self.stats], fix_gamma=False)


class TwoInputBatchNorm(gluon.HybridBlock):
    """Two inputs: a symbolic trace with one input fails, so only the probe sees it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.g = self.params.get("g", shape=(8,), init="ones", grad_req="null")
        self.b = self.params.get("b", shape=(8,), init="zeros", grad_req="null")
        self.m = self.params.get("m", shape=(8,), init="zeros", grad_req="null")
        self.v = self.params.get("v", shape=(8,), init="ones", grad_req="null")

    def hybrid_forward(self, F, x, shift, g, b, m, v):
        return F.BatchNorm(x + shift, g, b, m, v)


class Centered(gluon.Block):
    def __init__(self, mix, **kwargs):
        super().__init__(**kwargs)
        self.first = gluon.nn.Dense(8, in_units=5)
        self.mix = mix
        self.drop = gluon.nn.Dropout(0.5)
        self.last = gluon.nn.Dense(3, in_units=8)

    def forward(self, x):
        hidden = self.first(x)
        if isinstance(self.mix, TwoInputBatchNorm):
            hidden = self.mix(hidden, nd.zeros_like(hidden))
        elif self.mix is not None:
            hidden = self.mix(hidden)
        return self.last(self.drop(nd.relu(hidden)))


def subtract_batch_mean(x):
    return nd.broadcast_sub(x, x.mean(axis=0, keepdims=True))


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
@pytest.mark.parametrize("mode", ["vectorized", "microbatch"])
@pytest.mark.parametrize("mix", [PlainBatchNorm, TwoInputBatchNorm, lambda: subtract_batch_mean],
                         ids=["plain-block", "two-inputs", "batch-mean"])
def test_path3_cross_sample_computation_found_by_what_it_computes(mix, mode, hybridize):
    net = Centered(mix())
    net.initialize()
    if hybridize:  # its Dense layers (and the two-input block) become cached graphs
        net.hybridize()
    x, y = batch(b=8)
    block = PrivateBlock(net, mode=mode)
    with pytest.raises(UnsupportedLayerError, match="depends on other samples"):
        with autograd.record():
            block(x)


def test_path3_row_probe_has_no_false_alarm_with_dropout_and_keeps_rng_reproducible():
    outs = []
    for _ in range(2):
        mx.random.seed(11)
        net = Centered(None)  # dropout in training mode, no cross-sample operation
        net.initialize()
        block, trainer = make(net, expected=8)
        x, y = batch(b=8)
        with autograd.record():
            loss = LOSS(block(x), y)
        loss.backward()
        trainer.step(8)
        outs.append(nd.random.uniform(shape=(3,)).asnumpy())
    np.testing.assert_array_equal(outs[0], outs[1])  # a seeded run stays reproducible


def test_path1_seeded_noise_never_restarts_when_the_trainable_set_changes():
    with pytest.warns(PrivacyWarning):
        block, trainer = make(sigma=1.0, noise_seed=5)
    block(batch()[0])
    params = trainer._trainable()
    first, _ = trainer._noise_vector(params)
    first = first.asnumpy().copy()
    trainer._noise_vector(params[:2])  # a layer frozen: a stream of another size
    again, _ = trainer._noise_vector(params)  # unfrozen: must not replay the first stream
    assert not np.allclose(first, again.asnumpy())


def test_path8_loader_at_another_rate_without_trainer_is_caught_by_the_window_mean():
    rng = np.random.default_rng(4)
    detector = FixedSizeDetector(0.01, 100)  # the trainer's q = 0.01, N = 10,000
    sizes = rng.binomial(10_000, 0.0125, size=200)  # a loader built without trainer=
    with pytest.raises(SamplingError, match="another rate"):
        for size in sizes:
            detector.check(int(size))
            detector.observe(int(size))


def test_secure_mode_draws_the_microbatch_assignment_from_urandom(monkeypatch):
    import os
    with pytest.warns(PrivacyWarning):
        seeded = PrivateBlock(mlp(), mode="microbatch", num_microbatches=3, seed=1)
    with pytest.raises(InvalidParameterError, match="seeded microbatch"):
        DPTrainer(seeded.collect_params(), "sgd", noise_multiplier=1.0, max_grad_norm=1.0,
                  expected_batch_size=6, sample_rate=0.1, secure_mode=True)
    block, trainer = make(mode="microbatch", block={"num_microbatches": 3}, secure_mode=True)
    calls = []
    real = os.urandom
    monkeypatch.setattr(os, "urandom", lambda n: calls.append(n) or real(n))
    groups = block._groups(6)
    assert calls and sorted(np.concatenate(groups).tolist()) == list(range(6))


class TimeMajor(gluon.nn.HybridBlock):
    """Samples moved to axis 1 around a Dense(flatten=False): with T == B the layer's
    rows are time steps, not samples."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = gluon.nn.Dense(4, flatten=False, in_units=3)
        self.out = gluon.nn.Dense(2, in_units=24)

    def hybrid_forward(self, F, x):
        hidden = F.swapaxes(self.inner(F.swapaxes(x, 0, 1)), 0, 1)
        return self.out(F.reshape(hidden, (0, -1)))


class Reversed(gluon.nn.HybridBlock):
    """Rows reversed between two layers and restored at the output."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = gluon.nn.Dense(4, in_units=5)
        self.second = gluon.nn.Dense(3, in_units=4)

    def hybrid_forward(self, F, x):
        return F.reverse(self.second(F.reverse(self.first(x), axis=0)), axis=0)


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("net_cls, shape", [(TimeMajor, (6, 6, 3)), (Reversed, (6, 5))],
                         ids=["time-major", "reversed-rows"])
def test_path6_layer_rows_must_be_the_samples(net_cls, shape, hybridize):
    net = net_cls()
    net.initialize()
    if hybridize:
        net.hybridize()
    x = nd.random.normal(shape=shape)
    y = nd.array(np.arange(shape[0]) % 2)
    block = PrivateBlock(net, mode="vectorized")
    with pytest.raises(UnsupportedLayerError, match="not the samples"):
        with autograd.record():
            LOSS(block(x), y)
    # the output rows themselves are independent: only the alignment check sees this
    PrivateBlock(net.__class__(), mode="microbatch")


class BatchMixer(gluon.nn.Block):
    """Cross-sample operations that a single swapped row used to miss."""

    def __init__(self, how, **kwargs):
        super().__init__(**kwargs)
        self.how = how
        self.first = gluon.nn.Dense(8, in_units=5)
        self.last = gluon.nn.Dense(3, in_units=8)

    def forward(self, x, z=None):
        hidden = self.first(x)
        if self.how == "max-scale":  # per-batch max scaling
            hidden = nd.broadcast_div(hidden, nd.abs(hidden).max(axis=0, keepdims=True))
        elif self.how == "extra-input":  # the batch mean of a per-row extra input
            hidden = nd.broadcast_add(hidden, nd.broadcast_sub(z, z.mean(axis=0, keepdims=True)))
        elif self.how == "mixup-when-recording" and autograd.is_recording():
            hidden = 0.5 * (hidden + hidden[::-1])
        elif self.how == "mean":
            hidden = nd.broadcast_sub(hidden, hidden.mean(axis=0, keepdims=True))
        return self.last(nd.relu(hidden))


@pytest.mark.parametrize("how, rows", [("max-scale", 8), ("extra-input", 8),
                                       ("mixup-when-recording", 8), ("mean", 2),
                                       ("mean", 16384)])
def test_path3_row_probe_sees_max_extra_inputs_recording_branches_small_and_large(how, rows):
    net = BatchMixer(how)
    net.initialize()
    rng = np.random.default_rng(0)
    x = nd.array(rng.normal(size=(rows, 5)))
    x[rows - 1] = x[0]  # duplicated first and last rows must not make the probe vacuous
    if how == "max-scale":
        x[1] = x[1] * 100  # the batch maximum is not in row 0
    z = nd.array(rng.normal(size=(rows, 8)))
    block = PrivateBlock(net, mode="vectorized")
    with pytest.raises(UnsupportedLayerError, match="depends on other samples"):
        with autograd.record():
            block(x, z) if how == "extra-input" else block(x)


def test_path1_seeded_noise_does_not_replay_after_a_resume(tmp_path):
    x, y = batch(b=6)
    noises = []
    for resume in (False, True):
        with pytest.warns(PrivacyWarning):
            block, trainer = make(mlp(seed=1), sigma=1.0, noise_seed=9)
        allow_fixed_batches(trainer)
        block(x)  # initializes
        if resume:
            trainer.load_states(str(tmp_path / "ckpt"))
        with autograd.record():
            loss = LOSS(block(x), y)
        loss.backward()
        trainer.step(6)
        noises.append(trainer._noise_held[-1].copy())
        if not resume:
            trainer.save_states(str(tmp_path / "ckpt"))
    assert not np.allclose(noises[0], noises[1])  # the resumed stream is a new one


class TokenNet(gluon.nn.Block):
    """Token-level outputs flattened to (B*T, V), with a batch-mean centring inside."""

    def __init__(self, center, **kwargs):
        super().__init__(**kwargs)
        self.center = center
        self.embed = gluon.nn.Embedding(20, 4)
        self.out = gluon.nn.Dense(5, flatten=False, in_units=4)

    def forward(self, x):
        hidden = self.embed(x)
        if self.center:
            hidden = nd.broadcast_sub(hidden, hidden.mean(axis=0, keepdims=True))
        return self.out(hidden).reshape((-1, 5))


def test_path3_flattened_token_outputs_are_probed():
    x = nd.array(np.random.default_rng(3).integers(0, 20, size=(8, 3)))
    for center in (False, True):
        net = TokenNet(center)
        net.initialize()
        block = PrivateBlock(net, mode="vectorized")
        if center:
            with pytest.raises(UnsupportedLayerError, match="depends on other samples"):
                with autograd.record():
                    block(x)
        else:
            with autograd.record():
                block(x)
            assert block._rows_checked and block._rows_aligned


class TrainOnlyReversal(Reversed):
    """Rows reversed around the first layer only in training mode."""

    def hybrid_forward(self, F, x):
        if autograd.is_training():
            return self.second(F.reverse(self.first(F.reverse(x, axis=0)), axis=0))
        return self.second(self.first(x))


def test_path6_alignment_is_checked_in_training_mode():
    net = TrainOnlyReversal()
    net.initialize()
    block = PrivateBlock(net, mode="vectorized")
    with pytest.raises(UnsupportedLayerError, match="not the samples"):
        with autograd.record():
            block(nd.random.normal(shape=(6, 5)))


def test_path6_a_non_finite_view_zeroes_only_its_own_example():
    clip = 0.1
    x, y = batch(b=4, seed=5)
    bad = x.copy()
    bad[2] = float("nan")  # example 2's second view is not finite
    net = mlp(seed=7)
    ref = {k: reference_grads(net, LOSS, x, y)[k] + reference_grads(net, LOSS, x * 0.5, y)[k]
           for k in reference_grads(net, LOSS, x, y)}
    block, trainer = make(net, clip=clip, expected=4)
    before = params_np(block)
    with autograd.record():
        loss = LOSS(block(x), y) + LOSS(block(nd.where(nd.contrib.isfinite(bad), x * 0.5, bad)), y)
    loss.backward()
    with pytest.warns(Warning):
        trainer.step(4, example_ids=[np.arange(4), np.arange(4)])
    keep = np.array([1.0, 1.0, 0.0, 1.0])
    factors = keep * np.minimum(1.0, clip / flat_norms(ref, 4))
    for (name, g), old, p in zip(ref.items(), before, block.collect_params().values()):
        want = old - np.tensordot(factors, g, axes=1) / 4.0
        np.testing.assert_allclose(p.data().asnumpy(), want, rtol=1e-4, atol=1e-6)
    assert trainer.nonfinite_count == 1


def test_path1_two_seeded_trainers_resumed_from_one_checkpoint_draw_different_noise(tmp_path):
    x, y = batch(b=6)
    with pytest.warns(PrivacyWarning):
        block, trainer = make(mlp(seed=1), sigma=1.0, noise_seed=9)
    allow_fixed_batches(trainer)
    block(x)
    trainer.save_states(str(tmp_path / "ckpt"))
    noises = []
    for _ in range(2):
        with pytest.warns(PrivacyWarning):
            block, trainer = make(mlp(seed=1), sigma=1.0, noise_seed=9)
        allow_fixed_batches(trainer)
        block(x)
        trainer.load_states(str(tmp_path / "ckpt"))
        with autograd.record():
            loss = LOSS(block(x), y)
        loss.backward()
        trainer.step(6)
        noises.append(trainer._noise_held[-1].copy())
    assert not np.allclose(noises[0], noises[1])
