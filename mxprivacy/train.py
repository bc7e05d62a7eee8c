"""The ``mxprivacy train`` job: DP-SGD on MNIST or digits with the standard Gluon loop.

Each model has a recipe (``RECIPES``): the defaults of every option it does not set. The
CNN's is the best known end-to-end DP recipe for MNIST (Tramer & Boneh 2021, 98.1 % at
epsilon 3). Inputs are scaled with fixed constants, never with statistics of the private
data (those would be an unaccounted release).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Dict, List, Optional

import numpy as np

from . import datasets
from ._progress import _Progress
from .accounting import calibrate_noise_multiplier
from .errors import InvalidParameterError

__all__ = ["TrainConfig", "TrainResult", "Recipe", "RECIPES", "run_training", "build_model",
           "load_dataset"]

ACTIVATIONS = ("relu", "tanh")
INPUT_SCALINGS = ("standardized", "unit")
DIST_KVSTORES = ("dist_sync", "dist_device_sync")
KVSTORES = ("local",) + DIST_KVSTORES


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of one model: the defaults of the options a run does not set.

    ``inputs``: ``"standardized"`` (pixels scaled to [0, 1], minus a fixed mean, over a
    fixed standard deviation) or ``"unit"`` (pixels scaled to [0, 1]).
    """

    epochs: float
    batch_size: int
    noise_multiplier: float
    max_grad_norm: float
    lr: float
    momentum: float
    activation: str
    inputs: str
    source: str = ""


RECIPE_FIELDS = tuple(f.name for f in fields(Recipe) if f.name != "source")

RECIPES: Dict[str, Recipe] = {
    "mlp": Recipe(epochs=60, batch_size=256, noise_multiplier=1.1, max_grad_norm=1.0, lr=0.5,
                  momentum=0.0, activation="relu", inputs="standardized",
                  source="mxprivacy's MLP defaults (RDP epsilon 2.60 at delta 1e-5 on full "
                         "MNIST)"),
    "cnn": Recipe(epochs=40, batch_size=512, noise_multiplier=1.23, max_grad_norm=0.1, lr=0.5,
                  momentum=0.9, activation="tanh", inputs="unit",
                  source="Tramer & Boneh 2021, 'Differentially Private Learning Needs Better "
                         "Features': the TF Privacy MNIST CNN with tanh, 98.1 % at "
                         "(3, 1e-5)-DP (RDP epsilon 2.59 with Poisson sampling)"),
}


@dataclass
class TrainConfig:
    """Options of one training run.

    The options left at None (``epochs``, ``batch_size``, ``noise_multiplier``,
    ``max_grad_norm``, ``lr``, ``momentum``, ``activation``, ``inputs``) take the values
    of ``RECIPES[model]``; ``resolved()`` shows them. With ``target_epsilon`` the noise
    multiplier is calibrated instead, so giving both is an error.

    ``seed`` seeds the model initialization only (it does not depend on the data).
    ``sampling_seed`` seeds Poisson sampling and the gradient noise, for reproducible
    experiments; the guarantee then assumes the seed is secret, and the sampler and the
    trainer warn. Both default to None: OS entropy. ``show_loss=False`` keeps the raw
    loss of private batches out of the progress output and the curve: that loss is not
    noised, so showing it is a release that epsilon does not cover. Progress is a bar on
    a terminal and a few plain lines otherwise (logs, CI, ``nohup``). ``ema_decay``
    (for example 0.999) evaluates an exponential moving average of the weights
    (``DPTrainer(ema_decay=...)``): post-processing, free in privacy.

    ``kvstore="dist_sync"`` (or ``"dist_device_sync"``) trains on the W workers of a job
    started by ``mxprivacy launch`` (see :mod:`mxprivacy.gluon.distributed`): every worker
    loads the whole data set and samples its block at the same rate q, ``batch_size`` is
    the expected *global* batch, and the epsilon is that of one machine with the same q,
    sigma and steps. Only rank 0 shows progress (its loss is that of rank 0's local
    batch). ``dist_timeout``: seconds a worker waits
    for the others before it exits with code 75 (default ``$MXPRIVACY_DIST_TIMEOUT``,
    else 600; ``inf``: no limit).
    """

    dataset: str = "mnist"
    data_dir: Optional[str] = None
    model: str = "mlp"
    epochs: Optional[float] = None
    batch_size: Optional[int] = None
    noise_multiplier: Optional[float] = None
    target_epsilon: Optional[float] = None
    delta: float = 1e-5
    max_grad_norm: Optional[float] = None
    lr: Optional[float] = None
    momentum: Optional[float] = None
    activation: Optional[str] = None
    inputs: Optional[str] = None
    ema_decay: Optional[float] = None
    mode: str = "auto"
    accountant: str = "rdp"
    seed: Optional[int] = None
    sampling_seed: Optional[int] = None
    train_limit: Optional[int] = None
    progress: bool = True
    history: bool = False
    show_loss: bool = True
    kvstore: str = "local"
    dist_timeout: Optional[float] = None

    def resolved(self) -> "TrainConfig":
        """A copy with every option left at None taken from ``RECIPES[model]``."""
        if self.model not in RECIPES:
            raise InvalidParameterError(
                f"Unknown model {self.model!r}; choose one of {sorted(RECIPES)}.")
        if self.target_epsilon is not None and self.noise_multiplier is not None:
            raise InvalidParameterError(
                "Give noise_multiplier or target_epsilon, not both: target_epsilon "
                "calibrates the noise multiplier.")
        recipe = RECIPES[self.model]
        unset = {name: getattr(recipe, name) for name in RECIPE_FIELDS
                 if getattr(self, name) is None}
        if self.target_epsilon is not None:
            unset.pop("noise_multiplier")
        return replace(self, **unset)

    def validate(self) -> "TrainConfig":
        """Check every option that is set; raise InvalidParameterError naming the bad one."""
        checks = [("epochs", lambda v: v > 0, "a finite number > 0"),
                  ("noise_multiplier", lambda v: v >= 0, "a finite number >= 0"),
                  ("target_epsilon", lambda v: v > 0, "a finite number > 0"),
                  ("max_grad_norm", lambda v: v > 0, "a finite number > 0"),
                  ("lr", lambda v: v > 0, "a finite number > 0"),
                  ("momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
                  ("ema_decay", lambda v: 0 < v < 1, "in (0, 1), for example 0.999")]
        for name, test, wanted in checks:
            if getattr(self, name) is not None:
                _check(getattr(self, name), name, test, wanted)
        _check(self.delta, "delta", lambda v: 0 < v < 1, "in (0, 1)")
        for name, minimum in (("batch_size", 1), ("seed", 0), ("sampling_seed", 0),
                              ("train_limit", 1)):
            if getattr(self, name) is not None:
                _check_int(getattr(self, name), name, minimum)
        if self.model == "cnn" and self.dataset == "digits":
            raise InvalidParameterError(
                "The CNN is built for 28x28 MNIST images; the 8x8 digits are smaller than "
                "its kernels. Use model='mlp' (--model mlp) for digits.")
        for name, allowed in (("activation", ACTIVATIONS), ("inputs", INPUT_SCALINGS),
                              ("kvstore", KVSTORES)):
            if getattr(self, name) is not None and getattr(self, name) not in allowed:
                raise InvalidParameterError(
                    f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}.")
        self._validate_dist_timeout()
        return self

    def _validate_dist_timeout(self) -> None:
        if self.dist_timeout is None:
            return
        if self.kvstore not in DIST_KVSTORES:
            raise InvalidParameterError(
                "dist_timeout (--dist-timeout) only applies to kvstore 'dist_sync' or "
                "'dist_device_sync'.")
        _check(self.dist_timeout, "dist_timeout", lambda v: v > 0,
               "a number of seconds > 0 (inf: no limit)", finite=False)


def _check(value, name: str, test, wanted: str, finite: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (ok and not math.isnan(value) and (math.isfinite(value) or not finite)
            and test(value)):
        raise InvalidParameterError(f"{name} must be {wanted}, got {value!r}.")


def _check_int(value, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidParameterError(f"{name} must be an integer >= {minimum}, got {value!r}.")


@dataclass
class TrainResult:
    """What a run reached (``test_accuracy``, ``epsilon`` at ``delta``) and its settings.

    With ``ema_decay``, ``test_accuracy`` is that of the averaged weights and
    ``test_accuracy_last`` that of the last iterate. With a dist kvstore,
    ``server_epsilon`` is the epsilon against the parameter server, which sees each
    worker's push (:meth:`DPTrainer.server_epsilon`; None on one machine), and ``rank``
    is this worker's (not in ``to_dict``)."""

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
    model: str = "mlp"
    momentum: float = 0.0
    activation: str = "relu"
    inputs: str = "standardized"
    ema_decay: Optional[float] = None
    test_accuracy_last: Optional[float] = None
    kvstore: str = "local"
    num_workers: int = 1
    server_epsilon: Optional[float] = None
    rank: int = 0
    curve: List[Dict[str, float]] = field(default_factory=list)

    def to_dict(self, with_curve: bool = False) -> Dict:
        data = asdict(self)
        data.pop("rank")
        if not with_curve:
            data.pop("curve")
        return data


def load_dataset(name: str, data_dir: Optional[str] = None, train_limit: Optional[int] = None,
                 inputs: str = "standardized"):
    """Float32 ``((x_train, y_train), (x_test, y_test))`` with images (N, 1, H, W).

    ``inputs="standardized"``: pixels in [0, 1], minus a fixed mean, over a fixed standard
    deviation; ``"unit"``: pixels in [0, 1]. The constants never depend on the data.
    """
    if inputs not in INPUT_SCALINGS:
        raise InvalidParameterError(
            f"inputs must be one of {list(INPUT_SCALINGS)}, got {inputs!r}.")
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
    if inputs == "unit":
        mean, std = 0.0, 1.0

    def prep(x):
        return ((x.astype(np.float32) / scale - mean) / std)[:, None, :, :]

    return (prep(xtr), ytr.astype(np.float32)), (prep(xte), yte.astype(np.float32))


def build_model(name: str, num_classes: int = 10, activation: str = "relu"):
    """``mlp``: Dense 256, Dense 10. ``cnn``: the Opacus (TF Privacy tutorial) MNIST CNN.

    ``activation`` (``"relu"`` or ``"tanh"``) is that of every hidden layer; the CNN
    recipe uses tanh (bounded activations suit clipping: Papernot et al. 2021).
    """
    from mxnet import gluon

    if activation not in ACTIVATIONS:
        raise InvalidParameterError(
            f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}.")
    net = gluon.nn.HybridSequential()
    if name == "mlp":
        net.add(gluon.nn.Dense(256, activation=activation), gluon.nn.Dense(num_classes))
    elif name == "cnn":
        net.add(gluon.nn.Conv2D(16, 8, strides=2, padding=3, activation=activation),
                gluon.nn.MaxPool2D(2, 1),
                gluon.nn.Conv2D(32, 4, strides=2, activation=activation),
                gluon.nn.MaxPool2D(2, 1),
                gluon.nn.Dense(32, activation=activation),
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


def _check_launched(kvstore: str) -> None:
    """A dist kvstore needs the DMLC_* variables that ``mxprivacy launch`` sets."""
    from .distributed.launch import DMLC_VARIABLES

    missing = [name for name in DMLC_VARIABLES if name not in os.environ]
    if kvstore in DIST_KVSTORES and missing:
        verb = "is" if len(missing) == 1 else "are"
        raise InvalidParameterError(
            f"kvstore {kvstore!r} trains on the workers of a parameter-server job, but "
            f"{', '.join(missing)} {verb} not set. Start it with the launcher, e.g. "
            f"mxprivacy launch -n 2 -s 1 -- mxprivacy train --kvstore {kvstore} ... (or "
            "use --kvstore local on one machine).")


def run_training(cfg: TrainConfig) -> TrainResult:
    """Train with DP-SGD and return test accuracy and (epsilon, delta).

    Options left at None take the model's recipe (``RECIPES``); the result records the
    values used. With a dist kvstore every worker of the job calls it with the same
    configuration, and every worker returns the same epsilon and test accuracy.
    """
    import mxnet as mx
    from mxnet import autograd, gluon

    from .gluon import DPDataLoader, DPTrainer, PrivateBlock

    cfg = cfg.resolved().validate()
    _check_launched(cfg.kvstore)
    if cfg.seed is not None:
        mx.random.seed(cfg.seed)  # model initialization only; never the sampling
    ctx = mx.cpu()
    (xtr, ytr), (xte, yte) = load_dataset(cfg.dataset, cfg.data_dir, cfg.train_limit,
                                          inputs=cfg.inputs)
    if cfg.batch_size > len(xtr):
        raise InvalidParameterError(
            f"batch_size {cfg.batch_size} exceeds the {len(xtr)} training examples.")
    rate = cfg.batch_size / len(xtr)
    per_epoch = int(math.ceil(1.0 / rate))
    total_steps = int(math.ceil(cfg.epochs * per_epoch))
    sigma = _resolve_sigma(cfg, rate, total_steps)
    net = build_model(cfg.model, activation=cfg.activation)
    net.initialize(mx.init.Xavier(), ctx=ctx)
    with autograd.train_mode():  # shapes now (rank 0's weights are broadcast); in predict
        net(mx.nd.zeros((1,) + xtr.shape[1:], ctx=ctx))  # mode MKLDNN would reorder them
    net = PrivateBlock(net, mode=cfg.mode)
    trainer = DPTrainer(net.collect_params(), "sgd",
                        {"learning_rate": cfg.lr, "momentum": cfg.momentum},
                        kvstore=cfg.kvstore, dist_timeout=cfg.dist_timeout,
                        noise_multiplier=sigma, max_grad_norm=cfg.max_grad_norm,
                        expected_batch_size=cfg.batch_size, sample_rate=rate,
                        warn_delta=cfg.delta, accountant=cfg.accountant,
                        noise_seed=cfg.sampling_seed, ema_decay=cfg.ema_decay)
    loader = DPDataLoader((xtr, ytr), rate, trainer=trainer, ctx=ctx,
                          num_batches=total_steps, seed=cfg.sampling_seed)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    curve: List[Dict[str, float]] = []
    start = time.perf_counter()
    progress = _Progress(total_steps, per_epoch, f"DP-SGD {cfg.dataset}/{cfg.model}",
                         enabled=cfg.progress and trainer.rank == 0)

    def evaluate() -> float:
        if cfg.ema_decay is None:
            return _accuracy(net, xte, yte, ctx)
        with trainer.averaged():
            return _accuracy(net, xte, yte, ctx)

    def status() -> Dict[str, str]:
        shown = {"loss": f"{float(loss.mean().asscalar()):.3f}"} if cfg.show_loss else {}
        return dict(shown, eps=f"{trainer.epsilon(cfg.delta):.2f}")

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
                point["test_accuracy"] = evaluate()
            curve.append(point)
        progress.update(done, status)
    progress.close()
    last = None if cfg.ema_decay is None else _accuracy(net, xte, yte, ctx)
    return TrainResult(
        test_accuracy=evaluate(), test_accuracy_last=last, epsilon=trainer.epsilon(cfg.delta),
        delta=cfg.delta, steps=trainer.steps, noise_multiplier=sigma, sample_rate=rate,
        max_grad_norm=cfg.max_grad_norm, epochs=cfg.epochs, batch_size=cfg.batch_size,
        lr=cfg.lr, mode=net.mode, seconds=time.perf_counter() - start, curve=curve,
        accountant=cfg.accountant, model=cfg.model, momentum=cfg.momentum,
        activation=cfg.activation, inputs=cfg.inputs, ema_decay=cfg.ema_decay,
        kvstore=cfg.kvstore, num_workers=trainer.num_workers, rank=trainer.rank,
        server_epsilon=trainer.server_epsilon(cfg.delta) if cfg.kvstore in DIST_KVSTORES
        else None)
