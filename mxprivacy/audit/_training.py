"""The training recipe of :func:`mxprivacy.audit.gluon.audit_training`: its settings, the
sampling plan (rate and steps from public counts), the training records, and the DP-SGD
and non-private loops (MXNet imported inside the functions).
"""
from __future__ import annotations

import numpy as np

from ..errors import AuditInputError
from .canaries import CanarySet

__all__ = ["positive_int", "training_settings", "sampling_plan", "training_set", "build",
           "train_private", "train_baseline"]

FLOAT32_MAX = float(np.finfo(np.float32).max)  # MXNet's optimizers take float32 settings


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise AuditInputError(f"{name} must be an integer >= 1; got {value!r}.")
    return int(value)


def sampling_plan(settings: dict, n_records: int, m: int) -> dict:
    """The sampling rate and steps, from public quantities only: ``n_records`` and the
    expected number ``m / 2`` of included canaries (never the realized one)."""
    from ..accounting.calibration import loader_steps

    expected = n_records + m / 2
    if settings["batch"] > expected:
        raise AuditInputError(
            f"expected_batch_size {settings['batch']} exceeds the {expected:g} records "
            "expected in training (training records plus half the canaries).")
    rate = settings["batch"] / expected
    return {"rate": rate, "steps": loader_steps(rate, settings["epochs"])}


def training_set(x_train, y_train, canaries: CanarySet):
    """The training records: the data and the included canaries, one record each. Only
    the inclusion mask decides which canaries are here; their position does not matter
    to Poisson sampling (every record is drawn independently at the same rate)."""
    x_in, y_in = canaries.members()
    x_all = np.concatenate([x_train, x_in.astype(x_train.dtype)], axis=0)
    y_all = np.concatenate([y_train, y_in]).astype(np.float32)
    return x_all.astype(np.float32), y_all


def training_settings(private, noise_multiplier, target_epsilon, max_grad_norm,
                       expected_batch_size, epochs, lr, momentum, accountant, delta,
                       sampling_seed) -> dict:
    if not private and (noise_multiplier is not None or target_epsilon is not None):
        raise AuditInputError(
            "private=False trains the non-private baseline: drop noise_multiplier and "
            "target_epsilon, or set private=True.")
    if private and (noise_multiplier is None) == (target_epsilon is None):
        raise AuditInputError(
            "private=True needs exactly one of noise_multiplier= or target_epsilon= "
            "(or private=False for the non-private baseline).")
    if not is_number(lr) or not 0 < lr <= FLOAT32_MAX:
        raise AuditInputError(
            f"lr must be a number in (0, {FLOAT32_MAX:.3g}] (MXNet's optimizers take "
            f"float32); got {lr!r}. Typical values are 0.01 to 1.")
    if not is_number(momentum) or not 0 <= momentum < 1:
        raise AuditInputError(f"momentum must be a number in [0, 1); got {momentum!r}.")
    return {"batch": positive_int("expected_batch_size", expected_batch_size),
            "sigma": noise_multiplier, "target_epsilon": target_epsilon, "epochs": epochs,
            "clip": max_grad_norm, "optimizer": {"learning_rate": lr, "momentum": momentum},
            "accountant": accountant, "delta": delta, "seed": sampling_seed}


def is_number(value) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) \
        and not isinstance(value, bool) and bool(np.isfinite(value))


def build(build_net, num_classes: int, ctx):
    import mxnet as mx

    if build_net is None:
        from ..train import build_model

        net = build_model("mlp", num_classes=num_classes)
    else:
        net = build_net()
    uninitialized = []
    for param in net.collect_params().values():
        try:
            param.list_ctx()
        except RuntimeError:
            uninitialized.append(param)
    if uninitialized:
        net.initialize(mx.init.Xavier(), ctx=ctx)
    return net


def train_private(net, x_all, y_all, settings: dict, ctx):
    from mxnet import autograd, gluon

    from ..gluon import DPDataLoader, DPTrainer, PrivateBlock

    wrapped = PrivateBlock(net)
    planning = {} if settings["target_epsilon"] is None else {
        "target_epsilon": settings["target_epsilon"], "target_delta": settings["delta"],
        "epochs": settings["epochs"]}
    trainer = DPTrainer(wrapped.collect_params(), "sgd", settings["optimizer"],
                        noise_multiplier=settings["sigma"], max_grad_norm=settings["clip"],
                        expected_batch_size=settings["batch"], sample_rate=settings["rate"],
                        accountant=settings["accountant"], warn_delta=settings["delta"],
                        noise_seed=settings["seed"], **planning)
    loader = DPDataLoader((x_all, y_all), sample_rate=settings["rate"], trainer=trainer,
                          ctx=ctx, num_batches=settings["steps"], seed=settings["seed"])
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    for x, y in loader:
        with autograd.record():
            loss = loss_fn(wrapped(x), y)
        loss.backward()
        trainer.step(x.shape[0])
    facts = {"epsilon": float(trainer.epsilon(settings["delta"])),
             "noise_multiplier": float(trainer.noise_multiplier)}
    return wrapped.release(), facts


def train_baseline(net, x_all, y_all, settings: dict, ctx):
    from mxnet import autograd, gluon, nd

    from ..gluon import PoissonBatchSampler

    trainer = gluon.Trainer(net.collect_params(), "sgd", settings["optimizer"])
    sampler = PoissonBatchSampler(len(x_all), settings["rate"], num_batches=settings["steps"],
                                  seed=settings["seed"])
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    for indices in sampler:
        if not indices:
            continue  # nothing to learn from; DP-SGD would take a noise-only step
        x, y = nd.array(x_all[indices], ctx=ctx), nd.array(y_all[indices], ctx=ctx)
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(settings["batch"])  # divide by the expected size, as DP-SGD does
    return net, {"epsilon": None, "noise_multiplier": None}
