"""Clipping strategies: one bound for a unit's whole gradient, or one bound per layer.

Both return, for a shard, the factors that scale each unit's gradient (per layer for
per-layer clipping) and a mask of the units whose norms are finite. ``bound`` is the
L2 norm that a clipped unit gradient can reach: the sensitivity before any microbatch
factor.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, Sequence, Tuple, Union

import numpy as np
from mxnet import nd

from ..errors import InvalidParameterError, NonFiniteGradientWarning

__all__ = ["FlatClipping", "PerLayerClipping", "AdaptiveClipping", "make_clipping",
           "ClipStageMixin"]


def _positive(name: str, value) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise InvalidParameterError(f"{name} must be a finite number > 0, got {value!r}.")
    return value


def _factor(sq_norms, bound: float):
    """C / max(norm, C) = min(1, C / norm)."""
    return bound / nd.maximum(nd.sqrt(sq_norms), bound)


class FlatClipping:
    """Clip each unit's whole gradient (all layers together) to ``max_grad_norm``."""

    def __init__(self, max_grad_norm: float) -> None:
        self.max_grad_norm = _positive("max_grad_norm", max_grad_norm)

    @property
    def bound(self) -> float:
        return self.max_grad_norm

    def factors(self, shard) -> Tuple:
        sq_norms = shard.unit_sq_norms()
        finite = nd.contrib.isfinite(sq_norms)
        factors = _factor(sq_norms, self.max_grad_norm)
        return nd.where(finite, factors, nd.zeros_like(factors)), finite


class PerLayerClipping:
    """Clip each layer's part of a sample's gradient to its own bound C_l.

    The whole clipped gradient then has norm at most ``sqrt(sum C_l^2)``, which is the
    sensitivity the noise is calibrated to. A single number C is split evenly:
    ``C_l = C / sqrt(L)`` over the L captured layers, so the total stays C.
    """

    def __init__(self, max_grad_norm: Union[float, Dict[str, float]], layers: Sequence) -> None:
        if not layers:
            raise InvalidParameterError("Per-layer clipping needs layers with parameters.")
        if isinstance(max_grad_norm, dict):
            names = {layer.name: layer for layer in layers}
            unknown = sorted(set(max_grad_norm) - set(names))
            missing = sorted(set(names) - set(max_grad_norm))
            if unknown or missing:
                raise InvalidParameterError(
                    f"Per-layer max_grad_norm must name every layer with trainable "
                    f"parameters: unknown {unknown}, missing {missing}.")
            self.bounds = {names[n]: _positive(f"max_grad_norm[{n!r}]", c)
                           for n, c in max_grad_norm.items()}
        else:
            each = _positive("max_grad_norm", max_grad_norm) / math.sqrt(len(layers))
            self.bounds = {layer: each for layer in layers}

    @property
    def bound(self) -> float:
        return math.sqrt(sum(c * c for c in self.bounds.values()))

    def factors(self, shard) -> Tuple:
        per_layer = shard.layer_sq_norms()
        finite = None
        for sq_norms in per_layer.values():
            ok = nd.contrib.isfinite(sq_norms)
            finite = ok if finite is None else finite * ok
        factors = {}
        for layer, sq_norms in per_layer.items():
            f = _factor(sq_norms, self.bounds[layer])
            factors[layer] = nd.where(finite, f, nd.zeros_like(f))
        return factors, finite


class AdaptiveClipping(FlatClipping):
    """Flat clipping whose bound tracks a quantile of the gradient norms (Andrew et al.
    2021, "Differentially private learning with adaptive clipping").

    Each step it sums centered indicators over the units: +1/2 if a unit was not clipped,
    -1/2 if it was. Adding or removing one sample changes that sum by 1/2 (its
    sensitivity), while a plain count would change by 1. It adds N(0, count_noise^2) to
    the sum, estimates the unclipped fraction as ``noisy_sum / B + 1/2`` (B the expected
    batch size), and moves C geometrically toward the ``target_quantile``:
    ``C <- C exp(-lr (fraction - target))``.

    The count is a second Gaussian query on the same sample. Together with the gradient
    query it is one Gaussian mechanism with noise multiplier z when the gradient noise
    multiplier is ``(z^-2 - (2 count_noise)^-2)^(-1/2)``. So the accountant keeps
    charging z and the guarantee is unchanged.
    """

    def __init__(self, max_grad_norm: float, *, target_quantile: float = 0.5,
                 learning_rate: float = 0.2, count_noise: float = 0.0,
                 seed=None, secure: bool = False) -> None:
        super().__init__(max_grad_norm)
        if not 0 < target_quantile < 1:
            raise InvalidParameterError(
                f"target_quantile must lie in (0, 1), got {target_quantile!r}.")
        self.target_quantile = float(target_quantile)
        self.learning_rate = _positive("learning_rate", learning_rate)
        self.count_noise = _positive("count_noise", count_noise)
        self._unclipped = []
        self._rng = np.random.default_rng(seed)
        self.secure = bool(secure)

    def gradient_noise_multiplier(self, z: float) -> float:
        """The gradient's share of the total noise multiplier ``z``."""
        if z == 0:
            return 0.0
        rest = z ** -2 - (2 * self.count_noise) ** -2
        if rest <= 0:
            raise InvalidParameterError(
                f"count_noise={self.count_noise} is too small for noise_multiplier={z}: "
                f"it needs 2 * count_noise > noise_multiplier (Andrew et al. use about "
                "expected_batch_size / 20).")
        return rest ** -0.5

    def record(self, factors) -> None:
        """Count the unclipped units of a step that succeeded (``factors`` per shard).

        Only the trainer calls it, after the step's checks have passed: a step that
        raised and is retried must not count its units twice (sensitivity 1, not 1/2).
        """
        for shard_factors in factors:
            self._unclipped.append((nd.sum(shard_factors >= 1.0), shard_factors.shape[0]))

    def _standard_normal(self) -> float:
        if self.secure:
            from ..mechanisms.secure import standard_normal
            return float(standard_normal(1)[0])
        return float(self._rng.standard_normal())

    def update(self, expected_batch_size: float) -> None:
        """Move C after a step, from the noisy fraction of unclipped units."""
        centered = sum(float(count.asscalar()) - units / 2.0
                       for count, units in self._unclipped)
        self._unclipped = []
        noisy = centered + self.count_noise * self._standard_normal()
        fraction = noisy / expected_batch_size + 0.5
        self.max_grad_norm *= math.exp(-self.learning_rate * (fraction - self.target_quantile))


def make_clipping(clipping: str, max_grad_norm, block, options=None):
    """Build the strategy for a :class:`~mxprivacy.gluon.PrivateBlock`."""
    from .validators import parameterized_layers

    if clipping == "adaptive":
        if isinstance(max_grad_norm, dict):
            raise InvalidParameterError("Adaptive clipping starts from one number C.")
        if block.sensitivity_factor != 1:
            raise InvalidParameterError(
                "Adaptive clipping cannot be combined with microbatches of several "
                "samples: one added sample can flip its microbatch's count term from +1/2 "
                "to -1/2, a sensitivity of 1 where the noise split assumes 1/2. Use "
                "num_microbatches=None (one sample per unit) or clipping='flat'.")
        return AdaptiveClipping(max_grad_norm, **(options or {}))
    if clipping == "flat":
        if isinstance(max_grad_norm, dict):
            raise InvalidParameterError(
                "A dict of bounds needs clipping='per_layer'; flat clipping takes one number.")
        return FlatClipping(max_grad_norm)
    if clipping == "per_layer":
        if block.mode != "vectorized":
            raise InvalidParameterError(
                "Per-layer clipping needs PrivateBlock(net, mode='vectorized').")
        return PerLayerClipping(max_grad_norm, parameterized_layers(block.net))
    raise InvalidParameterError(
        f"clipping must be 'flat', 'per_layer' or 'adaptive', got {clipping!r}.")


class ClipStageMixin:
    """Stage 2 of a DP-SGD step, for :class:`~mxprivacy.gluon.DPTrainer` (needs
    ``_clipping`` and ``nonfinite_count``): clip every unit and sum per parameter and
    device. Counts are kept pending until :meth:`_commit_clip`."""

    def _clip_stage(self, units) -> Dict:
        return self._clipped_sums(units)

    def _clipped_sums(self, shards) -> Dict:
        """Clipped sums of every shard. Non-finite units are found after the work is
        queued (one synchronization); only then are they zeroed and the sums redone."""
        self._pending_nonfinite = 0
        factors = [self._clip_factors(shard) for shard in shards]
        self._pending_factors = [f for f, _ in factors]  # counted once the step succeeds
        sums = self._sum_shards(shards, [f for f, _ in factors])
        bad = [int(shard.num_units - finite.sum().asscalar())
               for shard, (_, finite) in zip(shards, factors)]
        if not any(bad):
            return sums
        self._pending_nonfinite = sum(bad)
        warnings.warn(
            f"{sum(bad)} per-sample gradient(s) were not finite and were zeroed (not "
            f"clipped) this step; {self.nonfinite_count + sum(bad)} so far. Check the inputs or lower "
            "the learning rate. This warning and trainer.nonfinite_count are not private: "
            "they show in which steps a bad record was sampled, so do not publish them.",
            NonFiniteGradientWarning, stacklevel=5)
        for shard, (_, finite), count in zip(shards, factors, bad):
            if count:
                shard.zero_units(finite)
        return self._sum_shards(shards, [f for f, _ in factors])

    @staticmethod
    def _sum_shards(shards, factors) -> Dict:
        sums: Dict = {}
        for shard, shard_factors in zip(shards, factors):
            for param, grad in shard.clipped_sums(shard_factors).items():
                key = (id(param), shard.ctx)
                sums[key] = grad if key not in sums else sums[key] + grad
        return sums

    def _clip_factors(self, shard):
        """(factors, finite): min(1, C / norm) per unit, and 0 where the norm is not finite."""
        return self._clipping.factors(shard)

    def _commit_clip(self) -> None:
        """The step happens: count what the clip stage saw (adaptive clipping's unclipped
        units, non-finite units). A failed attempt counts nothing, so a retry is counted
        once."""
        if hasattr(self._clipping, "record"):
            self._clipping.record(getattr(self, "_pending_factors", []))
        self.nonfinite_count += getattr(self, "_pending_nonfinite", 0)
        self._pending_factors, self._pending_nonfinite = [], 0

    @staticmethod
    def _merge(first: Dict, second: Dict) -> Dict:
        merged = dict(first)
        for key, value in second.items():
            merged[key] = value if key not in merged else merged[key] + value
        return merged
