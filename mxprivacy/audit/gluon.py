"""Gluon helpers for auditing: a trained net's logits and the attack inputs built from them.

``model_logits`` runs a net (a :class:`~mxprivacy.PrivateBlock` or any Gluon block) in
predict mode, in batches, and returns float64 logits; ``attack_inputs`` turns the logits
of members and non-members into :class:`mxprivacy.audit.membership.AttackInputData`.
Evaluation is post-processing of the trained weights: it costs no privacy budget, but
the labels and inputs you pass are your data, so keep the attack results private as
well unless the whole audit is on public data.
"""
from __future__ import annotations

import numpy as np

from . import _validate
from ..errors import AuditInputError

__all__ = ["model_logits", "attack_inputs"]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise AuditInputError(f"{name} must be an integer >= 1; got {value!r}.")
    return int(value)


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


def _as_numpy(name: str, x) -> np.ndarray:
    import mxnet as mx

    if isinstance(x, mx.nd.NDArray):
        return x.asnumpy()
    try:
        array = np.asarray(x)
    except (TypeError, ValueError):
        raise AuditInputError(f"{name} must be an array; got {type(x).__name__}.") from None
    if array.dtype == object or not np.issubdtype(array.dtype, np.number):
        raise AuditInputError(f"{name} must be a numeric array; got dtype {array.dtype}.")
    return array


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

    batch_size = _positive_int("batch_size", batch_size)
    array = _as_numpy("x", x)
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
