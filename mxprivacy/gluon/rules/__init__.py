"""Per-layer rules for vectorized per-sample gradients.

A rule turns what the capture stored for one layer (its inputs and the gradient of the
loss with respect to its outputs, per sample) into per-sample squared gradient norms and
into the sum of clipped per-sample gradients, without a second backward pass.

Rules are registered by decorator and the modules that define them are imported
explicitly by :mod:`mxprivacy.gluon`, not as a side effect of this module::

    @register_grad_rule(nn.Dense)
    class DenseRule(GradRule):
        ...
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Type

__all__ = ["GradRule", "register_grad_rule", "rule_for", "registered_layer_types"]

_RULES: Dict[type, "GradRule"] = {}


class GradRule:
    """Base class of a per-layer rule.

    A rule sees ``inputs`` and ``out_grads``: lists with one NDArray per call of the
    layer in the forward pass (a layer may be called several times), each with the
    batch on axis 0. ``params`` lists the layer's trainable Parameters. ``cache`` is a
    dict private to this layer and this forward pass: ``sq_norms`` may leave there what
    ``clipped_sum`` can reuse (for example materialized per-sample gradients).
    """

    def problem(self, layer) -> Optional[str]:
        """Why this rule cannot handle ``layer`` (for example its layout), or None."""
        return None

    def sq_norms(self, layer, inputs: List, out_grads: List, params: Sequence, cache: Dict):
        """(B,) per-sample squared norms of the gradient of all ``params`` together."""
        raise NotImplementedError

    def clipped_sum(self, layer, inputs: List, out_grads: List, params: Sequence, factors,
                    cache: Dict):
        """Dict Parameter -> sum over samples of ``factors[i]`` x per-sample gradient."""
        raise NotImplementedError

    def per_sample(self, layer, inputs: List, out_grads: List, params: Sequence):
        """Dict Parameter -> (B, *param.shape) per-sample gradients (tests, diagnostics)."""
        raise NotImplementedError


def register_grad_rule(*layer_types: Type):
    """Class decorator: register a :class:`GradRule` subclass for ``layer_types``."""
    if not layer_types:
        raise TypeError("register_grad_rule needs at least one layer type")

    def decorate(rule_cls: Type[GradRule]) -> Type[GradRule]:
        instance = rule_cls()
        for layer_type in layer_types:
            _RULES[layer_type] = instance
        return rule_cls

    return decorate


def rule_for(layer) -> Optional[GradRule]:
    """The rule registered for the exact type of ``layer`` (subclasses must register).

    Exact types only: a subclass may override ``hybrid_forward`` so that a parent's
    rule would compute wrong gradients without any error.
    """
    return _RULES.get(type(layer))


def registered_layer_types() -> List[Type]:
    """Layer types that have a rule."""
    return list(_RULES)
