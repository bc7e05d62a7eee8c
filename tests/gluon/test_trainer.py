"""DPTrainer: clipping, noise, normalization, errors and checkpoints."""
import json
import os

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd
from scipy import stats

from mxprivacy import (BatchSizeMismatchError, CheckpointError, DPTrainer, ForeignParameterError,
                       InvalidParameterError, NonFiniteGradientWarning,
                       PrivateBlock, ScalarLossError, StaleGradientError, UnsupportedLayerError,
                       per_sample_grad_norms)

from .helpers import LOSS, Scale, allow_fixed_batches, batch, mlp, reference_grads


def make(net=None, mode="vectorized", sigma=0.0, clip=1.0, expected=6, lr=1.0, **kwargs):
    block = PrivateBlock(net or mlp(), mode=mode, **kwargs.pop("block", {}))
    trainer = DPTrainer(block.collect_params(), "sgd", {"learning_rate": lr},
                        noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=expected,
                        sample_rate=kwargs.pop("sample_rate", 0.1), **kwargs)
    return block, trainer


def forward_backward(block, x, y):
    with autograd.record():
        loss = LOSS(block(x), y)
    loss.backward()


def params_np(block):
    return [p.data().asnumpy().copy() for p in block.collect_params().values()]


def test_update_is_clipped_sum_over_expected_batch():
    x, y = batch(b=6)
    net = mlp()
    ref = reference_grads(net, LOSS, x, y)
    clip = 0.3
    block, trainer = make(net, clip=clip, expected=10, lr=1.0)
    before = params_np(block)
    forward_backward(block, x, y)
    trainer.step(6)
    flat = np.concatenate([g.reshape(6, -1) for g in ref.values()], axis=1)
    factors = np.minimum(1.0, clip / (np.linalg.norm(flat, axis=1) + 1e-6))
    for (name, g), old, p in zip(ref.items(), before, block.collect_params().values()):
        want = old - np.tensordot(factors, g, axes=1) / 10.0  # expected, not actual (6)
        np.testing.assert_allclose(p.data().asnumpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["vectorized", "microbatch"])
def test_trainer_clips_every_unit_to_c(mode):
    x, y = batch(b=6)
    block, trainer = make(mlp(seed=6), mode=mode)
    forward_backward(block, x, y)
    (shard,) = block.take_shards()
    raw = np.sqrt(shard.unit_sq_norms().asnumpy())
    clip = float(np.median(raw))
    trainer.max_grad_norm = clip  # half the samples above C, half below
    above, below = raw > clip, raw <= clip
    assert above.sum() >= 2 and below.sum() >= 2
    factors, _ = trainer._clip_factors(shard)
    grads = shard.per_unit_grads()
    flat = np.concatenate([g.asnumpy().reshape(6, -1) for g in grads.values()], axis=1)
    clipped = np.linalg.norm(flat * factors.asnumpy()[:, None], axis=1)
    assert np.all(clipped <= clip * (1 + 1e-6))
    np.testing.assert_allclose(clipped[above], clip, rtol=1e-4)  # clipped to C, not below
    np.testing.assert_allclose(clipped[below], raw[below], rtol=1e-4)  # left untouched


@pytest.mark.parametrize("block_kwargs", [{}, {"num_microbatches": 3, "seed": 0}])
def test_microbatch_and_vectorized_clipped_sums(block_kwargs):
    x, y = batch(b=6)
    results = []
    for mode in ("vectorized", "microbatch"):
        kwargs = {"block": block_kwargs} if mode == "microbatch" else {}
        block, trainer = make(mlp(seed=4), mode=mode, clip=0.5, **kwargs)
        forward_backward(block, x, y)
        trainer.allreduce_grads(6)
        results.append([p.grad().asnumpy().copy() for p in block.collect_params().values()])
    if not block_kwargs:  # one sample per microbatch: identical to vectorized
        for a, b in zip(*results):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    else:  # microbatches of several samples: each microbatch's sum is clipped, so norm <= 3C
        total = np.sqrt(sum(np.sum(g ** 2) for g in results[1]))
        assert total <= 3 * 0.5 + 1e-5


def _noise_sample(mode="vectorized", contexts=None, sigma=2.0, clip=0.5, **block):
    """Parameter change of an empty-batch step is pure noise x lr / expected batch size."""
    mx.random.seed(123)
    net = gluon.nn.Dense(50, in_units=80)
    net.initialize(mx.init.Zero(), ctx=contexts or mx.cpu())
    blk, trainer = make(net, mode=mode, sigma=sigma, clip=clip, expected=4, lr=1.0,
                        block=block, noise_seed=123)
    trainer.step(0)
    return blk, np.concatenate([-p.data(ctx=(contexts or [mx.cpu()])[0]).asnumpy().ravel() * 4
                                for p in blk.collect_params().values()])


def test_noise_std_is_sigma_times_clip():
    # 4050 draws: the sample std has relative s.e. 1/sqrt(2n) ~ 1.1 %, so a 5 % band
    # has power ~1 against the alternatives sigma*C*sqrt(2) (per-device noise) or 2*sigma*C.
    _, noise = _noise_sample()
    assert noise.std() == pytest.approx(2.0 * 0.5, rel=0.05)
    assert stats.kstest(noise / 1.0, "norm").pvalue > 0.001


def test_noise_doubles_for_multi_sample_microbatches():
    _, noise = _noise_sample(mode="microbatch", num_microbatches=4)
    assert noise.std() == pytest.approx(2 * 2.0 * 0.5, rel=0.05)


def test_noise_added_once_across_contexts():
    contexts = [mx.cpu(0), mx.cpu(1)]
    blk, noise = _noise_sample(contexts=contexts)
    for p in blk.collect_params().values():
        copies = [d.asnumpy() for d in p.list_data()]
        np.testing.assert_array_equal(copies[0], copies[1])
    assert noise.std() == pytest.approx(1.0, rel=0.05)  # not sqrt(2)


def test_two_contexts_sum_their_shards():
    contexts = [mx.cpu(0), mx.cpu(1)]
    x, y = batch(b=6)
    net = mlp(seed=5)
    ref = reference_grads(net, LOSS, x, y)
    net.collect_params().reset_ctx(contexts)
    blk, trainer = make(net, clip=100.0, expected=6)
    before = params_np(blk)
    with autograd.record():
        losses = [LOSS(blk(x[i:i + 3].as_in_context(c)), y[i:i + 3].as_in_context(c))
                  for i, c in zip((0, 3), contexts)]
    autograd.backward(losses)
    trainer.step(6)
    for g, old, p in zip(ref.values(), before, blk.collect_params().values()):
        np.testing.assert_allclose(p.data(mx.cpu(1)).asnumpy(), old - g.sum(0) / 6,
                                   rtol=1e-4, atol=1e-6)


def test_a_one_row_device_slice_is_a_per_sample_loss():
    """Rows split 4 + 1 over two devices (Gluon's even_split=False): the 1-row loss
    vector on the second device is classified with that device's rows, not the largest
    device's, so it is not mistaken for a reduced scalar."""
    contexts = [mx.cpu(0), mx.cpu(1)]
    x, y = batch(b=5)
    net = mlp(seed=5)
    ref = reference_grads(net, LOSS, x, y)
    net.collect_params().reset_ctx(contexts)
    blk, trainer = make(net, clip=100.0, expected=5)
    before = params_np(blk)
    with autograd.record():
        losses = [LOSS(blk(x[a:b].as_in_context(c)), y[a:b].as_in_context(c))
                  for (a, b), c in zip(((0, 4), (4, 5)), contexts)]
    autograd.backward(losses)
    trainer.step(5)
    for g, old, p in zip(ref.values(), before, blk.collect_params().values()):
        np.testing.assert_allclose(p.data(mx.cpu(1)).asnumpy(), old - g.sum(0) / 5,
                                   rtol=1e-4, atol=1e-6)


def test_one_mean_over_every_device_is_still_a_mean():
    """A single head averaging the losses of all devices is a reduction over 5 rows,
    even though the device it lives on captured only 1."""
    from mxprivacy.errors import PerSampleGradientError
    contexts = [mx.cpu(0), mx.cpu(1)]
    x, y = batch(b=5)
    net = mlp(seed=5)
    net.collect_params().reset_ctx(contexts)
    blk, trainer = make(net, clip=100.0, expected=5)
    with autograd.record():
        losses = [LOSS(blk(x[a:b].as_in_context(c)), y[a:b].as_in_context(c))
                  for (a, b), c in zip(((0, 1), (1, 5)), contexts)]
        total = nd.concat(losses[0], losses[1].as_in_context(contexts[0]), dim=0).mean()
    total.backward()
    with pytest.raises(PerSampleGradientError, match="averaged"):
        trainer.step(5)


def test_invalid_options():
    with pytest.raises(InvalidParameterError):
        make(sigma=-1.0)
    with pytest.raises(InvalidParameterError):
        make(clip=0.0)
    for rate in (0.0, 1.5):
        with pytest.raises(InvalidParameterError):
            make(sample_rate=rate)
    with pytest.raises(InvalidParameterError, match="sample_rate"):
        block = PrivateBlock(mlp())
        DPTrainer(block.collect_params(), "sgd", noise_multiplier=1.0, max_grad_norm=1.0,
                  expected_batch_size=4)
    with pytest.raises(InvalidParameterError, match="update_on_kvstore"):
        block = PrivateBlock(mlp())
        DPTrainer(block.collect_params(), "sgd", update_on_kvstore=True, noise_multiplier=1.0,
                  max_grad_norm=1.0, expected_batch_size=4, sample_rate=0.1)


def test_scalar_loss_rejected():
    x, y = batch()
    with pytest.raises(ScalarLossError):
        per_sample_grad_norms(mlp(), lambda out, lab: LOSS(out, lab).mean(), x, y)



def test_unsupported_layer_named_in_vectorized_mode():
    net = gluon.nn.HybridSequential()
    net.add(Scale(prefix="myscale_"), gluon.nn.Dense(2))
    net.initialize()
    with pytest.raises(UnsupportedLayerError, match=r"myscale.*microbatch"):
        PrivateBlock(net, mode="vectorized")
    assert PrivateBlock(net).mode == "microbatch"  # auto falls back


def test_batchnorm_rejected_in_every_mode():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(4), gluon.nn.BatchNorm(), gluon.nn.Dense(2))
    for mode in ("vectorized", "microbatch"):
        with pytest.raises(UnsupportedLayerError, match="GroupNorm"):
            PrivateBlock(net, mode=mode)


def test_hybridized_sub_block_is_captured_in_its_graph():
    """A sub-block hybridized after wrapping runs a capture graph (issue 12); the step
    equals the imperative one."""
    results = []
    for hybridize in (False, True):
        net = mlp()
        net(batch()[0])  # the same initial values in both runs
        block, trainer = make(net, clip=0.1)
        if hybridize:
            net[1].hybridize(static_alloc=True)
            net[1](nd.ones((6, 8)))  # build its own cached graph too
        x, y = batch()
        forward_backward(block, x, y)
        trainer.step(6)
        results.append([p.data().asnumpy() for p in net.collect_params().values()])
        assert bool(block._graphs) == hybridize
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_step_without_backward_and_stale_capture():
    block, trainer = make()
    x, y = batch()
    with autograd.record():
        LOSS(block(x), y)
    with pytest.raises(StaleGradientError):
        trainer.step(6)
    with pytest.raises(StaleGradientError):  # no capture at all
        trainer.update(6)
    forward_backward(block, x, y)
    trainer.step(6)
    with pytest.raises(BatchSizeMismatchError):  # nothing new captured
        trainer.step(6)


def test_step_checks_batch_size():
    block, trainer = make()
    x, y = batch()
    forward_backward(block, x, y)
    with pytest.raises(BatchSizeMismatchError):
        trainer.step(5)


def test_foreign_parameters_rejected():
    block = PrivateBlock(mlp())
    other = mlp(seed=9)
    params = list(block.collect_params().values()) + list(other.collect_params().values())
    with pytest.raises(ForeignParameterError):
        DPTrainer(params, "sgd", noise_multiplier=1.0, max_grad_norm=1.0,
                  expected_batch_size=4, sample_rate=0.1)


def test_non_finite_sample_zeroed_counted_and_warned():
    x, y = batch(b=6)
    net = mlp(seed=2)
    good = reference_grads(net, LOSS, x[1:], y[1:])
    x[0, 0] = np.nan
    block, trainer = make(net, clip=100.0, expected=6)
    before = params_np(block)
    forward_backward(block, x, y)
    with pytest.warns(NonFiniteGradientWarning):
        trainer.step(6)
    assert trainer.nonfinite_count == 1
    for g, old, p in zip(good.values(), before, block.collect_params().values()):
        np.testing.assert_allclose(p.data().asnumpy(), old - g.sum(0) / 6, rtol=1e-4, atol=1e-6)


def test_save_load_round_trip_keeps_epsilon(tmp_path):
    block, trainer = make(sigma=1.0)
    x, y = batch()
    for _ in range(3):
        forward_backward(block, x, y)
        trainer.step(6)
    path = str(tmp_path / "trainer.states")
    trainer.save_states(path)
    assert os.listdir(tmp_path) == ["trainer.states"]  # no temporary left behind
    fresh_block, fresh = make(mlp(seed=7), sigma=1.0)
    fresh_block(x)  # finish deferred initialization
    fresh.load_states(path)
    assert fresh.steps == 3
    assert fresh.epsilon(1e-5) == trainer.epsilon(1e-5) > 0


def test_corrupt_checkpoint_leaves_trainer_unchanged(tmp_path):
    block, trainer = make(sigma=1.0)
    block(batch()[0])
    trainer.step(0)
    eps = trainer.epsilon(1e-5)
    bad = tmp_path / "bad.states"
    bad.write_text(json.dumps({"format": "mxprivacy-dptrainer-1", "updater": "",
                               "privacy": {"ledger": [{"event": {"type": "nope"}, "count": 1}]},
                               "steps": 9}))
    with pytest.raises(CheckpointError):
        trainer.load_states(str(bad))
    assert trainer.epsilon(1e-5) == eps and trainer.steps == 1


def test_learning_rate_api():
    _, trainer = make(lr=0.3)
    assert trainer.learning_rate == pytest.approx(0.3)
    trainer.set_learning_rate(0.1)
    assert trainer.learning_rate == pytest.approx(0.1)


def test_large_epsilon_warns():
    from mxprivacy import PrivacyWarning
    block, trainer = make(sigma=0.3, sample_rate=0.5, warn_epsilon=5.0)
    allow_fixed_batches(trainer)
    block(batch()[0])
    with pytest.warns(PrivacyWarning):
        for _ in range(50):
            trainer.step(0)


def test_pld_accountant_is_used_and_survives_checkpoints(tmp_path):
    from mxprivacy.accounting import PLDAccountant, epsilon_for
    block, trainer = make(sigma=1.0, accountant="pld")
    x, y = batch()
    for _ in range(4):
        forward_backward(block, x, y)
        trainer.step(6)
    assert isinstance(trainer.accountant, PLDAccountant)
    expected = epsilon_for(1.0, 0.1, 4, 1e-5, "pld")
    assert trainer.epsilon(1e-5) == pytest.approx(expected, rel=1e-12)
    assert trainer.epsilon(1e-5) < epsilon_for(1.0, 0.1, 4, 1e-5, "rdp")
    path = str(tmp_path / "pld.states")
    trainer.save_states(path)
    fresh_block, fresh = make(mlp(seed=3), sigma=1.0, accountant="pld")
    fresh_block(x)
    fresh.load_states(path)
    assert isinstance(fresh.accountant, PLDAccountant)
    assert fresh.epsilon(1e-5) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(InvalidParameterError, match="pld"):
        make(accountant="moments")
