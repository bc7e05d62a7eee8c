"""Does a net's output for one sample depend on other samples? Tested by what it computes.

Per-sample clipping bounds one sample's influence only if every output row depends on
its own input row alone. Batch statistics break that in many forms: BatchNorm in any
disguise, ``x - x.mean(0)``, a per-batch max scaling, a median, in-batch mixup. Class
names and operator lists miss some of them, so the first recorded batch is probed:

- the net runs in training mode, recorded (so ``is_training`` and ``is_recording``
  branches are seen), with one fixed random state, so dropout masks agree between runs;
- then it runs again with row 0 of the input (and of every extra per-row input)
  replaced, three times: by ``3 x + 1``, by a value far above every entry and by one
  far below, so batch-wide sums, maxima, minima and order statistics all move;
- every other row must stay the same, to 1e-5 of its own scale (a mean over B rows
  moves by about 1/B of the replaced value, which is large for the extreme rows).

Two rows are enough. MXNet's global random state is reseeded from a value drawn from
it before the probe, so a seeded run stays reproducible.
"""
from __future__ import annotations

from typing import List, Sequence

import mxnet as mx
import numpy as np
from mxnet import autograd, nd

from ..errors import UnsupportedLayerError

__all__ = ["check_rows_independent", "check_rows_aligned", "leaves"]

TOLERANCE = 1e-5


def leaves(out) -> List:
    """The NDArrays of a (nested) output, in order."""
    if isinstance(out, nd.NDArray):
        return [out]
    if isinstance(out, (list, tuple)):
        return [leaf for item in out for leaf in leaves(item)]
    return []


def _run(net, x, args, seed: int) -> List[np.ndarray]:
    mx.random.seed(seed)
    with autograd.record(train_mode=True):
        outputs = leaves(net(x, *args))
    return [o.asnumpy().astype(np.float64) for o in outputs]


def _replaced(array, how: str, bound: float):
    with autograd.pause():  # the probe runs inside the caller's record() section
        changed = array.detach().copy()
        if how == "affine":
            changed[0] = changed[0] * 3 + 1
        else:
            changed[0] = nd.full(array.shape[1:], bound if how == "high" else -bound,
                                 ctx=array.context, dtype=array.dtype)
    return changed


def batch_view(array, rows: int):
    """``array`` seen as (rows, -1) when its first axis is k * rows (a batch-major
    flattening such as (B*T, V)), else None: such outputs cannot be attributed."""
    if array.ndim == 0 or array.shape[0] % rows:
        return None
    return array.reshape((rows, -1))


def _no_output_to_compare() -> None:
    raise UnsupportedLayerError(
        "No output of the network has the batch on axis 0 (shape (B, ...) or a "
        "batch-major (B*k, ...)), so per-sample losses and the row checks cannot be "
        "attributed to samples. Return outputs with the batch first.")


def _moved_rows(first: np.ndarray, second: np.ndarray) -> float:
    """Largest change of rows 1.. relative to each row's own scale (inf if a row lost
    or gained finiteness)."""
    a, b = first[1:].reshape(len(first) - 1, -1), second[1:].reshape(len(first) - 1, -1)
    if not np.array_equal(np.isfinite(a), np.isfinite(b)):
        return float("inf")
    a, b = np.nan_to_num(a), np.nan_to_num(b)
    scale = np.abs(a).max(axis=1) + 1e-12
    return float((np.abs(a - b).max(axis=1) / scale).max())


def check_rows_independent(net, x, args: Sequence) -> bool:
    """Raise :class:`UnsupportedLayerError` if other rows move when row 0 changes.

    Returns whether the probe compared anything (it needs at least 2 rows, and a net
    that runs on the batch; otherwise the next batch is probed)."""
    rows = x.shape[0]
    if rows < 2:
        return False
    per_row = [isinstance(a, nd.NDArray) and a.ndim > 0 and a.shape[0] == rows for a in args]
    seeds = [int(v) for v in nd.random.randint(1, 2 ** 30, shape=(2,)).asnumpy()]
    compared = False
    try:
        try:
            base = _run(net, x, args, seeds[0])
        except UnsupportedLayerError:
            raise
        except Exception:  # the real forward pass will raise its own, clearer error
            return False
        for how in ("affine", "high", "low"):
            def change(array):
                bound = 4.0 * float(nd.abs(array).max().asscalar()) + 8.0
                return _replaced(array, how, bound)
            changed_args = [change(a) if p else a for a, p in zip(args, per_row)]
            try:
                other = _run(net, change(x), changed_args, seeds[0])
            except UnsupportedLayerError:
                raise
            except Exception:  # this replacement is not a valid input: try the next
                continue
            pairs = [(batch_view(a, rows), batch_view(b, rows)) for a, b in zip(base, other)]
            pairs = [(a, b) for a, b in pairs if a is not None]
            if not pairs:
                _no_output_to_compare()
            compared = True
            for first, second in pairs:
                moved = _moved_rows(first, second)
                if moved > TOLERANCE:
                    _refuse(moved, how)
    finally:
        mx.random.seed(seeds[1])
    return compared


def _refuse(moved: float, how: str) -> None:
    raise UnsupportedLayerError(
        "The network's output for one sample depends on other samples in the batch "
        f"(replacing row 0 ({how}) moved other rows by {moved:.2g} of their scale): batch "
        "statistics or another cross-sample operation (a mean, max, sort or mix over the "
        "batch axis). Per-sample clipping cannot bound such a sample's influence. Replace "
        "BatchNorm-like layers with GroupNorm, LayerNorm or InstanceNorm (mxprivacy.fix(net) "
        "does it for Gluon's), and remove operations over the batch axis.")


def check_rows_aligned(capture_forward, rows: int) -> bool:
    """Refuse a net whose captured layer rows are not its samples.

    The per-sample rules attribute row r of every captured layer input and output
    gradient to sample r. A net that moves samples off axis 0 (a time-major layout whose
    length happens to equal the batch size, a sort or reversal of rows undone later)
    would have them clip mixtures of samples. ``capture_forward()`` runs one recorded,
    captured forward pass in training mode and returns ``(outputs, probes)``; it runs
    twice with one random state (equal dropout masks). The first pass goes backward with
    random head gradients G, the second with G scaled per sample by random c_s. Probe
    row r must scale by exactly c_r: any other sample's contribution would scale
    differently. Returns whether the check ran.
    """
    if rows < 2:
        return False
    seeds = [int(v) for v in nd.random.randint(1, 2 ** 30, shape=(2,)).asnumpy()]
    try:
        mx.random.seed(seeds[0])
        outputs, probes = capture_forward()
        heads = [o for o in outputs if batch_view(o, rows) is not None]
        if not heads:
            _no_output_to_compare()
        if not probes:
            return False
        grads = [nd.random.normal(shape=h.shape, ctx=h.context, dtype=h.dtype) for h in heads]
        scale = nd.random.uniform(0.5, 2.0, shape=(rows, 1), ctx=heads[0].context)
        first = _probe_grads(heads, grads, probes)
        mx.random.seed(seeds[0])
        outputs, probes = capture_forward()
        heads = [o for o in outputs if batch_view(o, rows) is not None]
        scaled = [(batch_view(g, rows) * scale.astype(g.dtype)).reshape(g.shape)
                  for g in grads]
        second = _probe_grads(heads, scaled, probes)
    finally:
        mx.random.seed(seeds[1])
    c = scale.asnumpy().astype(np.float64).ravel()
    for a, b in zip(first, second):
        want = a * c.reshape((rows,) + (1,) * (a.ndim - 1))
        size = np.abs(want).reshape(rows, -1).max(axis=1) + np.abs(b).reshape(rows, -1).max(axis=1)
        off = np.abs(b - want).reshape(rows, -1).max(axis=1)
        if np.any(off > 1e-4 * size + 1e-12):
            raise UnsupportedLayerError(
                "Rows of a captured layer are not the samples of the batch: the gradient "
                "reaching one layer row comes from other samples (a time-major layout, or "
                "rows sorted, reversed or mixed inside the net). Per-sample clipping would "
                "clip mixtures of samples. Keep the batch on axis 0 of every layer with "
                "parameters, or use PrivateBlock(net, mode='microbatch').")
    return True


def _probe_grads(heads, head_grads, probes) -> List[np.ndarray]:
    autograd.backward(heads, head_grads)
    return [p.grad.asnumpy().astype(np.float64) for p in probes]
