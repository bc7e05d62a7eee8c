"""Rule for :class:`~mxprivacy.gluon.poly.PolyActivation` with trainable coefficients.

``y = sum_k c_k x^k`` elementwise, so with ``d`` the gradient of the loss with respect
to the output, one sample's gradient is ``g_k = sum over its positions of d * x^k``: a
(B, degree + 1) array, small enough to materialize. A PolyActivation with constant
coefficients has no parameter and needs no rule (it acts on each sample alone).
"""
from __future__ import annotations

from typing import Dict

from mxnet import nd

from ..poly import PolyActivation
from . import register_grad_rule
from ._ops import row_sum
from .norm import _LocalRule, _stack_calls

__all__ = ["PolyActivationRule"]


def _power_sums(x, d, terms: int):
    """(B, terms) array whose column k is the per-sample sum of ``d * x^k``."""
    columns, weighted = [], d
    for k in range(terms):
        if k:
            weighted = weighted * x
        columns.append(row_sum(weighted).reshape((-1, 1)))
    return nd.concat(*columns, dim=1)


@register_grad_rule(PolyActivation)
class PolyActivationRule(_LocalRule):
    """Per-sample gradients of the ``coefficients`` Parameter (shape (degree + 1,))."""

    def per_sample(self, layer, inputs, out_grads, params) -> Dict:
        if id(layer.weight) not in set(id(p) for p in params):
            return {}
        terms = layer.weight.shape[0]
        calls = [{layer.weight: _power_sums(x, d, terms)} for x, d in zip(inputs, out_grads)]
        return _stack_calls(calls)
