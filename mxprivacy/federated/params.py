"""A Gluon Block's parameters as a list of numpy arrays, and the arithmetic on updates.

Order
    :func:`get_weights` lists every parameter of ``net.collect_params()`` (trainable
    ones and state such as BatchNorm's running statistics) sorted by its *structural*
    name (``"0.weight"``, ``"1.running_mean"``, ...: the attribute path inside the
    Block). Prefix names such as ``dense3_weight`` change with every construction of the
    same network; the structural names do not, so a server and its clients, each
    building the net on its own, agree on the order.

Validation
    :func:`check_update` refuses a list of arrays with the wrong count, a wrong shape, a
    non-floating dtype, or NaN/inf, with :class:`~mxprivacy.errors.InvalidUpdateError`
    naming the array. A strategy counts such a client as rejected (it contributes 0).

Norms and clipping
    :func:`global_norm` is the L2 norm over all arrays together, computed in float64
    (with rescaling, so huge values do not overflow). :func:`clip_update` scales the
    arrays to norm at most C *after* the cast back to their dtype: rounding to float32
    can push a norm scaled to exactly C slightly above C, so the factor is shrunk
    until the returned arrays themselves have ``global_norm <= C``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import FederatedError, InvalidParameterError, InvalidUpdateError

__all__ = ["parameter_names", "get_weights", "set_weights", "check_update", "global_norm",
           "clip_update", "add_arrays", "subtract_arrays", "scale_arrays", "zeros_like"]

_MAX_SHRINKS = 64


def _structural_params(net) -> List[Tuple[str, object]]:
    if not hasattr(net, "_collect_params_with_prefix"):
        raise InvalidParameterError(
            f"Expected a gluon Block, got {type(net).__name__}: pass the network itself.")
    return sorted(net._collect_params_with_prefix().items())


def parameter_names(net) -> List[str]:
    """The structural names of ``net``'s parameters, in the order of :func:`get_weights`."""
    return [name for name, _ in _structural_params(net)]


def _data(name: str, param):
    try:
        return param.data(param.list_ctx()[0])
    except Exception as err:  # DeferredInitializationError, not initialized
        raise FederatedError(
            f"Parameter {name!r} has no value yet ({type(err).__name__}): initialize the "
            "network and run one forward pass on a batch (so every shape is known) "
            "before reading or setting its weights.") from err


def get_weights(net) -> List[np.ndarray]:
    """Copies of all of ``net``'s parameters, as numpy arrays of their stored dtype."""
    return [_data(name, p).asnumpy() for name, p in _structural_params(net)]


def set_weights(net, arrays: Sequence[np.ndarray]) -> None:
    """Load ``arrays`` (in :func:`get_weights` order) into ``net``, on all its contexts.

    Raises :class:`~mxprivacy.errors.InvalidUpdateError` (before anything is changed)
    when the count, a shape or a dtype does not fit, or a value is NaN/inf.
    """
    import mxnet as mx

    named = _structural_params(net)
    template = [_data(name, p) for name, p in named]
    check_update(arrays, [t.shape for t in template], names=[n for n, _ in named])
    for (_, param), array in zip(named, arrays):
        param.set_data(mx.nd.array(np.asarray(array), dtype=param.dtype))


def _shape_of(item) -> tuple:
    return tuple(item) if isinstance(item, (tuple, list)) else tuple(item.shape)


def _label(index: int, names: Optional[Sequence[str]]) -> str:
    return f"array {index}" + (f" (parameter {names[index]!r})" if names else "")


def check_update(arrays: Sequence[np.ndarray], template: Sequence,
                 names: Optional[Sequence[str]] = None) -> None:
    """Check that ``arrays`` fit ``template`` (arrays, or shapes) and are finite floats.

    ``names`` (optional, one per template entry) are used in the messages. Raises
    :class:`~mxprivacy.errors.InvalidUpdateError` naming the first array that is off.
    """
    if arrays is None or isinstance(arrays, np.ndarray) or not hasattr(arrays, "__len__"):
        raise InvalidUpdateError(
            f"Expected a list of {len(template)} numpy arrays, got "
            f"{type(arrays).__name__}: send one array per model parameter.")
    if len(arrays) != len(template):
        raise InvalidUpdateError(
            f"Expected {len(template)} arrays (one per model parameter), got "
            f"{len(arrays)}: the client's model must have the same architecture as the "
            "server's.")
    for index, (array, expected) in enumerate(zip(arrays, template)):
        _check_one(index, array, _shape_of(expected), names)


def _check_one(index: int, array, expected: tuple, names) -> None:
    label = _label(index, names)
    if not isinstance(array, np.ndarray):
        raise InvalidUpdateError(
            f"{label} is a {type(array).__name__}, not a numpy array: send numpy arrays.")
    if tuple(array.shape) != expected:
        raise InvalidUpdateError(
            f"{label} has shape {tuple(array.shape)}, expected {expected}: the client's "
            "model must have the same architecture (and parameter order) as the server's.")
    if array.dtype.kind != "f":
        raise InvalidUpdateError(
            f"{label} has dtype {array.dtype}, expected a floating dtype: send the "
            "parameters as float arrays.")
    if not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise InvalidUpdateError(
            f"{label} has {bad} NaN/inf value(s) of {array.size}: the client's training "
            "diverged (lower its learning rate) or its data holds non-finite values.")


def _as_float_arrays(arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
    out = [np.asarray(a) for a in arrays]
    for index, a in enumerate(out):
        if a.dtype.kind != "f":
            raise InvalidUpdateError(f"{_label(index, None)} has dtype {a.dtype}, expected "
                                     "a floating dtype: send the parameters as float arrays.")
    return out


def global_norm(arrays: Sequence[np.ndarray]) -> float:
    """L2 norm of all ``arrays`` together, in float64 (inf/NaN if a value is)."""
    arrays = _as_float_arrays(arrays)
    wide = [a.astype(np.float64, copy=False).ravel() for a in arrays]
    total = float(sum(np.dot(w, w) for w in wide))
    if np.isfinite(total) or not all(np.all(np.isfinite(w)) for w in wide):
        return float(np.sqrt(total))
    scale = max(float(np.max(np.abs(w))) for w in wide if w.size)  # squares overflowed
    return scale * float(np.sqrt(sum(np.dot(w / scale, w / scale) for w in wide)))


def _check_clip_norm(clip_norm) -> float:
    number = isinstance(clip_norm, (int, float, np.integer, np.floating))
    value = float(clip_norm) if number else float("nan")
    if isinstance(clip_norm, bool) or not (np.isfinite(value) and value > 0):
        raise InvalidParameterError(
            f"clip_norm must be a positive finite number, got {clip_norm!r}.")
    return value


def clip_update(arrays: Sequence[np.ndarray], clip_norm: float
                ) -> Tuple[List[np.ndarray], float]:
    """Scale ``arrays`` to L2 norm at most ``clip_norm``; return (clipped copies, norm before).

    Arrays within the norm come back unchanged (copies). Otherwise the scaled arrays
    keep their dtype, and ``global_norm(clipped) <= clip_norm`` holds for the returned
    arrays themselves (the factor is shrunk until the rounding of the cast cannot push
    the norm above C; all zeros in the worst case). NaN/inf raise InvalidUpdateError.
    """
    clip = _check_clip_norm(clip_norm)
    arrays = _as_float_arrays(arrays)
    for index, a in enumerate(arrays):
        if not np.all(np.isfinite(a)):
            _check_one(index, a, a.shape, None)
    norm = global_norm(arrays)
    if norm <= clip:
        return [a.copy() for a in arrays], norm
    factor = clip / norm
    for _ in range(_MAX_SHRINKS):
        clipped = [(a.astype(np.float64) * factor).astype(a.dtype) for a in arrays]
        after = global_norm(clipped)
        if after <= clip:
            return clipped, norm
        eps = max(np.finfo(a.dtype).eps for a in arrays)
        factor *= (clip / after) * (1.0 - 4.0 * eps)
    return zeros_like(arrays), norm


def _combine(first: Sequence[np.ndarray], second: Sequence[np.ndarray], op) -> List[np.ndarray]:
    if len(first) != len(second):
        raise InvalidUpdateError(
            f"Cannot combine {len(first)} arrays with {len(second)}: both lists must hold "
            "one array per model parameter.")
    out = []
    for index, (a, b) in enumerate(zip(first, second)):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise InvalidUpdateError(
                f"array {index} has shape {a.shape} in one list and {b.shape} in the other: "
                "both lists must come from the same model.")
        out.append(op(a.astype(np.float64), b.astype(np.float64)).astype(a.dtype))
    return out


def add_arrays(first: Sequence[np.ndarray], second: Sequence[np.ndarray]) -> List[np.ndarray]:
    """Element-wise ``first + second`` (float64 inside, dtype of ``first`` returned)."""
    return _combine(first, second, np.add)


def subtract_arrays(first: Sequence[np.ndarray], second: Sequence[np.ndarray]
                    ) -> List[np.ndarray]:
    """Element-wise ``first - second`` (float64 inside, dtype of ``first`` returned)."""
    return _combine(first, second, np.subtract)


def scale_arrays(arrays: Sequence[np.ndarray], factor: float) -> List[np.ndarray]:
    """``factor * arrays`` (float64 inside, each array's dtype returned)."""
    return [(np.asarray(a).astype(np.float64) * float(factor)).astype(np.asarray(a).dtype)
            for a in arrays]


def zeros_like(arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
    """Zero arrays of the same shapes and dtypes."""
    return [np.zeros_like(np.asarray(a)) for a in arrays]
