"""Writing privatized gradients: clipped sums plus Gaussian noise, once per step.

One context: ``grad = clipped sum + noise`` in one fused operation per parameter. Several
contexts: the clipped sums are reduced first, then the same noise vector (drawn once,
on the first context) is added on every context, so the noise is counted once.

Dist kvstore (W workers): each worker writes its clipped sums plus its share of the
noise, std sigma x sensitivity / sqrt(W) (on its first context only), then the kvstore
sums over contexts and workers: the pulled gradient carries noise of std
sigma x sensitivity once (see :mod:`.distributed`). With an explicit ``noise_seed`` the
rank is part of each stream's key, so no two workers draw the same noise.
"""
from __future__ import annotations

import warnings
from typing import Dict

import numpy as np
from mxnet import nd

from .noise import NoiseSource
from .noise import layout as noise_layout

__all__ = ["NoiseWriterMixin"]


class NoiseWriterMixin:
    """Gradient writing for :class:`~mxprivacy.gluon.DPTrainer` (needs ``_trainable``,
    ``gradient_noise_multiplier``, ``sensitivity``, ``_noise_seed``, ``secure_mode``)."""

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
            with warnings.catch_warnings():  # the trainer already warned about a seed
                warnings.simplefilter("ignore")
                key = (self.steps, self._noise_streams, self._loads,
                       getattr(self, "_load_nonce", 0))
                if self._dist is not None:  # ranks never share a stream
                    key += (self.rank,)
                seed = None if self._noise_seed is None else np.random.SeedSequence(
                    self._noise_seed, spawn_key=key)
                self._noise_streams += 1
                self._noise = NoiseSource(size, seed, secure=self.secure_mode)
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

    def _write_noisy_grads(self, sums: Dict, std: float) -> None:
        """grad = clipped sum (+ noise of std ``std`` on the first context), one fused
        operation per parameter and context."""
        params = self._trainable()
        if std > 0 and params:
            flat, offsets = self._noise_vector(params)
            flat = flat * std
        for number, param in enumerate(params):
            for index, grad in enumerate(param.list_grad()):
                value = sums.get((id(param), grad.context))
                if std > 0 and index == 0:
                    start, stop = offsets[number]
                    noise = flat[start:stop].reshape(grad.shape).astype(grad.dtype,
                                                                        copy=False)
                    noise = noise.as_in_context(grad.context)
                    if value is None:
                        grad[:] = noise
                    else:
                        nd.elemwise_add(value.as_in_context(grad.context), noise, out=grad)
                elif value is None:
                    grad[:] = 0
                else:
                    grad[:] = value.as_in_context(grad.context)
            for data in param.list_data():
                data._fresh_grad = True

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

    def _noise_stage(self, sums: Dict) -> None:
        """Stage 3 of a DP-SGD step: write clipped sums plus noise into the gradients."""
        std = self.gradient_noise_multiplier * self.sensitivity
        if self._dist is not None:  # each worker's share, then the sum over workers
            self._write_noisy_grads(sums, self._noise_share(std))
            self._dist_round_trip()
            return
        if not self._kv_initialized:
            self._init_kvstore()
        if self._params_to_init:
            self._init_params()
        if self._single_context():
            self._write_noisy_grads(sums, std)
        else:
            self._write_grads(sums)
            self._reduce_across_contexts()
            self._add_noise()
