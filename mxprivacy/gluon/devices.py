"""Splitting Poisson batches over several devices.

Poisson batches have any size, so Gluon's ``split_and_load`` (``even_split=True`` by
default) refuses most of them. :func:`split_and_load` splits a batch of any size into
contiguous slices whose sizes differ by at most one, one per device, in order, with at
least two rows each (a batch of one row goes to the first device): a one-row slice next
to larger ones would have its ``autograd.backward`` head taken for a reduced loss by
the loss-reduction check. A device left without rows (a batch smaller than twice the
number of devices; MXNet 1.x cannot hold zero-row arrays) gets no slice: it runs no
forward pass, and
:class:`~mxprivacy.gluon.DPTrainer` still steps on it (its clipped sum is zero, the
contexts are summed, and the one noise vector is added on every device). An empty batch
gives no slice at all: take its noise-only step with ``trainer.step(0)``
(:class:`~mxprivacy.DPDataLoader` does that itself).
"""
from __future__ import annotations

from typing import List, Sequence

import mxnet as mx
import numpy as np
from mxnet import nd

from ..errors import InvalidParameterError

__all__ = ["split_and_load", "split_sizes", "as_context_list"]


def as_context_list(ctx_list) -> List[mx.Context]:
    """``ctx_list`` (one Context or a non-empty sequence of them) as a list."""
    contexts = [ctx_list] if isinstance(ctx_list, mx.Context) else list(ctx_list or [])
    if not contexts or not all(isinstance(c, mx.Context) for c in contexts):
        raise InvalidParameterError(
            f"ctx_list must be an mxnet Context or a non-empty list of them, got {ctx_list!r}.")
    if len(set(contexts)) != len(contexts):
        raise InvalidParameterError(f"ctx_list names a device twice: {contexts}.")
    return contexts


def split_sizes(size: int, parts: int) -> List[int]:
    """Sizes of the slices of ``size`` rows over at most ``parts`` devices: as even as
    possible, the larger ones first, at least two rows each unless ``size`` is 1
    (``split_sizes(7, 2) == [4, 3]``, ``split_sizes(3, 2) == [3]``,
    ``split_sizes(1, 2) == [1]``, ``split_sizes(0, 2) == []``)."""
    size = int(size)
    if size == 0:
        return []
    used = max(1, min(int(parts), size // 2))
    each, extra = divmod(size, used)
    return [each + 1] * extra + [each] * (used - extra)


def split_and_load(data, ctx_list, batch_axis: int = 0) -> List[nd.NDArray]:
    """Split ``data`` along ``batch_axis`` over ``ctx_list``, for any batch size.

    Parameters
    ----------
    data : NDArray or numpy array
        One batch (a Poisson batch of any size, also 0 or fewer rows than devices).
    ctx_list : Context or list of Context
    batch_axis : int, default 0

    Returns
    -------
    list of NDArray
        One slice per device that gets rows, on that device, in the order of
        ``ctx_list``: ``min(size // 2, len(ctx_list))`` slices (one for a single row,
        none for an empty batch). The same slices as Gluon's
        ``split_and_load(..., even_split=False)`` when ``size >= 2 * len(ctx_list)``.
    """
    contexts = as_context_list(ctx_list)
    if not isinstance(data, (nd.NDArray, np.ndarray)):
        raise InvalidParameterError(
            f"split_and_load takes an NDArray or a numpy array, got {type(data).__name__}; "
            "split each array of a batch separately.")
    if isinstance(batch_axis, bool) or not isinstance(batch_axis, (int, np.integer)) or \
            not -data.ndim <= batch_axis < data.ndim:
        raise InvalidParameterError(
            f"batch_axis must be an axis of the {data.ndim}-d data, got {batch_axis!r}.")
    size = data.shape[batch_axis]
    bounds = np.cumsum([0] + split_sizes(size, len(contexts)))
    return [_load(data, batch_axis, int(start), int(stop), ctx)
            for start, stop, ctx in zip(bounds[:-1], bounds[1:], contexts)]


def _load(data, axis: int, start: int, stop: int, ctx) -> nd.NDArray:
    if isinstance(data, np.ndarray):
        part = np.take(data, np.arange(start, stop), axis=axis)
        return nd.array(part, ctx=ctx, dtype=part.dtype)
    return nd.slice_axis(data, axis=axis, begin=start, end=stop).as_in_context(ctx)


def split_indices(indices: Sequence[int], parts: int) -> List[Sequence[int]]:
    """Contiguous chunks of ``indices`` with the sizes of :func:`split_sizes`."""
    bounds = np.cumsum([0] + split_sizes(len(indices), parts))
    return [indices[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
