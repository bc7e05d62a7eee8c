"""Checks that a Gluon network can be trained with per-sample privacy.

:func:`validate` lists every problem; :func:`check` raises on the first list.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import json

import mxnet as mx
from mxnet import gluon

from ..errors import UnsupportedLayerError
from .rules import rule_for

__all__ = ["validate", "check", "parameterized_layers",
           "is_hybridized", "has_all_rules"]

_SAMPLE_MIXING = tuple(
    t for t in (getattr(gluon.nn.basic_layers, "_BatchNorm", None),
                getattr(gluon.nn, "BatchNorm", None), getattr(gluon.nn, "SyncBatchNorm", None),
                getattr(getattr(gluon, "contrib", None) and gluon.contrib.nn, "SyncBatchNorm", None))
    if t is not None)

# Operators that compute statistics over the batch axis in training mode.
_BATCH_STAT_OPS = frozenset({"BatchNorm", "BatchNorm_v1", "_contrib_BatchNormWithReLU",
                             "_contrib_SyncBatchNorm", "SyncBatchNorm", "CuDNNBatchNorm"})
_RUNNING_STATS = ("running_mean", "running_var", "moving_mean", "moving_var")


def _traced_ops(block) -> frozenset:
    """Operators of a user-defined HybridBlock's graph (empty when it cannot be traced).

    Built-in Gluon layers are known by class; a block defined elsewhere is traced with a
    symbolic input, so a custom layer calling ``F.BatchNorm`` is found by what it does.
    """
    if not isinstance(block, gluon.HybridBlock) or type(block).__module__.startswith("mxnet."):
        return frozenset()
    try:
        graph = block(mx.sym.var("data"))
        nodes = json.loads(graph.tojson())["nodes"]
    except Exception:  # needs several inputs, or shapes: the class checks still apply
        return frozenset()
    return frozenset(node["op"] for node in nodes)


def mixes_samples(block) -> bool:
    """Whether ``block`` is a known batch-statistics layer: by class (subclasses of
    Gluon's ``_BatchNorm``, ``BatchNormReLU``, ``SyncBatchNorm``) or by its running
    statistics parameters."""
    if _SAMPLE_MIXING and isinstance(block, _SAMPLE_MIXING):
        return True
    return any(name.endswith(_RUNNING_STATS) for name in block._reg_params)


def sample_mixing_blocks(net) -> List:
    """Every block that computes batch statistics: known ones, and user-defined hybrid
    blocks whose traced graph contains a batch-statistics operator while none of their
    children does (so the finding names the innermost block)."""
    found: List = []

    def visit(block) -> bool:
        below = [visit(child) for child in block._children.values()]
        if mixes_samples(block) or (not any(below)
                                    and _traced_ops(block) & _BATCH_STAT_OPS):
            found.append(block)
            return True
        return any(below)

    visit(net)
    return found


_FUSED_RNN = (gluon.rnn.LSTM, gluon.rnn.GRU, gluon.rnn.RNN)


def _walk(block):
    yield block
    for child in block._children.values():
        yield from _walk(child)


def parameterized_layers(net) -> List:
    """Blocks that directly own at least one trainable Parameter."""
    return [b for b in _walk(net)
            if any(p.grad_req != "null" for p in b._reg_params.values())]


def is_hybridized(net) -> bool:
    """Whether any block in ``net`` has an active hybridized (cached) graph."""
    return any(getattr(b, "_active", False) for b in _walk(net))


def has_all_rules(net) -> bool:
    """Whether every parameterized layer has a vectorized rule."""
    return all(rule_for(layer) is not None and rule_for(layer).problem(layer) is None
               for layer in parameterized_layers(net))


def _shared_parameters(layers: Sequence) -> Dict[str, List[str]]:
    owners: Dict[int, List[str]] = {}
    names: Dict[int, str] = {}
    for layer in layers:
        for p in layer._reg_params.values():
            if p.grad_req != "null":
                owners.setdefault(id(p), []).append(layer.name)
                names[id(p)] = p.name
    return {names[k]: v for k, v in owners.items() if len(v) > 1}


def validate(net, mode: str = "vectorized") -> List[str]:
    """List every reason ``net`` cannot be trained privately in ``mode``.

    Parameters
    ----------
    net : gluon.Block
    mode : {"vectorized", "microbatch"}

    Returns
    -------
    list of str
        Empty when the network is fine.
    """
    problems = []
    mixing = sample_mixing_blocks(net)
    for block in mixing:
        problems.append(
            f"{block.name} ({type(block).__name__}) mixes samples through batch statistics "
            "and its running averages see raw data: replace it with nn.GroupNorm, "
            "nn.LayerNorm or nn.InstanceNorm (mxprivacy.fix(net) does it).")
    if mode == "vectorized":
        layers = parameterized_layers(net)
        for layer in layers:
            if layer in mixing:
                continue  # already reported above
            rule = rule_for(layer)
            reason = rule.problem(layer) if rule is not None else None
            if reason:
                problems.append(f"{layer.name} ({type(layer).__name__}): {reason}")
            if rule is None and isinstance(layer, _FUSED_RNN):
                problems.append(
                    f"{layer.name} ({type(layer).__name__}) is a fused recurrent layer whose "
                    "per-sample gradients cannot be captured: use mxprivacy.gluon.DPLSTM / "
                    "DPGRU / DPRNN (same API and weights), or call mxprivacy.fix(net).")
            elif rule is None:
                problems.append(
                    f"{layer.name} ({type(layer).__name__}) has trainable parameters but no "
                    "vectorized per-sample gradient rule: use PrivateBlock(net, "
                    "mode='microbatch'), freeze it (grad_req='null'), or register a rule "
                    "with @mxprivacy.register_grad_rule.")
        for param, owners in _shared_parameters(layers).items():
            problems.append(
                f"Parameter {param} is shared by layers {owners}; vectorized mode cannot "
                "combine their per-sample gradients: use mode='microbatch'.")
    return problems


def check(net, mode: str) -> None:
    """Raise :class:`UnsupportedLayerError` listing every problem of ``validate``."""
    problems = validate(net, mode)
    if problems:
        raise UnsupportedLayerError(
            f"The network cannot be trained privately in {mode} mode:\n- "
            + "\n- ".join(problems))
