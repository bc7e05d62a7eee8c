"""Gluon helpers for auditing: logits, attack inputs, and a one-run canary audit.

``model_logits`` runs a net (a :class:`~mxprivacy.PrivateBlock` or any Gluon block) in
predict mode, in batches, and returns float64 logits; ``attack_inputs`` turns the logits
of members and non-members into :class:`mxprivacy.audit.membership.AttackInputData`;
``audit_training`` trains a net with canaries (with DP-SGD or without) and returns an
:class:`~mxprivacy.audit.canaries.AuditReport`: empirical epsilon lower bounds next to the
accountant's epsilon. Evaluation is post-processing of the trained weights: it costs no privacy budget, but
the labels and inputs you pass are your data, so keep the attack results private as
well unless the whole audit is on public data.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np

from . import _training, _validate
from .canaries import (SCORES, AuditReport, CanarySet, canary_bounds, canary_scores, check_labels,
                       check_num_classes, make_canaries, numeric_array)
from ..errors import AuditInputError

__all__ = ["model_logits", "attack_inputs", "audit_training", "AuditReport"]


def _net_context(net, ctx):
    """``ctx`` if given, else the context of the net's first initialized parameter, else
    the CPU."""
    import mxnet as mx

    if ctx is not None:
        return ctx
    for param in net.collect_params().values():
        try:
            return param.list_ctx()[0]
        except (RuntimeError, AssertionError, IndexError):  # deferred initialization
            continue
    return mx.cpu()


def model_logits(net, x, *, batch_size: int = 512, ctx=None) -> np.ndarray:
    """The outputs of ``net`` on ``x`` as a float64 array, one row per example.

    Parameters
    ----------
    net : gluon.Block
        A trained network, wrapped in :class:`~mxprivacy.PrivateBlock` or not. It runs in
        predict mode (no recording, ``train_mode=False``: dropout off), so nothing is
        captured and no trainer state changes.
    x : numpy array or NDArray
        Inputs, first axis the examples; cast to float32.
    batch_size : int
        Rows per forward pass (memory only: the results do not depend on it).
    ctx : mxnet.Context, optional
        Device of the forward passes; by default that of the net's parameters.

    Returns
    -------
    np.ndarray
        ``(len(x), num_outputs)`` float64 logits (whatever the net's last layer outputs).
    """
    from mxnet import autograd, nd

    batch_size = _training.positive_int("batch_size", batch_size)
    array = numeric_array("x", x)
    if array.ndim == 0 or len(array) == 0:
        raise AuditInputError("x is empty: give at least one example (first axis).")
    ctx = _net_context(net, ctx)
    parts = []
    with autograd.pause(train_mode=False):
        for start in range(0, len(array), batch_size):
            batch = nd.array(array[start:start + batch_size], ctx=ctx, dtype="float32")
            out = net(batch)
            parts.append(out.asnumpy().astype(np.float64).reshape(out.shape[0], -1))
    return np.concatenate(parts, axis=0)


def attack_inputs(net, members, non_members, *, batch_size: int = 512, ctx=None):
    """Logits and labels of members and non-members, ready for a membership attack.

    Parameters
    ----------
    net : gluon.Block
        The trained network (wrapped in :class:`~mxprivacy.PrivateBlock` or not).
    members, non_members : (x, y) pairs
        Examples that were trained on and examples that were not, with their integer
        labels.
    batch_size, ctx : see :func:`model_logits`.

    Returns
    -------
    mxprivacy.audit.membership.AttackInputData
        ``logits_train``/``labels_train`` from ``members`` and ``logits_test``/
        ``labels_test`` from ``non_members``; the attack computes the losses.
    """
    from .membership import AttackInputData

    x_in, y_in = _pair("members", members)
    x_out, y_out = _pair("non_members", non_members)
    logits_in = model_logits(net, x_in, batch_size=batch_size, ctx=ctx)
    logits_out = model_logits(net, x_out, batch_size=batch_size, ctx=ctx)
    return AttackInputData(logits_train=logits_in, logits_test=logits_out,
                           labels_train=_class_ids(y_in, logits_in.shape[1]),
                           labels_test=_class_ids(y_out, logits_out.shape[1]))


def _pair(name: str, pair):
    """``(x, y)`` as numpy arrays with one label per example."""
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise AuditInputError(f"{name} must be an (x, y) pair of inputs and labels.")
    x, y = numeric_array(f"{name} x", pair[0]), numeric_array(f"{name} y", pair[1])
    if x.ndim == 0 or y.ndim != 1:
        raise AuditInputError(
            f"{name}: x must have the examples on the first axis and y one label per "
            f"example; got shapes {x.shape} and {y.shape}.")
    _validate.same_length(**{f"{name}_x": x, f"{name}_y": y})
    if len(y) == 0:
        raise AuditInputError(f"{name} is empty: give at least one example.")
    return x, y


def _class_ids(y, num_classes: int) -> np.ndarray:
    labels, _ = check_labels(y, num_classes)
    return labels.astype(np.int64)


def audit_training(train, test=None, *, num_classes: int,
                   canaries: Optional[CanarySet] = None, m: Optional[int] = None,
                   kind: Optional[str] = None, value_range: Optional[tuple] = None,
                   seed: Optional[int] = None, build_net: Optional[Callable] = None,
                   private: bool = True, noise_multiplier: Optional[float] = None,
                   target_epsilon: Optional[float] = None, max_grad_norm: float = 1.0,
                   expected_batch_size: int = 64, epochs: float = 30, lr: float = 0.5,
                   momentum: float = 0.0, accountant: str = "rdp", delta: float = 1e-5,
                   significance: float = 0.05, score: str = "log_prob",
                   sampling_seed: Optional[int] = None, ctx=None) -> AuditReport:
    """Train on ``train`` plus Poisson-included canaries, then audit the canaries.

    Each canary joins the training set with probability 1/2 (:func:`make_canaries`). The
    net trains on the union with DP-SGD (``private=True``: :class:`~mxprivacy.DPTrainer`
    and :class:`~mxprivacy.DPDataLoader`) or, as a baseline, with a plain
    ``gluon.Trainer`` in the same Poisson-sampled loop. An included canary is one record
    like any other: it is sampled with the same rate and clipped to the same bound. The
    sampling rate ``q = expected_batch_size / (n + m / 2)`` (``n`` training records, ``m``
    canaries) and the number of steps are fixed before the inclusion coins are drawn:
    were they computed from the records actually present, every canary's coin would
    change the rate of every record and the number of steps, which the accountant does
    not charge for. Each canary is then scored (``score``: ``"log_prob"`` or ``"logit"``
    of its label, higher = member) and the scores of included and excluded canaries give
    epsilon lower bounds (:func:`canary_bounds`).

    Parameters
    ----------
    train, test : (x, y) pairs
        Training data (inputs, integer labels); optional test data for the accuracy,
        checked (input shape, labels) before training.
    num_classes : int
        Number of classes of the task (the net's outputs): public, not ``max(y) + 1``.
    canaries : CanarySet, optional
        Ready canaries; their inputs must not occur in ``train`` (checked: equal rows are
        refused). By default ``m`` canaries of ``kind`` (``"mislabeled"``) are made:
        mislabeled canaries copy ``m`` random rows of ``train`` that are then HELD OUT
        of the training data, so no input is trained on twice (default ``m``: 1000, at
        most half the training rows); the ood kinds (default ``m`` 1000) need
        ``value_range``, a public range of input values.
    build_net : callable, optional
        ``build_net()`` returns a fresh Gluon block (initialized or not; uninitialized
        parameters get Xavier). Default: ``mxprivacy.train.build_model("mlp",
        num_classes=num_classes)``.
    private : bool
        False trains the non-private baseline (then give no noise settings).
    noise_multiplier, target_epsilon
        Exactly one for ``private=True``; ``target_epsilon`` calibrates sigma for
        ``epochs`` loader epochs at ``delta``.
    max_grad_norm, expected_batch_size, epochs, lr, momentum, accountant
        DP-SGD settings (SGD with momentum). The baseline uses the same batches and
        learning rate, without clipping and noise.
    delta, significance : float
        Delta of the accountant's epsilon and of the lower bounds; each bound holds with
        probability ``1 - significance``.
    seed : int, optional
        Seed of the canaries and their inclusion (tests only; default OS entropy).
    sampling_seed : int, optional
        Seed of the batches and the noise (reproducible experiments; warns).
    ctx : mxnet.Context, optional
        Device; the CPU by default.

    Returns
    -------
    AuditReport
        The bounds, the accountant's epsilon, the test accuracy, the scores and the
        trained net (``report.net``, a plain Gluon block); ``print(report.summary())``.
    """
    import mxnet as mx

    start = time.perf_counter()
    ctx = mx.cpu() if ctx is None else ctx
    x_train, y_train = _pair("train", train)
    num_classes = _class_count(num_classes, y_train)
    test = None if test is None else _test_pair(test, x_train, num_classes)
    significance = _validate.significance(significance)
    delta = _validate.delta(delta, allow_zero=False)
    if score not in SCORES:
        raise AuditInputError(f"score must be one of {list(SCORES)}; got {score!r}.")
    settings = _training.training_settings(
        private, noise_multiplier, target_epsilon, max_grad_norm, expected_batch_size,
        epochs, lr, momentum, accountant, delta, sampling_seed)
    canaries, (x_rest, y_rest) = _resolve_canaries(
        canaries, (x_train, y_train), dict(m=m, kind=kind, value_range=value_range,
                                           seed=seed, num_classes=num_classes))
    settings.update(_training.sampling_plan(settings, len(x_rest), len(canaries)))
    x_all, y_all = _training.training_set(x_rest, y_rest, canaries)
    net = _training.build(build_net, num_classes, ctx)
    run = _training.train_private if private else _training.train_baseline
    net, facts = run(net, x_all, y_all, settings, ctx)
    scores = _canary_scores(net, canaries, score, ctx, settings)
    bounds = canary_bounds(scores, canaries.included, significance=significance, delta=delta)
    return AuditReport(
        **bounds, epsilon=facts["epsilon"], delta=delta, significance=significance,
        test_accuracy=None if test is None else _accuracy(net, test, ctx),
        m=len(canaries), num_included=canaries.num_included, dataset_size=len(x_all),
        kind=canaries.kind, score=score, private=bool(private),
        noise_multiplier=facts["noise_multiplier"],
        max_grad_norm=float(max_grad_norm) if private else None,
        expected_batch_size=settings["batch"], sample_rate=settings["rate"],
        epochs=float(epochs), steps=settings["steps"],
        seconds=time.perf_counter() - start, in_scores=scores[canaries.included],
        out_scores=scores[~canaries.included], net=net)


def _class_count(num_classes, y_train) -> int:
    """``num_classes`` (public, >= 2), with every training label below it."""
    count = check_num_classes(num_classes)
    check_labels(y_train, count)
    return count


def _test_pair(test, x_train, num_classes: int):
    """The test pair, checked before training: the training inputs' shape, labels in
    ``[0, num_classes)``."""
    x_test, y_test = _pair("test", test)
    if x_test.shape[1:] != x_train.shape[1:]:
        raise AuditInputError(
            f"test inputs have shape {x_test.shape[1:]} per example, the training inputs "
            f"{x_train.shape[1:]}: give test data of the same kind.")
    labels, _ = check_labels(y_test, num_classes)
    return x_test, labels


def _resolve_canaries(canaries, train, options: dict) -> tuple:
    """``(canaries, (x, y) to train on besides them)``."""
    x_train, y_train = train
    if canaries is None:
        kind = options["kind"] or "mislabeled"
        m = options["m"]
        if m is None:
            m = min(1000, len(x_train) // 2) if kind == "mislabeled" else 1000
        made = make_canaries(x_train, y_train, m, kind, num_classes=options["num_classes"],
                             value_range=options["value_range"], seed=options["seed"])
        if made.source_index is None:
            return made, (x_train, y_train)
        keep = np.ones(len(x_train), bool)
        keep[made.source_index] = False  # held out: their inputs are canaries now
        return made, (x_train[keep], y_train[keep])
    if not isinstance(canaries, CanarySet):
        raise AuditInputError(
            f"canaries must be a CanarySet from make_canaries; got {type(canaries).__name__}.")
    given = [name for name in ("m", "kind", "value_range", "seed") if options[name] is not None]
    if given:
        raise AuditInputError(
            f"{', '.join(given)} describe canaries to make, but canaries= were given: pass "
            "one or the other.")
    if canaries.x.shape[1:] != x_train.shape[1:]:
        raise AuditInputError(
            f"canary inputs have shape {canaries.x.shape[1:]} per example, the training "
            f"inputs {x_train.shape[1:]}: make the canaries from training-like inputs.")
    check_labels(canaries.y, options["num_classes"])
    _refuse_shared_inputs(canaries.x, x_train)
    return canaries, (x_train, y_train)


def _refuse_shared_inputs(canary_x, x_train) -> None:
    """A canary input equal to a training input (as float32, the training dtype) would
    put that input in training twice: refuse it."""
    rows = {row.tobytes() for row in np.asarray(x_train, np.float32).reshape(len(x_train), -1)}
    flat = np.asarray(canary_x, np.float32).reshape(len(canary_x), -1)
    shared = [i for i, row in enumerate(flat) if row.tobytes() in rows]
    if shared:
        raise AuditInputError(
            f"{len(shared)} canary input(s) (first: canary {shared[0]}) are also training "
            "inputs, which would be trained on twice. Make the canaries from public data "
            "or from rows you remove from train (np.delete(x, canaries.source_index, "
            "axis=0)), or let audit_training make them (it holds their sources out).")


def _canary_scores(net, canaries: CanarySet, score: str, ctx, settings: dict) -> np.ndarray:
    logits = model_logits(net, canaries.x, ctx=ctx)
    if not np.all(np.isfinite(logits)):
        raise AuditInputError(
            "The trained net outputs non-finite logits on the canaries: training diverged. "
            f"Lower lr (now {settings['optimizer']['learning_rate']:g}).")
    return canary_scores(logits, canaries.y, score)


def _accuracy(net, test, ctx) -> float:
    x_test, y_test = test  # checked by _test_pair before training
    predicted = model_logits(net, x_test, ctx=ctx).argmax(axis=1)
    return float(np.mean(predicted == y_test))
