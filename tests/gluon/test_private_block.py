"""PrivateBlock: checkpoints with the plain net's names, the auto-mode fallback warning,
and the refusal of a plain gluon.Trainer."""
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

from mxprivacy import (DPTrainer, MicrobatchFallbackWarning, PlainTrainerError,
                       PrivateBlock)

from .helpers import LOSS, Scale, allow_fixed_batches, batch, mlp


def private_step(block):
    """One DP step, so that the weights are not the initial ones."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = allow_fixed_batches(DPTrainer(
            block.collect_params(), "sgd", {"learning_rate": 0.5}, noise_multiplier=0.5,
            max_grad_norm=1.0, expected_batch_size=6, dataset_size=600))
    x, y = batch()
    with autograd.record():
        loss = LOSS(block(x), y)
    loss.backward()
    trainer.step(x.shape[0])
    return trainer


def outputs(net):
    return net(batch()[0]).asnumpy()


def test_wrapped_net_saves_the_plain_names_and_the_plain_net_loads_them(tmp_path):
    block = PrivateBlock(mlp(seed=0))
    private_step(block)
    block.save_parameters(str(tmp_path / "wrapped.params"))
    block.net.save_parameters(str(tmp_path / "plain.params"))
    assert sorted(nd.load(str(tmp_path / "wrapped.params"))) == \
        sorted(nd.load(str(tmp_path / "plain.params"))) == \
        ["0.bias", "0.weight", "1.bias", "1.weight"]
    deployed = mlp(seed=7)  # another initialization, overwritten by the load
    assert not np.allclose(outputs(deployed), outputs(block))
    deployed.load_parameters(str(tmp_path / "wrapped.params"))
    np.testing.assert_array_equal(outputs(deployed), outputs(block))


def test_plain_net_file_loads_into_the_wrapped_net(tmp_path):
    pretrained = mlp(seed=3)
    want = outputs(pretrained)  # the first forward pass infers the input size
    pretrained.save_parameters(str(tmp_path / "plain.params"))
    block = PrivateBlock(mlp(seed=4))
    block.load_parameters(str(tmp_path / "plain.params"))
    np.testing.assert_array_equal(outputs(block), want)


def test_single_layer_round_trip_uses_mxnets_dotless_names(tmp_path):
    """A wrapped Dense saves "weight" and "bias" (no dot): MXNet's legacy branch, which
    needs the plain net's prefix."""
    mx.random.seed(0)
    net = gluon.nn.Dense(3, in_units=5)
    net.initialize()
    block = PrivateBlock(net)
    block.save_parameters(str(tmp_path / "p"))
    assert sorted(nd.load(str(tmp_path / "p"))) == ["bias", "weight"]
    other = gluon.nn.Dense(3, in_units=5)
    other.initialize(mx.init.One())
    PrivateBlock(other).load_parameters(str(tmp_path / "p"))
    np.testing.assert_array_equal(outputs(other), outputs(net))


def test_files_with_the_old_net_prefix_still_load(tmp_path):
    source = mlp(seed=5)
    want = outputs(source)
    legacy = {"net." + k: p.data() for k, p in source._collect_params_with_prefix().items()}
    nd.save(str(tmp_path / "old.params"), legacy)
    block = PrivateBlock(mlp(seed=6))
    block.load_parameters(str(tmp_path / "old.params"))
    np.testing.assert_array_equal(outputs(block), want)
    assert "_collect_params_with_prefix" not in block.net.__dict__  # aliases removed
    with pytest.raises(AssertionError, match="net.0.weight"):  # the plain net has no alias
        mlp(seed=6).load_parameters(str(tmp_path / "old.params"))


def test_a_missing_parameter_is_still_refused(tmp_path):
    source = mlp(seed=5)
    outputs(source)
    names = source._collect_params_with_prefix()
    nd.save(str(tmp_path / "part.params"), {"0.weight": names["0.weight"].data()})
    with pytest.raises(AssertionError, match="missing"):  # MXNet's own check
        PrivateBlock(mlp(seed=6)).load_parameters(str(tmp_path / "part.params"))


# -- mode="auto" ----------------------------------------------------------------------

def net_without_rule():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(4), Scale(prefix="myscale_"), gluon.nn.Dense(2))
    net.initialize()
    return net


def test_auto_mode_warns_when_it_falls_back_to_microbatches():
    with pytest.warns(MicrobatchFallbackWarning, match=r"(?s)myscale.*\(Scale\).*B forward"):
        block = PrivateBlock(net_without_rule())
    assert block.mode == "microbatch"


@pytest.mark.parametrize("options", [dict(), dict(mode="microbatch"),
                                     dict(num_microbatches=2)])
def test_no_fallback_warning_when_nothing_falls_back(options):
    net = mlp() if not options else net_without_rule()
    with warnings.catch_warnings():
        warnings.simplefilter("error", MicrobatchFallbackWarning)
        block = PrivateBlock(net, **options)
    assert block.mode == ("vectorized" if not options else "microbatch")


# -- plain gluon.Trainer --------------------------------------------------------------
def test_plain_trainer_on_a_wrapped_net_is_refused_at_construction():
    block = PrivateBlock(mlp())
    with pytest.raises(PlainTrainerError, match="DPTrainer"):
        gluon.Trainer(block.collect_params(), "sgd", {"learning_rate": 0.1})
    private_step(block)  # DPTrainer, a gluon.Trainer subclass, is accepted


def test_release_lets_a_plain_trainer_train_the_net():
    block = PrivateBlock(mlp())
    net = block.release()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    before = outputs(net)
    x, y = batch()
    with autograd.record():
        loss = LOSS(net(x), y)
    loss.backward()
    trainer.step(x.shape[0])
    assert not np.allclose(outputs(net), before)
    assert all("_set_trainer" not in p.__dict__ for p in net.collect_params().values())


def test_plain_trainer_made_before_wrapping_refuses_to_step():
    net = mlp()
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    block = PrivateBlock(net)
    x, y = batch()
    with autograd.record():
        loss = LOSS(block(x), y)
    loss.backward()
    for call in (trainer.step, trainer.update):
        with pytest.raises(PlainTrainerError, match="DPTrainer"):
            call(x.shape[0])
    block.discard_capture()
    block.release()
    with autograd.record():
        loss = LOSS(net(x), y)
    loss.backward()
    trainer.step(x.shape[0])  # the guard is gone with the wrapping
