"""``PrivateBlock``: wraps a Gluon Block and captures per-sample gradients.

Modes
-----
``vectorized``
    Every parameterized layer has a rule (see :mod:`mxprivacy.gluon.rules`). During a
    recorded forward pass each such layer stores its input and adds a zero "probe"
    with ``attach_grad()`` to its output; after ``loss.backward()`` the probe's gradient
    is the per-sample output gradient. One forward, one backward, no Python callbacks.
    Hybridized nets are captured inside a cached graph with the probes as inputs
    (:mod:`~mxprivacy.gluon.graph_capture`); the protocol is in
    :mod:`~mxprivacy.gluon.capture`.
``microbatch``
    Exact for any Block, hybridized too. Each microbatch is forwarded with its own
    replicas of the parameters (views with ``attach_grad()`` swapped in for the
    Parameter's data), so the ordinary ``loss.backward()`` leaves each microbatch's
    exact gradient on its replicas. With ``num_microbatches=None`` (default) every
    sample is its own microbatch. With ``num_microbatches=M`` each sample is assigned
    to one of M microbatches independently and uniformly at random, so that removing a
    sample never moves any other sample; the sensitivity of the clipped sum is then 2C
    (see :class:`~mxprivacy.gluon.shards.MicrobatchShard`) and ``DPTrainer`` doubles
    the noise so that the reported epsilon stays true.
``auto``
    ``vectorized`` when every parameterized layer has a rule, else ``microbatch``, with a
    :class:`~mxprivacy.MicrobatchFallbackWarning` that names the layers without a rule.

Saved parameters use the plain net's names, so ``net.save_parameters`` files load into
the wrapped net and the reverse. Only :class:`~mxprivacy.DPTrainer` may train the
captured parameters: a plain ``gluon.Trainer`` on them raises
:class:`~mxprivacy.PlainTrainerError` (see :mod:`~mxprivacy.gluon.trainer_guard`).
"""
from __future__ import annotations

import contextlib
import warnings
import weakref
from typing import List, Optional

import numpy as np
from mxnet import autograd, gluon, nd

from .._io import atomic_path
from ..errors import (HybridizedCaptureError, InvalidParameterError,
                      MicrobatchFallbackWarning, PrivacyWarning)
from . import reduction, trainer_guard, validators
from .row_probe import check_rows_aligned, check_rows_independent, leaves
from . import capture
from .graph_capture import GraphCapture, graph_key
from .shards import MicrobatchShard, VectorizedShard, trainable_params

__all__ = ["PrivateBlock", "owner_of"]

_OWNERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_MODES = ("auto", "vectorized", "microbatch")


def owner_of(param) -> Optional["PrivateBlock"]:
    """The PrivateBlock that captures per-sample gradients of ``param``, if any."""
    return _OWNERS.get(param)


class PrivateBlock(gluon.Block):
    """Wrap ``net`` so that its per-sample gradients are captured for DP training.

    Parameters
    ----------
    net : gluon.Block
        An initialized or deferred-initialized network. Its output rows must depend
        only on the matching input rows (per-sample losses).
    mode : {"auto", "vectorized", "microbatch"}
    num_microbatches : int, optional
        Microbatch mode only. ``None``: one sample per microbatch (sensitivity C).
        An integer M: random assignment to M microbatches (sensitivity 2C).
    seed : int, optional
        Seed of the microbatch assignment, for reproducible experiments only: the 2C
        bound assumes a secret assignment. A known one is fixed by batch position, so
        removing one sample would move every later sample to another microbatch. A seed
        therefore raises a :class:`~mxprivacy.PrivacyWarning`.
    """

    def __init__(self, net: gluon.Block, *, mode: str = "auto",
                 num_microbatches: Optional[int] = None, seed: Optional[int] = None) -> None:
        super().__init__(prefix=net.prefix + "private_")
        if mode not in _MODES:
            raise InvalidParameterError(f"mode must be one of {_MODES}, got {mode!r}.")
        if num_microbatches is not None and (int(num_microbatches) != num_microbatches
                                             or num_microbatches < 1):
            raise InvalidParameterError(
                f"num_microbatches must be a positive integer or None, got {num_microbatches!r}.")
        fallback = mode == "auto" and num_microbatches is None \
            and not validators.has_all_rules(net)
        if mode == "auto":
            mode = "microbatch" if fallback or num_microbatches is not None else "vectorized"
        if mode == "vectorized" and num_microbatches is not None:
            raise InvalidParameterError("num_microbatches applies to mode='microbatch' only.")
        validators.check(net, mode)
        if fallback:
            _warn_fallback(net)
        for param in net.collect_params().values():
            if _OWNERS.get(param) is not None:
                raise InvalidParameterError(
                    f"Parameter {param.name} is already captured by another PrivateBlock; "
                    "call .release() on it first.")
        self.net = net
        self.mode = mode
        self.num_microbatches = num_microbatches
        if seed is not None and num_microbatches is not None:
            warnings.warn(
                "PrivateBlock(seed=...) makes the microbatch assignment public; the 2C "
                "sensitivity assumes a secret one (a known assignment by batch position "
                "moves later samples when one is removed). Use seeds only for "
                "reproducible experiments.", PrivacyWarning, stacklevel=2)
        self._rng = np.random.default_rng(seed)
        self._seeded, self._secure = seed is not None, False
        self._shards: List = []
        self._rows_checked = False  # the first recorded batch of >= 2 rows is probed
        self._rows_aligned = False
        self._current: Optional[VectorizedShard] = None
        self._patched: List = []
        for param in net.collect_params().values():
            _OWNERS[param] = self
        self._plain_trainers = trainer_guard.install(net.collect_params().values())
        self._trace = None  # set while a capture graph is traced
        self._graphs: dict = {}
        if mode == "vectorized":
            self._install_patches()
        reduction.install()

    @property
    def sensitivity_factor(self) -> int:
        """The one source of the clipped sum's sensitivity, in units of the bound C.

        One sample per clipping unit (vectorized mode, or microbatches of one): adding or
        removing a sample adds or removes one vector of norm <= C, so the factor is 1.
        Several samples per microbatch: each sample is assigned to a microbatch at
        random, so adding or removing x changes only x's microbatch k, from clip(S) to
        clip(S + g_x). Both have norm <= C, so they differ by at most 2C (S of norm C
        and g_x = -2S reach it): the factor is 2.
        """
        return 1 if self.mode == "vectorized" or self.num_microbatches is None else 2

    # -- capture plumbing ---------------------------------------------------------------
    def _install_patches(self) -> None:
        """Rule layers capture imperatively; any hybrid block with parameters may be the
        outermost hybridized block of a call, which then runs a capture graph."""
        rule_layers = {id(layer) for layer in validators.parameterized_layers(self.net)}
        for block in _walk(self.net):
            hybrid = isinstance(block, gluon.HybridBlock) and \
                bool(list(block.collect_params().values()))
            if id(block) in rule_layers or hybrid:
                capture.install(self, block, id(block) in rule_layers)
                self._patched.append(weakref.ref(block))

    def _graph_for(self, block, count: int) -> GraphCapture:
        """The capture graph of a hybridized ``block`` called with ``count`` arrays."""
        graph = self._graphs.get(id(block))
        if graph is None or graph.block is not block or graph.key != graph_key(block, count):
            graph = GraphCapture(self, block, count)
            self._graphs[id(block)] = graph
        return graph

    def release(self) -> gluon.Block:
        """Undo the wrapping: remove probes and ownership; return the plain net."""
        for ref in self._patched:
            block = ref()
            if block is not None:
                capture.uninstall(block)
        self._patched = []
        self._graphs = {}
        mine = [p for p in self.net.collect_params().values() if _OWNERS.get(p) is self]
        for param in mine:
            del _OWNERS[param]
        trainer_guard.uninstall(mine, self._plain_trainers, owner_of)
        self._plain_trainers = []
        self._shards = []
        return self.net

    def hybridize(self, active: bool = True, **kwargs) -> None:
        """Hybridize the wrapped net (``net.hybridize(active, **kwargs)``). In vectorized
        mode each outermost hybridized block then captures inside a cached graph."""
        self._graphs = {}
        self.net.hybridize(active, **kwargs)

    def _collect_params_with_prefix(self, prefix: str = "") -> dict:
        """The plain net's structural names (no ``net.`` level), so that saved files
        deploy without mxprivacy."""
        return self.net._collect_params_with_prefix(prefix)

    def save_parameters(self, filename: str, deduplicate: bool = False) -> None:
        """Gluon's ``save_parameters`` with the plain net's names (the file
        ``net.save_parameters`` writes), written atomically (old file or new, whole)."""
        with atomic_path(filename) as tmp:
            super().save_parameters(tmp, deduplicate=deduplicate)

    def load_parameters(self, filename: str, ctx=None, **kwargs) -> None:
        """``net.load_parameters(filename, ctx, **kwargs)``: a file saved by the plain net
        or by this block. Files of mxprivacy 0.1, whose names start with ``net.``, load
        too."""
        with _accepting_net_prefix(self.net):
            self.net.load_parameters(filename, ctx, **kwargs)

    def discard_capture(self) -> None:
        """Drop captured forward passes that will not be stepped on."""
        self._shards = []

    def take_shards(self) -> List:
        """Hand over (and forget) the shards captured since the last call."""
        shards, self._shards = self._shards, []
        return shards

    def pending_shards(self) -> List:
        """The shards captured since the last :meth:`take_shards`, kept in place (a step
        that raises leaves them for a corrected retry)."""
        return list(self._shards)

    # -- forward ------------------------------------------------------------------------
    def forward(self, x, *args):
        if not autograd.is_recording():
            return self.net(x, *args)
        if not isinstance(x, nd.NDArray):
            raise InvalidParameterError("PrivateBlock needs an NDArray batch as first input.")
        if self.mode == "vectorized":
            return self._vectorized_forward(x, *args)
        return self._microbatch_forward(x, *args)

    def _vectorized_forward(self, x, *args):
        self._ensure_initialized(x, args)  # so that every captured layer runs detached
        self._probe_rows(x, args)
        shard = VectorizedShard(x.context, x.shape[0])
        self._current = shard
        try:
            out = self.net(x, *args)
        finally:
            self._current = None
        if not shard.layers and validators.parameterized_layers(self.net):
            raise HybridizedCaptureError(
                "The forward pass ran without reaching any per-sample probe (a replaced "
                "sub-block, or a layer called outside the wrapped net?). Nothing was "
                "captured; use mode='microbatch'.")
        self._append(shard)
        return out

    def _append(self, shard) -> None:
        for param in shard.captured_params:  # so that a tied use shows as a fresh gradient
            for data in param.list_data():
                if data.context == shard.ctx and data._fresh_grad:
                    data._fresh_grad = False
        reduction.await_backward(shard)
        self._shards.append(shard)

    def use_secure_randomness(self) -> None:
        """Draw the microbatch assignment from the OS CSPRNG (``DPTrainer(secure_mode=True)``)."""
        if self._seeded and self.num_microbatches is not None:
            raise InvalidParameterError(
                "secure_mode=True cannot use a seeded microbatch assignment: remove "
                "PrivateBlock(seed=...).")
        self._secure = True

    def _groups(self, batch: int) -> List[np.ndarray]:
        if self.num_microbatches is None:
            return [np.array([i]) for i in range(batch)]
        if self._secure:
            from ..mechanisms.secure import uniform_below
            labels = uniform_below(np.full(batch, self.num_microbatches, dtype=np.int64))
        else:
            labels = self._rng.integers(0, self.num_microbatches, size=batch)
        return [np.flatnonzero(labels == k) for k in range(self.num_microbatches)
                if np.any(labels == k)]

    def _ensure_initialized(self, x, args) -> None:
        if any(p._data is None for p in self.net.collect_params().values()):
            with autograd.pause():
                self.net(x[0:1], *[_rows(a, np.array([0])) for a in args])

    def _probe_rows(self, x, args) -> None:
        if not self._rows_checked:
            self._rows_checked = check_rows_independent(self.net, x, args)
        if self.mode == "vectorized" and not self._rows_aligned:
            self._rows_aligned = self._probe_alignment(x, args)

    def _probe_alignment(self, x, args) -> bool:
        """Run one captured pass aside (its backward passes are not the user's)."""
        def capture_forward():
            shard = VectorizedShard(x.context, x.shape[0])
            self._current = shard
            try:
                with autograd.record(train_mode=True):
                    out = self.net(x, *args)
            finally:
                self._current = None
            probes = [p for layer in shard.layers for p in shard._probes[layer]]
            return leaves(out), probes

        waiting = reduction.pause_waiting()
        try:
            with autograd.pause(train_mode=True):
                return check_rows_aligned(capture_forward, x.shape[0])
        finally:
            reduction.resume_waiting(waiting)

    def _microbatch_forward(self, x, *args):
        self._ensure_initialized(x, args)
        self._probe_rows(x, args)
        params = [p for layer in validators.parameterized_layers(self.net)
                  for p in trainable_params(layer)]
        params = list({id(p): p for p in params}.values())
        groups = self._groups(x.shape[0])
        shard = MicrobatchShard(x.context, x.shape[0], groups, params)
        outputs = []
        pieces = nd.split(x, num_outputs=len(groups), axis=0) \
            if self.num_microbatches is None and len(groups) > 1 else None
        for number, idx in enumerate(groups):
            if pieces is not None:
                part = pieces[number]
            else:
                part = _rows(x, idx)
            replicas = {p: p.data(x.context).detach() for p in params}
            for r in replicas.values():
                r.attach_grad()
            with _swapped(replicas, x.context):
                outputs.append(self.net(part, *[_rows(a, idx) for a in args]))
            shard.add_unit(replicas)
        self._append(shard)
        return _merge_outputs(outputs, groups, x.context)


def _warn_fallback(net) -> None:
    problems = "\n- ".join(validators.validate(net, "vectorized"))
    warnings.warn(
        "PrivateBlock(mode='auto') falls back to mode='microbatch', because vectorized "
        f"mode cannot capture:\n- {problems}\nMicrobatch mode costs about B forward and "
        "backward passes per step for a batch of B (at B=64, 13-16x the time of a "
        "vectorized step for a small MLP or CNN). Pass mode='microbatch' to accept the "
        "cost and silence this warning.",
        MicrobatchFallbackWarning, stacklevel=3)


@contextlib.contextmanager
def _accepting_net_prefix(net):
    """While loading, ``net`` also answers to the names ``net.<name>`` that
    ``PrivateBlock.save_parameters`` wrote before it used the plain names."""
    plain = net._collect_params_with_prefix

    def with_aliases(prefix: str = "") -> dict:
        names = plain(prefix)
        return names if prefix else {**names, **{"net." + k: v for k, v in names.items()}}

    missing = object()
    before = net.__dict__.get("_collect_params_with_prefix", missing)
    net.__dict__["_collect_params_with_prefix"] = with_aliases
    try:
        yield
    finally:
        if before is missing:
            del net.__dict__["_collect_params_with_prefix"]
        else:
            net.__dict__["_collect_params_with_prefix"] = before


def _walk(block):
    yield block
    for child in block._children.values():
        yield from _walk(child)


def _rows(array, idx: np.ndarray):
    if not isinstance(array, nd.NDArray):
        return array
    return array.take(nd.array(idx, ctx=array.context, dtype="int64"), axis=0)


@contextlib.contextmanager
def _swapped(replicas, ctx):
    saved = []
    try:
        for param, replica in replicas.items():
            slot = param.list_ctx().index(ctx)
            saved.append((param, slot, param._data[slot]))
            param._data[slot] = replica
        yield
    finally:
        for param, slot, original in saved:
            param._data[slot] = original


def _merge_outputs(outputs, groups, ctx):
    order = np.concatenate(groups)
    natural = np.array_equal(order, np.arange(len(order)))
    inverse = np.argsort(order)

    def merge(parts):
        joined = nd.concat(*parts, dim=0) if len(parts) > 1 else parts[0]
        return joined if natural else _rows(joined, inverse)

    if isinstance(outputs[0], (list, tuple)):
        return type(outputs[0])(merge([o[k] for o in outputs]) for k in range(len(outputs[0])))
    return merge(outputs)
