"""NoiseSource: secret noise by default, seeds warn, and the secure (CSPRNG) mode.

Statistical tests draw n = 10^5 values and accept at level alpha = 1e-3 (bands of 5
standard errors). Power: the KS test rejects a 6 % scale error with probability > 0.999
(D = 0.014 against a critical 0.0062), the variance band (+-0.022) catches a 1.2 % scale
error, and the kurtosis band (+-0.077) catches a sum of four uniforms (kurtosis 2.7).
"""
import os
import threading
import warnings

import numpy as np
import pytest
from scipy import stats

from mxprivacy.errors import InvalidParameterError, PrivacyWarning
from mxprivacy.gluon.noise import NoiseSource

N = 100_000
ALPHA = 1e-3


def take(size, **kwargs):
    source = NoiseSource(size, **kwargs)
    try:
        return source.take(), source.take()
    finally:
        source.close()


def test_default_noise_is_unseeded_and_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrivacyWarning)
        a, _ = take(1000)
        b, _ = take(1000)
    assert not np.array_equal(a, b)


def test_seeded_noise_warns_once_and_is_reproducible():
    with pytest.warns(PrivacyWarning, match="a known seed lets anyone subtract it") as record:
        a = take(100, seed=3)
    assert len([w for w in record if w.category is PrivacyWarning]) == 1
    with pytest.warns(PrivacyWarning):
        assert np.array_equal(a[0], take(100, seed=3)[0])


def test_seed_with_secure_mode_is_an_error():
    with pytest.raises(InvalidParameterError, match="secure"):
        NoiseSource(10, seed=0, secure=True)
    with pytest.raises(InvalidParameterError):
        NoiseSource(10, 0, secure=True)


def test_secure_noise_is_standard_normal_float32():
    first, second = take(N, secure=True)
    assert first.dtype == np.float32 and first.shape == (N,)
    z = first.astype(np.float64)
    assert stats.kstest(z, "norm").pvalue > ALPHA
    assert stats.kstest(z, stats.norm(scale=1.06).cdf).pvalue < ALPHA  # power check
    assert abs(z.mean()) < 5 / np.sqrt(N)
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / N)
    assert abs(stats.kurtosis(z, fisher=False) - 3) < 5 * np.sqrt(24 / N)
    # Consecutive steps are independent.
    assert abs(np.corrcoef(first, second)[0, 1]) < 5 / np.sqrt(N)


@pytest.fixture
def byte_stream(monkeypatch):
    """os.urandom replaced by a seeded stream; records the calling threads."""
    rng, threads = np.random.default_rng(11), []

    def fake(n):
        threads.append(threading.current_thread().name)
        return rng.bytes(n)
    monkeypatch.setattr(os, "urandom", fake)
    return threads


def reference_normals(raw: bytes, n: int) -> np.ndarray:
    """The documented construction: halved sum of four Box-Muller normals."""
    bits = np.frombuffer(raw, dtype=np.uint64) >> np.uint64(11)
    u1 = (bits[:2 * n] + 1.0) * 2.0 ** -53
    u2 = bits[2 * n:] * 2.0 ** -53
    r, theta = np.sqrt(-2 * np.log(u1)), 2 * np.pi * u2
    c, s = r * np.cos(theta), r * np.sin(theta)
    # four different pairs per value: cos of pairs i, n+i and sin of pairs i+1, n+i+1
    return (c[:n] + c[n:] + np.roll(s[:n], -1) + np.roll(s[n:], -1)) / 2


def test_secure_noise_is_drawn_from_urandom_in_the_background(byte_stream):
    source = NoiseSource(1000, secure=True)
    try:
        first, second = source.take(), source.take()
    finally:
        source.close()
    assert byte_stream and all(t.startswith("mxprivacy-noise") for t in byte_stream)
    expected = np.random.default_rng(11)
    for value in (first, second):
        ref = reference_normals(expected.bytes(32 * 1000), 1000)
        np.testing.assert_allclose(value, ref, rtol=1e-6, atol=1e-6)


def test_secure_noise_chunks_large_vectors(byte_stream):
    # Chunks of 2^16 values bound the float64 temporaries; the stream is consumed in order.
    from mxprivacy.mechanisms.secure import standard_normal
    size = (1 << 16) + 5
    value = standard_normal(size)
    expected = np.random.default_rng(11)
    head = reference_normals(expected.bytes(32 << 16), 1 << 16)
    tail = reference_normals(expected.bytes(32 * 5), 5)
    np.testing.assert_allclose(value, np.concatenate([head, tail]), rtol=1e-6, atol=1e-6)


def test_secure_lanes_use_four_different_pairs_and_stay_independent():
    from mxprivacy.mechanisms.secure import standard_normal
    z = standard_normal(100_000).astype(np.float64)
    # neighbouring lanes share a Box-Muller pair (cos to one, sin to the other): the two
    # outputs of a pair are independent, so neighbours must be uncorrelated
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 5 / np.sqrt(len(z))
    assert standard_normal(1).shape == (1,) and standard_normal(1).dtype == np.float32
