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

from ..errors import (InvalidParameterError, PerSampleGradientError, StaleGradientError,
                      TiedParameterError)
from .rules import rule_for
from .rules._ops import sq_row_sum

__all__ = ["VectorizedShard", "MicrobatchShard", "ExampleShard", "trainable_params",
           "check_no_raw_gradient", "one_pass_per_context", "group_by_example"]

_STALE_HINT = ("Call loss.backward() after the forward pass and before trainer.step(), "
               "and do not run extra recorded forward passes between them "
               "(use net.discard_capture() to drop them). The trainer has dropped the "
               "captured passes: run forward and backward again.")


def trainable_params(block) -> List:
    """The Parameters a block owns directly (not its children's) that need gradients."""
    return [p for p in block._reg_params.values() if p.grad_req != "null"]


def check_no_raw_gradient(shard) -> None:
    """Captured layers run on detached views (vectorized) or replicas (microbatch) of
    their parameters, so the parameters themselves must receive no gradient. One that
    did was also used where the capture does not see it (weight tying, or
    ``layer.weight.data()`` read by another layer or by the loss outside the wrapped net),
    and that part of its gradient escaped clipping."""
    for param in shard.captured_params:
        for data in param.list_data():
            if data.context == shard.ctx and data._fresh_grad:
                raise TiedParameterError(
                    f"Parameter {param.name} is captured by its layer but also received a "
                    "gradient from outside it (weight tying, or its .data() used by another "
                    "layer). That part of its per-sample gradient would escape clipping. "
                    "Use PrivateBlock(net, mode='microbatch'), which is exact for weights "
                    "tied inside the wrapped net, or untie them.")


class _ReductionMixin:
    """How the loss was reduced before backward (set by the capture's backward check)."""

    reduction = None
    _rescaled = False

    def rescale_once(self, factor: float) -> None:
        """Multiply the captured per-unit gradients by ``factor`` (at most once)."""
        if not self._rescaled:
            self._scale_grads(factor)
            self._rescaled = True


class VectorizedShard(_ReductionMixin):
    """Inputs and output-gradient probes of every rule layer in one forward pass."""

    mode = "vectorized"

    def __init__(self, ctx, batch_size: int) -> None:
        self.ctx = ctx
        self.batch_size = int(batch_size)
        self.num_units = self.batch_size
        self._inputs: Dict = {}
        self._probes: Dict = {}
        self._cache: Dict = {}

    def _scale_grads(self, factor: float) -> None:
        self._cache = {}
        for probes in self._probes.values():
            for probe in probes:
                probe.grad[:] = probe.grad * factor

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
        total = None  # in the rules' dtype (float64 nets stay float64)
        for layer in self._inputs:
            cache = self._cache.setdefault(layer, {})
            norms = rule_for(layer).sq_norms(*self._rule_args(layer), cache)
            total = norms if total is None else total + norms
        return nd.zeros((self.batch_size,), ctx=self.ctx) if total is None else total

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


class _StackedUnits:
    """Shards whose per-unit gradients are materialized as (units, size) matrices, one
    per parameter (``_compute_stack``); norms and clipped sums are row operations."""

    _stacked = None

    def _stack(self) -> Dict:
        if self._stacked is None:
            self._stacked = self._compute_stack()
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


class MicrobatchShard(_StackedUnits, _ReductionMixin):
    """Parameter replicas of each microbatch; their ``.grad`` is its exact gradient.

    (The sensitivity of several samples per microbatch is worked out in
    :attr:`PrivateBlock.sensitivity_factor`.)
    """

    mode = "microbatch"

    def __init__(self, ctx, batch_size: int, groups: Sequence[np.ndarray],
                 params: Sequence) -> None:
        self.ctx = ctx
        self.batch_size = int(batch_size)
        self.groups = list(groups)
        self.num_units = len(self.groups)
        self.params = list(params)
        self.replicas: List[Dict] = []
        self._stacked = None

    def _scale_grads(self, factor: float) -> None:
        self._stacked = None
        for unit in self.replicas:
            for replica in unit.values():
                replica.grad[:] = replica.grad * factor

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

    def _compute_stack(self) -> Dict:
        return {p: nd.stack(*[unit[p].grad.reshape((-1,)) for unit in self.replicas])
                for p in self.params}


class ExampleShard(_StackedUnits):
    """Several captured forward passes whose rows are tied to examples.

    Views of one example (augmentations, the two sides of a siamese pair) must be
    clipped together: one example contributes the *sum* of its views'
    gradients, and that sum is clipped to C (augmentation multiplicity, De et al. 2022).
    Clipping each view alone would let one example move the update by k C.

    ``example_ids[s][r]`` is the example (0 .. num_examples-1) of row ``r`` of shard
    ``s``. Per-row gradients are materialized and summed per example with one matrix
    product per parameter.
    """

    mode = "examples"

    def __init__(self, shards: Sequence, example_ids: Sequence[np.ndarray],
                 num_examples: int) -> None:
        self.shards = list(shards)
        self.ctx = self.shards[0].ctx
        self.batch_size = self.num_units = int(num_examples)
        self._ids = [np.asarray(ids, dtype=np.int64) for ids in example_ids]
        self._stacked = None

    @property
    def captured_params(self) -> List:
        return list({id(p): p for s in self.shards for p in s.captured_params}.values())

    def check_fresh(self) -> None:
        for shard in self.shards:
            shard.check_fresh()

    def _compute_stack(self) -> Dict:
        """Per-example sums of per-row gradients. A non-finite row would turn every
        example's sum into NaN through the product (0 x NaN = NaN), so such rows are
        zeroed first, and their example is marked non-finite as a whole (its norm
        becomes NaN: the trainer zeroes and counts it like any non-finite unit)."""
        grads: Dict = {}
        bad = nd.zeros((self.num_units,), ctx=self.ctx)
        for shard, ids in zip(self.shards, self._ids):
            onehot = nd.one_hot(nd.array(ids, ctx=self.ctx), self.num_units).T
            rows = {p: g.reshape((g.shape[0], -1)) for p, g in shard.per_unit_grads().items()}
            finite = None
            for flat in rows.values():
                ok = nd.contrib.isfinite(sq_row_sum(flat))
                finite = ok if finite is None else finite * ok
            for param, flat in rows.items():
                clean = nd.where(finite, flat, nd.zeros_like(flat))
                summed = nd.dot(onehot, clean)
                grads[param] = summed if param not in grads else grads[param] + summed
            if finite is not None:
                bad = bad + nd.dot(onehot, (1 - finite).reshape((-1, 1))).reshape((-1,))
        marker = nd.where(bad > 0, nd.full(bad.shape, np.nan, ctx=self.ctx), nd.zeros_like(bad))
        first = next(iter(grads), None)
        if first is not None:  # NaN in one coordinate makes the example's norm NaN
            grads[first] = nd.broadcast_add(grads[first], marker.reshape((-1, 1)))
        return grads


def one_pass_per_context(shards) -> None:
    seen = set()
    for shard in shards:
        if shard.ctx in seen:
            raise PerSampleGradientError(
                f"Several forward passes on {shard.ctx} were captured for one step. If they "
                "hold further views of the same examples (augmentations, siamese or "
                "contrastive pairs), pass example_ids= to step() so that each example's "
                "views are clipped together; clipped one by one, an example would count "
                "several times. If they hold different examples, call "
                "trainer.accumulate() after each part's backward pass.")
        seen.add(shard.ctx)


def group_by_example(shards, example_ids, block, clipping: str) -> ExampleShard:
    """Validate ``example_ids`` against the pending shards; build their ExampleShard."""
    if not shards:
        raise StaleGradientError("example_ids= was given but no forward pass was captured.")
    if block.sensitivity_factor != 1 or clipping == "per_layer":
        raise InvalidParameterError(
            "example_ids= needs one sample per clipping unit and whole-gradient clipping: "
            "not num_microbatches, not clipping='per_layer'.")
    if isinstance(example_ids, np.ndarray) or not isinstance(example_ids, (list, tuple)):
        example_ids = [example_ids]
    if len(example_ids) != len(shards) or len({s.ctx for s in shards}) != 1:
        raise InvalidParameterError(
            f"example_ids= needs one int array per captured forward pass ({len(shards)}, "
            f"got {len(example_ids)}), all on one device.")
    ids = [np.asarray(i) for i in example_ids]
    for shard, rows in zip(shards, ids):
        if rows.shape != (shard.batch_size,) or not np.issubdtype(rows.dtype, np.integer):
            raise InvalidParameterError(
                f"example_ids for a pass of {shard.batch_size} rows must be "
                f"{shard.batch_size} integers, got shape {rows.shape} of {rows.dtype}.")
    every = np.concatenate(ids)
    count = int(every.max()) + 1
    if every.min() < 0 or len(np.unique(every)) != count:
        raise InvalidParameterError(
            "example_ids must number the examples 0 .. n-1, each at least once.")
    return ExampleShard(shards, ids, count)
