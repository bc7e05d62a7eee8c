"""Rules for ``nn.Conv1D/2D/3D`` and ``nn.Conv1D/2D/3DTranspose`` (channels-first layouts).

Convolution: with the input unfolded by ``im2col`` into ``U`` (C*K, L) per sample and the
output gradient ``D`` (O, L), the weight gradient of one sample is ``D U^T`` (per group).
Its squared norm is computed either by materializing it (then reused for the clipped
sum), or without doing so (ghost norm) through Gram matrices:
``||D U^T||^2 = sum_{l,m} (U^T U)_{lm} (D^T D)_{lm}``, when that costs fewer operations
(the cost model of :func:`_use_ghost`). The ghost path leaves ``U`` and ``D`` in the
cache, and the clipped sum is then one product over all samples and positions.

Transposed convolution swaps the roles: the output gradient is unfolded (it has the
spatial size of the output) and the input plays the part of ``D``.

A 2-D convolution with one input channel per group (a first layer on grey images,
depthwise convolutions) materializes its per-sample gradients without ``im2col``, as one
convolution grouped over the batch (:func:`_grouped_conv_grads`): each (sample, input
channel) is a group whose filters are that sample's output gradients, and the layer's
stride and dilation swap places. MKL-DNN runs it about twice as fast as im2col followed
by ``batch_dot`` (4.4 ms against 8.5 ms for the Opacus MNIST CNN's first layer at batch
256).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
from mxnet import gluon, nd

from . import GradRule, register_grad_rule
from ._ops import batch_sum, matmul_nt, mkldnn_float32, row_sum, sq_row_sum

__all__ = ["ConvRule"]

# Tests turn the grouped-convolution path off to compare it with im2col + batch_dot.
GROUPED_CONV = True

_LAYOUTS = ("NCW", "NCHW", "NCDHW")
_CONV = (gluon.nn.Conv1D, gluon.nn.Conv2D, gluon.nn.Conv3D)
_TRANSPOSED = (gluon.nn.Conv1DTranspose, gluon.nn.Conv2DTranspose, gluon.nn.Conv3DTranspose)


def _factors(layer, a, d) -> Tuple:
    """(U, D, groups): U (B*g, rows, L) unfolded operand, D (B*g, cols, L) the other one."""
    kw = layer._kwargs
    groups = int(kw.get("num_group", 1))
    batch = a.shape[0]
    unfold_src, other = (d, a) if isinstance(layer, _TRANSPOSED) else (a, d)
    kernel, stride, dilate, pad = kw["kernel"], kw["stride"], kw["dilate"], kw["pad"]
    if len(kernel) == 1:  # MXNet's 1-D im2col fails at run time: unfold as 2-D, height 1
        unfold_src = unfold_src.reshape((batch, unfold_src.shape[1], 1, -1))
        kernel, stride, dilate, pad = ((1,) + tuple(kernel), (1,) + tuple(stride),
                                       (1,) + tuple(dilate), (0,) + tuple(pad))
    if len(kernel) == 3:  # MXNet's 3-D im2col fails at run time too: unfold by slicing
        unfolded = _unfold_3d(unfold_src, kernel, stride, dilate, pad)
    else:
        unfolded = nd.im2col(unfold_src, kernel=kernel, stride=stride, dilate=dilate, pad=pad)
    length = unfolded.shape[2]
    unfolded = unfolded.reshape((batch * groups, -1, length))
    other = other.reshape((batch * groups, -1, length))
    return unfolded, other, groups


def _unfold_3d(x, kernel, stride, dilate, pad):
    """(B, C*K, L) patches of a (B, C, D, H, W) input, in im2col's (C, kd, kh, kw) order."""
    if any(pad):
        x = nd.pad(x, mode="constant", pad_width=(0, 0, 0, 0) + sum(((p, p) for p in pad), ()))
    spatial = x.shape[2:]
    out = [(n - dl * (k - 1) - 1) // st + 1 for n, k, st, dl in zip(spatial, kernel, stride, dilate)]
    patches = []
    for kd in range(kernel[0]):
        for kh in range(kernel[1]):
            for kw in range(kernel[2]):
                start = (kd * dilate[0], kh * dilate[1], kw * dilate[2])
                end = tuple(s + st * (o - 1) + 1 for s, st, o in zip(start, stride, out))
                patches.append(nd.slice(x, begin=(None, None) + start, end=(None, None) + end,
                                        step=(1, 1) + tuple(stride)))
    stacked = nd.stack(*patches, axis=2)  # (B, C, K, *out)
    return stacked.reshape((x.shape[0], -1, out[0] * out[1] * out[2]))


def _grouped_conv_ok(layer, a) -> bool:
    """Whether :func:`_grouped_conv_grads` applies: 2-D, not transposed, one input
    channel per group, float32 on the CPU (where it was measured)."""
    kw = layer._kwargs
    return (GROUPED_CONV and not isinstance(layer, _TRANSPOSED) and len(kw["kernel"]) == 2
            and a.ndim == 4 and a.shape[1] == int(kw.get("num_group", 1))
            and mkldnn_float32(a))


def _grouped_conv_grads(layer, a, d):
    """(B, *weight.shape) per-sample weight gradients of a 2-D convolution with one input
    channel per group, as one convolution grouped over (sample, channel).

    ``g[b, o, 0, i, j] = sum_{y,x} d[b, o, y, x] xpad[b, c(o), dl*i + s*y, dl*j + s*x]``:
    the input correlated with the output gradient dilated by the stride ``s``, at stride
    ``dl`` (the layer's dilation). Rows past the kernel size are sliced off."""
    kw = layer._kwargs
    batch, channels = a.shape[0], a.shape[1]
    out_channels, out_size = d.shape[1], d.shape[2:]
    grads = nd.Convolution(
        a.reshape((1, batch * channels) + a.shape[2:]),
        d.reshape((batch * out_channels, 1) + out_size),
        kernel=out_size, stride=kw["dilate"], dilate=kw["stride"], pad=kw["pad"],
        num_filter=batch * out_channels, num_group=batch * channels, no_bias=True)
    kernel = tuple(kw["kernel"])
    if grads.shape[2:] != kernel:
        grads = nd.slice(grads, begin=(None, None, 0, 0), end=(None, None) + kernel)
    return grads.reshape((batch,) + layer.weight.shape)


def _trainable(layer, params) -> Tuple[bool, bool]:
    wanted = set(id(p) for p in params)
    bias = getattr(layer, "bias", None)
    return id(layer.weight) in wanted, bias is not None and id(bias) in wanted


def _bias_grads(layer, d):
    """(B, O) per-sample bias gradients: the output gradient summed over positions."""
    flat = d.reshape((-1, int(np.prod(d.shape[2:]))))
    return row_sum(flat).reshape((d.shape[0], d.shape[1]))


def _weight_per_sample(layer, unfolded, other, batch):
    """(B, *weight.shape) per-sample weight gradients."""
    grads = nd.batch_dot(other, unfolded, transpose_b=True)
    return grads.reshape((batch,) + layer.weight.shape)


# Cost model of the two norm paths, per sample, in multiply-adds of a batched product
# (batch_dot on OpenBLAS, about 0.1 ns each here). A product through FullyConnected
# (MKL-DNN) costs about a third of that, and one pass over an array about _PASS per
# element. Measured at batch 256: the Opacus CNN's second conv (rows 256, cols 32,
# length 25) takes 10.1 ms on the ghost path against 12.4 ms materialized; its first
# conv (length 196) is far cheaper materialized.
_PASS = 6


def _use_ghost(layer, a, d) -> bool:
    """Whether the ghost norm costs less than materializing the per-sample gradients.

    Materialized: the batched product, then the square-sum and the clipped sum's pass
    over the gradients (about three passes). Ghost: two Gram matrices, then for the
    clipped sum one product over all samples (``FullyConnected``) after a transposition
    of the unfolded input; with groups the clipped sum is a batched product again.
    """
    groups = int(layer._kwargs.get("num_group", 1))
    small, large = (a, d) if isinstance(layer, _TRANSPOSED) else (d, a)
    length = int(np.prod(small.shape[2:]))  # positions of the unfolded operand's output
    rows = large.shape[1] // groups * int(np.prod(layer._kwargs["kernel"]))
    cols = small.shape[1] // groups
    product = rows * cols * length
    if groups > 1:
        return 2 * length * length * (rows + cols) < product
    materialized = 3 * _PASS * rows * cols + (
        product / 2 if _grouped_conv_ok(layer, a) else product + _PASS * rows * length)
    ghost = length * length * (rows + cols) + product / 3 + 2 * _PASS * rows * length
    return ghost < materialized


def _weight_sq_norms(layer, a, d, cache: Dict):
    batch = a.shape[0]
    if _use_ghost(layer, a, d):
        unfolded, other, groups = _factors(layer, a, d)
        cache["unfolded"] = (unfolded, other, groups)  # for the clipped sum
        gram_u = nd.batch_dot(unfolded, unfolded, transpose_a=True)
        gram_o = nd.batch_dot(other, other, transpose_a=True)
        return row_sum((gram_u * gram_o).reshape((batch, -1)))
    if _grouped_conv_ok(layer, a):
        grads = _grouped_conv_grads(layer, a, d)
    else:
        unfolded, other, _ = _factors(layer, a, d)
        grads = _weight_per_sample(layer, unfolded, other, batch)
    cache["weight"] = grads
    return sq_row_sum(grads)


def _clipped_weight(layer, inputs, out_grads, factors, cached=None):
    """sum_i f_i D_i U_i^T as one matrix product over all samples and positions
    (``cached``: the single call's ``_factors``, when ``sq_norms`` left them)."""
    total = None
    for a, d in zip(inputs, out_grads):
        unfolded, other, groups = cached if cached is not None else _factors(layer, a, d)
        scaled = nd.broadcast_mul(other, nd.repeat(factors, groups).reshape((-1, 1, 1)))
        if groups == 1:
            lhs = nd.transpose(scaled, axes=(1, 0, 2)).reshape((scaled.shape[1], -1))
            rhs = nd.transpose(unfolded, axes=(1, 0, 2)).reshape((unfolded.shape[1], -1))
            part = matmul_nt(lhs, rhs).reshape(layer.weight.shape)
        else:
            per = nd.batch_dot(scaled, unfolded, transpose_b=True)
            part = batch_sum(per.reshape((a.shape[0],) + layer.weight.shape))
        total = part if total is None else total + part
        cached = None
    return total


@register_grad_rule(*(_CONV + _TRANSPOSED))
class ConvRule(GradRule):
    """Per-sample gradients of convolutions (stride, padding, dilation, groups, bias)."""

    def problem(self, layer) -> Optional[str]:
        layout = layer._kwargs.get("layout", "NCHW")
        if layout not in _LAYOUTS:
            return (f"layout {layout} is not supported by the vectorized rule; use a "
                    "channels-first layout (NCW, NCHW, NCDHW) or mode='microbatch'.")
        return None

    def sq_norms(self, layer, inputs, out_grads, params, cache):
        use_weight, use_bias = _trainable(layer, params)
        batch = inputs[0].shape[0]
        total = nd.zeros((batch,), ctx=inputs[0].context, dtype=inputs[0].dtype)
        cache.clear()
        if len(inputs) > 1:  # a layer called several times: per-call gradients add up
            grads = self.per_sample(layer, inputs, out_grads, params)
            for param, g in grads.items():
                cache["weight" if param is layer.weight else "bias"] = g
                total = total + sq_row_sum(g)
            return total
        if use_weight:
            total = total + _weight_sq_norms(layer, inputs[0], out_grads[0], cache)
        if use_bias:
            cache["bias"] = _bias_grads(layer, out_grads[0])
            total = total + sq_row_sum(cache["bias"])
        return total

    def clipped_sum(self, layer, inputs, out_grads, params, factors, cache) -> Dict:
        use_weight, use_bias = _trainable(layer, params)
        result = {}
        if use_weight:
            grads = cache.get("weight")
            if grads is None:
                result[layer.weight] = _clipped_weight(layer, inputs, out_grads, factors,
                                                       cache.get("unfolded"))
            else:
                flat = nd.dot(factors.reshape((1, -1)), grads.reshape((grads.shape[0], -1)))
                result[layer.weight] = flat.reshape(layer.weight.shape)
        if use_bias:
            grads = cache.get("bias")
            if grads is None:
                grads = sum(_bias_grads(layer, d) for d in out_grads)
            result[layer.bias] = nd.dot(factors.reshape((1, -1)), grads).reshape((-1,))
        return result

    def per_sample(self, layer, inputs, out_grads, params) -> Dict:
        use_weight, use_bias = _trainable(layer, params)
        batch = inputs[0].shape[0]
        result = {}
        for a, d in zip(inputs, out_grads):
            if use_weight:
                if _grouped_conv_ok(layer, a):
                    g = _grouped_conv_grads(layer, a, d)
                else:
                    unfolded, other, _ = _factors(layer, a, d)
                    g = _weight_per_sample(layer, unfolded, other, batch)
                result[layer.weight] = g if layer.weight not in result else result[layer.weight] + g
            if use_bias:
                g = _bias_grads(layer, d)
                result[layer.bias] = g if layer.bias not in result else result[layer.bias] + g
        return result
