"""The one per-sample capture protocol, shared by every way a layer can run.

A captured layer call does three things:

1. it runs on *detached* views of its parameters, so that backward does not compute the
   (summed, non-private) parameter gradient;
2. a zero "probe" is added to its pre-activation output (a layer's fused activation,
   ``Dense(activation=...)``, runs after the probe);
3. the layer input and the probe go to the active :class:`VectorizedShard`; after
   ``loss.backward()`` the probe's gradient is the per-sample output gradient, from
   which the layer's rule builds norms and clipped sums.

The same protocol runs in three places:

- imperatively, by the patched ``forward`` of each rule layer (:func:`install`);
- inside a hybridized graph: the patched ``forward`` sees a ``Symbol`` while
  :mod:`~mxprivacy.gluon.graph_capture` traces the graph, and adds a probe *variable*
  (an input of the cached graph) and marks the operators of the call, so that the graph
  can be checked for parameters used outside their captured call;
- in the DP recurrent core (:mod:`~mxprivacy.gluon.rnn`), whose time loop takes the
  probe as an input of its own cached graph (:func:`active_shard`, :func:`new_probe`).
"""
from __future__ import annotations

import contextlib
import weakref

import mxnet as mx
from mxnet import nd

__all__ = ["install", "uninstall", "active_shard", "new_probe", "trainable_params",
           "CALL_ATTR"]

CALL_ATTR = "__mxprivacy_call__"  # marks the operators of captured call k in a traced graph


def trainable_params(layer):
    return [p for p in layer._reg_params.values() if p.grad_req != "null"]


def new_probe(like):
    """A zero probe shaped like ``like`` whose gradient will be recorded."""
    probe = nd.zeros_like(like)
    probe.attach_grad()
    return probe


def active_shard(layer):
    """The shard capturing ``layer`` now (its vectorized PrivateBlock is recording), or
    None. Used by layers that add their own probe input (the DP recurrent core)."""
    from .private_block import owner_of

    params = list(layer._reg_params.values())
    owner = owner_of(params[0]) if params else None
    if owner is None or owner.mode != "vectorized":
        return None
    return owner._current


def install(owner, block, is_rule_layer: bool) -> None:
    """Patch ``block.forward`` to follow the protocol for ``owner`` (a PrivateBlock).

    Rule layers are captured imperatively, or symbolically while ``owner`` traces a
    graph. A hybridized block reached with arrays during a capture (the outermost active
    cached graph) runs ``owner``'s capture graph for it instead of its own graph.
    """
    original = block.forward
    ref = weakref.ref(owner)

    def forward(x, *args):
        wrapper = ref()
        if wrapper is None:
            return original(x, *args)
        trace = wrapper._trace
        if isinstance(x, mx.sym.Symbol):
            if trace is None or not is_rule_layer or not trainable_params(block):
                return original(x, *args)
            return _symbolic_call(trace, block, original, x, args)
        shard = wrapper._current
        if shard is None or not isinstance(x, nd.NDArray):
            return original(x, *args)
        if getattr(block, "_active", False):
            return wrapper._graph_for(block, 1 + len(args)).run(shard, x, *args)
        if not is_rule_layer:
            return original(x, *args)
        with _without_activation(block) as activation, _detached(block, x.context):
            out = original(x, *args)
        probe = new_probe(out)
        shard.add(block, x, probe)
        out = nd.elemwise_add(out, probe)  # broadcast_add's backward reduces: slow
        return activation(out) if activation is not None else out

    block.forward = forward


def uninstall(block) -> None:
    block.__dict__.pop("forward", None)


def _symbolic_call(trace, layer, original, x, args):
    """One captured call inside a traced graph: its operators carry ``CALL_ATTR = k``,
    the probe is the graph input ``trace.probe_name(k)``."""
    number = len(trace.calls)
    with _without_activation(layer) as activation:
        with mx.AttrScope(**{CALL_ATTR: str(number)}):
            out = original(x, *args)
        probe = mx.sym.var(trace.probe_name(number))
        trace.calls.append((layer, x))
        out = mx.sym.elemwise_add(out, probe)
        return activation(out) if activation is not None else out


@contextlib.contextmanager
def _detached(layer, ctx):
    """Run ``layer`` on detached views of its parameters (they share memory)."""
    saved = []
    try:
        for param in layer._reg_params.values():
            if param._data is not None and ctx in param.list_ctx():
                slot = param.list_ctx().index(ctx)
                saved.append((param, slot, param._data[slot]))
                param._data[slot] = param._data[slot].detach()
        yield
    finally:
        for param, slot, original in saved:
            param._data[slot] = original


@contextlib.contextmanager
def _without_activation(layer):
    """Run a layer's own fused activation (``Dense(act=...)``) outside it: rules need
    the gradient with respect to the pre-activation output."""
    activation = layer.__dict__.get("act")
    if activation is None:
        yield None
        return
    object.__setattr__(layer, "act", None)
    try:
        yield activation
    finally:
        object.__setattr__(layer, "act", activation)
