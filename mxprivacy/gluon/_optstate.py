"""Optimizer states of a Gluon trainer as data: arrays plus JSON, never pickle.

MXNet's ``Updater.get_states`` / ``set_states`` pickle the states and the optimizer, so
loading a crafted file runs code. Here the per-index states (an NDArray, ``None``, or
nested tuples of them, as in momentum SGD or Adam) become a JSON tree whose leaves name
arrays; the optimizer's update counts and its plain scalar hyperparameters are JSON
numbers. :func:`plan_restore` validates everything against the trainer before
:func:`apply_restore` changes anything. Learning-rate schedulers are objects and are not
saved: the new trainer's scheduler is kept and follows the restored ``num_update``.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Tuple

import numpy as np
from mxnet import nd

__all__ = ["capture", "plan_restore", "apply_restore"]

_SKIP = {"num_update", "begin_num_update", "rescale_grad", "aggregate_num",
         "allow_np_array", "multi_precision"}
_DTYPES = {"float16", "float32", "float64"}
_MAX_INT = 1 << 53  # counters beyond it are not from a real run (and overflow floats)


def _scalar_hypers(optimizer) -> Dict[str, Any]:
    return {key: value for key, value in vars(optimizer).items()
            if not key.startswith("_") and key not in _SKIP
            and (value is None or isinstance(value, (bool, int, float)))
            and not (key == "lr" and optimizer.lr_scheduler is not None)}


def _encode(state, arrays: Dict[str, np.ndarray]):
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return [_encode(item, arrays) for item in state]
    key = f"a{len(arrays)}"
    arrays[key] = state.asnumpy()
    return {"array": key}


def capture(trainer) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """(JSON-able description, arrays) of ``trainer``'s optimizer states."""
    optimizer = trainer._optimizer
    arrays: Dict[str, np.ndarray] = {}
    states = {str(int(idx)): _encode(state, arrays)
              for idx, state in sorted(trainer._updaters[0].states.items())}
    counts = {str(int(dev)): {str(int(i)): int(c) for i, c in per.items()}
              for dev, per in optimizer._all_index_update_counts.items()}
    meta = {"type": type(optimizer).__name__.lower(), "hyper": _scalar_hypers(optimizer),
            "num_update": int(optimizer.num_update), "index_update_counts": counts,
            "states": states, "shapes": [list(p.shape) for p in trainer._params]}
    return meta, arrays


def _fail(message: str):
    raise ValueError(message)


def _int(value, name: str) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_INT:
        shown = "a huge integer" if type(value) is int and value > _MAX_INT else repr(value)
        _fail(f"{name} must be an integer in [0, 2**53], got {shown}")
    return value


def _index(key: str, limit: int) -> int:
    if not key.isdigit() or int(key) >= limit:
        _fail(f"state index {key!r} is not a parameter index below {limit}")
    return int(key)


def _check_shapes(trainer, shapes) -> None:
    params = trainer._params
    if not isinstance(shapes, list) or len(shapes) != len(params):
        _fail(f"it has {len(shapes) if isinstance(shapes, list) else '?'} parameters, this "
              f"trainer has {len(params)}")
    for param, shape in zip(params, shapes):
        ok = isinstance(shape, list) and len(shape) == len(param.shape) and all(
            type(s) is int and (p == 0 or p == s) for p, s in zip(param.shape, shape))
        if not ok:
            _fail(f"parameter {param.name} has shape {param.shape}, the checkpoint {shape}")


def _hypers(optimizer, saved) -> Dict[str, Any]:
    if not isinstance(saved, dict):
        _fail("optimizer hyperparameters must be a dict")
    current = _scalar_hypers(optimizer)
    for key, value in saved.items():
        if key not in current and not (key == "lr" and optimizer.lr_scheduler is not None):
            _fail(f"unknown optimizer setting {key!r}")
        if value is not None and (not isinstance(value, (int, float)) or (
                not isinstance(value, bool) and not (abs(value) <= _MAX_INT if
                                                     isinstance(value, int) else
                                                     math.isfinite(value)))):
            _fail(f"optimizer setting {key} is not a finite number (or is beyond 2**53)")
        old = current.get(key)
        if isinstance(value, bool) != isinstance(old, bool) and None not in (value, old):
            _fail(f"optimizer setting {key}={value!r} has the wrong type")
    return {k: v for k, v in saved.items() if k in current}


def _build(tree, template, arrays, name: str):
    """NDArrays (on CPU; the updater moves them) shaped like the optimizer's own state."""
    if template is None or tree is None:
        if (template is None) != (tree is None):
            _fail(f"the state of {name} does not match the optimizer's")
        return None
    if isinstance(template, (tuple, list)):
        if not isinstance(tree, list) or len(tree) != len(template):
            _fail(f"the state of {name} does not match the optimizer's")
        return type(template)(_build(t, s, arrays, name) for t, s in zip(tree, template))
    if not isinstance(tree, dict) or set(tree) != {"array"} or tree["array"] not in arrays:
        _fail(f"the state of {name} names no stored array")
    value = arrays[tree["array"]]
    if value.shape != template.shape or str(value.dtype) != str(np.dtype(template.dtype)):
        _fail(f"the state of {name} is {value.dtype}{value.shape}, the optimizer needs "
              f"{np.dtype(template.dtype)}{template.shape}")
    return value


def _states(trainer, optimizer, meta, arrays) -> Dict[int, Any]:
    if not isinstance(meta["states"], dict):
        _fail("states must be a dict")
    states = {}
    for key, tree in meta["states"].items():
        idx = _index(key, len(trainer._params))
        param = trainer._params[idx]
        weight = nd.zeros(tuple(meta["shapes"][idx]), dtype=param.dtype)
        template = optimizer.create_state_multi_precision(idx, weight)
        states[idx] = _build(tree, template, arrays, param.name)
    return states


def _counts(meta, limit: int) -> Dict[int, Dict[int, int]]:
    raw = meta["index_update_counts"]
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        _fail("index_update_counts must map devices to dicts")
    return {_index(dev, 1 << 16): {_index(i, limit): _int(c, "an update count")
                                   for i, c in per.items()} for dev, per in raw.items()}


def plan_restore(trainer, meta, arrays) -> Dict[str, Any]:
    """Validate ``meta``/``arrays`` against ``trainer``; raise ValueError if they do not fit."""
    if not isinstance(meta, dict) or set(meta) != {"type", "hyper", "num_update",
                                                  "index_update_counts", "states", "shapes"}:
        _fail("the optimizer section has missing or unknown fields")
    optimizer = trainer._optimizer
    if meta["type"] != type(optimizer).__name__.lower():
        _fail(f"it holds {meta['type']!r} optimizer states, this trainer uses "
              f"{type(optimizer).__name__.lower()!r}")
    _check_shapes(trainer, meta["shapes"])
    hypers = _hypers(optimizer, meta["hyper"])
    probe = copy.copy(optimizer)
    for key, value in hypers.items():
        setattr(probe, key, value)
    used = {entry["array"] for entry in _leaves(meta["states"])}
    if used != set(arrays):
        _fail("the stored arrays do not match the state description")
    return {"hypers": hypers, "states": _states(trainer, probe, meta, arrays),
            "num_update": _int(meta["num_update"], "num_update"),
            "counts": _counts(meta, len(trainer._params))}


def _leaves(tree) -> List[dict]:
    if isinstance(tree, dict) and "array" in tree:
        return [tree]
    items = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, list) else []
    return [leaf for item in items for leaf in _leaves(item)]


def _to_nd(state):
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return type(state)(_to_nd(item) for item in state)
    return nd.array(state, dtype=state.dtype)


def apply_restore(trainer, plan: Dict[str, Any]) -> None:
    """Install a validated plan into every updater (one copy of the states per device)."""
    optimizer = trainer._optimizer
    for key, value in plan["hypers"].items():
        setattr(optimizer, key, value)
    for updater in trainer._updaters:
        updater.states = {idx: _to_nd(state) for idx, state in plan["states"].items()}
        updater.states_synced = dict.fromkeys(updater.states, False)
        updater.optimizer = optimizer
    optimizer.num_update = plan["num_update"]
    optimizer._all_index_update_counts = {dev: dict(per) for dev, per in plan["counts"].items()}
    optimizer._all_index_update_counts.setdefault(0, {})
    optimizer._index_update_count = optimizer._all_index_update_counts[0]
