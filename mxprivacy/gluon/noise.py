"""Gaussian noise drawn ahead of time on a background thread.

MXNet's CPU normal sampler is slow (7.7 ms for 200,000 values here, against 1.6 ms for
numpy's SFC64 generator). The noise never depends on the data, so the trainer can draw
the next step's standard normal vector while the current step computes. Each buffer is
used exactly once. Scaling by sigma x sensitivity happens when the noise is used, so
a change of ``noise_multiplier`` takes effect at once.

Two generators:

- default: numpy SFC64 seeded from OS entropy (or from ``seed``, which warns: the
  guarantee assumes secret noise, and anyone who knows the seed can subtract it);
- ``secure=True``: every value is drawn from ``os.urandom`` (the OS CSPRNG) and is the
  halved sum of four independent Box-Muller normals (Holohan & Braghin 2021, the
  construction of Opacus' ``secure_mode``), which defeats the floating-point attack of
  Mironov (2012) on a single transformed uniform; see
  :func:`mxprivacy.mechanisms.secure.standard_normal`. It has no seed: a seed would make
  the noise reproducible, hence predictable. It costs about 27 ms per 200,000 values
  (against 2 ms) on one core; the background thread overlaps it with the step.

  What it does not cover: the trainer adds sigma C times this vector to the clipped sum
  in float32, and that final rounding is not snapped to a grid (Mironov's snapping
  mechanism), as in Opacus' secure mode.
"""
from __future__ import annotations

import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional, Sequence, Tuple

import numpy as np

from ..errors import InvalidParameterError, PrivacyWarning
from ..mechanisms import secure as _secure

__all__ = ["NoiseSource"]

SEEDED_NOISE_WARNING = (
    "DP noise seeded with an explicit seed: the guarantee assumes secret noise; a known "
    "seed lets anyone subtract it. Use seed=None (OS entropy) or secure=True outside "
    "reproducible experiments.")


class NoiseSource:
    """Standard normal float32 vectors of a fixed length, one per :meth:`take`.

    Parameters
    ----------
    size : int
        Length of each vector.
    seed : int, optional
        Seed of the (non-secure) generator, for reproducible experiments only: it raises a
        :class:`~mxprivacy.PrivacyWarning`. None draws the seed from OS entropy.
    secure : bool
        Draw from the OS CSPRNG with a floating-point-safe construction. Cannot be seeded.
    """

    def __init__(self, size: int, seed: Optional[int] = None, *, secure: bool = False) -> None:
        if secure and seed is not None:
            raise InvalidParameterError(
                "A seed cannot be combined with secure mode: seeded noise is predictable. "
                "Pass seed=None with secure=True, or drop secure=True for a reproducible "
                "(not private against whoever knows the seed) experiment.")
        if seed is not None:
            warnings.warn(SEEDED_NOISE_WARNING, PrivacyWarning, stacklevel=2)
        self.size = int(size)
        self.secure = bool(secure)
        self._rng = None if self.secure else np.random.Generator(np.random.SFC64(seed))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mxprivacy-noise")
        self._next: Future = self._pool.submit(self._draw)

    def _draw(self) -> np.ndarray:
        if self.secure:
            return _secure.standard_normal(self.size)
        return self._rng.standard_normal(self.size, dtype=np.float32)

    def take(self) -> np.ndarray:
        """The next vector (drawn in the background), and start drawing the one after."""
        value = self._next.result()
        self._next = self._pool.submit(self._draw)
        return value

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __del__(self) -> None:  # pragma: no cover - interpreter teardown
        try:
            self.close()
        except Exception:
            pass


def layout(shapes: Sequence[Tuple[int, ...]]) -> Tuple[int, list]:
    """Total size and (start, stop) offsets of each shape in one flat vector."""
    offsets, start = [], 0
    for shape in shapes:
        stop = start + int(np.prod(shape))
        offsets.append((start, stop))
        start = stop
    return start, offsets
