"""The ``train`` job: secret sampling by default, explicit seeds, the hidden loss, checks,
the model recipes, build_model's activation and the progress output."""
import io
import math
import warnings

import numpy as np
import pytest

import mxprivacy.gluon as mxgluon
from mxprivacy.cli import main
from mxprivacy.accounting import epsilon_for
from mxprivacy.errors import InvalidParameterError, PrivacyWarning
from mxprivacy.train import RECIPES, TrainConfig, _Progress, build_model, run_training

FAST = dict(dataset="digits", epochs=1, batch_size=64, progress=False)


@pytest.fixture
def seeds(monkeypatch):
    """Record the seeds that run_training gives the loader and the trainer."""
    seen = {}
    loader, trainer = mxgluon.DPDataLoader, mxgluon.DPTrainer

    def spy_loader(*args, **kwargs):
        seen["sampling"] = kwargs.get("seed")
        return loader(*args, **kwargs)

    def spy_trainer(*args, **kwargs):
        seen["noise"] = kwargs.get("noise_seed")
        return trainer(*args, **kwargs)

    monkeypatch.setattr(mxgluon, "DPDataLoader", spy_loader)
    monkeypatch.setattr(mxgluon, "DPTrainer", spy_trainer)
    return seen


def test_sampling_and_noise_are_secret_by_default(seeds):
    assert TrainConfig().seed is None and TrainConfig().sampling_seed is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrivacyWarning)  # no seed: no seed warning
        run_training(TrainConfig(**FAST, seed=7))  # seed: model initialization only
    assert seeds == {"sampling": None, "noise": None}


def test_sampling_seed_drives_sampler_and_noise_and_warns(seeds):
    with pytest.warns(PrivacyWarning, match="(?i)secret"):
        run_training(TrainConfig(**FAST, seed=1, sampling_seed=5))
    assert seeds == {"sampling": 5, "noise": 5}


def test_cli_sampling_seed_prints_one_note(capsys):
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--batch-size", "64",
                 "--no-progress", "--sampling-seed", "3"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "secret" in err[0]


def test_hide_loss_keeps_the_raw_loss_out_of_bar_and_curve(capsys):
    shown = run_training(TrainConfig(**dict(FAST, progress=True)))
    assert all("loss" in point for point in shown.curve)
    assert "loss=" in capsys.readouterr().err
    hidden = run_training(TrainConfig(**dict(FAST, progress=True), show_loss=False))
    err = capsys.readouterr().err
    assert hidden.curve and all("loss" not in point for point in hidden.curve)
    assert "loss=" not in err and "eps=" in err
    assert "loss" not in str(hidden.to_dict(with_curve=True))


def test_cli_hide_loss(capsys):
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--batch-size", "64",
                 "--hide-loss"]) == 0
    err = capsys.readouterr().err
    assert "eps=" in err and "loss=" not in err


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(epochs=math.inf), dict(batch_size=0),
                                 dict(batch_size=2.5), dict(lr=math.nan), dict(lr=-1),
                                 dict(max_grad_norm=0), dict(delta=1.0), dict(momentum=1.0),
                                 dict(noise_multiplier=-1.0), dict(target_epsilon=0.0),
                                 dict(seed=-1), dict(sampling_seed=1.5),
                                 dict(batch_size=100_000)])
def test_invalid_config_is_refused_before_training(bad):
    with pytest.raises(InvalidParameterError):
        run_training(TrainConfig(**dict(FAST, **bad)))


# --- recipes: the CNN default is Tramer & Boneh's MNIST recipe; the MLP keeps its own ---

RECIPE_FIELDS = ("epochs", "batch_size", "noise_multiplier", "max_grad_norm", "lr", "momentum",
                 "activation", "inputs")
# By hand from Tramer & Boneh (2021) (README of ftramer/Handcrafted-DP, cnns.py, models.py,
# data.py: torchvision ToTensor, i.e. pixels in [0, 1]) and from mxprivacy's MLP defaults.
HAND = {"cnn": (40, 512, 1.23, 0.1, 0.5, 0.9, "tanh", "unit"),
        "mlp": (60, 256, 1.1, 1.0, 0.5, 0.0, "relu", "standardized")}


def _options(cfg):
    return tuple(getattr(cfg, name) for name in RECIPE_FIELDS)


@pytest.mark.parametrize("model", sorted(HAND))
def test_unset_options_take_the_models_recipe(model):
    assert _options(TrainConfig(model=model).resolved()) == HAND[model]
    assert _options(RECIPES[model]) == HAND[model]


def test_default_model_is_the_mlp_with_its_old_defaults():
    assert _options(TrainConfig().resolved()) == HAND["mlp"]


def test_explicit_options_override_the_recipe():
    cfg = TrainConfig(model="cnn", lr=0.1, batch_size=256, activation="relu",
                      momentum=0.0).resolved()
    assert _options(cfg) == (40, 256, 1.23, 0.1, 0.1, 0.0, "relu", "unit")


def test_cnn_recipe_spends_about_2_59_rdp_epsilon_on_mnist():
    """40 epochs of ceil(60000/512) = 118 steps at q = 512/60000: (2.59, 1e-5)-DP, <= 2.6."""
    recipe = RECIPES["cnn"]
    rate = recipe.batch_size / 60_000
    steps = recipe.epochs * math.ceil(1 / rate)
    assert steps == 4720
    eps = epsilon_for(recipe.noise_multiplier, rate, steps, 1e-5, "rdp")
    assert eps == pytest.approx(2.5906, abs=1e-3) and eps <= 2.6


def test_target_epsilon_replaces_the_recipes_noise():
    cfg = TrainConfig(model="cnn", target_epsilon=1.0).resolved()
    assert cfg.noise_multiplier is None and cfg.max_grad_norm == 0.1


def test_noise_multiplier_and_target_epsilon_together_are_refused():
    with pytest.raises(InvalidParameterError, match="not both"):
        TrainConfig(noise_multiplier=5.0, target_epsilon=1.0).resolved()
    with pytest.raises(InvalidParameterError, match="not both"):
        run_training(TrainConfig(**FAST, noise_multiplier=0.5, target_epsilon=1.0))


@pytest.mark.parametrize("bad", [dict(model="resnet"), dict(activation="gelu"),
                                 dict(inputs="raw"), dict(model="cnn")])  # digits: 8x8
def test_unknown_model_activation_or_inputs_are_refused(bad):
    with pytest.raises(InvalidParameterError):
        run_training(TrainConfig(**dict(FAST, **bad)))


def test_cnn_run_uses_the_recipe(data_dir, monkeypatch):
    """Two Poisson steps on 1024 MNIST images: the trainer, model and inputs follow the recipe."""
    import mxprivacy.train as train

    seen = {}
    trainer, build, load = mxgluon.DPTrainer, train.build_model, train.load_dataset

    def spy_trainer(params, optimizer, optimizer_params, **kwargs):
        seen.update(optimizer_params, **kwargs)
        return trainer(params, optimizer, optimizer_params, **kwargs)

    def spy_build(name, **kwargs):
        seen["activation"] = kwargs["activation"]
        return build(name, **kwargs)

    def spy_load(*args, **kwargs):
        data = load(*args, **kwargs)
        seen["pixels"] = (data[0][0].min(), data[0][0].max())
        return data

    monkeypatch.setattr(mxgluon, "DPTrainer", spy_trainer)
    monkeypatch.setattr(train, "build_model", spy_build)
    monkeypatch.setattr(train, "load_dataset", spy_load)
    result = run_training(TrainConfig(model="cnn", data_dir=data_dir, train_limit=1024,
                                      epochs=1, progress=False))
    assert (seen["learning_rate"], seen["momentum"], seen["noise_multiplier"],
            seen["max_grad_norm"], seen["expected_batch_size"], seen["sample_rate"],
            seen["activation"], seen["pixels"]) == (0.5, 0.9, 1.23, 0.1, 512, 0.5, "tanh",
                                                    (0.0, 1.0))
    assert result.steps == 2 and (result.model, result.activation, result.inputs,
                                  result.momentum) == ("cnn", "tanh", "unit", 0.9)


# --- build_model(activation=...) ---

def _numpy_mlp(net, x, act):
    w1, b1, w2, b2 = (p.data().asnumpy() for p in net.collect_params().values())
    return act(x.reshape(len(x), -1) @ w1.T + b1) @ w2.T + b2


@pytest.mark.parametrize("activation, act", [("relu", lambda z: np.maximum(z, 0)),
                                             ("tanh", np.tanh)])
def test_mlp_activation_matches_a_numpy_reference(activation, act):
    import mxnet as mx

    net = build_model("mlp", activation=activation)
    net.initialize(mx.init.Normal(0.5))
    x = np.random.RandomState(0).randn(4, 1, 8, 8).astype(np.float32)
    out = net(mx.nd.array(x)).asnumpy()
    np.testing.assert_allclose(out, _numpy_mlp(net, x, act), rtol=1e-4, atol=1e-5)


def test_cnn_is_relu_by_default_and_tanh_on_request():
    """build_model("cnn") stays the ReLU Opacus CNN (benchmarks/dp_step.py compares with it)."""
    import mxnet as mx

    x = mx.nd.array(np.random.RandomState(1).randn(3, 1, 28, 28))
    for activation, low in ((None, 0.0), ("relu", 0.0), ("tanh", -1.0)):
        net = build_model("cnn") if activation is None else build_model("cnn",
                                                                         activation=activation)
        net.initialize(mx.init.Normal(1.0))
        hidden = net[0](x).asnumpy()  # first conv with its activation
        assert hidden.min() >= low and (hidden.min() < -0.5) == (activation == "tanh")
        assert hidden.max() > 1.0 if activation != "tanh" else hidden.max() <= 1.0
        assert net(x).shape == (3, 10)


def test_build_model_refuses_an_unknown_activation():
    with pytest.raises(InvalidParameterError, match="activation"):
        build_model("cnn", activation="sigmoid")


# --- progress: a bar on a terminal, a few plain lines elsewhere ---

class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_in_a_log_is_a_few_plain_lines_with_epsilon(capsys):
    result = run_training(TrainConfig(**dict(FAST, epochs=3, progress=True)))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "\r" not in err and result.steps > 60
    assert 10 <= len(lines) <= 11  # one per tenth of the run (and the last step)
    assert all("eps=" in line and "loss=" in line and "step " in line for line in lines)
    assert lines[-1].startswith(f"DP-SGD digits/mlp: step {result.steps}/{result.steps} (100%)")
    assert float(lines[-1].split("eps=")[1].split(",")[0]) == pytest.approx(result.epsilon,
                                                                            abs=0.005)


def test_progress_on_a_terminal_is_a_tqdm_bar_with_epsilon():
    stream = _Terminal()
    progress = _Progress(20, 5, "run", stream=stream)
    for step in range(1, 21):
        progress.update(step, lambda: {"eps": "1.23"})
    progress.close()
    assert "\r" in stream.getvalue() and "eps=1.23" in stream.getvalue()
    assert "20/20" in stream.getvalue()


def test_progress_lines_also_come_every_interval_and_never_when_disabled():
    stream = io.StringIO()
    progress = _Progress(1000, 100, "run", stream=stream, interval=0.0)
    for step in range(1, 31):
        progress.update(step, lambda: {"eps": "0.50"})
    assert len(stream.getvalue().splitlines()) == 30 and "\r" not in stream.getvalue()
    quiet = io.StringIO()
    off = _Progress(10, 5, "run", enabled=False, stream=quiet)
    for step in range(1, 11):
        off.update(step, lambda: {"eps": "0.50"})
    assert quiet.getvalue() == ""


# --- ema_decay: evaluate the averaged weights (DPTrainer(ema_decay=...)) ---

def test_ema_evaluates_the_averaged_weights_and_reports_the_last_iterate(monkeypatch):
    import mxprivacy.train as train

    trainers, evaluated = [], []
    trainer, accuracy = mxgluon.DPTrainer, train._accuracy

    def spy_trainer(*args, **kwargs):
        trainers.append(trainer(*args, **kwargs))
        return trainers[-1]

    def spy_accuracy(net, *args):
        params = net.net._collect_params_with_prefix()
        evaluated.append({name: p.data().asnumpy() for name, p in params.items()})
        return accuracy(net, *args)

    monkeypatch.setattr(mxgluon, "DPTrainer", spy_trainer)
    monkeypatch.setattr(train, "_accuracy", spy_accuracy)
    result = run_training(TrainConfig(**FAST, ema_decay=0.9))
    state = trainers[0].average.state_dict()
    assert state["updates"] == result.steps and len(evaluated) == 2
    last, averaged = evaluated
    for name, array in zip(state["names"], state["arrays"]):
        np.testing.assert_array_equal(averaged[name], array)
        assert not np.array_equal(last[name], array)
    assert result.ema_decay == 0.9 and 0.5 < result.test_accuracy_last <= 1
    plain = run_training(TrainConfig(**FAST))
    assert plain.ema_decay is None and plain.test_accuracy_last is None


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, math.nan])
def test_ema_decay_outside_0_1_is_refused(decay):
    with pytest.raises(InvalidParameterError, match="ema_decay"):
        run_training(TrainConfig(**FAST, ema_decay=decay))
