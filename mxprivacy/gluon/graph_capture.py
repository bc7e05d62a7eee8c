"""Vectorized per-sample capture inside a hybridized graph.

A hybridized block runs its cached graph, which would skip the per-layer probes of the
imperative capture. When such a block (the outermost active one: the whole net after
``net.hybridize()``, or a hybridized child of a plain ``Block``) is reached during a
recorded forward pass of a vectorized :class:`~mxprivacy.gluon.PrivateBlock`, it runs
a *capture graph* instead, built once from ``block(mx.sym.var("data"))``:

- each call of a rule layer is traced by the capture protocol
  (:mod:`~mxprivacy.gluon.capture`): its pre-activation output gets ``+ probe``, where
  the probe is a graph *input* (zeros with ``attach_grad``, shaped by shape inference
  for each input shape), and the layer input becomes an extra graph *output*;
- every parameter enters as an input fed with ``param.data(ctx).detach()``, so that
  backward computes only the probe gradients, not the summed parameter gradients (the
  Parameters keep ``grad_req='write'`` for the trainer);
- the graph runs as one ``CachedOp`` with the block's own ``hybridize`` flags
  (``static_alloc``, ``static_shape``), and its captures feed
  :meth:`VectorizedShard.add`, so rules, clipping, noise and accounting are unchanged.

**No layer escapes capture silently.** Before the graph is used, every operator that
reads a trainable parameter is matched to a layer through the parameter's name: it
must belong to a captured call of the layer that owns the parameter. A parameter read
by any other operator (weight tying, ``F.dot(h, layer.weight.var())``, a layer whose
``hybrid_forward`` is called directly) raises :class:`TiedParameterError`; a parameter
of a layer without a rule raises :class:`UnsupportedLayerError`; a variable that is
neither an input nor a parameter of the block raises :class:`HybridizedCaptureError`.
A trainable parameter that no operator reads gets no gradient, so nothing escapes.
"""
from __future__ import annotations

import json
from typing import Dict, List, Tuple

import mxnet as mx
from mxnet import nd
from mxnet.gluon.block import _flatten, _regroup

from ..errors import (HybridizedCaptureError, MXPrivacyError, TiedParameterError,
                      UnsupportedLayerError)
from .capture import CALL_ATTR, new_probe
from .rules import rule_for

__all__ = ["GraphCapture", "graph_key"]

_PROBE = "__mxprivacy_probe{}__"


def graph_key(block, count: int) -> Tuple:
    """What a capture graph depends on: the block's hybridize flags, the number of
    inputs, which parameters are trainable (a layer unfrozen after the graph was built
    must be captured), and the identity of every child (a replaced child must run)."""
    params = tuple((p.name, p.grad_req) for p in block.collect_params().values())
    children = tuple(id(b) for b in _descendants(block))
    return (repr(getattr(block, "_flags", ())), count, params, children)


def _descendants(block):
    for child in block._children.values():
        yield child
        yield from _descendants(child)


class _Trace:
    """What one symbolic trace of a block recorded: each captured call, in order."""

    def __init__(self) -> None:
        self.calls: List[Tuple] = []  # (layer, input symbol)

    @staticmethod
    def probe_name(number: int) -> str:
        return _PROBE.format(number)


def _walk(block):
    yield block
    for child in block._children.values():
        yield from _walk(child)


def _owners(block) -> Dict:
    """Parameter name -> (Parameter, the layer that registers it)."""
    owners: Dict = {}
    for layer in _walk(block):
        for param in layer._reg_params.values():
            known = owners.get(param.name)
            if known is not None and known[0] is not param:
                raise HybridizedCaptureError(
                    f"Two different parameters of {block.name} are named {param.name}, so "
                    "its graph cannot tell them apart. Give the blocks distinct prefixes.")
            owners.setdefault(param.name, (param, layer))
    return owners


class GraphCapture:
    """The capture graph of one hybridized block (see the module docstring)."""

    def __init__(self, owner, block, count: int) -> None:
        self.block = block
        self.key = graph_key(block, count)
        names = ["data"] if count == 1 else [f"data{i}" for i in range(count)]
        data = [mx.sym.var(name) for name in names]
        owners = _owners(block)
        for param, _ in owners.values():
            param.var()  # created here, outside any captured call's attribute scope
        trace = _Trace()
        owner._trace = trace
        try:
            out = block(*data)
        except MXPrivacyError:
            raise
        except Exception as err:  # shape-dependent Python, non-array inputs, ...
            raise HybridizedCaptureError(
                f"The hybridized block {block.name} could not be traced symbolically for "
                f"per-sample capture ({type(err).__name__}: {err}). Call "
                f"{block.name}.hybridize(active=False), or use "
                "PrivateBlock(net, mode='microbatch').") from err
        finally:
            owner._trace = None
        flat, self._out_format = _flatten(out, "output")
        outputs = list(flat)
        self._num_out = len(mx.sym.Group(outputs).list_outputs())
        by_id = {id(sym): i for i, sym in enumerate(data)}
        self._calls = []  # (layer, ("data", i) or ("out", j))
        extra: Dict[int, int] = {}
        for layer, x in trace.calls:
            if id(x) in by_id:
                self._calls.append((layer, ("data", by_id[id(x)])))
                continue
            if len(x.list_outputs()) != 1:
                raise HybridizedCaptureError(
                    f"Layer {layer.name} received a grouped symbol as input inside "
                    f"{block.name}; per-sample capture needs one array per layer input. "
                    "Use mode='microbatch'.")
            if id(x) not in extra:
                extra[id(x)] = len(outputs)
                outputs.append(x)
            self._calls.append((layer, ("out", extra[id(x)])))
        self.symbol = mx.sym.Group(outputs)
        probes = [trace.probe_name(k) for k in range(len(trace.calls))]
        _check_coverage(self.symbol, block, trace, owners, set(names) | set(probes))
        self._feed = []  # per graph input: ("data", i), ("probe", k) or ("param", Parameter)
        for name in self.symbol.list_inputs():
            if name in names:
                self._feed.append(("data", names.index(name)))
            elif name in probes:
                self._feed.append(("probe", probes.index(name)))
            else:
                self._feed.append(("param", owners[name][0]))
        self._probe_names = probes
        self._names = names
        flags = [("data_indices", list(range(len(self._feed)))), ("param_indices", [])]
        self._op = nd.CachedOp(self.symbol, flags + list(getattr(block, "_flags", [])))
        self._shapes: Dict = {}

    def _probe_specs(self, arrays, ctx) -> List:
        """(shape, dtype) of each probe for these input shapes (inferred once each)."""
        key = tuple((a.shape, a.dtype) for a in arrays)
        if key not in self._shapes:
            shapes = {n: a.shape for n, a in zip(self._names, arrays)}
            types = {n: a.dtype for n, a in zip(self._names, arrays)}
            for kind, ref in self._feed:
                if kind == "param":
                    shapes[ref.name] = ref.data(ctx).shape
                    types[ref.name] = ref.data(ctx).dtype
            try:
                arg_shapes, _, _ = self.symbol.infer_shape(**shapes)
                arg_types, _, _ = self.symbol.infer_type(**types)
            except Exception as err:
                raise HybridizedCaptureError(
                    f"Shape inference failed for the capture graph of {self.block.name} "
                    f"on inputs {list(key)}: {err}") from err
            found = dict(zip(self.symbol.list_arguments(), zip(arg_shapes, arg_types)))
            self._shapes[key] = [found[name] for name in self._probe_names]
        return self._shapes[key]

    def run(self, shard, x, *args):
        """Run the capture graph (under ``autograd.record``); add its captures to
        ``shard``; return the block's output."""
        arrays = (x,) + tuple(args)
        if not all(isinstance(a, nd.NDArray) for a in arrays):
            raise HybridizedCaptureError(
                f"The hybridized block {self.block.name} got a non-array input; capture "
                "graphs take arrays only. Un-hybridize it or use mode='microbatch'.")
        ctx = x.context
        probes = []
        for shape, dtype in self._probe_specs(arrays, ctx):
            probes.append(new_probe(nd.zeros(shape, ctx=ctx, dtype=dtype)))
        feed = []
        for kind, ref in self._feed:
            if kind == "data":
                feed.append(arrays[ref])
            elif kind == "probe":
                feed.append(probes[ref])
            else:
                feed.append(ref.data(ctx).detach())
        results = self._op(*feed)
        if isinstance(results, nd.NDArray):
            results = [results]
        for (layer, (kind, index)), probe in zip(self._calls, probes):
            shard.add(layer, arrays[index] if kind == "data" else results[index], probe)
        return _regroup(list(results[:self._num_out]), self._out_format)


def _check_coverage(symbol, block, trace, owners: Dict, inputs) -> None:
    """Every operator reading a trainable parameter belongs to a captured call of the
    layer that owns it (see the module docstring)."""
    nodes = json.loads(symbol.tojson())["nodes"]
    for node in nodes:
        if node["op"] == "null":
            if node["name"] not in inputs and node["name"] not in owners:
                raise HybridizedCaptureError(
                    f"The graph of {block.name} reads the variable {node['name']}, which is "
                    "neither one of its inputs nor one of its parameters (a parameter of "
                    "another block?), so its gradient could escape per-sample capture. "
                    "Wrap the block that owns it too, or use mode='microbatch'.")
            continue
        call = (node.get("attrs") or {}).get(CALL_ATTR)
        for source, _, _ in node["inputs"]:
            var = nodes[source]
            if var["op"] != "null" or var["name"] not in owners:
                continue
            param, layer = owners[var["name"]]
            if param.grad_req == "null":
                continue
            if rule_for(layer) is None:
                raise UnsupportedLayerError(
                    f"{layer.name} ({type(layer).__name__}) has trainable parameters but no "
                    "vectorized per-sample gradient rule: use PrivateBlock(net, "
                    "mode='microbatch'), freeze it (grad_req='null'), or register a rule.")
            if call is None or trace.calls[int(call)][0] is not layer:
                where = "outside any captured layer call" if call is None else \
                    f"inside a call of {trace.calls[int(call)][0].name}"
                raise TiedParameterError(
                    f"Parameter {param.name} of {layer.name} is read by operator "
                    f"{node['op']} ({node['name']}) {where} in the hybridized graph of "
                    f"{block.name} (weight tying, layer.weight.var() used elsewhere, or a "
                    "layer's hybrid_forward called directly). That part of its per-sample "
                    "gradient would escape clipping. Use PrivateBlock(net, "
                    "mode='microbatch'), which is exact for weights tied inside the net, "
                    "or untie them.")
