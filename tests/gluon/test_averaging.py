"""Parameter averaging (EMA of the weights): hand-computed averages, the warm-up,
swapping in and out, several contexts, checkpoints, and the order of updates."""
import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

from mxprivacy import (AveragingError, BatchSizeMismatchError, DPTrainer, InvalidParameterError,
                       ParameterAverage, PrivateBlock)
from mxprivacy.gluon.averaging import warmup_decay

from .helpers import LOSS, allow_fixed_batches, batch, mlp

pytestmark = pytest.mark.filterwarnings("ignore::mxprivacy.PrivacyWarning")


def ready(net):
    """Finish Gluon's deferred initialization with one forward pass (5 features)."""
    net(batch(b=1)[0].as_in_context(net.collect_params().list_ctx()[0]))
    return net


def make(ema_decay=0.2, contexts=None, sigma=0.5, seed=0, **kwargs):
    net = mlp(seed=seed)
    if contexts:
        net.collect_params().reset_ctx(contexts)
    block = PrivateBlock(net)
    trainer = DPTrainer(block.collect_params(), "sgd", {"learning_rate": 0.5},
                        noise_multiplier=sigma, max_grad_norm=1.0, expected_batch_size=6,
                        sample_rate=0.1, noise_seed=3, ema_decay=ema_decay, **kwargs)
    ready(net)  # after the trainer: the average must start lazily
    return block, allow_fixed_batches(trainer)


def step(block, trainer, contexts=None, b=6):
    x, y = batch(b=b)
    contexts = contexts or [mx.cpu(0)]
    cut = np.array_split(np.arange(b), len(contexts))
    with autograd.record():
        losses = [LOSS(block(x[i[0]:i[-1] + 1].as_in_context(c)),
                       y[i[0]:i[-1] + 1].as_in_context(c)) for i, c in zip(cut, contexts)]
    autograd.backward(losses)
    trainer.step(b)


def weights(block, ctx=mx.cpu(0)):
    return [p.data(ctx).asnumpy().copy() for p in block.collect_params().values()]


def test_warmup_formula_table():
    assert warmup_decay(0.9999, 0) == pytest.approx(0.1)
    assert warmup_decay(0.9999, 1) == pytest.approx(2 / 11)
    assert warmup_decay(0.9999, 2) == pytest.approx(0.25)
    assert warmup_decay(0.9999, 90) == pytest.approx(0.91)
    # (1+t)/(10+t) reaches 0.9999 at t = 89990: the decay is capped from there on.
    assert warmup_decay(0.9999, 89989) == pytest.approx(89990 / 89999, rel=1e-15)
    assert warmup_decay(0.9999, 89989) < 0.9999
    assert warmup_decay(0.9999, 89991) == 0.9999
    assert warmup_decay(0.9999, 10 ** 9) == 0.9999
    assert warmup_decay(0.3, 0, warmup=False) == 0.3
    average = ParameterAverage(mlp(), 0.2)
    assert average.next_decay == 0.1


def _hand_average(history, decays):
    avg = [w.astype(np.float64) for w in history[0]]
    for theta, d in zip(history[1:], decays):
        avg = [d * a + (1 - d) * w for a, w in zip(avg, theta)]
    return avg


@pytest.mark.parametrize("contexts", [None, [mx.cpu(0), mx.cpu(1)]])
def test_average_over_three_steps_equals_hand_computation(contexts):
    block, trainer = make(ema_decay=0.2, contexts=contexts)
    history = [weights(block)]
    for _ in range(3):
        step(block, trainer, contexts)
        history.append(weights(block))
    # d_0 = min(0.2, 1/10), d_1 = min(0.2, 2/11), d_2 = min(0.2, 3/12): both branches.
    want = _hand_average(history, [0.1, 2 / 11, 0.2])
    state = trainer.average.state_dict()
    assert state["updates"] == 3
    for got, expect, last in zip(state["arrays"], want, history[-1]):
        np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-7)
        assert np.abs(got - last).max() > 1e-3  # the average is not the last weights
    with trainer.averaged():
        for ctx in contexts or [mx.cpu(0)]:
            for got, expect in zip(weights(block, ctx), want):
                np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-7)


def test_swap_in_and_out_restores_exactly_even_after_an_error():
    contexts = [mx.cpu(0), mx.cpu(1)]
    block, trainer = make(contexts=contexts)
    for _ in range(2):
        step(block, trainer, contexts)
    before = {c: weights(block, c) for c in contexts}
    with pytest.raises(RuntimeError, match="inside"):
        with trainer.averaged():
            inside = weights(block, mx.cpu(1))
            raise RuntimeError("inside")
    for c in contexts:
        for old, now in zip(before[c], weights(block, c)):
            np.testing.assert_array_equal(old, now)
    assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(inside, before[mx.cpu(1)]))


def test_hybridized_forward_sees_the_swapped_weights():
    net = mlp(seed=2)
    net.hybridize()
    block = PrivateBlock(net)
    trainer = allow_fixed_batches(DPTrainer(
        block.collect_params(), "sgd", {"learning_rate": 1.0}, noise_multiplier=0.5,
        max_grad_norm=1.0, expected_batch_size=6, sample_rate=0.1, noise_seed=1,
        ema_decay=0.5))
    for _ in range(2):
        step(block, trainer)
    x, _ = batch(b=4, seed=9)
    raw = block(x).asnumpy()
    plain = ready(mlp(seed=7))
    trainer.average.copy_to(plain)
    with trainer.averaged():
        swapped = block(x).asnumpy()
    np.testing.assert_allclose(swapped, plain(x).asnumpy(), rtol=1e-5, atol=1e-6)
    assert np.abs(swapped - raw).max() > 1e-3
    np.testing.assert_array_equal(block(x).asnumpy(), raw)


def test_training_inside_averaged_is_refused():
    block, trainer = make()
    step(block, trainer)
    with trainer.averaged():
        inside = weights(block)
        with pytest.raises(AveragingError, match="averaged"):
            step(block, trainer)
        with pytest.raises(AveragingError):
            trainer.average.update()
        # refused before anything happened: no noise drawn, nothing accounted or moved
        assert trainer.steps == 1 and trainer.accountant.state_dict()["ledger"][0]["count"] == 1
        for old, now in zip(inside, weights(block)):
            np.testing.assert_array_equal(old, now)
    block.discard_capture()
    step(block, trainer)  # fine again outside
    assert trainer.average.updates == 2 and trainer.steps == 2


def test_a_refused_step_leaves_the_average_alone():
    block, trainer = make()
    step(block, trainer)
    state = trainer.average.state_dict()
    x, y = batch(b=6)
    with autograd.record():
        loss = LOSS(block(x), y)
    loss.backward()  # raw gradients exist; the average never reads them
    with pytest.raises(BatchSizeMismatchError):
        trainer.step(5)
    again = trainer.average.state_dict()
    assert again["updates"] == 1
    for a, b in zip(state["arrays"], again["arrays"]):
        np.testing.assert_array_equal(a, b)


def test_average_starts_at_the_weights_of_the_first_update():
    block, trainer = make(ema_decay=0.5)
    assert not trainer.average.started
    for p in block.collect_params().values():  # changed after the trainer was built
        p.set_data(p.data() + 1.0)
    start = weights(block)
    step(block, trainer)
    want = _hand_average([start, weights(block)], [0.1])
    for got, expect in zip(trainer.average.state_dict()["arrays"], want):
        np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-7)


def test_without_ema_decay_there_is_no_average():
    block, trainer = make(ema_decay=None)
    assert trainer.average is None
    with pytest.raises(AveragingError, match="ema_decay"):
        trainer.averaged()


@pytest.mark.parametrize("decay", [0, 1, 1.5, -0.1, math.nan, True, "x", None])
def test_invalid_decays(decay):
    with pytest.raises(InvalidParameterError, match="decay"):
        ParameterAverage(mlp(), decay)
    if decay is not None:
        with pytest.raises(InvalidParameterError, match="decay"):
            make(ema_decay=decay)


def test_state_dict_round_trip_and_mismatches():
    block, trainer = make()
    for _ in range(2):
        step(block, trainer)
    state = trainer.average.state_dict()
    other = ParameterAverage(block.net, 0.2)
    with pytest.raises(AveragingError, match="no values"):
        other.copy_to()
    other.load_state_dict(state)
    assert other.updates == 2 and other.next_decay == trainer.average.next_decay
    with other.swapped_in():
        inside = weights(block)
    for got, expect in zip(inside, state["arrays"]):
        np.testing.assert_array_equal(got, expect)
    with pytest.raises(InvalidParameterError, match="decay"):
        ParameterAverage(block.net, 0.3).load_state_dict(state)
    with pytest.raises(InvalidParameterError, match="shapes"):
        ParameterAverage(ready(mlp(hidden=4)), 0.2).load_state_dict(state)
    nested = gluon.nn.HybridSequential()
    nested.add(block.net)  # same parameters, structural names "0.0.weight", ...
    with pytest.raises(InvalidParameterError, match="names"):
        ParameterAverage(nested, 0.2).load_state_dict(state)
    with pytest.raises(InvalidParameterError, match="same trainable"):
        trainer.average.copy_to(nested)
    with pytest.raises(InvalidParameterError, match="keys"):
        other.load_state_dict({"arrays": state["arrays"]})


def test_standalone_average_and_copy_to():
    net = ready(mlp(seed=4))
    average = ParameterAverage(net.collect_params(), 0.5, warmup=False)
    first = weights(net)
    average.update()  # not started: begins at the current weights
    for p in net.collect_params().values():
        p.set_data(p.data() * 3.0)
    average.update()
    want = [0.5 * w + 0.5 * 3.0 * w for w in first]
    target = ready(mlp(seed=8))
    average.copy_to(target)
    for got, expect in zip(weights(target), want):
        np.testing.assert_allclose(got, expect, rtol=1e-6)
    with pytest.raises(InvalidParameterError, match="same trainable"):
        average.copy_to(ready(mlp(hidden=5)))
    with pytest.raises(InvalidParameterError, match="no trainable"):
        ParameterAverage([], 0.5)


def test_float16_parameters_average_in_float32():
    net = ready(mlp(seed=1))
    reference = weights(net)[0]
    net.cast("float16")
    average = ParameterAverage(net, 0.999, warmup=False)
    average.start()
    for p in net.collect_params().values():
        p.set_data(p.data() + nd.ones(p.shape, dtype="float16") * 1e-3)
    average.update()
    (array, *_) = average.state_dict()["arrays"]
    assert array.dtype == np.float32
    # 1e-6 steps are lost in float16 (spacing ~1e-3 near 1) but kept in float32.
    start = reference.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(array - start, 1e-6, atol=2e-7)
