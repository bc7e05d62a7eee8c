"""How was the loss reduced before ``backward``? Seen at the backward call itself.

Per-sample clipping needs each sample's gradient at its true scale. Gluon losses return
one value per sample, and ``loss.backward()`` differentiates their sum. A user who writes
``loss.mean().backward()`` gets every per-sample gradient divided by B: clipping then
almost never acts, and the update is trained at 1/B of its intended signal while the
noise keeps its full size. Nothing in the gradients tells the two apart, because a loss
averaged over B samples is also a valid per-sample loss scaled by 1/B. The head of the
backward pass does tell them apart: a scalar head produced by ``mean`` or ``sum``.

While a :class:`~mxprivacy.gluon.PrivateBlock` capture awaits its backward pass, the
wrappers below classify each backward head and record the result on the waiting
captures: ``"sum"`` (a per-sample vector, or a scalar ``sum``), ``"mean"`` (a scalar
``mean``) or ``"other"`` (a scalar made some other way, such as ``loss.mean() * 2``).
``DPTrainer`` compares it with its ``loss_reduction`` at the step. When no capture
waits, the wrappers cost one set lookup.
"""
from __future__ import annotations

import functools
import json
import weakref

from mxnet import autograd, nd

__all__ = ["await_backward", "classify_head", "install", "HINTS"]

_WAITING: "weakref.WeakSet" = weakref.WeakSet()

HINTS = {  # (declared, observed) -> what to do
    ("sum", "mean"): (
        "The loss was averaged over the batch before backward (loss.mean().backward()), "
        "so every per-sample gradient is 1/B of its value and training would run at 1/B "
        "of its signal under full-size noise. Call loss.backward() on the per-sample loss "
        "vector, or create the DPTrainer with loss_reduction='mean'."),
    ("mean", "sum"): (
        "DPTrainer(loss_reduction='mean') expects loss.mean().backward(), but backward "
        "ran on the per-sample loss vector (or its sum). Use loss.mean().backward(), or "
        "loss_reduction='sum'."),
    "unseen": (
        "The backward pass ran through a path mxprivacy could not observe (for example "
        "mxnet.autograd.backward imported before mxprivacy), so the loss reduction is "
        "unknown. Call loss.backward() on the per-sample loss vector."),
    "other": (
        "The loss was reduced to a scalar by something other than sum() or mean() (for "
        "example loss.mean() * 2), so the scale of the per-sample gradients is unknown. "
        "Call loss.backward() on the per-sample loss vector (weights belong inside the "
        "per-sample loss), or reduce with exactly loss.mean() and loss_reduction='mean'."),
}


def pause_waiting() -> list:
    """Take the waiting captures aside (a library-internal backward pass is coming)."""
    waiting = list(_WAITING)
    _WAITING.clear()
    return waiting


def resume_waiting(waiting) -> None:
    """Put captures taken aside by :func:`pause_waiting` back."""
    _WAITING.clear()
    for shard in waiting:
        _WAITING.add(shard)


def await_backward(shard) -> None:
    """Register a capture whose backward pass has not been seen yet."""
    _WAITING.add(shard)


def classify_head(head, rows: int) -> str:
    """``"sum"``, ``"mean"`` or ``"other"`` for a backward head over ``rows`` samples."""
    if head.size > 1 or rows <= 1:
        return "sum"
    try:
        nodes = json.loads(autograd.get_symbol(head).tojson())["nodes"]
    except Exception:  # not recorded: backward will fail on its own
        return "sum"
    operation = nodes[-1]["op"]
    if operation in ("mean", "sum"):
        return operation
    return "other"


def _rows_on(shards, ctx) -> int:
    """Rows captured on ``ctx`` (a head is classified against its own device's batch:
    a 1-row slice's loss is a per-sample vector even when another device has more);
    every shard's rows when no capture ran there."""
    rows = [s.batch_size for s in shards if getattr(s, "ctx", None) == ctx]
    return max(rows or [s.batch_size for s in shards])


def _record(heads, head_grads) -> None:
    if not _WAITING:
        return
    shards = list(_WAITING)
    _WAITING.clear()
    if len(heads) == 1:  # one head may reduce every device's rows (concatenated losses)
        kinds = {classify_head(heads[0], max(s.batch_size for s in shards))}
    else:  # one head per device, as autograd.backward(losses) over split_and_load slices
        kinds = {classify_head(h, _rows_on(shards, h.context)) for h in heads}
    kind = kinds.pop() if len(kinds) == 1 else "other"
    for shard in shards:
        shard.reduction = kind


def _wrap_method(original):
    @functools.wraps(original)
    def backward(self, out_grad=None, retain_graph=False, train_mode=True):
        _record([self], out_grad)
        return original(self, out_grad, retain_graph, train_mode)

    backward._mxprivacy = True
    return backward


def _wrap_function(original):
    @functools.wraps(original)
    def backward(heads, head_grads=None, retain_graph=False, train_mode=True):
        listed = heads if isinstance(heads, (list, tuple)) else [heads]
        _record(listed, head_grads)
        return original(heads, head_grads, retain_graph, train_mode)

    backward._mxprivacy = True
    return backward


def install() -> None:
    """Wrap ``NDArray.backward`` and ``autograd.backward`` once (idempotent)."""
    if not getattr(nd.NDArray.backward, "_mxprivacy", False):
        nd.NDArray.backward = _wrap_method(nd.NDArray.backward)
    if not getattr(autograd.backward, "_mxprivacy", False):
        autograd.backward = _wrap_function(autograd.backward)
