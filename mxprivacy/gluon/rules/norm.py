"""Rules for ``nn.LayerNorm``, ``nn.GroupNorm``, ``nn.InstanceNorm`` and ``nn.PReLU``.

These layers normalize within one sample, so per-sample gradients are local:
``g_gamma = sum over positions of d * x_hat`` and ``g_beta = sum of d``, reduced to the
parameter's axis. ``x_hat`` is recomputed from the stored input (with gamma=1, beta=0).
PReLU: ``g_alpha = sum of d * min(x, 0)`` per channel.
"""
from __future__ import annotations

from typing import Dict, List

from mxnet import gluon, nd

from . import GradRule, register_grad_rule
from ._ops import sq_row_sum

__all__ = ["AffineNormRule", "PReLURule"]


def _reduce_to_channels(values, axis: int, groups: int = 0):
    """(B, C) sums over every axis but batch and ``axis``; grouped into ``groups``."""
    moved = nd.swapaxes(values, 1, axis) if axis != 1 else values
    per_channel = nd.sum(moved.reshape((moved.shape[0], moved.shape[1], -1)), axis=2)
    if groups:
        return nd.sum(per_channel.reshape((per_channel.shape[0], groups, -1)), axis=2)
    return per_channel


def _normalized(layer, x):
    """x_hat for one call, and (axis, groups) describing the parameter's axis."""
    if isinstance(layer, gluon.nn.LayerNorm):
        axis = layer._axis % x.ndim
        ones = nd.ones((x.shape[axis],), ctx=x.context, dtype=x.dtype)
        return nd.LayerNorm(x, ones, ones * 0, axis=axis, eps=layer._epsilon), axis, 0
    if isinstance(layer, gluon.nn.GroupNorm):
        groups = layer._num_groups
        ones = nd.ones((groups,), ctx=x.context, dtype=x.dtype)
        return (nd.GroupNorm(x, ones, ones * 0, num_groups=groups, eps=layer._epsilon), 1,
                groups)
    axis = layer._axis % x.ndim  # InstanceNorm
    moved = nd.swapaxes(x, 1, axis) if axis != 1 else x
    ones = nd.ones((moved.shape[1],), ctx=x.context, dtype=x.dtype)
    normed = nd.InstanceNorm(moved, ones, ones * 0, eps=layer._epsilon)
    return (nd.swapaxes(normed, 1, axis) if axis != 1 else normed), axis, 0


def _stack_calls(per_call: List[Dict]) -> Dict:
    total: Dict = {}
    for grads in per_call:
        for param, g in grads.items():
            total[param] = g if param not in total else total[param] + g
    return total


class _LocalRule(GradRule):
    """Per-sample gradients are small (B, C): materialize them, then reduce."""

    def sq_norms(self, layer, inputs, out_grads, params, cache):
        cache.clear()
        cache.update(self.per_sample(layer, inputs, out_grads, params))
        total = nd.zeros((inputs[0].shape[0],), ctx=inputs[0].context)
        for g in cache.values():
            total = total + sq_row_sum(g)
        return total

    def clipped_sum(self, layer, inputs, out_grads, params, factors, cache) -> Dict:
        grads = cache or self.per_sample(layer, inputs, out_grads, params)
        return {p: nd.dot(factors.reshape((1, -1)), g.reshape((g.shape[0], -1))).reshape(p.shape)
                for p, g in grads.items()}


@register_grad_rule(gluon.nn.LayerNorm, gluon.nn.GroupNorm, gluon.nn.InstanceNorm)
class AffineNormRule(_LocalRule):
    def per_sample(self, layer, inputs, out_grads, params) -> Dict:
        wanted = set(id(p) for p in params)
        calls = []
        for x, d in zip(inputs, out_grads):
            x_hat, axis, groups = _normalized(layer, x)
            grads = {}
            if id(layer.gamma) in wanted:
                grads[layer.gamma] = _reduce_to_channels(d * x_hat, axis, groups)
            if id(layer.beta) in wanted:
                grads[layer.beta] = _reduce_to_channels(d, axis, groups)
            calls.append(grads)
        return _stack_calls(calls)


@register_grad_rule(gluon.nn.PReLU)
class PReLURule(_LocalRule):
    def per_sample(self, layer, inputs, out_grads, params) -> Dict:
        calls = []
        for x, d in zip(inputs, out_grads):
            contrib = d * nd.minimum(x, nd.zeros_like(x))
            if layer.alpha.shape[0] == 1:
                g = nd.sum(contrib.reshape((x.shape[0], -1)), axis=1, keepdims=True)
            else:
                g = _reduce_to_channels(contrib, 1)
            calls.append({layer.alpha: g})
        return _stack_calls(calls)
