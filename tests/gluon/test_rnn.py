"""DPLSTM/DPGRU/DPRNN have the fused layers' parameter names, shapes and gate layouts:
files load both ways with identical outputs, and copy_from takes a fused layer's weights."""
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

import mxprivacy
from mxprivacy import DPGRU, DPLSTM, DPRNN, DPTrainer, InvalidParameterError, PrivateBlock

from .helpers import LOSS, allow_fixed_batches, reference_grads

KINDS = {  # name: (fused class, DP class, extra options)
    "lstm": (gluon.rnn.LSTM, DPLSTM, {}),
    "gru": (gluon.rnn.GRU, DPGRU, {}),
    "rnn_tanh": (gluon.rnn.RNN, DPRNN, {"activation": "tanh"}),
    "rnn_relu": (gluon.rnn.RNN, DPRNN, {"activation": "relu"}),
}
SHAPES = [dict(), dict(num_layers=2, bidirectional=True)]


class TextNet(gluon.nn.Block):
    """Embedding -> recurrent layer -> Dense on the last step; the layer's input size is
    left to inference, as in most user code."""

    def __init__(self, recurrent, **kwargs):
        super().__init__(**kwargs)
        self.embed = gluon.nn.Embedding(20, 4)
        self.rnn = recurrent
        self.out = gluon.nn.Dense(3)

    def forward(self, x):
        return self.out(self.rnn(self.embed(x))[:, -1, :])


def text_net(kind, dp, shape, seed=None):
    fused_cls, dp_cls, extra = KINDS[kind]
    layer = dp_cls(5, layout="NTC", **extra, **shape) if dp else \
        fused_cls(5, layout="NTC", **extra, **shape)
    net = TextNet(layer)
    if seed is not None:
        mx.random.seed(seed)
        net.initialize(mx.init.Xavier())
    return net


def tokens(seed=0, rows=3, steps=6):
    return nd.array(np.random.default_rng(seed).integers(0, 20, (rows, steps)))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_structural_names_and_shapes_equal_the_fused_layers(kind, shape):
    fused_cls, dp_cls, extra = KINDS[kind]
    fused, dp = fused_cls(5, input_size=3, **extra, **shape), dp_cls(5, input_size=3, **extra,
                                                                      **shape)
    fused.initialize()
    dp.initialize()
    theirs, ours = fused._collect_params_with_prefix(), dp._collect_params_with_prefix()
    assert {k: p.shape for k, p in ours.items()} == {k: p.shape for k, p in theirs.items()}
    suffix = {p.name[len(fused.prefix):] for p in fused.collect_params().values()}
    assert {p.name[len(dp.prefix):] for p in dp.collect_params().values()} == suffix
    assert all(getattr(dp, name) is dp.collect_params()[dp.prefix + name] for name in suffix)
    if "bidirectional" in shape:
        assert "_unfused.1.r_cell.h2h_bias" in ours
    else:
        assert "_unfused.0.i2h_weight" in ours


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_dp_file_loads_into_the_fused_net_and_back(tmp_path, kind, shape):
    """DP -> fused -> DP: the file goes both ways and the outputs agree to 1e-5."""
    x = tokens()
    dp = text_net(kind, True, shape, seed=0)
    want = dp(x).asnumpy()
    dp.save_parameters(str(tmp_path / "dp.params"))
    fused = text_net(kind, False, shape)  # deferred sizes, filled in by the load
    fused.load_parameters(str(tmp_path / "dp.params"))
    np.testing.assert_allclose(fused(x).asnumpy(), want, rtol=1e-5, atol=1e-6)
    fused.save_parameters(str(tmp_path / "fused.params"))
    assert sorted(nd.load(str(tmp_path / "fused.params"))) == \
        sorted(nd.load(str(tmp_path / "dp.params")))
    back = text_net(kind, True, shape)
    back.load_parameters(str(tmp_path / "fused.params"))
    np.testing.assert_allclose(back(x).asnumpy(), want, rtol=1e-5, atol=1e-6)


def test_privately_trained_lstm_deploys_as_a_fused_lstm(tmp_path):
    """The deployment path: wrapped DP net, one DP step, save; the plain fused net loads
    the file without mxprivacy and computes the same function."""
    shape = dict(num_layers=2, bidirectional=True)
    block = PrivateBlock(text_net("lstm", True, shape, seed=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = allow_fixed_batches(DPTrainer(
            block.collect_params(), "sgd", {"learning_rate": 0.5}, noise_multiplier=0.5,
            max_grad_norm=1.0, expected_batch_size=3, dataset_size=300))
    x, y = tokens(seed=2), nd.array([0, 1, 2])
    with autograd.record():
        loss = LOSS(block(x), y)
    loss.backward()
    trainer.step(3)
    block.save_parameters(str(tmp_path / "model.params"))
    deployed = text_net("lstm", False, shape)
    deployed.load_parameters(str(tmp_path / "model.params"))
    np.testing.assert_allclose(deployed(x).asnumpy(), block(x).asnumpy(), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_relu"])
def test_fix_converts_a_fused_layer_that_already_ran(kind, shape):
    """Fine-tuning a pretrained model: the fused layer's input size was inferred by a
    forward pass, the DP layer's is still unknown (0). fix() carries the weights over."""
    net = text_net(kind, False, shape, seed=3)
    x = tokens(seed=4)
    before = net(x).asnumpy()
    mxprivacy.fix(net)
    assert isinstance(net.rnn, KINDS[kind][1])
    np.testing.assert_allclose(net(x).asnumpy(), before, rtol=1e-5, atol=1e-6)
    y = nd.array([0, 1, 2])
    want = reference_grads(net, LOSS, x, y)
    got = mxprivacy.gluon.per_sample_grads(net, LOSS, x, y, mode="vectorized")
    for name in want:
        np.testing.assert_allclose(got[name].asnumpy(), want[name], rtol=1e-4, atol=1e-6)


def test_copy_from_fills_in_deferred_sizes_without_initialize():
    contexts = [mx.cpu(0), mx.cpu(1)]
    fused = gluon.rnn.LSTM(5)
    fused.initialize(ctx=contexts)
    x = nd.random.normal(shape=(4, 2, 3), ctx=mx.cpu(1))
    want = fused(x).asnumpy()
    dp = DPLSTM(5).copy_from(fused)  # never initialized: takes fused's contexts
    assert dp.l0_i2h_weight.shape == (20, 3) and dp.l0_i2h_weight.list_ctx() == contexts
    np.testing.assert_allclose(dp(x).asnumpy(), want, rtol=1e-5, atol=1e-6)


def fused_lstm(**options):
    layer = gluon.rnn.LSTM(5, input_size=3, **options)
    layer.initialize()
    return layer


@pytest.mark.parametrize("source,match", [
    (lambda: fused_lstm(num_layers=2), "lacks"),
    (lambda: fused_lstm(bidirectional=True), "lacks"),
    (lambda: gluon.rnn.LSTM(6, input_size=3), "shape"),
    (lambda: gluon.rnn.GRU(5, input_size=3), "'gru'"),
    (lambda: fused_lstm(projection_size=2), "projection_size"),
    (lambda: fused_lstm(state_clip_min=-1.0, state_clip_max=1.0), "lstm_state_clip"),
    (lambda: gluon.rnn.LSTM(5, input_size=3), "no value"),
])
def test_copy_from_refuses_a_layer_that_computes_something_else(source, match):
    layer = source()
    if match == "shape":
        layer.initialize()
    dp = DPLSTM(5, input_size=3)
    dp.initialize()
    with pytest.raises(InvalidParameterError, match=match):
        dp.copy_from(layer)


def test_unknown_attribute_is_still_an_attribute_error():
    layer = DPLSTM(5)
    with pytest.raises(AttributeError):
        layer.l3_i2h_weight  # no such layer
    with pytest.raises(AttributeError):
        layer.l0_i2h_gamma
