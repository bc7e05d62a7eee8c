"""Rule for ``gluon.nn.Dense``: 2-D and N-D inputs, ``flatten`` True or False.

For a sample with inputs a_t (t over sequence positions, T = 1 for 2-D inputs) and
output gradients d_t, the weight gradient is G = sum_t d_t a_t^T. Its squared norm is
computed without materializing G when that is cheaper (ghost norm):
``||G||^2 = sum_{t,s} (a_t . a_s)(d_t . d_s)``, which for T = 1 is ``|a|^2 |d|^2``.
The clipped sum is one matrix product: ``sum_i f_i G_i = (f * D)^T A``, the same cost
as the non-private weight gradient; a large one runs as ``FullyConnected`` (MKL-DNN) on
the transposed operands, 3.5x faster than ``dot`` for the MLP's first layer at batch 256.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from mxnet import gluon, nd

from . import GradRule, register_grad_rule
from ._ops import matmul_tn, row_sum, seq_sum, sq_row_sum

__all__ = ["DenseRule"]


def _as_sequences(layer, inputs: List, out_grads: List) -> Tuple:
    """Stack all calls as (B, T, in) inputs and (B, T, out) output gradients."""
    acts, grads = [], []
    for a, d in zip(inputs, out_grads):
        batch = a.shape[0]
        if layer._flatten:
            acts.append(a.reshape((batch, 1, -1)))
            grads.append(d.reshape((batch, 1, -1)))
        else:
            acts.append(a.reshape((batch, -1, a.shape[-1])))
            grads.append(d.reshape((batch, -1, d.shape[-1])))
    if len(acts) == 1:
        return acts[0], grads[0]
    return nd.concat(*acts, dim=1), nd.concat(*grads, dim=1)


def _weight_sq_norms(a, d):
    batch, steps, n_in = a.shape
    n_out = d.shape[2]
    if steps == 1:
        return sq_row_sum(a) * sq_row_sum(d)
    if 2 * steps * steps <= n_in * n_out:  # ghost norm: Gram matrices are smaller
        gram_a = nd.batch_dot(a, a, transpose_b=True)
        gram_d = nd.batch_dot(d, d, transpose_b=True)
        return row_sum(gram_a * gram_d)
    return sq_row_sum(nd.batch_dot(d, a, transpose_a=True))


def _trainable(layer, params: Sequence) -> Tuple[bool, bool]:
    wanted = set(id(p) for p in params)
    has_bias = layer.bias is not None and id(layer.bias) in wanted
    return id(layer.weight) in wanted, has_bias


@register_grad_rule(gluon.nn.Dense)
class DenseRule(GradRule):
    """Per-sample gradients of ``nn.Dense`` (weight (out, in), optional bias (out,))."""

    def sq_norms(self, layer, inputs, out_grads, params, cache):
        a, d = _as_sequences(layer, inputs, out_grads)
        use_weight, use_bias = _trainable(layer, params)
        if a.shape[1] == 1 and use_weight:  # |a|^2 |d|^2 (+ |d|^2 for the bias)
            d_sq = sq_row_sum(d)
            return d_sq * (sq_row_sum(a) + 1.0) if use_bias else d_sq * sq_row_sum(a)
        total = nd.zeros((a.shape[0],), ctx=a.context, dtype=a.dtype)
        if use_weight:
            total = total + _weight_sq_norms(a, d)
        if use_bias:
            bias = d.reshape((-3, 0)) if d.shape[1] == 1 else seq_sum(d)
            total = total + sq_row_sum(bias)
        return total

    def clipped_sum(self, layer, inputs, out_grads, params, factors, cache) -> Dict:
        a, d = _as_sequences(layer, inputs, out_grads)
        use_weight, use_bias = _trainable(layer, params)
        column = factors.reshape((-1, 1, 1))
        result = {}
        if use_weight:  # scale whichever operand is smaller: sum_i (f_i d_i)^T a_i
            if a.shape[2] < d.shape[2]:
                flat_d, flat_a = d.reshape((-1, d.shape[2])), nd.broadcast_mul(a, column)
            else:
                flat_d, flat_a = nd.broadcast_mul(d, column), a
            flat_d, flat_a = flat_d.reshape((-1, d.shape[2])), flat_a.reshape((-1, a.shape[2]))
            result[layer.weight] = matmul_tn(flat_d, flat_a)
        if use_bias:  # sum_i f_i (sum_t d_it) = f^T (per-sample sums)
            per_sample = seq_sum(d) if d.shape[1] > 1 else d.reshape((-1, d.shape[2]))
            result[layer.bias] = nd.dot(factors.reshape((1, -1)), per_sample).reshape((-1,))
        return result

    def per_sample(self, layer, inputs, out_grads, params) -> Dict:
        a, d = _as_sequences(layer, inputs, out_grads)
        use_weight, use_bias = _trainable(layer, params)
        result = {}
        if use_weight:
            result[layer.weight] = nd.batch_dot(d, a, transpose_a=True)
        if use_bias:
            result[layer.bias] = seq_sum(d)
        return result
