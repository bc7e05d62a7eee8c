"""Rule for ``nn.Embedding``.

A sample's gradient is the sum of its output gradients d_t scattered to the rows of its
token ids. Its squared norm needs no scatter:
``||G||^2 = sum_{t,s} [id_t == id_s] (d_t . d_s)``, a masked Gram matrix per sample.
The clipped sum is the scatter of ``f_i d_t`` over all samples, computed by MXNet's own
Embedding backward with the scaled output gradients as head gradients.

Ids are first mapped to the rows MXNet reads: it truncates fractional ids and clips them
into ``[0, V-1]`` (an unknown-token id V, or padding -1, reads a real row). The norm and
the clipped sum both use the mapped ids, so each sample's contribution has exactly the
norm the clipping factor was computed from; with the raw ids, ids 7, 8 and 9 at V=5 would
count as three rows where MXNet reads row 4 three times, under-estimating the norm.
Non-finite ids map to row 0.
"""
from __future__ import annotations

from typing import Dict, Tuple

from mxnet import autograd, gluon, nd

from . import GradRule, register_grad_rule
from ._ops import row_sum

__all__ = ["EmbeddingRule"]


def rows_read(ids, vocabulary: int):
    """The weight rows MXNet's Embedding reads for ``ids``: truncated, clipped to
    ``[0, vocabulary-1]``, and 0 for non-finite ids."""
    ids = ids.astype("float64", copy=False)
    rows = nd.clip(nd.trunc(ids), 0, vocabulary - 1)
    return nd.where(nd.contrib.isfinite(ids), rows, nd.zeros_like(rows))


def _tokens(layer, inputs, out_grads) -> Tuple:
    """(B, T) rows read and (B, T, D) output gradients over all calls."""
    vocabulary = layer.weight.shape[0]
    ids = [rows_read(x.reshape((x.shape[0], -1)), vocabulary) for x in inputs]
    grads = [d.reshape((d.shape[0], -1, d.shape[-1])) for d in out_grads]
    if len(ids) == 1:
        return ids[0], grads[0]
    return nd.concat(*ids, dim=1), nd.concat(*grads, dim=1)


def _scatter(layer, ids, grads):
    """sum over (sample, position) of grads scattered to rows ``ids``: weight-shaped."""
    weight = nd.zeros(layer.weight.shape, ctx=grads.context, dtype=grads.dtype)
    weight.attach_grad()
    with autograd.record():
        # int64 ids address every row exactly; the weight's dtype would merge rows
        # above 2^24 (float32) or 2048 (float16) that the norm counts apart.
        out = nd.Embedding(ids.astype("int64", copy=False), weight,
                           input_dim=weight.shape[0], output_dim=weight.shape[1])
    out.backward(grads)
    return weight.grad


@register_grad_rule(gluon.nn.Embedding)
class EmbeddingRule(GradRule):
    """Per-sample gradients of ``nn.Embedding`` (dense gradients)."""

    def problem(self, layer):
        if layer._kwargs.get("sparse_grad"):
            return "sparse_grad=True is not supported; use the default dense gradient."
        return None

    def sq_norms(self, layer, inputs, out_grads, params, cache):
        ids, grads = _tokens(layer, inputs, out_grads)
        same = nd.broadcast_equal(ids.expand_dims(2), ids.expand_dims(1)).astype(grads.dtype)
        gram = nd.batch_dot(grads, grads, transpose_b=True)
        return row_sum(same * gram)

    def clipped_sum(self, layer, inputs, out_grads, params, factors, cache) -> Dict:
        ids, grads = _tokens(layer, inputs, out_grads)
        scaled = nd.broadcast_mul(grads, factors.reshape((-1, 1, 1)))
        return {layer.weight: _scatter(layer, ids, scaled)}

    def per_sample(self, layer, inputs, out_grads, params) -> Dict:
        ids, grads = _tokens(layer, inputs, out_grads)
        rows = [_scatter(layer, ids[i:i + 1], grads[i:i + 1]) for i in range(ids.shape[0])]
        return {layer.weight: nd.stack(*rows, axis=0)}
