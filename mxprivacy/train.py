"""The ``mxprivacy train`` job: DP-SGD on MNIST or digits with the standard Gluon loop.

Inputs are normalized with fixed constants, never with statistics of the private data
(those would be an unaccounted release).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import numpy as np

from . import datasets
from .accounting import calibrate_noise_multiplier
from .errors import InvalidParameterError

__all__ = ["TrainConfig", "run_training", "build_model", "load_dataset"]


@dataclass
class TrainConfig:
    """Options of one training run; the defaults reach the documented MNIST accuracy.

    ``seed`` seeds the model initialization only (it does not depend on the data).
    ``sampling_seed`` seeds Poisson sampling and the gradient noise, for reproducible
    experiments; the guarantee then assumes the seed is secret, and the sampler and the
    trainer warn. Both default to None: OS entropy. ``show_loss=False`` keeps the raw
    loss of private batches out of the progress bar and the curve: that loss is not
    noised, so showing it is a release that epsilon does not cover.
    """

    dataset: str = "mnist"
    data_dir: Optional[str] = None
    model: str = "mlp"
    epochs: float = 60
    batch_size: int = 256
    noise_multiplier: Optional[float] = 1.1
    target_epsilon: Optional[float] = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    lr: float = 0.5
    momentum: float = 0.0
    mode: str = "auto"
    accountant: str = "rdp"
    seed: Optional[int] = None
    sampling_seed: Optional[int] = None
    train_limit: Optional[int] = None
    progress: bool = True
    history: bool = False
    show_loss: bool = True

    def validate(self) -> "TrainConfig":
        """Check every numeric option; raise InvalidParameterError naming the bad one."""
        _check(self.epochs, "epochs", lambda v: v > 0, "a finite number > 0")
        _check_int(self.batch_size, "batch_size", 1)
        if self.noise_multiplier is not None:
            _check(self.noise_multiplier, "noise_multiplier", lambda v: v >= 0,
                   "a finite number >= 0")
        if self.target_epsilon is not None:
            _check(self.target_epsilon, "target_epsilon", lambda v: v > 0, "a finite number > 0")
        _check(self.delta, "delta", lambda v: 0 < v < 1, "in (0, 1)")
        _check(self.max_grad_norm, "max_grad_norm", lambda v: v > 0, "a finite number > 0")
        _check(self.lr, "lr", lambda v: v > 0, "a finite number > 0")
        _check(self.momentum, "momentum", lambda v: 0 <= v < 1, "in [0, 1)")
        for name in ("seed", "sampling_seed", "train_limit"):
            if getattr(self, name) is not None:
                _check_int(getattr(self, name), name, 1 if name == "train_limit" else 0)
        return self


def _check(value, name: str, test, wanted: str) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and test(value)):
        raise InvalidParameterError(f"{name} must be {wanted}, got {value!r}.")


def _check_int(value, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidParameterError(f"{name} must be an integer >= {minimum}, got {value!r}.")


@dataclass
class TrainResult:
    test_accuracy: float
    epsilon: float
    delta: float
    steps: int
    noise_multiplier: float
    sample_rate: float
    max_grad_norm: float
    epochs: float
    batch_size: int
    lr: float
    mode: str
    seconds: float
    accountant: str = "rdp"
    curve: List[Dict[str, float]] = field(default_factory=list)

    def to_dict(self, with_curve: bool = False) -> Dict:
        data = asdict(self)
        if not with_curve:
            data.pop("curve")
        return data


def load_dataset(name: str, data_dir: Optional[str] = None, train_limit: Optional[int] = None):
    """Normalized float32 ``((x_train, y_train), (x_test, y_test))`` with images (N, 1, H, W)."""
    if name == "mnist":
        (xtr, ytr), (xte, yte) = datasets.load_mnist(data_dir)
        scale, mean, std = 255.0, datasets.MNIST_MEAN, datasets.MNIST_STD
    elif name == "digits":
        (xtr, ytr), (xte, yte) = datasets.load_digits()
        scale, mean, std = 16.0, 0.3, 0.4
    else:
        raise InvalidParameterError(f"Unknown dataset {name!r}; choose 'mnist' or 'digits'.")
    if train_limit:
        xtr, ytr = xtr[:train_limit], ytr[:train_limit]

    def prep(x):
        return ((x.astype(np.float32) / scale - mean) / std)[:, None, :, :]

    return (prep(xtr), ytr.astype(np.float32)), (prep(xte), yte.astype(np.float32))


def build_model(name: str, num_classes: int = 10):
    """``mlp``: Dense 256 ReLU, Dense 10. ``cnn``: the Opacus MNIST CNN."""
    from mxnet import gluon

    net = gluon.nn.HybridSequential()
    if name == "mlp":
        net.add(gluon.nn.Dense(256, activation="relu"), gluon.nn.Dense(num_classes))
    elif name == "cnn":
        net.add(gluon.nn.Conv2D(16, 8, strides=2, padding=3, activation="relu"),
                gluon.nn.MaxPool2D(2, 1),
                gluon.nn.Conv2D(32, 4, strides=2, activation="relu"),
                gluon.nn.MaxPool2D(2, 1),
                gluon.nn.Dense(32, activation="relu"),
                gluon.nn.Dense(num_classes))
    else:
        raise InvalidParameterError(f"Unknown model {name!r}; choose 'mlp' or 'cnn'.")
    return net


def _accuracy(net, x: np.ndarray, y: np.ndarray, ctx) -> float:
    from mxnet import nd

    correct = 0
    for start in range(0, len(x), 2000):
        out = net(nd.array(x[start:start + 2000], ctx=ctx))
        correct += int((out.argmax(axis=1).asnumpy() == y[start:start + 2000]).sum())
    return correct / len(x)


def _resolve_sigma(cfg: TrainConfig, rate: float, steps: int) -> float:
    if cfg.target_epsilon is not None:
        return calibrate_noise_multiplier(cfg.target_epsilon, cfg.delta, rate, steps=steps,
                                          accountant=cfg.accountant)
    if cfg.noise_multiplier is None:
        raise InvalidParameterError("Give noise_multiplier or target_epsilon.")
    return cfg.noise_multiplier


def run_training(cfg: TrainConfig) -> TrainResult:
    """Train with DP-SGD and return test accuracy and (epsilon, delta)."""
    import mxnet as mx
    from mxnet import autograd, gluon
    if cfg.progress:  # tqdm.auto warns in notebooks without ipywidgets, even when disabled
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm

    from .gluon import DPDataLoader, DPTrainer, PrivateBlock

    cfg.validate()
    if cfg.seed is not None:
        mx.random.seed(cfg.seed)  # model initialization only; never the sampling
    ctx = mx.cpu()
    (xtr, ytr), (xte, yte) = load_dataset(cfg.dataset, cfg.data_dir, cfg.train_limit)
    if cfg.batch_size > len(xtr):
        raise InvalidParameterError(
            f"batch_size {cfg.batch_size} exceeds the {len(xtr)} training examples.")
    rate = cfg.batch_size / len(xtr)
    per_epoch = int(math.ceil(1.0 / rate))
    total_steps = int(math.ceil(cfg.epochs * per_epoch))
    sigma = _resolve_sigma(cfg, rate, total_steps)
    net = build_model(cfg.model)
    net.initialize(mx.init.Xavier(), ctx=ctx)
    net = PrivateBlock(net, mode=cfg.mode)
    trainer = DPTrainer(net.collect_params(), "sgd",
                        {"learning_rate": cfg.lr, "momentum": cfg.momentum},
                        noise_multiplier=sigma, max_grad_norm=cfg.max_grad_norm,
                        expected_batch_size=cfg.batch_size, sample_rate=rate,
                        warn_delta=cfg.delta, accountant=cfg.accountant,
                        noise_seed=cfg.sampling_seed)
    loader = DPDataLoader((xtr, ytr), rate, trainer=trainer, ctx=ctx,
                          num_batches=total_steps, seed=cfg.sampling_seed)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    curve: List[Dict[str, float]] = []
    start = time.perf_counter()
    bar = tqdm(total=total_steps, disable=not cfg.progress, unit="step",
               desc=f"DP-SGD {cfg.dataset}/{cfg.model}")
    done = 0
    for x, y in loader:
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(x.shape[0])
        done = trainer.steps
        if done % per_epoch == 0 or done == total_steps:
            point = {"step": done, "epsilon": trainer.epsilon(cfg.delta)}
            if cfg.show_loss:  # the raw loss of a private batch: not covered by epsilon
                point["loss"] = float(loss.mean().asscalar())
            if cfg.history:
                point["test_accuracy"] = _accuracy(net, xte, yte, ctx)
            curve.append(point)
            shown = {"loss": f"{point['loss']:.3f}"} if cfg.show_loss else {}
            bar.set_postfix(**shown, eps=f"{point['epsilon']:.2f}")
        bar.update(trainer.steps - bar.n)
    bar.close()
    return TrainResult(
        test_accuracy=_accuracy(net, xte, yte, ctx), epsilon=trainer.epsilon(cfg.delta),
        delta=cfg.delta, steps=trainer.steps, noise_multiplier=sigma, sample_rate=rate,
        max_grad_norm=cfg.max_grad_norm, epochs=cfg.epochs, batch_size=cfg.batch_size,
        lr=cfg.lr, mode=net.mode, seconds=time.perf_counter() - start, curve=curve,
        accountant=cfg.accountant)
