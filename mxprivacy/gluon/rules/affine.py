"""Rule for :class:`~mxprivacy.gluon.affine.ChannelAffine` (``y = gamma_c x + beta_c``).

With ``d`` the gradient of the loss with respect to the output, one sample's gradients
are ``g_gamma[c] = sum over positions of d * x`` and ``g_beta[c] = sum of d``, over every
axis but the batch and the channel axis: (B, C) arrays, small enough to materialize.
"""
from __future__ import annotations

from typing import Dict

from ..affine import ChannelAffine
from . import register_grad_rule
from .norm import _LocalRule, _reduce_to_channels, _stack_calls

__all__ = ["ChannelAffineRule"]


@register_grad_rule(ChannelAffine)
class ChannelAffineRule(_LocalRule):
    """Per-sample gradients of ``ChannelAffine`` (gamma (C,), beta (C,))."""

    def per_sample(self, layer, inputs, out_grads, params) -> Dict:
        wanted = set(id(p) for p in params)
        calls = []
        for x, d in zip(inputs, out_grads):
            axis = layer.axis % x.ndim
            grads = {}
            if id(layer.gamma) in wanted:
                grads[layer.gamma] = _reduce_to_channels(d * x, axis)
            if id(layer.beta) in wanted:
                grads[layer.beta] = _reduce_to_channels(d, axis)
            calls.append(grads)
        return _stack_calls(calls)
