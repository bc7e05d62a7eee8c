"""``EncryptedModel``: a trained Gluon model as an evaluation plan on CKKS ciphertexts.

``EncryptedModel.from_gluon(net, input_shape)`` reads the layers once (plaintext weights),
refuses what CKKS cannot evaluate (naming the layer and its HE-friendly replacement),
merges consecutive linear maps, and checks its own plaintext evaluation against
``net``. No encryption happens there. ``plan.predict(batch, context=server_ctx)`` runs on
the server with the public context, after checking (cheaply, before any ciphertext
operation) that the context is public and deep enough and that the batch was encrypted
for this plan under that key.

Depth rule (rescales consumed, each one prime of the modulus chain): the first Conv2D 1
(its channels stay separate vectors until the next linear step, so packing costs nothing;
plus 1 only when no Dense or pooling follows a multi-channel convolution), each Dense /
average pooling 1 (consecutive ones merged into one), a square 1, a
polynomial of degree n ``ceil(log2(n + 1))`` (TenSEAL's ``polyval``, measured).
"""
from __future__ import annotations

import math
import warnings
from typing import Tuple

import numpy as np

from ..errors import (CiphertextError, DepthError, EncryptionError, EncryptionWarning,
                      InvalidParameterError, PublicContextError)
from ._layers import ConvStep, Evaluation, LinearStep, convert_layers
from .context import (EncryptionContext, PublicContext, check_public, encode_rows,
                      rescale_primes)
from .serialize import EncryptedBatch

__all__ = ["EncryptedModel"]

_SELF_CHECK_TOLERANCE = 1e-3   # |plan - net| / max|net|, float32 net against float64 plan
_HEADROOM = 8.0                # 2 ** (integer_bits - 1) over the reference run's peak
_CHECK_TOLERANCE = 1e-3        # create_context(check=True): |decrypted - plain| / max|plain|
_LOW_SCALE_BITS, _DEEP = 30, 3  # below 30-bit scale at depth >= 3: errors reach 1e-2


class EncryptedModel:
    """An evaluation plan of a Gluon model on encrypted inputs.

    Attributes: ``steps`` (list), ``depth`` (rescales needed), ``input_shape``,
    ``output_size``, ``input_encoding`` (how the client lays out an input),
    ``min_slots`` (the largest vector, which the context's slots must hold).
    """

    def __init__(self, steps, input_shape: Tuple[int, ...], output_size: int) -> None:
        if not steps or not any(isinstance(s, (ConvStep, LinearStep)) for s in steps):
            raise InvalidParameterError(
                "A plan needs at least one Conv2D or Dense layer.")
        self.steps = list(steps)
        self.input_shape = tuple(input_shape)
        self.output_size = int(output_size)
        self.depth = sum(step.depth for step in self.steps)
        self.input_encoding = self._encoding()
        self.min_slots = self._min_slots()
        self.peak_abs = None   # max |value| over the steps on from_gluon's reference run
        self.reference_input = None   # from_gluon's inputs (uniform in [0, 1))

    @classmethod
    def from_gluon(cls, net, input_shape) -> "EncryptedModel":
        """Convert a trained (initialized) Gluon network; see the module docstring.

        ``net`` is a layer or a (Hybrid)Sequential of layers; ``input_shape`` one row's
        shape without the batch axis, e.g. ``(1, 28, 28)``.
        """
        input_shape = _check_shape(input_shape)
        reference_input = np.random.RandomState(0).uniform(0, 1, (2,) + input_shape)
        try:
            reference = _run_net(net, reference_input)  # also completes deferred init
        except InvalidParameterError:
            _raise_if_unsupported(net, input_shape)
            raise
        steps, out_shape = convert_layers(net, input_shape)
        if len(out_shape) != 1:
            raise InvalidParameterError(
                f"The network's output has shape {out_shape} per row; end it with a Dense "
                "layer (or Flatten) so that results are vectors.")
        plan = cls(steps, input_shape, out_shape[0])
        plan._self_check(reference_input, reference)
        return plan

    def _encoding(self) -> dict:
        first = self.steps[0]
        if isinstance(first, ConvStep):
            return {"kind": "im2col", "input_shape": list(self.input_shape),
                    "kernel": list(first.weight.shape[1:]), "stride": first.stride}
        return {"kind": "flat", "input_shape": list(self.input_shape)}

    def _min_slots(self) -> int:
        sizes = [int(np.prod(self.input_shape))]
        for step in self.steps:
            if isinstance(step, ConvStep):
                kh, kw = step.weight.shape[1:]
                sizes.append(_next_pow2(kh * kw) * step.windows)
                sizes.append(len(step.weight) * step.windows)
            elif isinstance(step, LinearStep):
                sizes.extend(step.matrix.shape)
        return max(sizes)

    def _self_check(self, x: np.ndarray, reference: np.ndarray) -> None:
        mine, self.peak_abs = self._run_plain(x)
        self.reference_input = x
        scale = max(np.abs(reference).max(), 1e-12)
        if mine.shape != reference.shape or np.abs(mine - reference).max() / scale > \
                _SELF_CHECK_TOLERANCE:
            raise EncryptionError(
                "The plan's plaintext evaluation does not match the network's output: a "
                "layer computes something its type does not say (an overridden "
                "hybrid_forward?). Build the network from standard layers.")

    def forward_plain(self, x) -> np.ndarray:
        """The plan evaluated in plaintext (float64): what ``predict`` computes,
        without encryption. ``x``: one row of ``input_shape`` or a batch of them."""
        return self._run_plain(x)[0]

    def _run_plain(self, x) -> Tuple[np.ndarray, float]:
        """The plaintext outputs, and the largest |value| any step produced."""
        rows = encode_rows(x, self.input_shape)
        out, peak = [], float(np.abs(rows).max())
        for row in rows:
            value = row if isinstance(self.steps[0], ConvStep) else row.reshape(-1)
            for step in self.steps:
                value = step.plain(value)
                peak = max(peak, float(np.abs(value).max()))
            out.append(value)
        return np.stack(out), peak

    def create_context(self, *, check: bool = False, **kwargs) -> EncryptionContext:
        """The client's context, sized for this plan (depth, slots) and knowing its
        input encoding and output gain. Keyword arguments go to
        ``EncryptionContext.create`` (``poly_modulus_degree``, ``scale_bits``,
        ``integer_bits``, ``n_threads``).

        Warns (EncryptionWarning) when ``2 ** (integer_bits - 1)`` is less than 8 times
        the largest value the plan computed on ``from_gluon``'s reference inputs
        (uniform in [0, 1)): results could wrap around the modulus.

        ``check=True`` encrypts one reference input, evaluates it and warns
        (EncryptionWarning) when the decrypted result is off the plaintext plan by more
        than 1e-3 relative. It costs a ``public()`` and an evaluation (0.3x to 4.5x the
        context's creation, measured), so it is off by default; without it, a scale
        below 2^30 at depth 3 or more warns that precision is unchecked.
        """
        context = EncryptionContext.create(self.depth, min_slots=self.min_slots,
                                           encoding=self.input_encoding, **kwargs)
        context.expected_gain = self.expected_gain(context)
        self._warn_if_little_headroom(context)
        if check and self.reference_input is not None:
            self._check_accuracy(context)
        elif context.scale_bits < _LOW_SCALE_BITS and self.depth >= _DEEP:
            warnings.warn(
                f"scale_bits={context.scale_bits:g} at depth {self.depth} can lose accuracy "
                "silently (relative errors near 1e-2 measured at 28 bits): raise "
                "scale_bits, or pass create_context(check=True) to measure the error.",
                EncryptionWarning, stacklevel=2)
        return context

    def _check_accuracy(self, context: EncryptionContext) -> None:
        """EncryptionWarning when one encrypted reference row is off the plain plan."""
        x = self.reference_input[:1]
        plain = self.forward_plain(x)
        result = context.decrypt(self.predict(context.encrypt(x), context=context.public()))
        error = np.abs(result - plain).max() / max(np.abs(plain).max(), 1e-12)
        if error > _CHECK_TOLERANCE:
            warnings.warn(
                f"An encrypted reference input decrypts {error:.2g} (relative) away from "
                f"the plaintext plan, more than {_CHECK_TOLERANCE:g}: raise scale_bits "
                f"(now {context.scale_bits:g}) or poly_modulus_degree.",
                EncryptionWarning, stacklevel=3)

    def expected_gain(self, context) -> float:
        """The gain (decrypted / true value) ``predict`` leaves in its results under
        ``context`` (a fresh ciphertext at the context's top level)."""
        primes = rescale_primes(context.ts_context)
        scale = float(context.ts_context.global_scale)
        gain, level = 1.0, context.depth
        for step in self.steps:
            gain = step.next_gain(gain, scale / primes[level])
            level -= step.depth
        return gain

    def _warn_if_little_headroom(self, context: EncryptionContext) -> None:
        bound = 2.0 ** (context.integer_bits - 1)
        if self.peak_abs is not None and bound < _HEADROOM * self.peak_abs:
            wanted = math.ceil(math.log2(_HEADROOM * self.peak_abs)) + 1
            warnings.warn(
                f"integer_bits={context.integer_bits} lets values reach {bound:g}, less "
                f"than {_HEADROOM:g}x the {self.peak_abs:.4g} this plan computed on inputs "
                f"in [0, 1): results may wrap around the modulus. Use integer_bits >= "
                f"{wanted} or scale the inputs down.", EncryptionWarning, stacklevel=3)

    def check_context(self, context) -> PublicContext:
        """The server-side checks, cheap and before any ciphertext operation: a public
        context (PublicContextError), deep and wide enough (DepthError)."""
        if isinstance(context, (bytes, bytearray, memoryview)):
            context = PublicContext.from_bytes(context)
        if isinstance(context, EncryptionContext):
            raise PublicContextError(
                "predict() got the client's context, which holds the secret key: the server "
                "must only have client.public() (or its serialized bytes).")
        if not isinstance(context, PublicContext):
            if type(context).__module__.startswith("tenseal"):
                check_public(context)       # names a secret key or missing keys first
            raise PublicContextError(
                f"context must be a PublicContext (client.public()), got "
                f"{type(context).__name__}.")
        if context.depth < self.depth:
            raise DepthError(
                f"The plan needs {self.depth} multiplicative levels but the context's "
                f"modulus chain allows {context.depth}: make the context with "
                f"plan.create_context() (or EncryptionContext.create(depth={self.depth})).")
        if context.slots < self.min_slots:
            raise DepthError(
                f"The plan's largest vector needs {self.min_slots} slots but the context has "
                f"{context.slots}: use a larger poly_modulus_degree (plan.create_context() "
                "chooses it).")
        return context

    def predict(self, batch: EncryptedBatch, *, context) -> EncryptedBatch:
        """Evaluate the plan on an encrypted batch (server side); returns the encrypted
        results, one ciphertext of ``output_size`` values per row.

        Bound: every value the plan computes, results included, must stay below
        ``2 ** (integer_bits - 1)`` in magnitude (the first prime's room above the
        scale); past it CKKS wraps around silently. ``create_context`` warns when the
        reference run leaves less than 8x headroom, ``decrypt`` when a result exceeds
        the bound (EncryptionWarning): raise integer_bits or scale the inputs."""
        context = self.check_context(context)
        self._check_batch(batch, context)
        primes = rescale_primes(context.ts_context)
        outputs, gain = [], 1.0
        for vector in batch.vectors_for(context.ts_context):
            run = Evaluation(context.ts_context, batch.meta.get("windows"), primes)
            for step in self.steps:
                vector = step.encrypted(vector, run)
            outputs.append(vector)
            gain = run.gain            # the same for every row (same levels)
        return EncryptedBatch(outputs, "output", context.key_id,
                              {"size": self.output_size, "gain": gain})

    def _check_batch(self, batch, context: PublicContext) -> None:
        if not isinstance(batch, EncryptedBatch):
            raise EncryptionError(
                f"predict() takes an EncryptedBatch (client.encrypt(x) or "
                f"EncryptedBatch.from_bytes(data)), got {type(batch).__name__}.")
        if batch.stage != "input":
            raise EncryptionError("This batch already holds results, not encrypted inputs.")
        batch.check_key(context.key_id)
        if batch.meta.get("encoding") != self.input_encoding:
            raise EncryptionError(
                f"The batch was encoded as {batch.meta.get('encoding')}, but this plan "
                f"expects {self.input_encoding}: encrypt with plan.create_context() of "
                "this plan (input shape, kernel and stride must match).")
        first = self.steps[0]
        if isinstance(first, ConvStep) and batch.meta.get("windows") != first.windows:
            raise EncryptionError(
                f"The batch has {batch.meta.get('windows')} convolution windows per image, "
                f"the plan {first.windows}: it was encrypted for another input shape.")
        self._check_vectors(batch.vectors_for(context.ts_context), context)

    def _check_vectors(self, vectors, context: PublicContext) -> None:
        """Each ciphertext holds as many values as the encoding gives and has the plan's
        depth of levels left (a result or an evaluated ciphertext has fewer)."""
        data = context.ts_context.seal_context().data
        first = self.steps[0]
        size = (_next_pow2(np.prod(first.weight.shape[1:])) * first.windows
                if isinstance(first, ConvStep) else int(np.prod(self.input_shape)))
        for row, vector in enumerate(vectors):
            levels = data.get_context_data(vector.ciphertext()[0].parms_id()).chain_index()
            if levels < self.depth:
                raise DepthError(
                    f"Row {row}'s ciphertext has {levels} multiplicative levels left, the "
                    f"plan needs {self.depth}: it is not a fresh client.encrypt() "
                    "ciphertext (a result, or already evaluated).")
            if vector.size() != size:
                raise CiphertextError(
                    f"Row {row}'s ciphertext holds {vector.size()} values, the plan's "
                    f"encoding {size}: it was not made by client.encrypt() for this plan.")

    def __repr__(self) -> str:
        inner = ", ".join(repr(step) for step in self.steps)
        return (f"EncryptedModel(input_shape={self.input_shape}, depth={self.depth}, "
                f"steps=[{inner}])")


def _check_shape(input_shape) -> Tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"input_shape must be a tuple of positive ints (one row, no batch axis), got "
            f"{input_shape!r}.") from None
    if not shape or min(shape) < 1:
        raise InvalidParameterError(
            f"input_shape must be a tuple of positive ints (one row, no batch axis), got "
            f"{input_shape!r}.")
    return shape


def _run_net(net, x: np.ndarray) -> np.ndarray:
    import mxnet as mx

    try:
        out = net(mx.nd.array(x, dtype="float32"))
    except Exception as exc:
        raise InvalidParameterError(
            f"The network could not run on inputs of shape {x.shape[1:]} ({exc}): check "
            "input_shape, and initialize (train) the network first.") from exc
    return out.asnumpy().astype(np.float64).reshape(len(x), -1)


def _raise_if_unsupported(net, input_shape) -> None:
    """Name an unsupported layer (rather than the failed run) when there is one."""
    from ..errors import UnsupportedLayerError

    try:
        convert_layers(net, input_shape)
    except UnsupportedLayerError:
        raise
    except Exception:  # weights not initialized: the run's error says it
        return


def _next_pow2(n: int) -> int:
    return 1 << (int(n) - 1).bit_length()
