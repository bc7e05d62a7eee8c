"""CKKS contexts for encrypted inference: the client's (secret key) and the server's (public).

The client makes an :class:`EncryptionContext` (usually through
``EncryptedModel.create_context()``, which sizes it for the model), encrypts inputs and
decrypts results. It gives the server ``client.public()``: a :class:`PublicContext` with
the relinearization and Galois keys the evaluation needs and *without* the secret key;
the server can compute on ciphertexts and can never decrypt them.

Parameters (:func:`choose_parameters`). A CKKS multiplication is followed by a rescale
that drops one prime of the coefficient modulus chain, so a model of multiplicative
depth ``d`` needs the chain ``[first, scale_bits x d, special]``: ``first`` holds the
result (``scale_bits`` + ``integer_bits`` bits: decrypted values must stay below
``2 ** (integer_bits - 1)`` in magnitude), the ``d`` middle primes are consumed one per
level, and ``special`` (as large as ``first``) is used by key switching. The polynomial
degree is the smallest whose total modulus keeps 128-bit security in SEAL's table
(8192: 218 bits, 16384: 438 bits) and whose slots (degree / 2) hold the largest vector.
"""
from __future__ import annotations

import math
import secrets
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import (CiphertextError, EncryptionError, EncryptionWarning,
                      InvalidParameterError, PublicContextError)
from .serialize import EncryptedBatch, pack, unpack

__all__ = ["CKKSParameters", "choose_parameters", "EncryptionContext", "PublicContext",
           "MAX_COEFF_MODULUS_BITS", "DEFAULT_SCALE_BITS", "DEFAULT_INTEGER_BITS",
           "rescale_primes"]

# SEAL's HomomorphicEncryption.org table, 128-bit classical security
MAX_COEFF_MODULUS_BITS = {4096: 109, 8192: 218, 16384: 438, 32768: 881}
DEFAULT_SCALE_BITS = 40
DEFAULT_INTEGER_BITS = 20
_MAX_PRIME_BITS = 60


@dataclass(frozen=True)
class CKKSParameters:
    """CKKS parameters: polynomial degree, coefficient modulus chain, scale (bits)."""

    poly_modulus_degree: int
    coeff_mod_bit_sizes: Tuple[int, ...]
    scale_bits: int

    @property
    def depth(self) -> int:
        """Multiplications (rescales) the chain allows."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2


def _check_int(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or \
            not low <= value <= high:
        raise InvalidParameterError(
            f"{name} must be an integer from {low} to {high}, got {value!r}.")
    return int(value)


def choose_parameters(depth: int, *, poly_modulus_degree: Optional[int] = None,
                      scale_bits: Optional[int] = None,
                      integer_bits: Optional[int] = None,
                      min_slots: int = 1) -> CKKSParameters:
    """CKKS parameters for ``depth`` multiplications (see the module docstring).

    Raises InvalidParameterError when no degree (or not the given one) keeps 128-bit
    security with this chain, or holds ``min_slots`` values.
    """
    depth = _check_int("depth", depth, 1, 40)
    scale_bits = _check_int("scale_bits", DEFAULT_SCALE_BITS if scale_bits is None
                            else scale_bits, 20, _MAX_PRIME_BITS)
    integer_bits = _check_int("integer_bits", DEFAULT_INTEGER_BITS if integer_bits is None
                              else integer_bits, 2, _MAX_PRIME_BITS - scale_bits)
    outer = scale_bits + integer_bits
    chain = (outer,) + (scale_bits,) * depth + (outer,)
    total = sum(chain)
    degrees = sorted(MAX_COEFF_MODULUS_BITS)
    if poly_modulus_degree is not None:
        if poly_modulus_degree not in MAX_COEFF_MODULUS_BITS:
            raise InvalidParameterError(
                f"poly_modulus_degree must be one of {degrees}, got "
                f"{poly_modulus_degree!r}.")
        degrees = [poly_modulus_degree]
    for degree in degrees:
        if MAX_COEFF_MODULUS_BITS[degree] >= total and degree // 2 >= min_slots:
            return CKKSParameters(degree, chain, scale_bits)
    raise InvalidParameterError(
        f"A chain of depth {depth} at scale 2^{scale_bits} needs {total} modulus bits and "
        f"{min_slots} slots, more than poly_modulus_degree {degrees[-1]} allows at 128-bit "
        f"security ({MAX_COEFF_MODULUS_BITS[degrees[-1]]} bits, {degrees[-1] // 2} "
        "slots): lower scale_bits, integer_bits or the depth (fewer polynomial "
        "activations), or leave poly_modulus_degree unset.")


def _tenseal():
    try:
        import tenseal
    except ImportError as exc:  # pragma: no cover - tenseal is a declared dependency
        raise EncryptionError(
            "mxprivacy.encrypted needs TenSEAL: pip install tenseal==0.3.18") from exc
    return tenseal


def encode_rows(x, input_shape, max_abs: Optional[float] = None) -> np.ndarray:
    """``x`` (NDArray or numpy) as float64 rows of ``input_shape``; one row alone is
    accepted without its batch axis. InvalidParameterError on a shape mismatch, a
    non-finite value or a value of magnitude ``max_abs`` or more."""
    if hasattr(x, "asnumpy"):
        x = x.asnumpy()
    array = np.asarray(x, dtype=np.float64)
    shape = tuple(input_shape)
    if array.shape == shape:
        array = array[None]
    if array.ndim != len(shape) + 1 or array.shape[1:] != shape or array.shape[0] == 0:
        raise InvalidParameterError(
            f"Inputs must have shape {shape} (one row) or (rows,) + {shape}, got "
            f"{array.shape}: reshape them as the plan's input_shape.")
    if not np.isfinite(array).all():
        raise InvalidParameterError("Inputs contain NaN or infinity; clean them first.")
    if max_abs is not None and np.abs(array).max() >= max_abs:
        raise InvalidParameterError(
            f"Inputs reach |x| = {np.abs(array).max():.3g}, beyond what this context can "
            f"encode (|x| < {max_abs:.3g}): scale the inputs down (normalize them as in "
            "training).")
    return array


def rescale_primes(ts_context) -> Dict[int, int]:
    """``{chain index: prime}``: the prime a rescale drops from a ciphertext at that level.

    SEAL exposes each level's modulus (the product of its primes) only modulo 2 ** 64
    through TenSEAL; the primes are odd and below 2 ** 61, so each one is that product
    times the inverse of the level below's, modulo 2 ** 64.
    """
    data = ts_context.seal_context().data.first_context_data()
    products = {}
    while data is not None:
        products[data.chain_index()] = int(data.total_coeff_modulus())
        data = data.next_context_data()
    word = 1 << 64
    return {index: products[index] * pow(products[index - 1], -1, word) % word
            for index in sorted(products) if index > 0}


class _ContextInfo:
    """What both context kinds report about their TenSEAL context."""

    _ts_context = None
    key_id: str = ""

    @property
    def poly_modulus_degree(self) -> int:
        return int(self._ts_context.seal_context().data.key_context_data().parms()
                   .poly_modulus_degree())

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        """Multiplications left in a fresh ciphertext (primes below the first level)."""
        return int(self._ts_context.seal_context().data.first_context_data().chain_index())

    @property
    def scale_bits(self) -> float:
        return math.log2(self._ts_context.global_scale)

    @property
    def integer_bits(self) -> int:
        """Bits of the first prime above the scale: decrypted values must stay below
        ``2 ** (integer_bits - 1)`` in magnitude."""
        data = self._ts_context.seal_context().data.first_context_data()
        while data.next_context_data() is not None:
            data = data.next_context_data()                    # chain index 0: q0 alone
        return int(round(data.total_coeff_modulus_bit_count() - self.scale_bits))

    @property
    def ts_context(self):
        """The underlying ``tenseal.Context``."""
        return self._ts_context


class PublicContext(_ContextInfo):
    """The server's context: evaluation keys, no secret key. Build it with
    ``client.public()`` or ``PublicContext.from_bytes(data)``."""

    def __init__(self, ts_context, key_id: str, encoding: Optional[dict] = None) -> None:
        check_public(ts_context)
        self._ts_context = ts_context
        self.key_id = str(key_id)
        self.encoding = encoding

    def serialize(self) -> bytes:
        """The context as envelope bytes (no secret key; Galois and relin keys)."""
        payload = self._ts_context.serialize(save_public_key=True, save_secret_key=False,
                                             save_galois_keys=True, save_relin_keys=True)
        return pack("public_context", {"key_id": self.key_id, "encoding": self.encoding},
                    [payload])

    @classmethod
    def from_bytes(cls, data) -> "PublicContext":
        """Verify the envelope (CiphertextError), parse, and refuse a context holding a
        secret key or missing evaluation keys (PublicContextError)."""
        meta, parts = unpack(data, "public_context")
        if len(parts) != 1:
            raise PublicContextError("A public context envelope holds exactly one part.")
        try:
            ts_context = _tenseal().context_from(parts[0])
        except (ValueError, RuntimeError, TypeError) as exc:
            raise CiphertextError(
                f"The public context does not parse ({exc}): the bytes were not made by "
                "client.public().serialize(). Ask the client to send them again.") from None
        return cls(ts_context, meta.get("key_id", ""), meta.get("encoding"))

    def __repr__(self) -> str:
        return (f"PublicContext(poly_modulus_degree={self.poly_modulus_degree}, "
                f"depth={self.depth}, scale_bits={self.scale_bits:g})")


def check_public(ts_context) -> None:
    """Raise PublicContextError unless ``ts_context`` is a server-side context: no
    secret key, with Galois and relinearization keys."""
    ts = _tenseal()
    if not isinstance(ts_context, ts.Context):
        raise PublicContextError(
            f"Expected a tenseal Context, got {type(ts_context).__name__}; pass "
            "client.public() or PublicContext.from_bytes(data).")
    if ts_context.is_private() or ts_context.has_secret_key():
        raise PublicContextError(
            "This context holds the secret key: the server must never have it. Send the "
            "server client.public() (or its .serialize() bytes) instead.")
    if not (ts_context.has_galois_keys() and ts_context.has_relin_keys()
            and ts_context.has_public_key()):
        raise PublicContextError(
            "This context lacks the Galois, relinearization or public key the encrypted "
            "evaluation needs (convolution and dense layers rotate ciphertexts, biases "
            "are encrypted with the public key): make it "
            "with EncryptionContext.create(...).public(), which includes them.")
    if _can_decrypt(ts_context):
        raise PublicContextError(
            "This context has no secret key flag but its SEAL decryptor still decrypts "
            "(a copy made public with make_context_public() keeps it): the server must "
            "never have it. Send the server client.public() (or its .serialize() bytes).")


def _can_decrypt(ts_context) -> bool:
    """Whether SEAL's low-level decryptor of ``ts_context`` decrypts a fresh ciphertext
    (the flags ``is_private``/``has_secret_key`` can say no while it does)."""
    from tenseal.sealapi import Plaintext

    probe = _tenseal().ckks_vector(ts_context, [0.0]).ciphertext()[0]
    try:
        ts_context.decryptor().data.decrypt(probe, Plaintext())
    except (ValueError, RuntimeError):
        return False
    return True


class EncryptionContext(_ContextInfo):
    """The client's CKKS context: holds the secret key; encrypts inputs, decrypts results.

    Use :meth:`create` (or ``plan.create_context()``, which sizes it for the plan and
    attaches the plan's input encoding).
    """

    def __init__(self, ts_context, parameters: CKKSParameters,
                 encoding: Optional[dict] = None, key_id: Optional[str] = None) -> None:
        self._ts_context = ts_context
        self.parameters = parameters
        self.encoding = encoding
        self.key_id = key_id or secrets.token_hex(8)
        self.expected_gain: Optional[float] = None   # set by plan.create_context()

    @classmethod
    def create(cls, depth: int, *, poly_modulus_degree: Optional[int] = None,
               scale_bits: Optional[int] = None, integer_bits: Optional[int] = None,
               min_slots: int = 1, encoding: Optional[dict] = None,
               n_threads: Optional[int] = None) -> "EncryptionContext":
        """A fresh secret key and its evaluation keys for ``depth`` multiplications.

        Parameters follow :func:`choose_parameters`; ``encoding`` (set by
        ``plan.create_context()``) tells :meth:`encrypt` how to lay out an input.
        """
        params = choose_parameters(depth, poly_modulus_degree=poly_modulus_degree,
                                   scale_bits=scale_bits, integer_bits=integer_bits,
                                   min_slots=min_slots)
        if n_threads is not None:
            n_threads = _check_int("n_threads", n_threads, 1, 1024)
        ts = _tenseal()
        ts_context = ts.context(ts.SCHEME_TYPE.CKKS, params.poly_modulus_degree,
                                coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
                                n_threads=n_threads)
        ts_context.global_scale = 2.0 ** params.scale_bits
        ts_context.generate_galois_keys()
        ts_context.generate_relin_keys()
        return cls(ts_context, params, encoding)

    def public(self) -> PublicContext:
        """The server's context, rebuilt from bytes serialized without the secret key
        (with the public, Galois and relinearization keys).

        Not ``copy()`` + ``make_context_public()``: that copy keeps a working SEAL
        decryptor in memory (``decryptor().data.decrypt`` still gives the plaintext).
        """
        data = self._ts_context.serialize(save_public_key=True, save_secret_key=False,
                                          save_galois_keys=True, save_relin_keys=True)
        return PublicContext(_tenseal().context_from(data), self.key_id, self.encoding)

    def encrypt(self, x, encoding: Optional[dict] = None) -> EncryptedBatch:
        """Encrypt ``x`` (NDArray or numpy): one row of the input shape, or a batch of
        them; one ciphertext per row."""
        encoding = encoding if encoding is not None else self.encoding
        if encoding is None:
            raise EncryptionError(
                "This context does not know how to lay out inputs: make it with "
                "plan.create_context(), or pass encrypt(x, encoding=plan.input_encoding).")
        rows = encode_rows(x, encoding["input_shape"], max_abs=self._max_encodable())
        ts = _tenseal()
        vectors: List = []
        windows = None
        for row in rows:
            if encoding["kind"] == "im2col":
                kh, kw = encoding["kernel"]
                vector, windows = ts.im2col_encoding(self._ts_context, row[0].tolist(),
                                                     kh, kw, encoding["stride"])
            else:
                vector = ts.ckks_vector(self._ts_context, row.reshape(-1).tolist())
            vectors.append(vector)
        meta = {"encoding": encoding, "windows": windows}
        return EncryptedBatch(vectors, "input", self.key_id, meta)

    def decrypt(self, batch: EncryptedBatch) -> np.ndarray:
        """The plaintext results of an encrypted output batch, shape (rows, outputs)."""
        if not isinstance(batch, EncryptedBatch):
            raise EncryptionError(
                f"decrypt() takes an EncryptedBatch (from plan.predict or "
                f"EncryptedBatch.from_bytes), got {type(batch).__name__}.")
        if batch.stage != "output":
            raise EncryptionError(
                "This batch holds encrypted inputs, not results: run plan.predict() on it "
                "first.")
        batch.check_key(self.key_id)
        size, gain = self._checked_size(batch.meta), self._checked_gain(batch.meta)
        rows = [np.asarray(v.decrypt(), dtype=np.float64)[:size] / gain
                for v in batch.vectors_for(self._ts_context)]
        result = np.stack(rows) if rows else np.zeros((0, size))
        self._warn_if_wrapped(result)
        return result

    def _max_encodable(self) -> float:
        """TenSEAL refuses to encode ``|x| * scale`` above half the fresh modulus."""
        bits = self._ts_context.seal_context().data.first_context_data() \
            .total_coeff_modulus_bit_count()
        return 2.0 ** (bits - self.scale_bits - 2)

    def _checked_size(self, meta: dict) -> int:
        size = meta.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or \
                not 1 <= size <= self.slots:
            raise CiphertextError(
                f"The results' size {size!r} is not a number of outputs (an int from 1 to "
                f"{self.slots}): the results were not made by plan.predict().")
        return size

    def _checked_gain(self, meta: dict) -> float:
        """The rescaling gain, refused (CiphertextError) unless it is the one the plan
        produces under this context (``expected_gain``, set by plan.create_context),
        or, when unknown, within what this context's rescales can produce (at most 5 %
        from 1)."""
        gain = meta.get("gain", 1.0)
        if isinstance(gain, bool) or not isinstance(gain, (int, float)) or \
                not math.isfinite(gain) or gain <= 0:
            raise CiphertextError(
                f"The results' gain {gain!r} is not a positive number: the results were "
                "not made by plan.predict().")
        if self.expected_gain is not None:
            ok = abs(gain / self.expected_gain - 1.0) <= 1e-9
            wanted = f"{self.expected_gain!r}, the plan's"
        else:
            ok = abs(math.log(gain)) <= self._gain_limit()
            wanted = f"within {math.exp(self._gain_limit()) - 1:.2g} of 1"
        if not ok:
            raise CiphertextError(
                f"The results' gain {gain!r} is not what the plan produces under this "
                f"context ({wanted}): the results were not made by plan.predict() of "
                "the plan this context was created for.")
        return float(gain)

    def _gain_limit(self) -> float:
        """The largest |log gain| this context's rescales can produce, at most log 1.05."""
        scale = float(self._ts_context.global_scale)
        worst = max((abs(math.log(scale / prime))
                     for prime in rescale_primes(self._ts_context).values()), default=0.0)
        return min(worst * 2.0 ** min(self.depth, 60), math.log(1.05)) + 1e-12

    def _warn_if_wrapped(self, result: np.ndarray) -> None:
        bound = 2.0 ** (self.integer_bits - 1)
        if result.size and np.abs(result).max() > bound:
            warnings.warn(
                f"Decrypted results reach |y| = {np.abs(result).max():.4g}, above "
                f"2^(integer_bits - 1) = {bound:g} (integer_bits={self.integer_bits}): "
                "they may have wrapped around the modulus and be wrong; raise "
                "integer_bits or scale the inputs.", EncryptionWarning, stacklevel=3)

    def __repr__(self) -> str:
        return (f"EncryptionContext(poly_modulus_degree={self.poly_modulus_degree}, "
                f"coeff_mod_bit_sizes={list(self.parameters.coeff_mod_bit_sizes)}, "
                f"scale_bits={self.parameters.scale_bits}, secret key held)")
