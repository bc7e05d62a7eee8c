"""to_he_friendly: which layers are swapped and into what (values checked against
hand-computed outputs), structural names and weights kept, the report, refusals that
leave the net untouched, hybridized nets."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon, nd

from mxprivacy import InvalidParameterError, UnsupportedLayerError
from mxprivacy.encrypted.convert import to_he_friendly
from mxprivacy.gluon import PolyActivation

nn = gluon.nn


def cnn(activation="relu", fused=False):
    mx.random.seed(0)
    net = nn.HybridSequential()
    net.add(nn.Conv2D(3, 3, in_channels=1, activation=activation if fused else None))
    if not fused:
        net.add(nn.Activation(activation))
    net.add(nn.MaxPool2D(2), nn.Flatten(), nn.Dense(4, activation="tanh"), nn.Dense(2))
    net.initialize(mx.init.Xavier())
    return net


X = nd.array(np.random.default_rng(0).normal(size=(3, 1, 8, 8)))


def test_square_and_avg_pool_compute_what_they_say():
    net = to_he_friendly(cnn())
    assert [type(b).__name__ for b in net] == ["Conv2D", "PolyActivation", "AvgPool2D",
                                                 "Flatten", "Dense", "Dense"]
    conv = net[0](X).asnumpy() ** 2
    pooled = conv.reshape(3, 3, 3, 2, 3, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(net[2](net[1](net[0](X))).asnumpy(), pooled, rtol=1e-5)
    assert isinstance(net[4].act, PolyActivation) and net[4].act.kind == "square"


def test_report_lists_every_swap_with_its_path_and_prints_like_fix(capsys):
    net = to_he_friendly(cnn(), verbose=True)
    changes = net.he_friendly_changes_
    assert [(c.path, c.old_type, c.new_type) for c in changes] == [
        ("1", "Activation", "PolyActivation"), ("2", "MaxPool2D", "AvgPool2D"),
        ("4.act", "Activation", "PolyActivation")]
    assert changes[0].notes == ("relu -> x * x",)
    assert "pool_size=(2, 2), strides=(2, 2), padding=(0, 0) kept" in changes[1].notes
    printed = capsys.readouterr().out.splitlines()
    assert printed == [str(c) for c in changes]
    assert printed[2].startswith("4.act: ") and "tanh -> x * x" in printed[2]


def test_structural_names_and_weights_are_kept(tmp_path):
    net = cnn()
    net(X)
    before = {k: v.data().asnumpy() for k, v in net._collect_params_with_prefix().items()}
    net.save_parameters(str(tmp_path / "old.params"))
    to_he_friendly(net)
    after = {k: v.data().asnumpy() for k, v in net._collect_params_with_prefix().items()}
    assert sorted(after) == sorted(before) == ["0.bias", "0.weight", "4.bias", "4.weight",
                                               "5.bias", "5.weight"]
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])
    net.load_parameters(str(tmp_path / "old.params"))  # the old file still loads


@pytest.mark.parametrize("target,degree", [("fit", 2), ("fit", 4), ("sigmoid", 3)])
def test_fit_uses_each_activations_own_function_or_the_given_target(target, degree):
    net = to_he_friendly(cnn(), activation=(target, degree, (-3, 3)))
    first, dense_act = net[1], net[4].act
    want_first = "relu" if target == "fit" else target
    want_dense = "tanh" if target == "fit" else target
    assert (first.kind, dense_act.kind) == (want_first, want_dense)
    reference = PolyActivation.fit(want_first, degree, (-3, 3))
    assert first.coefficients == reference.coefficients
    assert first.input_range == (-3.0, 3.0)


def test_fused_conv_activation_is_swapped_in_place():
    net = to_he_friendly(cnn(activation="sigmoid", fused=True))
    assert isinstance(net[0].act, PolyActivation) and net[0].act.kind == "square"
    assert [c.path for c in net.he_friendly_changes_] == ["0.act", "1", "3.act"]
    conv = nd.Convolution(X, net[0].weight.data(), net[0].bias.data(), kernel=(3, 3),
                          num_filter=3)
    np.testing.assert_allclose(net[0](X).asnumpy(), (conv ** 2).asnumpy(), rtol=1e-5)


def test_pooling_none_leaves_max_pooling_and_global_pools_become_global_averages():
    net = to_he_friendly(cnn(), pooling=None)
    assert isinstance(net[2], nn.MaxPool2D)
    net = nn.HybridSequential()
    net.add(nn.Conv2D(2, 3), nn.GlobalMaxPool2D())
    net.initialize()
    to_he_friendly(net)
    assert isinstance(net[1], nn.GlobalAvgPool2D)
    np.testing.assert_allclose(net(X).asnumpy()[:, :, 0, 0],
                               net[0](X).asnumpy().mean(axis=(2, 3)), rtol=1e-5)


def test_padded_max_pool_averages_real_values_only():
    net = nn.HybridSequential()
    net.add(nn.MaxPool2D(pool_size=3, strides=1, padding=1, ceil_mode=True))
    to_he_friendly(net)
    pool = net[0]
    assert isinstance(pool, nn.AvgPool2D) and pool._kwargs["pooling_convention"] == "full"
    ones = nd.ones((1, 1, 4, 4))
    np.testing.assert_array_equal(net(ones).asnumpy(), np.ones((1, 1, 4, 4)))


def test_hybridized_net_runs_the_new_layers():
    net = cnn()
    net.hybridize()
    old = net(X).asnumpy()
    to_he_friendly(net)
    assert net[1]._active
    new = net(X).asnumpy()
    x = net[0](X) ** 2
    want = net[5](net[4](net[3](nd.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type="avg"))))
    np.testing.assert_allclose(new, want.asnumpy(), rtol=1e-5)
    assert not np.allclose(new, old)


def test_the_net_itself_and_a_layer_registered_twice():
    single = to_he_friendly(nn.Activation("tanh"))
    assert isinstance(single, PolyActivation)
    assert single.he_friendly_changes_[0].path == ""
    shared = nn.Activation("relu")
    net = nn.HybridSequential()
    net.add(nn.Dense(3), shared, nn.Dense(3), shared)
    to_he_friendly(net)
    assert net[1] is net[3] and isinstance(net[1], PolyActivation)
    assert len(net.he_friendly_changes_) == 1


class Custom(nn.Activation):
    def hybrid_forward(self, F, x):
        return F.relu(x) * 2


@pytest.mark.parametrize("layer,message", [
    (lambda: nn.LeakyReLU(0.1), "LeakyReLU"),
    (lambda: nn.ELU(), "ELU"),
    (lambda: nn.Activation("softrelu"), "'softrelu'"),
    (lambda: Custom("relu"), "overrides hybrid_forward"),
])
def test_refused_layers_leave_the_net_untouched(layer, message):
    net = nn.HybridSequential()
    net.add(nn.Activation("relu"), nn.MaxPool2D(), layer())
    with pytest.raises(UnsupportedLayerError, match=message):
        to_he_friendly(net)
    assert [type(b) for b in net][:2] == [nn.Activation, nn.MaxPool2D]


class Plain(nn.Activation):
    """A subclass that only renames: it computes what nn.Activation does."""


def test_subclass_without_its_own_forward_is_swapped():
    net = nn.HybridSequential()
    net.add(Plain("sigmoid"))
    to_he_friendly(net, activation=("fit", 3, (-4, 4)))
    assert net[0].kind == "sigmoid" and net[0].degree == 3


@pytest.mark.parametrize("kwargs", [dict(activation="cube"), dict(activation=("fit", 5, (-1, 1))),
                                    dict(activation=("gelu", 2, (-1, 1))),
                                    dict(activation=("fit", 2, (1, -1))), dict(pooling="max")])
def test_bad_options_are_refused(kwargs):
    with pytest.raises(InvalidParameterError):
        to_he_friendly(cnn(), **kwargs)


def test_not_a_block_is_refused():
    with pytest.raises(InvalidParameterError, match="gluon Block"):
        to_he_friendly(lambda x: x)
