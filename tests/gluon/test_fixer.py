"""validate() names every problem; fix() replaces BatchNorm (by PlainGroupNorm and a
per-channel ChannelAffine) and fused recurrent layers, before or after initialize() and
after forward passes, and reports what it changed."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd
from mxnet.gluon.model_zoo import vision

import mxprivacy
from mxprivacy import (DPLSTM, ChannelAffine, DPTrainer, InvalidParameterError, PrivateBlock,
                       UnsupportedLayerError)
from mxprivacy.gluon.affine import PlainGroupNorm

from .helpers import LOSS, allow_fixed_batches, reference_grads
from .test_affine import numpy_group_norm
from .test_rules import graph_runs


class TextNet(gluon.nn.Block):
    def __init__(self, **lstm_options):
        super().__init__()
        self.embed = gluon.nn.Embedding(20, 4)
        self.lstm = gluon.rnn.LSTM(5, layout="NTC", **{"input_size": 4, **lstm_options})
        self.out = gluon.nn.Dense(2)

    def forward(self, x):
        return self.out(self.lstm(self.embed(x))[:, -1, :])


def conv_bn(norm=None):
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(6, 3), norm or gluon.nn.BatchNorm(), gluon.nn.Activation("relu"),
            gluon.nn.Dense(3))
    return net


def images(b=4, seed=0):
    return nd.array(np.random.default_rng(seed).normal(size=(b, 3, 6, 6)))


def test_validate_lists_every_problem_with_the_fix():
    net = conv_bn()
    net.add(gluon.nn.BatchNorm())
    problems = mxprivacy.validate(net)
    assert len(problems) == 2 and all("mxprivacy.fix" in p for p in problems)
    text = TextNet()
    (problem,) = mxprivacy.validate(text)
    assert "DPLSTM" in problem
    with pytest.raises(UnsupportedLayerError, match="DPLSTM"):
        PrivateBlock(text, mode="vectorized")


# -- BatchNorm --------------------------------------------------------------------------
def randomize_batch_norm(bn, seed=0):
    rng = np.random.default_rng(seed)
    channels = bn.gamma.shape[0]
    bn.gamma.set_data(nd.array(rng.uniform(0.5, 2.0, channels)))
    bn.beta.set_data(nd.array(rng.normal(size=channels)))
    return bn.gamma.data().asnumpy(), bn.beta.data().asnumpy()


def test_fix_after_a_forward_pass_takes_over_gamma_and_beta():
    net = conv_bn()
    net.initialize()
    net(images())
    gamma, beta = randomize_batch_norm(net[1])
    names = (net[1].gamma.name, net[1].beta.name)
    net[1].beta.grad_req, net[1].gamma.lr_mult = "null", 0.5
    fixed = mxprivacy.fix(net)
    assert fixed is net
    norm, affine = net[1]
    assert isinstance(norm, PlainGroupNorm) and norm.num_groups == 6
    assert isinstance(affine, ChannelAffine)
    np.testing.assert_array_equal(affine.gamma.data().asnumpy(), gamma)
    np.testing.assert_array_equal(affine.beta.data().asnumpy(), beta)
    assert (affine.gamma.name, affine.beta.name) == names  # name-based settings still apply
    assert affine.beta.grad_req == "null" and affine.gamma.lr_mult == 0.5
    (record,) = net.fixed_layers_
    assert (record.path, record.old_type) == ("1", "BatchNorm")
    assert record.new_type == "HybridSequential[PlainGroupNorm, ChannelAffine]"
    assert {"num_groups=6", "gamma and beta taken over"} <= set(record.notes)
    assert any("running_mean/running_var dropped" in n for n in record.notes)
    assert mxprivacy.validate(net) == []
    h = net[0](images()).asnumpy()  # the replacement: group norm, then the channel affine
    want = numpy_group_norm(h, 6) * gamma.reshape(1, -1, 1, 1) + beta.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(net[1](nd.array(h)).asnumpy(), want, rtol=1e-4, atol=1e-5)


def test_fix_after_initialize_initializes_the_replacement_with_deferred_shapes():
    net = conv_bn()
    net.initialize(ctx=mx.cpu(0))
    mxprivacy.fix(net)
    affine = net[1][1]
    assert affine.gamma._deferred_init and affine.gamma.shape == (0,)
    (record,) = net.fixed_layers_
    assert any("deferred" in n for n in record.notes)
    assert any("first forward pass" in n for n in record.notes)
    net(images())  # no "Parameter ... has not been initialized"
    assert net[1][0].num_groups == 6 and affine.gamma.list_ctx() == [mx.cpu(0)]
    np.testing.assert_array_equal(affine.gamma.data().asnumpy(), np.ones(6))


def test_fix_keeps_every_context():
    contexts = [mx.cpu(0), mx.cpu(1)]
    net = conv_bn()
    net.initialize(ctx=contexts)
    for ctx in contexts:
        net(images().as_in_context(ctx))
    gamma, _ = randomize_batch_norm(net[1])
    mxprivacy.fix(net)
    affine = net[1][1]
    assert affine.gamma.list_ctx() == contexts
    for ctx in contexts:
        np.testing.assert_array_equal(affine.gamma.data(ctx).asnumpy(), gamma)
        assert net(images().as_in_context(ctx)).context == ctx


def test_fix_before_initialize_leaves_initialization_to_the_net():
    net = mxprivacy.fix(conv_bn())
    assert net[1][1].gamma._data is None and not net[1][1].gamma._deferred_init
    assert any("net.initialize() will" in n for n in net.fixed_layers_[0].notes)
    net.initialize()
    assert net(images()).shape == (4, 3)


def test_fix_of_a_hybridized_net_that_ran_drops_its_cached_graph():
    net = conv_bn()
    net.initialize()
    net.hybridize()
    net(images())  # the cached graph holds the BatchNorm
    mxprivacy.fix(net)
    assert net[1]._active  # the replacement stays hybridized
    hybridized = net(images(seed=1)).asnumpy()
    net.hybridize(active=False)
    np.testing.assert_allclose(hybridized, net(images(seed=1)).asnumpy(), rtol=1e-5)


def test_fix_of_a_hybridized_net_before_shapes_are_known():
    net = conv_bn(gluon.nn.BatchNorm())
    net.hybridize()
    mxprivacy.fix(net)
    net.initialize()
    net(images())  # the group count is resolved before the graph is built
    assert net[1][0].num_groups == 6


def test_batch_norm_relu_keeps_its_relu_after_the_affine():
    net = conv_bn(gluon.nn.BatchNormReLU(in_channels=6))
    net.initialize()
    gamma, beta = randomize_batch_norm(net[1])
    mxprivacy.fix(net)
    norm, affine, relu = net[1]
    assert relu._act_type == "relu" and norm.num_groups == 6
    h = net[0](images()).asnumpy()
    want = numpy_group_norm(h, 6) * gamma.reshape(1, -1, 1, 1) + beta.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(net[1](nd.array(h)).asnumpy(), np.maximum(want, 0), rtol=1e-4,
                               atol=1e-5)


def test_scale_and_center_off_stay_off():
    bn = gluon.nn.BatchNorm(scale=False, center=False, in_channels=6,
                            gamma_initializer=mx.init.Constant(3.0))
    bn.initialize()
    h = np.random.default_rng(0).normal(size=(4, 6, 3, 3)).astype(np.float32)
    with autograd.train_mode():  # scale=False: the op ignores the stored gamma (uses 1)
        out = bn(nd.array(h)).asnumpy()
    mean, var = h.mean((0, 2, 3), keepdims=True), h.var((0, 2, 3), keepdims=True)
    np.testing.assert_allclose(out, (h - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
    net = conv_bn(bn)
    mxprivacy.fix(net)
    affine = net[1][1]
    assert affine.gamma.grad_req == "null" and affine.beta.grad_req == "null"
    np.testing.assert_array_equal(affine.gamma.data().asnumpy(), np.ones(6))


def test_fix_of_a_batch_norm_itself_and_of_a_shared_one():
    bn = gluon.nn.BatchNorm(in_channels=48, use_global_stats=True)
    new = mxprivacy.fix(bn)
    assert new[0].num_groups == 24 and new.fixed_layers_[0].path == ""
    assert any("use_global_stats=True" in n for n in new.fixed_layers_[0].notes)
    shared = gluon.nn.BatchNorm()
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(4, flatten=False), shared, shared)
    mxprivacy.fix(net)
    assert net[1] is net[2] and len(net.fixed_layers_) == 1


class MyBatchNorm(gluon.nn.BatchNorm):
    pass


class RunningScale(gluon.nn.HybridBlock):
    """Not a Gluon BatchNorm, but keeps running statistics: fix() cannot know what it
    computes, so it stays and validate() names it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.running_mean = self.params.get("running_mean", shape=(4,), grad_req="null")

    def hybrid_forward(self, F, x, running_mean):
        return F.broadcast_sub(x, running_mean.reshape((1, -1)))


@pytest.mark.parametrize("layer", [
    lambda: MyBatchNorm(in_channels=4),
    lambda: gluon.contrib.nn.SyncBatchNorm(in_channels=4, num_devices=1)],
    ids=["subclass", "SyncBatchNorm"])
def test_batch_norm_subclasses_are_replaced(layer):
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(4), layer(), gluon.nn.Dense(2))
    mxprivacy.fix(net)
    assert isinstance(net[1][1], ChannelAffine) and net[1][0].num_groups == 4
    assert mxprivacy.validate(net) == []


def test_unknown_blocks_with_running_statistics_stay():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(4), RunningScale(), gluon.nn.Dense(2))
    mxprivacy.fix(net)
    assert isinstance(net[1], RunningScale) and net.fixed_layers_ == []
    (problem,) = mxprivacy.validate(net)
    assert "batch statistics" in problem


@pytest.mark.filterwarnings("ignore:Cannot decide type")  # SymbolBlock.imports, always
def test_fixed_net_saves_loads_and_exports_for_plain_mxnet(tmp_path):
    net = mxprivacy.fix(conv_bn())
    net.initialize(mx.init.Xavier())
    net.hybridize()
    out = net(images()).asnumpy()
    net.save_parameters(str(tmp_path / "fixed.params"))
    again = mxprivacy.fix(conv_bn())  # a fresh fixed net loads the file
    again.load_parameters(str(tmp_path / "fixed.params"))
    np.testing.assert_array_equal(again(images()).asnumpy(), out)
    net.export(str(tmp_path / "fixed"))  # the graph needs no mxprivacy class to run
    plain = gluon.SymbolBlock.imports(str(tmp_path / "fixed-symbol.json"), ["data"],
                                      str(tmp_path / "fixed-0000.params"))
    np.testing.assert_allclose(plain(images()).asnumpy(), out, rtol=1e-6)


def test_fix_under_a_plain_block_resolves_at_the_first_call():
    class Plain(gluon.nn.Block):
        def __init__(self):
            super().__init__()
            self.conv = gluon.nn.Conv2D(8, 3)
            self.bn = gluon.nn.BatchNorm()

        def forward(self, x):
            return self.bn(self.conv(x))

    net = mxprivacy.fix(Plain())
    assert net._children["bn"] is net.bn
    net.initialize()
    net.bn.hybridize()  # its own graph: the pre-hook sits on the replacement itself
    assert net(images()).shape == (4, 8, 4, 4) and net.bn[0].num_groups == 8


def test_fix_refuses_a_wrapped_net_and_non_blocks():
    text = TextNet()
    text.initialize()
    PrivateBlock(text, mode="microbatch")
    with pytest.raises(InvalidParameterError, match="before wrapping"):
        mxprivacy.fix(text)
    with pytest.raises(InvalidParameterError, match="gluon Block"):
        mxprivacy.fix("net")


def test_verbose_prints_one_line_per_change(capsys):
    net = mxprivacy.fix(conv_bn(), verbose=True)
    line = capsys.readouterr().out.strip()
    assert line == str(net.fixed_layers_[0]) and line.startswith("1: ")
    assert set(net.fixed_layers_[0].as_dict()) == {"path", "old_name", "old_type", "new_name",
                                                   "new_type", "notes"}
    mxprivacy.fix(net, verbose=True)
    assert "nothing to replace" in capsys.readouterr().out


# -- model_zoo ResNet-18 ----------------------------------------------------------------
RESNET18_BN_CHANNELS = 64 + 4 * 64 + 5 * 128 + 5 * 256 + 5 * 512  # by stage, with downsample


def test_resnet18_has_the_batch_norm_channels_counted_by_hand():
    net = vision.resnet18_v1(classes=10)
    net.initialize()
    net(nd.ones((1, 3, 32, 32)))
    gammas = [p for name, p in net.collect_params().items() if name.endswith("gamma")]
    assert sum(p.shape[0] for p in gammas) == RESNET18_BN_CHANNELS == 4800


@pytest.mark.parametrize("when", ["before_initialize", "after_initialize", "after_forward"])
def test_resnet18_fixed_at_any_point_takes_dp_steps(when):
    mx.random.seed(0)
    rng = np.random.default_rng(0)
    x = nd.array(rng.normal(size=(6, 3, 32, 32)))
    y = nd.array(rng.integers(0, 10, 6))
    net = vision.resnet18_v1(classes=10)
    if when != "before_initialize":
        net.initialize(mx.init.Xavier())
    if when == "after_forward":
        net(x[:2])
    mxprivacy.fix(net)
    if when == "before_initialize":
        net.initialize(mx.init.Xavier())
    assert len(net.fixed_layers_) == 20
    net.hybridize(static_alloc=True)
    block = PrivateBlock(net)
    trainer = allow_fixed_batches(DPTrainer(
        block.collect_params(), "sgd", {"learning_rate": 0.1}, noise_multiplier=1.0,
        max_grad_norm=1.0, expected_batch_size=6, sample_rate=0.01))
    snapshots = []
    with graph_runs() as runs:
        for size in (6, 5):
            with autograd.record():
                loss = LOSS(block(x[:size]), y[:size])
            loss.backward()
            trainer.step(size)
            snapshots.append({n: p.data().asnumpy().copy()
                              for n, p in net.collect_params().items()})
    assert block.mode == "vectorized" and runs  # captured inside the hybridized graph
    affines = [b for b in _walk(net) if isinstance(b, ChannelAffine)]
    assert sum(a.gamma.shape[0] for a in affines) == RESNET18_BN_CHANNELS
    assert all(a.resolved() for a in affines)  # they run as depthwise convolutions
    norms = [b for b in _walk(net) if isinstance(b, PlainGroupNorm)]
    assert len(norms) == 20 and {n.num_groups for n in norms} == {32}
    trained = [n for n, p in net.collect_params().items() if p.grad_req != "null"]
    assert all(not np.array_equal(snapshots[0][n], snapshots[1][n]) for n in trained)


def _walk(block):
    yield block
    for child in block._children.values():
        yield from _walk(child)


# -- recurrent layers -------------------------------------------------------------------
def test_fix_swaps_lstm_and_keeps_its_function():
    mx.random.seed(0)
    text = TextNet()
    text.initialize(mx.init.Xavier())
    x = nd.array(np.random.default_rng(0).integers(0, 20, (3, 6)))
    before = text(x).asnumpy()
    names = sorted(text.lstm.collect_params())
    mxprivacy.fix(text)
    assert isinstance(text.lstm, DPLSTM) and text._children["lstm"] is text.lstm
    assert sorted(text.lstm.collect_params()) == names
    assert "weights taken over" in text.fixed_layers_[0].notes
    np.testing.assert_allclose(text(x).asnumpy(), before, rtol=1e-5, atol=1e-6)
    assert mxprivacy.validate(text) == []
    y = nd.array([0, 1, 1])
    want = reference_grads(text, LOSS, x, y)
    got = mxprivacy.gluon.per_sample_grads(text, LOSS, x, y, mode="vectorized")
    for name in want:
        np.testing.assert_allclose(got[name].asnumpy(), want[name], rtol=1e-4, atol=1e-6)


def test_fix_of_an_lstm_initialized_with_unknown_input_size():
    text = TextNet(input_size=0)
    text.initialize(ctx=mx.cpu(0))
    mxprivacy.fix(text)
    assert any("deferred" in n for n in text.fixed_layers_[0].notes)
    x = nd.array(np.random.default_rng(0).integers(0, 20, (3, 6)))
    assert text(x).shape == (3, 2)  # no "Parameter ... has not been initialized"
    assert text.lstm.l0_i2h_weight.shape == (20, 4)


def test_fix_of_an_lstm_before_initialize():
    text = mxprivacy.fix(TextNet(input_size=0))
    assert any("net.initialize() will" in n for n in text.fixed_layers_[0].notes)
    text.initialize()
    assert text(nd.array([[1, 2, 3]])).shape == (1, 2)


def test_fix_refuses_an_lstm_it_cannot_convert_and_changes_nothing():
    with pytest.raises(UnsupportedLayerError, match="projection_size"):
        mxprivacy.fix(TextNet(projection_size=3))
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.BatchNorm(), gluon.rnn.LSTM(5, projection_size=3))
    with pytest.raises(UnsupportedLayerError):
        mxprivacy.fix(net)
    assert isinstance(net[0], gluon.nn.BatchNorm)  # the refusal came before any swap
