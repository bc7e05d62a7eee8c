"""The ``train`` job: secret sampling by default, explicit seeds, the hidden loss, checks."""
import math
import warnings

import pytest

import mxprivacy.gluon as mxgluon
from mxprivacy.cli import main
from mxprivacy.errors import InvalidParameterError, PrivacyWarning
from mxprivacy.train import TrainConfig, run_training

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
