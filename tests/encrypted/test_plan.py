"""EncryptedModel: layer support, depth, plaintext reference, encrypted agreement."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon
from mxnet.gluon import nn, rnn

from mxprivacy.errors import (DepthError, EncryptionError, InvalidParameterError,
                              PublicContextError, UnsupportedLayerError)
from mxprivacy.encrypted._layers import (ConvStep, Evaluation, LinearStep, PackStep,
                                         PolyStep, convert_layers, poly_depth)
from mxprivacy.encrypted.convert import to_he_friendly
from mxprivacy.encrypted.context import EncryptionContext
from mxprivacy.encrypted.plan import EncryptedModel
from mxprivacy.gluon.poly import PolyActivation

INPUT = (1, 9, 11)   # not square: a height/width mix-up shows


def small_net(seed=0, extra=()):
    """Conv2D(2, 3, stride 2) -> square -> Flatten -> Dense(6) -> tanh fit (degree 3)
    -> Dense(3), with random non-zero biases (Gluon's zero init would hide bias bugs)."""
    mx.random.seed(seed)
    net = nn.HybridSequential()
    net.add(nn.Conv2D(2, 3, strides=2), PolyActivation("square"), nn.Flatten(),
            nn.Dense(6), PolyActivation.fit("tanh", 3, (-3, 3)), *extra, nn.Dense(3))
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1,) + INPUT))
    rs = np.random.RandomState(seed)
    for name, param in net.collect_params().items():
        if name.endswith("bias"):
            param.set_data(mx.nd.array(rs.uniform(-0.5, 0.5, param.shape)))
    return net


def images(n, seed=1):
    return np.random.RandomState(seed).uniform(0, 1, (n,) + INPUT)


@pytest.fixture(scope="module")
def setup():
    net = small_net()
    plan = EncryptedModel.from_gluon(net, INPUT)
    client = plan.create_context()
    return net, plan, client, client.public()


def relative_error(a, b):
    """|a - b| / max|b|, per row."""
    return np.abs(a - b).max(axis=1) / np.abs(b).max(axis=1)


def test_decrypted_logits_match_plaintext(setup):
    net, plan, client, server = setup
    x = images(3)
    logits = client.decrypt(plan.predict(client.encrypt(x), context=server))
    reference = net(mx.nd.array(x)).asnumpy().astype(np.float64)
    assert logits.shape == (3, 3)
    assert relative_error(logits, reference).max() < 1e-3
    assert (logits.argmax(1) == reference.argmax(1)).all()
    # the context is exactly as deep as the plan: the depth rule does not undercount
    assert client.depth == plan.depth


def test_depth_rule_hand_counted(setup):
    _, plan, _, _ = setup
    # conv 1 (its 2 channels are never packed), square 1, dense 1, degree-3 polyval 2,
    # dense 1
    assert plan.depth == 6
    assert [poly_depth(n) for n in (1, 2, 3, 4, 7, 8)] == [1, 2, 2, 3, 3, 4]


def test_plaintext_plan_matches_gluon_including_flatten_order():
    net = nn.HybridSequential()
    net.add(nn.Conv2D(3, (3, 2), strides=1), nn.AvgPool2D((2, 3), strides=(1, 2)),
            nn.Flatten(), nn.Dense(5), nn.Dropout(0.5), PolyActivation("square"),
            nn.Dense(4))
    net.initialize(mx.init.Xavier())
    x = images(4)
    plan = EncryptedModel.from_gluon(net, INPUT)
    expected = net(mx.nd.array(x)).asnumpy()
    np.testing.assert_allclose(plan.forward_plain(x), expected, rtol=1e-4, atol=1e-5)
    # avg pool and the next Dense are merged into one linear step (one level)
    assert plan.depth == 1 + 1 + 1 + 1


def test_fused_activations_after_to_he_friendly_agree_under_encryption():
    mx.random.seed(3)
    net = nn.HybridSequential()
    net.add(nn.Conv2D(2, 3, strides=2, activation="relu"), nn.Flatten(),
            nn.Dense(6, activation="relu"), nn.Dense(3))
    net.initialize(mx.init.Xavier())
    to_he_friendly(net, activation=("fit", 2, (-3, 3)))   # act children -> PolyActivation
    plan = EncryptedModel.from_gluon(net, INPUT)
    kinds = [type(step) for step in plan.steps]
    assert kinds == [ConvStep, PolyStep, LinearStep, PolyStep, LinearStep]
    x = images(2, seed=4)
    client = plan.create_context()
    logits = client.decrypt(plan.predict(client.encrypt(x), context=client.public()))
    reference = net(mx.nd.array(x)).asnumpy().astype(np.float64)
    assert relative_error(logits, reference).max() < 1e-3


def test_multichannel_conv_without_linear_step_is_packed_at_the_end():
    net = nn.HybridSequential()
    net.add(nn.Conv2D(3, 3, strides=2), PolyActivation("square"), nn.Flatten())
    net.initialize(mx.init.Xavier())
    net[0].bias.set_data(mx.nd.array([0.3, -0.2, 0.1]))
    plan = EncryptedModel.from_gluon(net, INPUT)
    assert isinstance(plan.steps[-1], PackStep) and plan.depth == 1 + 1 + 1
    x = images(1, seed=5)
    client = plan.create_context()
    out = client.decrypt(plan.predict(client.encrypt(x), context=client.public()))
    reference = net(mx.nd.array(x)).asnumpy().astype(np.float64)
    assert out.shape == (1, 3 * 4 * 5)
    assert relative_error(out, reference).max() < 1e-3


def test_conv_output_is_gluon_nchw_flatten():
    net = nn.HybridSequential()
    net.add(nn.Conv2D(2, 3, strides=2), nn.Flatten())
    net.initialize(mx.init.Xavier())
    x = images(1)
    conv = net[0](mx.nd.array(x)).asnumpy()          # (1, C, H, W)
    steps, shape = convert_layers(net, INPUT)
    assert shape == (2 * 4 * 5,)
    np.testing.assert_allclose(steps[0].plain(x[0]), conv.reshape(-1), rtol=1e-5, atol=1e-6)


UNSUPPORTED = [
    (nn.MaxPool2D(2), "AvgPool2D"),
    (nn.GlobalMaxPool2D(), "GlobalAvgPool2D"),
    (nn.Activation("relu"), "PolyActivation"),
    (nn.LeakyReLU(0.1), "PolyActivation"),
    (nn.BatchNorm(), "fold it into the preceding"),
    (nn.Conv2D(2, 1), "only the first layer can be a Conv2D"),
    (rnn.LSTM(4), "Dense layers"),
    (nn.Dense(4, activation="relu"), "PolyActivation"),
]


@pytest.mark.parametrize("layer, replacement", UNSUPPORTED,
                         ids=[type(layer).__name__ for layer, _ in UNSUPPORTED])
def test_unsupported_layer_names_layer_and_replacement(layer, replacement, monkeypatch):
    net = nn.HybridSequential()
    net.add(nn.Conv2D(2, 3, strides=2), PolyActivation("square"), layer, nn.Dense(3))
    net.initialize()
    monkeypatch.setattr(EncryptionContext, "create", _forbidden)
    with pytest.raises(UnsupportedLayerError) as info:
        EncryptedModel.from_gluon(net, INPUT)
    assert type(layer).__name__ in str(info.value)
    assert replacement in str(info.value)


@pytest.mark.parametrize("conv, words", [
    (nn.Conv2D(2, 3, padding=1), "pad the images"),
    (nn.Conv2D(2, 3, strides=(1, 2)), "unequal strides"),
    (nn.Conv2D(2, 3, dilation=2), "dilation"),
    (nn.Conv2D(2, 3, activation="relu"), "PolyActivation"),
])
def test_first_conv_options_it_cannot_do(conv, words):
    net = nn.HybridSequential()
    net.add(conv, nn.Dense(3))
    net.initialize()
    with pytest.raises(UnsupportedLayerError, match=words):
        EncryptedModel.from_gluon(net, INPUT)


def test_custom_block_is_refused_with_supported_list():
    class Custom(gluon.HybridBlock):
        def hybrid_forward(self, F, x):
            return x * 2

    net = nn.HybridSequential()
    net.add(nn.Dense(3), Custom())
    net.initialize()
    with pytest.raises(UnsupportedLayerError, match="Supported layers"):
        EncryptedModel.from_gluon(net, (4,))


def _forbidden(*args, **kwargs):
    raise AssertionError("heavy work (a context or a ciphertext operation) was started")


def test_too_shallow_context_raises_depth_error_before_any_evaluation(setup, monkeypatch):
    _, plan, _, _ = setup
    shallow = EncryptionContext.create(plan.depth - 1, encoding=plan.input_encoding)
    batch = shallow.encrypt(images(1))
    for step in plan.steps:
        monkeypatch.setattr(step, "encrypted", _forbidden)
    with pytest.raises(DepthError, match=f"needs {plan.depth}"):
        plan.predict(batch, context=shallow.public())


def test_server_refuses_the_client_context(setup):
    _, plan, client, _ = setup
    with pytest.raises(PublicContextError, match="secret key"):
        plan.predict(client.encrypt(images(1)), context=client)
    with pytest.raises(PublicContextError, match="secret key"):
        plan.predict(client.encrypt(images(1)), context=client.ts_context)


def test_mismatched_input_shapes(setup):
    net, plan, client, server = setup
    with pytest.raises(InvalidParameterError, match=r"\(1, 9, 11\)"):
        client.encrypt(np.zeros((2, 1, 11, 9)))
    with pytest.raises(InvalidParameterError, match="input_shape"):
        EncryptedModel.from_gluon(small_net(), (1, 5, 5))   # conv kernel/Dense mismatch
    other = EncryptionContext.create(2, encoding={"kind": "flat", "input_shape": [99]})
    other.key_id = client.key_id
    with pytest.raises(EncryptionError, match="encoded as"):
        plan.predict(other.encrypt(np.zeros(99)), context=server)


def test_single_row_without_batch_axis(setup):
    net, plan, client, server = setup
    x = images(1)
    logits = client.decrypt(plan.predict(client.encrypt(x[0]), context=server))
    assert logits.shape == (1, 3)
    assert relative_error(logits, plan.forward_plain(x)).max() < 1e-3


@pytest.mark.slow
def test_mnist_architecture_default_parameters():
    from mxprivacy.encrypted.models import he_friendly_mnist_net

    net = he_friendly_mnist_net()
    net.initialize(mx.init.Xavier())
    x = np.random.RandomState(0).uniform(0, 1, (1, 1, 28, 28))
    plan = EncryptedModel.from_gluon(net, (1, 28, 28))
    client = plan.create_context()
    assert plan.depth == 5
    logits = client.decrypt(plan.predict(client.encrypt(x), context=client.public()))
    assert relative_error(logits, net(mx.nd.array(x)).asnumpy()).max() < 1e-3


@pytest.mark.parametrize("tail", [(nn.Dense(3),), ()], ids=["dense-last", "square-last"])
def test_rescale_drift_is_corrected(tail, monkeypatch):
    """At 26-bit primes TenSEAL's scale reset after each rescale multiplies values by
    scale / q (about 1.0003 here); the plan divides it out (weights, final gain)."""
    mx.random.seed(0)
    net = nn.HybridSequential()
    net.add(nn.Dense(4), PolyActivation("square"), *tail)
    net.initialize(mx.init.Xavier())
    x = np.random.RandomState(0).uniform(0, 1, (3, 5))
    plan = EncryptedModel.from_gluon(net, (5,))
    reference = net(mx.nd.array(x)).asnumpy().astype(np.float64)
    client = plan.create_context(poly_modulus_degree=8192, scale_bits=26, integer_bits=8)
    server = client.public()
    out = plan.predict(client.encrypt(x), context=server)
    assert (out.meta["gain"] == 1.0) == bool(tail)   # a final square leaves a gain
    assert relative_error(client.decrypt(out), reference).max() < 1e-3
    monkeypatch.setattr(Evaluation, "factor", lambda self, vector: 1.0)
    client.expected_gain = None            # the uncorrected run's gain is not the plan's
    uncorrected = client.decrypt(plan.predict(client.encrypt(x), context=server))
    assert relative_error(uncorrected, reference).max() > 2e-3   # the drift is real


@pytest.fixture(scope="module")
def flat():
    """Dense(5) -> square -> Dense(3) on 8 inputs, a 8192 context (28-bit scale)."""
    mx.random.seed(0)
    net = nn.HybridSequential()
    net.add(nn.Dense(5), PolyActivation("square"), nn.Dense(3))
    net.initialize(mx.init.Xavier())
    plan = EncryptedModel.from_gluon(net, (8,))
    client = plan.create_context(poly_modulus_degree=8192, scale_bits=28, integer_bits=9)
    return plan, client, client.public()


def test_batch_of_wrong_size_or_level_is_refused_before_any_evaluation(flat, monkeypatch):
    import tenseal as ts

    from mxprivacy.encrypted.serialize import EncryptedBatch
    from mxprivacy.errors import CiphertextError

    plan, client, server = flat
    meta = {"encoding": plan.input_encoding, "windows": None}
    fresh = client.encrypt(np.ones(8))
    result = plan.predict(fresh, context=server).vectors_for(server.ts_context)
    squared = ts.ckks_vector(client.ts_context, [1.0] * 8).square()
    for step in plan.steps:
        monkeypatch.setattr(step, "encrypted", _forbidden)
    for values in (6, 20):
        vector = ts.ckks_vector(client.ts_context, [1.0] * values)
        with pytest.raises(CiphertextError, match=f"holds {values} values"):
            plan.predict(EncryptedBatch([vector], "input", client.key_id, meta),
                         context=server)
    for vectors, left in ((result, 0), ([squared], plan.depth - 1)):
        batch = EncryptedBatch(vectors, "input", client.key_id, meta)
        with pytest.raises(DepthError, match=f"has {left} multiplicative levels left"):
            plan.predict(batch, context=server)


def test_expected_gain_is_the_one_predict_produces():
    """A square-last plan leaves a gain (26-bit primes): create_context knows it
    exactly, so decrypt accepts it and nothing else."""
    mx.random.seed(0)
    net = nn.HybridSequential()
    net.add(nn.Dense(4), PolyActivation("square"), nn.Dense(3), PolyActivation("square"))
    net.initialize(mx.init.Xavier())
    plan = EncryptedModel.from_gluon(net, (5,))
    client = plan.create_context(poly_modulus_degree=8192, scale_bits=26, integer_bits=8)
    out = plan.predict(client.encrypt(np.full(5, 0.5)), context=client.public())
    assert out.meta["gain"] != 1.0 and out.meta["gain"] == client.expected_gain
    assert relative_error(client.decrypt(out), plan.forward_plain(np.full(5, 0.5))) < 1e-3


def test_create_context_warns_without_headroom_and_decrypt_flags_a_wrap(flat):
    import warnings

    from mxprivacy.errors import EncryptionWarning

    plan, client, server = flat
    assert 0 < plan.peak_abs < 2.0 ** 8 / 8           # inputs in [0, 1): 9 bits suffice
    plan_big = EncryptedModel.from_gluon(_scaled_net(1000.0), (8,))
    with pytest.warns(EncryptionWarning, match="integer_bits >= "):
        big_client = plan_big.create_context(poly_modulus_degree=8192, scale_bits=28,
                                             integer_bits=9)
    x = np.random.RandomState(3).uniform(0, 1, (1, 8))
    plain = plan_big.forward_plain(x)
    assert np.abs(plain).max() > 2.0 ** 8                 # past the first prime's range
    with pytest.warns(EncryptionWarning, match="may have wrapped"):
        big_client.decrypt(plan_big.predict(big_client.encrypt(x),
                                            context=big_client.public()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client.decrypt(plan.predict(client.encrypt(x), context=server))   # no warning


def _scaled_net(factor):
    mx.random.seed(0)
    net = nn.HybridSequential()
    net.add(nn.Dense(5), PolyActivation("square"), nn.Dense(3))
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 8)))
    net[0].weight.set_data(net[0].weight.data() * factor ** 0.5)
    return net


def _three_channel_square_plan():
    mx.random.seed(0)
    net = nn.HybridSequential()
    net.add(nn.Conv2D(3, 3), PolyActivation("square"), nn.Flatten())
    net.initialize(mx.init.Xavier())
    return EncryptedModel.from_gluon(net, (1, 6, 6))       # conv, square, pack: depth 3


def test_create_context_check_measures_the_encrypted_error():
    """At a 28-bit scale this plan decrypts ~2.5e-3 off (measured): check=True says so;
    at 40 bits it is ~1e-6 and nothing is said."""
    import warnings

    from mxprivacy.errors import EncryptionWarning

    plan = _three_channel_square_plan()
    low = dict(poly_modulus_degree=8192, scale_bits=28, integer_bits=9)
    with pytest.warns(EncryptionWarning, match=r"decrypts .* away from the plaintext"):
        plan.create_context(check=True, **low)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan.create_context(check=True, poly_modulus_degree=8192, scale_bits=40,
                            integer_bits=9)
    with pytest.warns(EncryptionWarning, match="check=True"):       # unchecked low scale
        plan.create_context(**low)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan.create_context(poly_modulus_degree=8192, scale_bits=40,
                            integer_bits=9)
