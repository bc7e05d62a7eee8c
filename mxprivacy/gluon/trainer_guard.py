"""Refuse a plain ``gluon.Trainer`` on the parameters of a :class:`PrivateBlock`.

A plain trainer would apply raw, unclipped and noiseless gradients. It fails anyway,
because the captured layers run with detached parameters, but with MXNet's "Gradient
of Parameter ... has not been updated by backward", which does not say what to do. The
guards raise :class:`~mxprivacy.PlainTrainerError`, naming ``DPTrainer``, as early as
possible:

- at construction: ``gluon.Trainer.__init__`` calls ``param._set_trainer(trainer)`` on
  each parameter (MXNet 1.9). Each captured parameter gets an instance attribute
  ``_set_trainer`` that refuses any trainer that is not a ``DPTrainer``;
- a plain trainer made *before* the net was wrapped refuses ``step`` and ``update``.

:meth:`PrivateBlock.release` removes both (:func:`uninstall`).
"""
from __future__ import annotations

import functools
import weakref
from typing import Callable, Iterable, List

from ..errors import PlainTrainerError

__all__ = ["install", "uninstall"]

_FIX = ("use mxprivacy.DPTrainer(wrapped.collect_params(), optimizer, ..., "
        "noise_multiplier=..., max_grad_norm=..., expected_batch_size=...), which clips "
        "each sample's gradient and adds noise. To train without privacy, call "
        "wrapped.release() first.")


def _is_dp_trainer(trainer) -> bool:
    from .trainer import DPTrainer  # trainer.py imports private_block, which imports this
    return isinstance(trainer, DPTrainer)


def _checked_set_trainer(param, trainer) -> None:
    if trainer is not None and not _is_dp_trainer(trainer):
        raise PlainTrainerError(
            f"Parameter {param.name} belongs to a PrivateBlock, and a plain "
            f"{type(trainer).__name__} would update it with raw gradients: {_FIX}")
    type(param)._set_trainer(param, trainer)


def _refuse_step(trainer, *args, **kwargs) -> None:
    raise PlainTrainerError(
        f"This {type(trainer).__name__} was created before its parameters were wrapped in a "
        f"PrivateBlock, and would update them with raw gradients: {_FIX}")


def install(params: Iterable) -> List:
    """Guard ``params``; return weak references to the plain trainers already on them."""
    params = list(params)
    for param in params:
        param.__dict__["_set_trainer"] = functools.partial(_checked_set_trainer, param)
    trainers = {id(p._trainer): p._trainer for p in params
                if p._trainer is not None and not _is_dp_trainer(p._trainer)}
    for trainer in trainers.values():
        for method in ("step", "update"):
            trainer.__dict__[method] = functools.partial(_refuse_step, trainer)
    return [weakref.ref(t) for t in trainers.values()]


def uninstall(params: Iterable, trainers: List, still_guarded: Callable) -> None:
    """Remove the guards of ``params``, and those of ``trainers`` none of whose
    parameters is ``still_guarded`` (owned by another PrivateBlock)."""
    for param in params:
        hook = param.__dict__.get("_set_trainer")
        if isinstance(hook, functools.partial) and hook.func is _checked_set_trainer:
            del param.__dict__["_set_trainer"]
    for ref in trainers:
        trainer = ref()
        if trainer is None or any(still_guarded(p) for p in trainer._params):
            continue
        for method in ("step", "update"):
            trainer.__dict__.pop(method, None)
