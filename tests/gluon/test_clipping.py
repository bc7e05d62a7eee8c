"""Per-layer clipping and virtual steps (accumulate)."""
import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from mxprivacy import BatchSizeMismatchError, DPTrainer, InvalidParameterError, PrivateBlock
from mxprivacy.errors import StaleGradientError

from .helpers import batch, mlp, allow_fixed_batches
from .test_trainer import forward_backward, make, params_np


def test_per_layer_clipping_bounds_each_layer():
    x, y = batch(b=6)
    block, trainer = make(mlp(seed=3), clipping="per_layer", clip=1.0)
    first, second = block.net[0], block.net[1]
    trainer.max_grad_norm = {first.name: 0.05, second.name: 0.02}
    forward_backward(block, x, y)
    (shard,) = block.take_shards()
    factors, _ = trainer._clip_factors(shard)
    grads = shard.per_unit_grads()
    for layer, bound in ((first, 0.05), (second, 0.02)):
        flat = np.concatenate([grads[p].asnumpy().reshape(6, -1)
                               for p in layer.collect_params().values()], axis=1)
        clipped = np.linalg.norm(flat * factors[layer].asnumpy()[:, None], axis=1)
        assert np.all(clipped <= bound * (1 + 1e-6))
        raw = np.linalg.norm(flat, axis=1)
        np.testing.assert_allclose(clipped[raw > bound], bound, rtol=1e-4)
    assert trainer.sensitivity == pytest.approx(math.sqrt(0.05 ** 2 + 0.02 ** 2))


def test_per_layer_single_bound_splits_evenly_and_noise_uses_it():
    _, trainer = make(mlp(), clipping="per_layer", clip=2.0)
    assert trainer.sensitivity == pytest.approx(2.0)  # sqrt(2 * (2 / sqrt 2)^2)
    with pytest.raises(InvalidParameterError, match="missing"):
        trainer.max_grad_norm = {"nope": 1.0}
    with pytest.raises(InvalidParameterError, match="vectorized"):
        make(mlp(), mode="microbatch", clipping="per_layer")
    with pytest.raises(InvalidParameterError, match="per_layer"):
        make(mlp(), clip={"a": 1.0})


def test_accumulated_halves_equal_one_step_on_the_whole_batch():
    x, y = batch(b=6)
    whole_block, whole = make(mlp(seed=5), clip=0.3)
    forward_backward(whole_block, x, y)
    whole.step(6)
    split_block, split = make(mlp(seed=5), clip=0.3)
    forward_backward(split_block, x[:4], y[:4])
    split.accumulate()
    forward_backward(split_block, x[4:], y[4:])
    with pytest.raises(BatchSizeMismatchError):
        split.step(2)  # the accumulated 4 samples count too
    split_block, split = make(mlp(seed=5), clip=0.3)
    forward_backward(split_block, x[:4], y[:4])
    split.accumulate()
    forward_backward(split_block, x[4:], y[4:])
    split.step(6)
    for a, b in zip(params_np(whole_block), params_np(split_block)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert split.steps == 1 and len(split.accountant.ledger) == 1


def test_noise_is_added_once_per_logical_step():
    # Four accumulated empty-gradient parts then a step: the parameter change is one draw
    # of N(0, (sigma C)^2) x lr / B, not four (which would have std 2 sigma C).
    mx.random.seed(0)
    net = gluon.nn.Dense(50, in_units=80)
    net.initialize(mx.init.Zero())
    block = PrivateBlock(net)
    trainer = DPTrainer(block.collect_params(), "sgd", {"learning_rate": 1.0},
                        noise_multiplier=2.0, max_grad_norm=0.5, expected_batch_size=4,
                        sample_rate=0.1, noise_seed=7)
    x = mx.nd.zeros((3, 80))
    for _ in range(4):
        with mx.autograd.record():
            out = block(x)
        out.backward(mx.nd.zeros_like(out))
        trainer.accumulate()
    trainer.step(12)
    noise = np.concatenate([-p.data().asnumpy().ravel() * 4
                            for p in block.collect_params().values()])
    assert noise.std() == pytest.approx(1.0, rel=0.05)


def test_accumulate_without_capture_is_an_error():
    block, trainer = make()
    with pytest.raises(StaleGradientError):
        trainer.accumulate()


def test_adaptive_clipping_tracks_the_median_norm():
    # Dense(1) on inputs of known scale: per-sample gradient norms spread over 0.5 .. 8.
    mx.random.seed(0)
    net = gluon.nn.Dense(1, in_units=4, use_bias=False)
    net.initialize(mx.init.Zero())
    block = PrivateBlock(net)
    trainer = DPTrainer(block.collect_params(), "sgd", {"learning_rate": 0.0},
                        noise_multiplier=0.5, max_grad_norm=0.1, expected_batch_size=64,
                        sample_rate=0.1, clipping="adaptive",
                        clipping_options={"count_noise": 0.5, "seed": 0}, warn_epsilon=1e9)
    allow_fixed_batches(trainer)
    scales = np.geomspace(0.5, 8.0, 64)
    x = mx.nd.array(np.repeat(scales[:, None], 4, axis=1) / 2.0)  # ||x_i|| = scale_i
    for _ in range(150):
        with mx.autograd.record():
            out = block(x)
        out.backward(mx.nd.ones_like(out))  # d loss / d out = 1: gradient norm = ||x_i||
        trainer.step(64)
    assert trainer.max_grad_norm == pytest.approx(np.median(scales), rel=0.15)
    assert trainer.accountant.ledger[0][0].event.noise_multiplier == 0.5  # z is charged


def test_adaptive_clipping_noise_split():
    _, trainer = make(clipping="adaptive", sigma=1.0, expected=200)
    # count_noise = 200 / 20 = 10: gradient share (1 - 1/400)^(-1/2).
    assert trainer.gradient_noise_multiplier == pytest.approx((1 - 1 / 400) ** -0.5)
    with pytest.raises(InvalidParameterError, match="count_noise"):
        make(clipping="adaptive", sigma=3.0, clipping_options={"count_noise": 1.0})


def test_adaptive_bound_survives_checkpoints(tmp_path):
    x, y = batch(b=6)
    block, trainer = make(mlp(seed=2), clipping="adaptive", sigma=1.0, expected=6,
                          clipping_options={"count_noise": 5.0, "seed": 1})
    for _ in range(3):
        forward_backward(block, x, y)
        trainer.step(6)
    assert trainer.max_grad_norm != 1.0  # it moved
    path = str(tmp_path / "adaptive.states")
    trainer.save_states(path)
    other_block, other = make(mlp(seed=2), clipping="adaptive", sigma=1.0, expected=6,
                              clipping_options={"count_noise": 5.0})
    other_block(x)
    other.load_states(path)
    assert other.max_grad_norm == pytest.approx(trainer.max_grad_norm)


def test_adaptive_count_is_centered_so_its_sensitivity_is_one_half():
    # 6 samples, none clipped (C huge), expected batch 12. Centered sum = 6 * 1/2 = 3, so
    # the fraction estimate is 3/12 + 1/2 = 0.75 and C moves by exp(-(0.75 - 0.5)).
    # A plain count (sensitivity 1, which the noise split does not pay for) would give 0.5.
    x, y = batch(b=6)
    block, trainer = make(mlp(seed=4), clipping="adaptive", sigma=0.0, clip=1e6, expected=12,
                          clipping_options={"count_noise": 1e-9, "learning_rate": 1.0,
                                            "target_quantile": 0.5, "seed": 0})
    forward_backward(block, x, y)
    trainer.step(6)
    assert trainer.max_grad_norm == pytest.approx(1e6 * math.exp(-0.25), rel=1e-6)
