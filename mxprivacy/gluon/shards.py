"""What one recorded forward pass captured, per mode.

A *shard* is one call of a :class:`~mxprivacy.gluon.PrivateBlock` under
``autograd.record()``: one batch on one context. After ``loss.backward()`` a shard can
give, for each clipping unit (a sample, or a microbatch), the squared norm of its whole
gradient and the sum of clipped gradients. ``DPTrainer`` consumes shards in ``step``.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
from mxnet import nd

from ..errors import PerSampleGradientError, StaleGradientError
from .rules import rule_for
from .rules._ops import sq_row_sum

__all__ = ["VectorizedShard", "MicrobatchShard", "trainable_params"]

_STALE_HINT = ("Call loss.backward() after the forward pass and before trainer.step(), "
               "and do not run extra recorded forward passes between them "
               "(use net.discard_capture() to drop them).")


def trainable_params(block) -> List:
    """The Parameters a block owns directly (not its children's) that need gradients."""
    return [p for p in block._reg_params.values() if p.grad_req != "null"]


class VectorizedShard:
    """Inputs and output-gradient probes of every rule layer in one forward pass."""

    sensitivity_factor = 1
    mode = "vectorized"

    def __init__(self, ctx, batch_size: int) -> None:
        self.ctx = ctx
        self.batch_size = int(batch_size)
        self.num_units = self.batch_size
        self._inputs: Dict = {}
        self._probes: Dict = {}
        self._cache: Dict = {}

    def add(self, layer, layer_input, probe) -> None:
        """Record one call of ``layer``; its input must be batch-major."""
        if layer_input.shape[0] != self.batch_size:
            raise PerSampleGradientError(
                f"Layer {layer.name} received an input with leading dimension "
                f"{layer_input.shape[0]}, but the batch has {self.batch_size} samples. "
                "Vectorized mode needs the batch on axis 0 of every layer input "
                "(time-major layouts mix samples); use PrivateBlock(net, mode='microbatch').")
        self._inputs.setdefault(layer, []).append(layer_input)
        self._probes.setdefault(layer, []).append(probe)

    @property
    def layers(self) -> List:
        return list(self._inputs)

    @property
    def captured_params(self) -> List:
        return [p for layer in self._inputs for p in trainable_params(layer)]

    def check_fresh(self) -> None:
        for layer, probes in self._probes.items():
            if not all(p._fresh_grad for p in probes):
                raise StaleGradientError(
                    f"No backward pass reached layer {layer.name} since its forward pass. "
                    + _STALE_HINT)

    def _rule_args(self, layer):
        grads = [p.grad for p in self._probes[layer]]
        return layer, self._inputs[layer], grads, trainable_params(layer)

    def unit_sq_norms(self):
        total = nd.zeros((self.batch_size,), ctx=self.ctx)
        for layer in self._inputs:
            cache = self._cache.setdefault(layer, {})
            total = total + rule_for(layer).sq_norms(*self._rule_args(layer), cache)
        return total

    def layer_sq_norms(self) -> Dict:
        """Dict layer -> (B,) squared norms of that layer's per-sample gradient."""
        return {layer: rule_for(layer).sq_norms(*self._rule_args(layer),
                                                self._cache.setdefault(layer, {}))
                for layer in self._inputs}

    def clipped_sums(self, factors) -> Dict:
        """Dict Parameter -> sum of factor-weighted per-sample gradients; ``factors`` is
        (B,) or a dict layer -> (B,) (per-layer clipping)."""
        result = {}
        for layer in self._inputs:
            layer_factors = factors[layer] if isinstance(factors, dict) else factors
            cache = self._cache.setdefault(layer, {})
            result.update(rule_for(layer).clipped_sum(*self._rule_args(layer), layer_factors,
                                                      cache))
        return result

    def per_unit_grads(self) -> Dict:
        result = {}
        for layer in self._inputs:
            result.update(rule_for(layer).per_sample(*self._rule_args(layer)))
        return result

    def zero_units(self, keep) -> None:
        """Zero the stored tensors of units where ``keep`` is 0 (non-finite gradients)."""
        self._cache = {}
        for layer in self._inputs:
            self._inputs[layer] = [_zero_rows(a, keep) for a in self._inputs[layer]]
            for probe in self._probes[layer]:
                probe.grad[:] = _zero_rows(probe.grad, keep)


def _zero_rows(array, keep):
    return nd.where(keep, array, nd.zeros_like(array))


class MicrobatchShard:
    """Parameter replicas of each microbatch; their ``.grad`` is its exact gradient.

    ``sensitivity_factor`` is 1 for one sample per microbatch and 2 otherwise: adding
    or removing one sample changes only its own microbatch, whose clipped gradient
    moves from one vector of norm <= C to another, a change of norm <= 2C.
    """

    mode = "microbatch"

    def __init__(self, ctx, batch_size: int, groups: Sequence[np.ndarray], params: Sequence,
                 sensitivity_factor: int) -> None:
        self.ctx = ctx
        self.batch_size = int(batch_size)
        self.groups = list(groups)
        self.num_units = len(self.groups)
        self.params = list(params)
        self.sensitivity_factor = sensitivity_factor
        self.replicas: List[Dict] = []
        self._stacked = None

    @property
    def captured_params(self) -> List:
        return list(self.params)

    def add_unit(self, replicas: Dict) -> None:
        self.replicas.append(replicas)

    def check_fresh(self) -> None:
        for number, unit in enumerate(self.replicas):
            if not any(r._fresh_grad for r in unit.values()):
                raise StaleGradientError(
                    f"No backward pass reached microbatch {number} since its forward pass. "
                    + _STALE_HINT)

    def _stack(self) -> Dict:
        if self._stacked is None:
            self._stacked = {
                p: nd.stack(*[unit[p].grad.reshape((-1,)) for unit in self.replicas])
                for p in self.params}
        return self._stacked

    def unit_sq_norms(self):
        total = nd.zeros((self.num_units,), ctx=self.ctx)
        for grads in self._stack().values():
            total = total + sq_row_sum(grads)
        return total

    def clipped_sums(self, factors) -> Dict:
        row = factors.reshape((1, -1))
        return {p: nd.dot(row, g).reshape(p.shape) for p, g in self._stack().items()}

    def per_unit_grads(self) -> Dict:
        return {p: g.reshape((self.num_units,) + p.shape) for p, g in self._stack().items()}

    def zero_units(self, keep) -> None:
        self._stacked = {p: _zero_rows(g, keep) for p, g in self._stack().items()}
