"""Envelopes: every flipped bit and every truncation is a CiphertextError, checked before
TenSEAL parses anything; a client-server round trip through bytes only."""
import mxnet as mx
import numpy as np
import pytest
import tenseal as ts
from mxnet.gluon import nn

from mxprivacy.errors import CiphertextError, EncryptionError
from mxprivacy.encrypted.context import PublicContext
from mxprivacy.encrypted.plan import EncryptedModel
from mxprivacy.encrypted.serialize import EncryptedBatch, pack, unpack
from mxprivacy.gluon.poly import PolyActivation


def test_pack_unpack_round_trip():
    data = pack("encrypted_input", {"a": [1, 2]}, [b"xyz", b"", b"\x00" * 5])
    assert unpack(data, "encrypted_input") == ({"a": [1, 2]}, [b"xyz", b"", b"\x00" * 5])


def test_every_bit_flip_and_every_truncation_is_refused():
    data = pack("encrypted_output", {"size": 3, "key_id": "k"}, [b"ciphertext-1", b"ct-2"])
    for position in range(len(data)):
        for bit in range(8):
            tampered = bytearray(data)
            tampered[position] ^= 1 << bit
            with pytest.raises(CiphertextError):
                unpack(bytes(tampered), "encrypted_output")
    for length in range(len(data)):
        with pytest.raises(CiphertextError):
            unpack(data[:length], "encrypted_output")
    with pytest.raises(CiphertextError, match="truncated or padded"):
        unpack(data + b"\x00", "encrypted_output")


def test_payload_flip_is_caught_by_the_digest():
    data = pack("encrypted_input", {}, [b"payload bytes"])
    tampered = data[:-3] + bytes([data[-3] ^ 0x10]) + data[-2:]
    with pytest.raises(CiphertextError, match="SHA-256"):
        unpack(tampered, "encrypted_input")


def test_wrong_kind_version_and_foreign_bytes():
    context_bytes = pack("public_context", {}, [b"ctx"])
    with pytest.raises(CiphertextError, match="public context, not a encrypted input"):
        unpack(context_bytes, "encrypted_input")
    newer = bytearray(context_bytes)
    newer[9] = 99                                   # version field (u16 after magic)
    with pytest.raises(CiphertextError, match="version 99"):
        unpack(bytes(newer), "public_context")
    with pytest.raises(CiphertextError, match="not an mxprivacy"):
        unpack(b"raw tenseal bytes" * 10, "encrypted_input")
    with pytest.raises(CiphertextError, match="Expected bytes"):
        unpack("a string", "encrypted_input")


@pytest.fixture(scope="module")
def small():
    """A tiny flat plan (Dense -> square -> Dense) and a 8192 context."""
    mx.random.seed(0)
    net = nn.HybridSequential()
    net.add(nn.Dense(4), PolyActivation("square"), nn.Dense(2))
    net.initialize(mx.init.Xavier())
    plan = EncryptedModel.from_gluon(net, (5,))
    client = plan.create_context(scale_bits=30, integer_bits=10)
    return net, plan, client


def test_round_trip_through_bytes_only(small):
    net, plan, client = small
    x = np.random.RandomState(0).uniform(0, 1, (2, 5))
    # client -> server: the public context and the encrypted inputs, as bytes
    context_bytes, input_bytes = client.public().serialize(), client.encrypt(x).serialize()
    server = PublicContext.from_bytes(context_bytes)
    assert not server.ts_context.is_private()
    result_bytes = plan.predict(EncryptedBatch.from_bytes(input_bytes), context=server) \
        .serialize()
    # server -> client: the encrypted results, as bytes
    logits = client.decrypt(EncryptedBatch.from_bytes(result_bytes))
    reference = net(mx.nd.array(x)).asnumpy()
    assert logits.shape == (2, 2)
    assert (np.abs(logits - reference).max(1) / np.abs(reference).max(1)).max() < 1e-3


def test_tampered_ciphertext_never_reaches_tenseal(small, monkeypatch):
    _, _, client = small
    data = client.encrypt(np.zeros(5)).serialize()
    monkeypatch.setattr(ts, "lazy_ckks_vector_from", _forbidden)
    rng = np.random.RandomState(0)
    for position in list(range(0, 120)) + list(rng.randint(120, len(data), 40)):
        tampered = bytearray(data)
        tampered[position] ^= 1 << rng.randint(8)
        with pytest.raises(CiphertextError):
            EncryptedBatch.from_bytes(bytes(tampered))
    for length in (0, 10, 60, len(data) // 2, len(data) - 1):
        with pytest.raises(CiphertextError):
            EncryptedBatch.from_bytes(data[:length])


def test_tampered_public_context_is_refused(small):
    _, _, client = small
    data = client.public().serialize()
    tampered = bytearray(data)
    tampered[len(data) // 2] ^= 4
    with pytest.raises(CiphertextError, match="SHA-256"):
        PublicContext.from_bytes(bytes(tampered))


def test_context_bytes_fed_as_a_vector(small):
    _, _, client = small
    with pytest.raises(CiphertextError, match="public context"):
        EncryptedBatch.from_bytes(client.public().serialize())
    raw = client.public().ts_context.serialize()
    with pytest.raises(CiphertextError, match="not an mxprivacy"):
        EncryptedBatch.from_bytes(raw)


def test_results_of_another_key_are_refused(small):
    _, plan, client = small
    other = plan.create_context(scale_bits=30, integer_bits=10)
    result = plan.predict(other.encrypt(np.zeros(5)), context=other.public())
    with pytest.raises(EncryptionError, match="another|not this context"):
        client.decrypt(EncryptedBatch.from_bytes(result.serialize()))
    with pytest.raises(EncryptionError, match="not this context"):
        plan.predict(client.encrypt(np.zeros(5)), context=other.public())


def _forbidden(*args, **kwargs):
    raise AssertionError("TenSEAL parsed bytes that failed the envelope checks")



def _crafted(kind_code, meta_bytes, payload=b""):
    """An envelope with a recomputed (valid) digest around arbitrary meta bytes."""
    from mxprivacy.encrypted import serialize

    header = serialize._HEADER.pack(serialize.MAGIC, serialize.VERSION, kind_code,
                                    len(meta_bytes), len(payload))
    return header + serialize._digest(header, meta_bytes, payload) + meta_bytes + payload


@pytest.mark.parametrize("meta, words", [
    (b"\xff\xfe", "not valid UTF-8 JSON"),
    (b"{not json", "not valid UTF-8 JSON"),
    (b"[" * 100000 + b"]" * 100000, "not valid UTF-8 JSON"),       # RecursionError
    (b"[1, 2]", "JSON list, not an object"),
    (b"3", "JSON int, not an object"),
])
def test_crafted_meta_with_a_valid_digest_is_a_ciphertext_error(meta, words):
    with pytest.raises(CiphertextError, match=words):
        unpack(_crafted(2, meta), "encrypted_input")


def test_meta_length_over_the_maximum_has_its_own_message():
    data = _crafted(2, b'{"x":"' + b"a" * (1 << 20) + b'"}')
    with pytest.raises(CiphertextError, match="declares .* bytes of meta"):
        unpack(data, "encrypted_input")


def test_empty_ciphertexts_are_refused(monkeypatch):
    monkeypatch.setattr(ts, "lazy_ckks_vector_from", _forbidden)
    for parts, words in (([b""], "an empty ciphertext"), ([b"x", b""], "an empty"),
                         ([], "no ciphertext")):
        with pytest.raises(CiphertextError, match=words):
            EncryptedBatch.from_bytes(pack("encrypted_input", {"key_id": "k"}, parts))
