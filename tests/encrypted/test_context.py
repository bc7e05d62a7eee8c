"""CKKS parameters from the depth; the key split between client and server."""
import warnings

import numpy as np
import pytest
import tenseal as ts
import tenseal.sealapi as sealapi

from mxprivacy.errors import (CiphertextError, EncryptionError, EncryptionWarning,
                              InvalidParameterError, PublicContextError)
from mxprivacy.encrypted.context import (EncryptionContext, PublicContext, choose_parameters,
                                         encode_rows)
from mxprivacy.encrypted.serialize import EncryptedBatch, pack


@pytest.mark.parametrize("depth, kwargs, degree, chain", [
    (6, {}, 16384, (60,) + (40,) * 6 + (60,)),          # the MNIST net: 360 bits
    (2, {}, 8192, (60, 40, 40, 60)),                    # 200 <= 218
    (3, {}, 16384, (60, 40, 40, 40, 60)),               # 240 > 218
    (5, dict(scale_bits=26, integer_bits=5), 8192, (31,) + (26,) * 5 + (31,)),
    (8, {}, 32768, (60,) + (40,) * 8 + (60,)),          # 440 > 438
    (2, dict(min_slots=5000), 16384, (60, 40, 40, 60)),
])
def test_parameters_from_depth(depth, kwargs, degree, chain):
    params = choose_parameters(depth, **kwargs)
    assert (params.poly_modulus_degree, params.coeff_mod_bit_sizes) == (degree, chain)
    assert params.depth == depth


@pytest.mark.parametrize("kwargs, words", [
    (dict(depth=6, poly_modulus_degree=8192), "more than poly_modulus_degree 8192"),
    (dict(depth=30), "lower scale_bits"),
    (dict(depth=0), "depth"),
    (dict(depth=2, poly_modulus_degree=1000), "poly_modulus_degree must be"),
    (dict(depth=2, scale_bits=61), "scale_bits"),
    (dict(depth=2, scale_bits=50, integer_bits=20), "integer_bits"),
])
def test_parameter_errors(kwargs, words):
    with pytest.raises(InvalidParameterError, match=words):
        choose_parameters(**kwargs)


@pytest.fixture(scope="module")
def client():
    return EncryptionContext.create(2, encoding={"kind": "flat", "input_shape": [3]})


def test_context_reports_its_chain(client):
    assert client.poly_modulus_degree == 8192 and client.depth == 2
    assert client.scale_bits == 40
    assert client.ts_context.is_private()


def test_public_context_holds_no_secret_key_and_cannot_decrypt(client):
    server = client.public()
    context = server.ts_context
    assert not context.is_private() and not context.has_secret_key()
    assert context.has_galois_keys() and context.has_relin_keys()
    vector = client.encrypt(np.array([1.0, 2.0, 3.0])).vectors_for(context)[0]
    with pytest.raises(ValueError):
        vector.decrypt()
    # nor through SEAL's low-level decryptor (a copy() + make_context_public() still can)
    with pytest.raises(ValueError):
        context.decryptor().data.decrypt(vector.ciphertext()[0], sealapi.Plaintext())
    # the client still decrypts (the server's copy did not strip the client's key)
    assert client.ts_context.is_private()
    np.testing.assert_allclose(vector.decrypt(client.ts_context.secret_key()),
                               [1, 2, 3], atol=1e-4)


def test_public_context_refuses_secret_key_and_missing_keys(client):
    with pytest.raises(PublicContextError, match="secret key"):
        PublicContext(client.ts_context, client.key_id)
    leaked = pack("public_context", {"key_id": client.key_id},
                  [client.ts_context.serialize(save_secret_key=True)])
    with pytest.raises(PublicContextError, match="secret key"):
        PublicContext.from_bytes(leaked)
    leaky = client.ts_context.copy()
    leaky.make_context_public()                     # flags say public, decryptor works
    assert not leaky.has_secret_key()
    with pytest.raises(PublicContextError, match="decryptor still decrypts"):
        PublicContext(leaky, client.key_id)
    bare = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 60])
    bare.global_scale = 2 ** 40
    bare.make_context_public()                      # no Galois keys were generated
    with pytest.raises(PublicContextError, match="Galois"):
        PublicContext(bare, "k")
    no_galois = pack("public_context", {"key_id": "k"}, [bare.serialize()])
    with pytest.raises(PublicContextError, match="Galois"):
        PublicContext.from_bytes(no_galois)


def test_public_context_round_trip(client):
    server = PublicContext.from_bytes(client.public().serialize())
    assert (server.key_id, server.depth, server.poly_modulus_degree) == \
        (client.key_id, 2, 8192)


def test_encode_rows_shapes():
    assert encode_rows(np.zeros((1, 2, 2)), (1, 2, 2)).shape == (1, 1, 2, 2)
    assert encode_rows(np.zeros((3, 1, 2, 2)), (1, 2, 2)).shape == (3, 1, 2, 2)
    for bad in (np.zeros((2, 2)), np.zeros((0, 1, 2, 2)), np.zeros((1, 1, 2, 3))):
        with pytest.raises(InvalidParameterError, match="shape"):
            encode_rows(bad, (1, 2, 2))
    with pytest.raises(InvalidParameterError, match="NaN"):
        encode_rows(np.full((1, 2, 2), np.nan), (1, 2, 2))


def test_encrypt_needs_an_encoding_and_decrypt_needs_results(client):
    bare = EncryptionContext(client.ts_context, client.parameters)
    with pytest.raises(EncryptionError, match="plan.create_context"):
        bare.encrypt(np.zeros(3))
    with pytest.raises(EncryptionError, match="not results"):
        client.decrypt(client.encrypt(np.zeros(3)))
    with pytest.raises(EncryptionError, match="EncryptedBatch"):
        client.decrypt(np.zeros(3))


def test_decrypt_trims_to_output_size(client):
    vectors = [ts.ckks_vector(client.ts_context, [1.0, 2.0, 3.0, 4.0])]
    batch = EncryptedBatch(vectors, "output", client.key_id, {"size": 2})
    np.testing.assert_allclose(client.decrypt(batch), [[1.0, 2.0]], atol=1e-4)


def test_rescale_primes_are_seal_chain():
    import tenseal.sealapi as sealapi

    from mxprivacy.encrypted.context import rescale_primes

    bits = [36, 29, 29, 29, 36]
    context = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=bits)
    seal = [m.value() for m in sealapi.CoeffModulus.Create(8192, bits)]
    # chain index c (fresh = 3) drops data prime c; the special prime is never dropped
    assert rescale_primes(context) == {1: seal[1], 2: seal[2], 3: seal[3]}


def test_decrypt_divides_the_plans_gain_and_refuses_any_other(client):
    vectors = [ts.ckks_vector(client.ts_context, [2.0, 4.0])]
    mine = EncryptionContext(client.ts_context, client.parameters, key_id=client.key_id)
    mine.expected_gain = 2.0 ** 0.5                 # what plan.create_context() sets
    batch = EncryptedBatch(vectors, "output", client.key_id, {"size": 2, "gain": 2.0 ** 0.5})
    np.testing.assert_allclose(mine.decrypt(batch), [[2 ** 0.5, 8 ** 0.5]], atol=1e-4)
    for gain in (2.0 ** 0.5 * 1.01, 1.0, 0.0, -1.0, 1e9, float("nan"), "1", None, True):
        batch = EncryptedBatch(vectors, "output", client.key_id, {"size": 2, "gain": gain})
        with pytest.raises(CiphertextError, match="gain"):
            mine.decrypt(batch)
    # without a plan's gain: only what this context's 40-bit rescales can produce
    assert client.expected_gain is None and client._gain_limit() < 1e-5
    ok = EncryptedBatch(vectors, "output", client.key_id, {"size": 2, "gain": 1.0})
    np.testing.assert_allclose(client.decrypt(ok), [[2.0, 4.0]], atol=1e-4)
    for gain in (1.001, 1.9, 0.6):
        batch = EncryptedBatch(vectors, "output", client.key_id, {"size": 2, "gain": gain})
        with pytest.raises(CiphertextError, match="gain"):
            client.decrypt(batch)


@pytest.mark.parametrize("size", [None, 0, -1, 4097, 10 ** 9, "x", 2.7, True])
def test_decrypt_refuses_a_bogus_size(client, size):
    vectors = [ts.ckks_vector(client.ts_context, [2.0, 4.0])]
    meta = {} if size is None else {"size": size}
    with pytest.raises(CiphertextError, match="size"):
        client.decrypt(EncryptedBatch(vectors, "output", client.key_id, meta))


def test_decrypt_warns_above_the_integer_bits_bound(client):
    bound = 2.0 ** (client.integer_bits - 1)
    assert client.integer_bits == 20
    for value, warns in ((0.9 * bound, False), (1.1 * bound, True)):
        vectors = [ts.ckks_vector(client.ts_context, [value, 1.0])]
        batch = EncryptedBatch(vectors, "output", client.key_id, {"size": 2})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            client.decrypt(batch)
        assert [w.category for w in caught] == ([EncryptionWarning] if warns else [])
    assert "raise integer_bits" in str(caught[0].message)


def test_encrypt_refuses_values_tenseal_cannot_encode(client):
    limit = client._max_encodable()
    client.encrypt(np.array([limit / 2, 0.0, 0.0]))
    with pytest.raises(InvalidParameterError, match="scale the inputs"):
        client.encrypt(np.array([1e40, 0.0, 0.0]))
    with pytest.raises(ValueError, match="too large"):     # what TenSEAL says otherwise
        ts.ckks_vector(client.ts_context, [1e40])


def test_public_context_bytes_that_do_not_parse(client):
    part = client.public().ts_context.serialize()
    for bad in (part[:len(part) // 2], b"\x00" * 64):
        with pytest.raises(CiphertextError, match="does not parse"):
            PublicContext.from_bytes(pack("public_context", {"key_id": "k"}, [bad]))
