"""Bytes in and out for encrypted inference: a versioned, checksummed envelope.

Every object that crosses the client-server boundary (a public context, an encrypted
batch of inputs, an encrypted batch of results) is sent as one envelope::

    magic (8 bytes) | version (u16) | kind (u8) | meta length (u32) | payload length (u64)
    | SHA-256 (32 bytes, over everything before it and everything after it) | meta | payload

``meta`` is a small JSON object (shapes, sizes, the key identifier); ``payload`` is a
sequence of length-prefixed parts (TenSEAL's own serialization of each ciphertext or of
the context). :func:`unpack` checks the magic, version, kind, lengths and digest *before*
anything is parsed, so a flipped bit or a truncated copy raises
:class:`~mxprivacy.errors.CiphertextError` instead of reaching TenSEAL's parser (which can
crash or return garbage on bad bytes).

The digest catches accidents and casual tampering; it is not a signature. Whoever can
rewrite the bytes can recompute it, so an authenticated channel (TLS) is still needed
between client and server. Nothing here unpickles.
"""
from __future__ import annotations

import hashlib
import json
import struct
from typing import Dict, List, Sequence, Tuple

from ..errors import CiphertextError, EncryptionError

__all__ = ["KINDS", "pack", "unpack", "peek_kind", "EncryptedBatch"]

MAGIC = b"MXPHE\x00\x01\x8f"
VERSION = 1
KINDS = {"public_context": 1, "encrypted_input": 2, "encrypted_output": 3}
_KIND_NAMES = {code: name for name, code in KINDS.items()}
_HEADER = struct.Struct(">8sHBIQ")
_DIGEST_SIZE = 32
_PART_LENGTH = struct.Struct(">Q")
_MAX_META = 1 << 20


def pack(kind: str, meta: Dict, parts: Sequence[bytes]) -> bytes:
    """Envelope of ``kind`` holding the JSON-serializable ``meta`` and the byte ``parts``."""
    meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    payload = b"".join(_PART_LENGTH.pack(len(part)) + bytes(part) for part in parts)
    header = _HEADER.pack(MAGIC, VERSION, KINDS[kind], len(meta_bytes), len(payload))
    digest = _digest(header, meta_bytes, payload)
    return header + digest + meta_bytes + payload


def _digest(header: bytes, meta_bytes: bytes, payload: bytes) -> bytes:
    sha = hashlib.sha256()
    for chunk in (header, meta_bytes, payload):
        sha.update(chunk)
    return sha.digest()


def peek_kind(data) -> str:
    """The kind named in an envelope's header (not verified: for error messages only)."""
    if len(data) < _HEADER.size or bytes(data[:8]) != MAGIC:
        return "not an mxprivacy envelope"
    return _KIND_NAMES.get(data[10], "unknown kind")


def unpack(data, expected_kind: str) -> Tuple[Dict, List[bytes]]:
    """Verify an envelope and return its ``(meta, parts)``; CiphertextError otherwise."""
    data = _as_bytes(data)
    header, meta_len, payload_len = _check_header(data, expected_kind)
    start = _HEADER.size + _DIGEST_SIZE
    meta_bytes = data[start:start + meta_len]
    payload = data[start + meta_len:]
    if _digest(header, meta_bytes, payload) != data[_HEADER.size:start]:
        raise CiphertextError(
            f"The {expected_kind.replace('_', ' ')} bytes fail their SHA-256 check: they "
            "were altered or corrupted in transit. Nothing was parsed; ask the sender to "
            "send them again (over an authenticated channel).")
    return _parse_meta(meta_bytes, expected_kind), _split_parts(payload)


def _parse_meta(meta_bytes: bytes, expected_kind: str) -> Dict:
    """The meta JSON object; CiphertextError when it is not UTF-8 JSON of an object
    (crafted bytes with a recomputed digest get here)."""
    try:
        meta = json.loads(meta_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CiphertextError(
            f"The {expected_kind.replace('_', ' ')} envelope's meta is not valid UTF-8 "
            f"JSON ({type(exc).__name__}): the bytes were not made by .serialize(). "
            "Nothing was parsed; ask the sender to send them again.") from None
    if not isinstance(meta, dict):
        raise CiphertextError(
            f"The {expected_kind.replace('_', ' ')} envelope's meta is a JSON "
            f"{type(meta).__name__}, not an object: the bytes were not made by "
            ".serialize(). Nothing was parsed.")
    return meta


def _as_bytes(data) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise CiphertextError(
        f"Expected bytes (from .serialize()), got {type(data).__name__}.")


def _check_header(data: bytes, expected_kind: str):
    if len(data) < _HEADER.size + _DIGEST_SIZE or data[:8] != MAGIC:
        raise CiphertextError(
            f"These bytes are not an mxprivacy encrypted-inference envelope (too short or "
            f"wrong magic); expected a {expected_kind.replace('_', ' ')} made by "
            ".serialize().")
    magic, version, kind, meta_len, payload_len = _HEADER.unpack(data[:_HEADER.size])
    if version != VERSION:
        raise CiphertextError(
            f"Envelope version {version} is not supported (this mxprivacy reads version "
            f"{VERSION}); serialize again with the same mxprivacy version on both sides.")
    if kind != KINDS[expected_kind]:
        found = _KIND_NAMES.get(kind, f"unknown kind {kind}")
        raise CiphertextError(
            f"These bytes hold a {found.replace('_', ' ')}, not a "
            f"{expected_kind.replace('_', ' ')}: pass them to the matching from_bytes().")
    if meta_len > _MAX_META:
        raise CiphertextError(
            f"The {expected_kind.replace('_', ' ')} envelope declares {meta_len} bytes of "
            f"meta, more than the {_MAX_META} an mxprivacy envelope ever holds: the bytes "
            "were not made by .serialize(). Nothing was parsed.")
    expected = _HEADER.size + _DIGEST_SIZE + meta_len + payload_len
    if len(data) != expected:
        raise CiphertextError(
            f"The {expected_kind.replace('_', ' ')} bytes are truncated or padded "
            f"({len(data)} bytes, the header says {expected}); ask the sender to send "
            "them again.")
    return data[:_HEADER.size], meta_len, payload_len


def _split_parts(payload: bytes) -> List[bytes]:
    parts, offset = [], 0
    while offset < len(payload):
        if offset + _PART_LENGTH.size > len(payload):
            raise CiphertextError("Malformed envelope payload (a part's length is cut).")
        (length,) = _PART_LENGTH.unpack_from(payload, offset)
        offset += _PART_LENGTH.size
        if offset + length > len(payload):
            raise CiphertextError("Malformed envelope payload (a part is cut).")
        parts.append(payload[offset:offset + length])
        offset += length
    return parts


class EncryptedBatch:
    """Ciphertexts of a batch, one per row: encrypted inputs (``stage="input"``, from
    ``client.encrypt``) or encrypted results (``stage="output"``, from ``plan.predict``).

    ``serialize()`` gives envelope bytes; ``EncryptedBatch.from_bytes(data)`` verifies
    them (CiphertextError) and keeps the ciphertexts unparsed until a context is linked
    (by ``plan.predict`` or ``client.decrypt``).
    """

    def __init__(self, vectors: Sequence, stage: str, key_id: str, meta: Dict) -> None:
        if stage not in ("input", "output"):
            raise ValueError(f"stage must be 'input' or 'output', got {stage!r}")
        self._vectors = list(vectors)
        self.stage = stage
        self.key_id = key_id
        self.meta = dict(meta)
        self._linked = None

    def __len__(self) -> int:
        return len(self._vectors)

    @property
    def kind(self) -> str:
        return "encrypted_input" if self.stage == "input" else "encrypted_output"

    def serialize(self) -> bytes:
        """Envelope bytes: meta (stage, key id, encoding, sizes) and the ciphertexts."""
        parts = [vector.serialize() for vector in self._vectors]
        return pack(self.kind, {"key_id": self.key_id, **self.meta}, parts)

    @classmethod
    def from_bytes(cls, data, stage: str = None) -> "EncryptedBatch":
        """Verify an envelope of encrypted inputs or results (``stage`` "input" or
        "output"; None accepts either) and wrap its ciphertexts, unparsed."""
        import tenseal as ts

        if stage is None:
            found = peek_kind(data)
            stage = "output" if found == "encrypted_output" else "input"
        kind = "encrypted_input" if stage == "input" else "encrypted_output"
        meta, parts = unpack(data, kind)
        if not parts or not all(parts):
            raise CiphertextError(
                f"The {kind.replace('_', ' ')} envelope holds "
                f"{'no ciphertext' if not parts else 'an empty ciphertext'}: a batch has "
                "one non-empty ciphertext per row. Ask the sender to send it again.")
        key_id = meta.pop("key_id", "")
        vectors = [ts.lazy_ckks_vector_from(part) for part in parts]
        batch = cls(vectors, stage, key_id, meta)
        return batch

    def check_key(self, key_id: str) -> None:
        """EncryptionError unless the batch was made under the key ``key_id``."""
        if self.key_id != key_id:
            raise EncryptionError(
                f"This batch was encrypted under key {self.key_id!r}, not this context's "
                f"{key_id!r}: decrypting or evaluating it would give garbage. Use the "
                "context (or its public()) that encrypted it.")

    def vectors_for(self, ts_context) -> List:
        """The ciphertexts linked to ``ts_context`` (parsed on first use)."""
        if self._linked is not ts_context:
            try:
                for vector in self._vectors:
                    vector.link_context(ts_context)
            except (ValueError, RuntimeError, TypeError) as exc:
                raise CiphertextError(
                    f"A ciphertext does not parse under this context ({exc}): it was made "
                    "with other parameters, or forged.") from exc
            self._linked = ts_context
        return list(self._vectors)

    def nbytes(self) -> List[int]:
        """Serialized size of each ciphertext, in bytes."""
        return [len(vector.serialize()) for vector in self._vectors]

    def __repr__(self) -> str:
        return f"EncryptedBatch({len(self)} rows, stage={self.stage!r})"
