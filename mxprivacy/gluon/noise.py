"""Gaussian noise drawn ahead of time on a background thread.

MXNet's CPU normal sampler is slow (7.7 ms for 200,000 values here, against 1.6 ms for
numpy's SFC64 generator). The noise never depends on the data, so the trainer can draw
the next step's standard normal vector while the current step computes. Each buffer is
used exactly once. Scaling by sigma x sensitivity happens when the noise is used, so
a change of ``noise_multiplier`` takes effect at once.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["NoiseSource"]


class NoiseSource:
    """Standard normal float32 vectors of a fixed length, one per :meth:`take`."""

    def __init__(self, size: int, seed: Optional[int] = None) -> None:
        self.size = int(size)
        self._rng = np.random.Generator(np.random.SFC64(seed))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mxprivacy-noise")
        self._next: Future = self._pool.submit(self._draw)

    def _draw(self) -> np.ndarray:
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
