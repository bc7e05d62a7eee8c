"""``DPTrainer``: a drop-in ``gluon.Trainer`` that runs DP-SGD.

``step(n) = allreduce_grads() -> update(n)``, as in Gluon, where ``allreduce_grads``
privatizes: per context it clips every unit's (sample's or microbatch's) whole
gradient to ``max_grad_norm`` and sums, then reduces across contexts, adds Gaussian
noise N(0, (sigma * sensitivity)^2) *once* (drawn on the first context and copied to
the others), and records the step in the accountant. ``update`` divides by the
*expected* batch size, never the actual one, because the actual size of a Poisson
batch is itself private.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, List, Optional

from mxnet import gluon, nd

from ..accounting import GaussianEvent, PoissonSampledEvent, PrivacyAccountant, make_accountant
from ..errors import (BatchSizeMismatchError, ForeignParameterError,
                      HybridizedCaptureError, InvalidParameterError, NonFiniteGradientWarning,
                      PrivacyWarning, StaleGradientError)
from .checkpoint import CheckpointMixin
from .clipping import make_clipping
from .noise import NoiseSource
from .noise import layout as noise_layout
from .private_block import owner_of

__all__ = ["DPTrainer"]


def _positive(name: str, value, allow_zero: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidParameterError(f"{name} must be a finite number {bound}, got {value!r}.")
    return value


class DPTrainer(CheckpointMixin, gluon.Trainer):
    """DP-SGD with Gluon's Trainer interface.

    Parameters
    ----------
    params, optimizer, optimizer_params, kvstore, compression_params
        As in :class:`mxnet.gluon.Trainer`. The parameters must belong to a
        :class:`~mxprivacy.PrivateBlock`.
    update_on_kvstore : None or False
        Forced to False: noise must be added between reduction and update.
    noise_multiplier : float
        sigma: noise std divided by the sensitivity (``max_grad_norm``, or twice it for
        microbatches of several samples).
    max_grad_norm : float or dict
        C: the L2 bound of each clipping unit's whole gradient. With
        ``clipping="per_layer"``, a dict from layer name to C_l, or one number split
        evenly over the layers.
    expected_batch_size : int
        q x N: the batch size the gradient sum is divided by.
    sample_rate, dataset_size : float, int
        The Poisson sampling rate q, or N so that q = expected_batch_size / N.
    warn_epsilon : float
        Warn once when epsilon at ``warn_delta`` passes this value.
    warn_delta : float, optional
        Delta for that warning; 1/N (or 1e-5 when N is unknown).
    accountant : {"rdp", "pld"} or PrivacyAccountant, default "rdp"
        How spent privacy is counted. ``"pld"`` gives a tighter epsilon (typically
        8-30 % lower) and costs tens of milliseconds per query. An accountant instance
        is used as a template: the trainer starts from an empty one of the same kind.
    clipping : {"flat", "per_layer", "adaptive"}
        ``flat`` clips each unit's whole gradient to C; ``per_layer`` clips each
        layer's part to C_l (vectorized mode), and the noise uses sqrt(sum C_l^2);
        ``adaptive`` moves C toward a quantile of the norms (Andrew et al. 2021), within
        the same privacy guarantee.
    clipping_options : dict, optional
        For ``adaptive``: ``target_quantile`` (0.5), ``learning_rate`` (0.2) and
        ``count_noise`` (default expected_batch_size / 20), ``seed``.
    noise_seed : int, optional
        Seed of the noise generator (numpy SFC64, drawn one step ahead on a background
        thread). Leave it None in real training: then it is seeded from the OS.
    """

    def __init__(self, params, optimizer, optimizer_params=None, kvstore="device",
                 compression_params=None, update_on_kvstore=None, *,
                 noise_multiplier: float, max_grad_norm, expected_batch_size: int,
                 sample_rate: Optional[float] = None, dataset_size: Optional[int] = None,
                 warn_epsilon: float = 10.0, warn_delta: Optional[float] = None,
                 accountant: "str | PrivacyAccountant" = "rdp",
                 noise_seed: Optional[int] = None, clipping: str = "flat",
                 clipping_options: Optional[dict] = None) -> None:
        if update_on_kvstore:
            raise InvalidParameterError(
                "DPTrainer adds noise between reduction and update, so it needs "
                "update_on_kvstore=False (leave it None).")
        if isinstance(kvstore, str) and kvstore.startswith("dist"):
            raise InvalidParameterError(
                "Distributed kvstores are not supported yet: noise would be added once per "
                "worker. Train on one machine (several devices are fine).")
        self.noise_multiplier = _positive("noise_multiplier", noise_multiplier, allow_zero=True)
        self.expected_batch_size = _positive("expected_batch_size", expected_batch_size)
        self.sample_rate = self._resolve_rate(sample_rate, dataset_size)
        self.warn_epsilon = warn_epsilon
        self.warn_delta = warn_delta or (1.0 / dataset_size if dataset_size else 1e-5)
        super().__init__(params, optimizer, optimizer_params, kvstore, compression_params,
                         update_on_kvstore=False)
        self._block = self._find_block()
        self.clipping = clipping
        self._clipping_options = dict(clipping_options or {})
        if clipping == "adaptive":
            self._clipping_options.setdefault("count_noise", self.expected_batch_size / 20.0)
        self.max_grad_norm = max_grad_norm
        self._accumulated: Dict = {}
        self._accumulated_units = 0
        self.accountant = make_accountant(accountant)
        self._noise_seed = noise_seed
        self._noise: Optional[NoiseSource] = None
        self.steps = 0
        self.nonfinite_count = 0
        self._privatized_batch: Optional[int] = None
        self._warned = False

    def _resolve_rate(self, sample_rate, dataset_size) -> float:
        if sample_rate is None and dataset_size is None:
            raise InvalidParameterError(
                "DPTrainer needs the Poisson sampling rate to account for privacy: pass "
                "sample_rate=q or dataset_size=N (then q = expected_batch_size / N).")
        if sample_rate is None:
            sample_rate = self.expected_batch_size / _positive("dataset_size", dataset_size)
        rate = float(sample_rate)
        if not 0.0 < rate <= 1.0:
            raise InvalidParameterError(f"sample_rate must lie in (0, 1], got {sample_rate!r}.")
        return rate

    def _find_block(self):
        trainable = [p for p in self._params if p.grad_req != "null"]
        owners = {id(owner_of(p)): owner_of(p) for p in trainable}
        if None in owners.values() or not owners:
            foreign = [p.name for p in trainable if owner_of(p) is None]
            raise ForeignParameterError(
                f"Parameters {foreign[:5]} do not belong to a PrivateBlock, so their "
                "per-sample gradients are not captured. Wrap the network with "
                "mxprivacy.PrivateBlock(net) and pass wrapped.collect_params().")
        if len(owners) > 1:
            raise ForeignParameterError(
                "The parameters belong to several PrivateBlocks; wrap the whole model once.")
        return next(iter(owners.values()))

    # -- privatization -----------------------------------------------------------------
    @property
    def max_grad_norm(self):
        """The clipping bound C (a dict of C_l for per-layer clipping; the current C
        for adaptive clipping)."""
        return getattr(self._clipping, "max_grad_norm", self._max_grad_norm)

    @property
    def gradient_noise_multiplier(self) -> float:
        """The gradient's noise multiplier: ``noise_multiplier``, except that adaptive
        clipping gives part of the total to its private count."""
        share = getattr(self._clipping, "gradient_noise_multiplier", None)
        return share(self.noise_multiplier) if share else self.noise_multiplier

    @max_grad_norm.setter
    def max_grad_norm(self, value) -> None:
        self._clipping = make_clipping(self.clipping, value, self._block,
                                       self._clipping_options)
        _ = self.gradient_noise_multiplier  # validates the count noise of adaptive clipping
        self._max_grad_norm = value

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of the clipped gradient sum."""
        factor = 1 if self._block.mode == "vectorized" or self._block.num_microbatches is None \
            else 2
        return factor * self._clipping.bound

    def allreduce_grads(self, batch_size: Optional[int] = None) -> None:
        """Clip per unit, sum, reduce over contexts, and add noise once.

        Parameters
        ----------
        batch_size : int, optional
            When given, it must equal the number of captured samples (including those
            gathered by :meth:`accumulate` since the last step).
        """
        shards = self._block.take_shards()
        captured = sum(s.batch_size for s in shards) + self._accumulated_units
        if batch_size is not None and int(batch_size) != captured:
            raise BatchSizeMismatchError(
                f"step({batch_size}) but {captured} per-sample gradients were captured since "
                "the last step. Pass the actual batch size, x.shape[0] (0 for an empty "
                "Poisson batch), summed over the accumulated physical batches.")
        sums = self._merge(self._accumulated, self._checked_sums(shards))
        self._accumulated, self._accumulated_units = {}, 0
        if not self._kv_initialized:
            self._init_kvstore()
        if self._params_to_init:
            self._init_params()
        if self._single_context():
            self._write_noisy_grads(sums)
        else:
            self._write_grads(sums)
            self._reduce_across_contexts()
            self._add_noise()
        if hasattr(self._clipping, "update"):
            self._clipping.update(self.expected_batch_size)
        self.accountant.compose(
            PoissonSampledEvent(self.sample_rate, GaussianEvent(self.noise_multiplier)))
        self._privatized_batch = captured

    def accumulate(self) -> None:
        """Virtual steps: clip the physical batch just processed and keep its sum.

        Use it when a logical (Poisson-sampled) batch is too large for memory. Run
        forward/backward on each physical part and call ``accumulate()`` after each.
        Then call ``step(total)`` after the last part, which may also be accumulated.
        Noise is added once per logical step, and one sampled step is accounted.
        """
        shards = self._block.take_shards()
        if not shards:
            raise StaleGradientError(
                "accumulate() found no captured batch: run a recorded forward pass through "
                "the PrivateBlock and loss.backward() first.")
        self._accumulated = self._merge(self._accumulated, self._checked_sums(shards))
        self._accumulated_units += sum(s.batch_size for s in shards)

    def _checked_sums(self, shards) -> Dict:
        for shard in shards:
            shard.check_fresh()
        self._check_uncaptured_use(shards)
        return self._clipped_sums(shards)

    @staticmethod
    def _merge(first: Dict, second: Dict) -> Dict:
        merged = dict(first)
        for key, value in second.items():
            merged[key] = value if key not in merged else merged[key] + value
        return merged

    def _trainable(self) -> List:
        return [p for p in self._params if p.grad_req != "null"]

    def _check_uncaptured_use(self, shards) -> None:
        captured = {(id(p), s.ctx) for s in shards for p in s.captured_params}
        for param in self._trainable():
            for data in param.list_data():
                if data._fresh_grad and (id(param), data.context) not in captured:
                    raise HybridizedCaptureError(
                        f"Parameter {param.name} received a gradient on {data.context} that "
                        "no per-sample capture saw (a hybridized sub-block, or the parameter "
                        "used outside the PrivateBlock). Its update would not be private; "
                        "use mode='microbatch' or un-hybridize the net.")

    def _clipped_sums(self, shards) -> Dict:
        """Clipped sums of every shard. Non-finite units are found after the work is
        queued (one synchronization); only then are they zeroed and the sums redone."""
        factors = [self._clip_factors(shard) for shard in shards]
        sums = self._sum_shards(shards, [f for f, _ in factors])
        bad = [int(shard.num_units - finite.sum().asscalar())
               for shard, (_, finite) in zip(shards, factors)]
        if not any(bad):
            return sums
        self.nonfinite_count += sum(bad)
        warnings.warn(
            f"{sum(bad)} per-sample gradient(s) were not finite and were zeroed (not "
            f"clipped) this step; {self.nonfinite_count} so far. Check the inputs or lower "
            "the learning rate.", NonFiniteGradientWarning, stacklevel=4)
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

    def _write_grads(self, sums: Dict) -> None:
        for param in self._trainable():
            for grad in param.list_grad():
                value = sums.get((id(param), grad.context))
                if value is None:
                    grad[:] = 0
                else:
                    grad[:] = value.as_in_context(grad.context)

    def _reduce_across_contexts(self) -> None:
        if self._kvstore:
            self._allreduce_grads()
            return
        for param in self._trainable():
            grads = param.list_grad()
            if len(grads) > 1:
                total = grads[0].copy()
                for other in grads[1:]:
                    total += other.as_in_context(total.context)
                for grad in grads:
                    grad[:] = total.as_in_context(grad.context)

    def _noise_vector(self, params):
        """One standard normal NDArray covering every parameter, drawn ahead of time."""
        size, offsets = noise_layout([p.shape for p in params])
        if self._noise is None or self._noise.size != size:
            if self._noise is not None:
                self._noise.close()
            self._noise = NoiseSource(size, self._noise_seed)
        ctx = params[0].list_grad()[0].context
        buffer = self._noise.take()
        if ctx.device_type != "cpu":
            return nd.array(buffer, ctx=ctx, dtype="float32"), offsets
        # Zero-copy view of the numpy buffer. The engine reads it asynchronously, so the
        # last few buffers stay referenced; every later step depends on those reads.
        self._noise_held = (getattr(self, "_noise_held", []) + [buffer])[-3:]
        return nd.from_numpy(buffer, zero_copy=True), offsets

    def _single_context(self) -> bool:
        return not self._kvstore and all(len(p.list_ctx()) == 1 for p in self._trainable())

    def _write_noisy_grads(self, sums: Dict) -> None:
        """One context: grad = clipped sum + noise, one fused operation per parameter."""
        std = self.gradient_noise_multiplier * self.sensitivity
        params = self._trainable()
        if std > 0 and params:
            flat, offsets = self._noise_vector(params)
            flat = flat * std
        for number, param in enumerate(params):
            grad = param.list_grad()[0]
            value = sums.get((id(param), grad.context))
            if std > 0:
                start, stop = offsets[number]
                noise = flat[start:stop].reshape(grad.shape).astype(grad.dtype, copy=False)
                if value is None:
                    grad[:] = noise
                else:
                    nd.elemwise_add(value, noise, out=grad)
            elif value is None:
                grad[:] = 0
            else:
                grad[:] = value
            param.list_data()[0]._fresh_grad = True

    def _add_noise(self) -> None:
        """Add N(0, (sigma x sensitivity)^2) noise once, the same on every context."""
        std = self.gradient_noise_multiplier * self.sensitivity
        params = self._trainable()
        if std > 0 and params:
            flat, offsets = self._noise_vector(params)
            for param, (start, stop) in zip(params, offsets):
                grads = param.list_grad()
                noise = (flat[start:stop] * std).reshape(grads[0].shape).astype(
                    grads[0].dtype, copy=False)
                for grad in grads:
                    grad += noise.as_in_context(grad.context)
        for param in params:
            for data in param.list_data():
                data._fresh_grad = True

    # -- update ------------------------------------------------------------------------
    def update(self, batch_size: int, ignore_stale_grad: bool = False) -> None:
        """Apply the privatized gradient, divided by the expected batch size."""
        if self._privatized_batch is None:
            raise StaleGradientError(
                "update() needs a privatized gradient: call allreduce_grads() (or step()) "
                "after loss.backward().")
        if int(batch_size) != self._privatized_batch:
            raise BatchSizeMismatchError(
                f"update({batch_size}) but the privatized batch had {self._privatized_batch} "
                "samples.")
        self._check_and_rescale_grad(self._scale / self.expected_batch_size)
        self._update(ignore_stale_grad=False)
        self._privatized_batch = None
        self.steps += 1
        self._maybe_warn()

    def step(self, batch_size: int, ignore_stale_grad: bool = False) -> None:
        """One DP-SGD step; ``batch_size`` must be the actual number of samples."""
        if ignore_stale_grad:
            raise InvalidParameterError(
                "ignore_stale_grad is not supported: every parameter takes a noisy step.")
        self.allreduce_grads(batch_size)
        self.update(batch_size)

    def _maybe_warn(self) -> None:
        if self._warned or self.steps % 50:
            return
        eps = self.epsilon(self.warn_delta)
        if eps > self.warn_epsilon:
            self._warned = True
            warnings.warn(
                f"epsilon has reached {eps:.2f} at delta={self.warn_delta:g} after "
                f"{self.steps} steps: that is a weak guarantee. Raise noise_multiplier or "
                "train for fewer steps.", PrivacyWarning, stacklevel=3)

    def epsilon(self, delta: float) -> float:
        """The epsilon spent so far at ``delta``, from :attr:`accountant`."""
        return self.accountant.get_epsilon(delta)
