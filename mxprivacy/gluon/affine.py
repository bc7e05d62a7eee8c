"""The layers that :func:`~mxprivacy.fix` puts in place of BatchNorm.

BatchNorm ``y = gamma_c (x - mean_batch) / std_batch + beta_c`` becomes

- :class:`PlainGroupNorm`: normalization within each sample over groups of channels,
  with no parameters. MXNet 1.9's ``nn.GroupNorm`` has one gamma and beta per *group*
  (its ``center``/``scale`` flags only freeze them), so it cannot keep BatchNorm's
  per-channel affine. The group count is the largest divisor of the channel count that
  is at most 32 (:func:`group_count`), or 1 for a (N, C) input or groups of one value
  (normalizing single values gives constants);
  a channel axis on the batch axis is refused;
- :class:`ChannelAffine`: a per-channel scale and shift, ``y = gamma_c x + beta_c``, with
  a per-sample gradient rule (:mod:`mxprivacy.gluon.rules.affine`). It takes over
  BatchNorm's gamma and beta.

Both run as the fastest operator measured on MXNet's CPU backend, which needs the channel
count (and the affine the input rank) when a graph is built. Forward and backward at
(64, 64, 16, 16): the group norm as ``LayerNorm`` over (N, G, rest) 25 ms against 48 ms
for the ``GroupNorm`` operator; the affine as a depthwise 1x1 ``Convolution`` 7.6 ms
against 116 ms for ``broadcast_mul`` and ``broadcast_add`` (whose backward reduces
slowly).

**When the channel count is not known yet** (a BatchNorm built without ``in_channels``
that has not run, as in ``model_zoo``), the layers wait for it:

- an imperative call reads it from its input;
- a hybridized graph is built before any shape is known. So once a waiting layer is
  hybridized (``net.hybridize()``, or ``fix()`` on a hybridized net), a one-time forward
  pre-hook on its *anchor* (the outermost HybridBlock above it that ``fix()`` was given)
  infers the input shape of every waiting layer under it from the first batch, by
  symbolic shape inference, before the anchor's graph is built;
- a symbolic use before that (``export``, or an enclosing block the anchor does not
  know): :class:`PlainGroupNorm` raises :class:`~mxprivacy.UnknownChannelsError`, which
  says what to do; :class:`ChannelAffine` runs as broadcast operators (slower, same
  values), which also infer its parameters' shapes. So does a ChannelAffine on (N, C)
  inputs, which are small.
"""
from __future__ import annotations

import weakref
from typing import List, Optional

import mxnet as mx
import numpy as np
from mxnet import gluon, nd

from ..errors import InvalidParameterError, UnknownChannelsError

__all__ = ["ChannelAffine", "PlainGroupNorm", "group_count", "resolve_from_shapes",
           "watch_channels", "MAX_GROUPS"]

MAX_GROUPS = 32  # Wu & He (2018): 32 groups is the recommended default

_CONV_RANKS = (3, 4, 5)  # input ranks with a 1-D, 2-D or 3-D convolution
_collecting: Optional[List] = None  # (layer, input symbol) while waiting layers are traced
_hooks: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # anchor -> HookHandle


_BATCH_AXIS = (
    "{} has its channel axis on the batch axis (axis 0), so each channel would mix "
    "samples and its per-sample gradients would not be per sample. Use a channel axis "
    "other than 0, or PrivateBlock(net, mode='microbatch').")


def group_count(channels: int, max_groups: int = MAX_GROUPS) -> int:
    """The largest divisor of ``channels`` that is at most ``max_groups``.

    >>> [group_count(c) for c in (64, 48, 7, 3, 100)]
    [32, 24, 7, 3, 25]
    """
    if not isinstance(channels, int) or channels < 1:
        raise InvalidParameterError(f"channels must be a positive integer, got {channels!r}.")
    if not isinstance(max_groups, int) or max_groups < 1:
        raise InvalidParameterError(
            f"max_groups must be a positive integer, got {max_groups!r}.")
    return max(g for g in range(1, min(channels, max_groups) + 1) if channels % g == 0)


def _moved(F, x, axis: int):
    """``x`` with ``axis`` swapped to position 1 (the same array when it is there)."""
    return x if axis == 1 else F.swapaxes(x, 1, axis)


def _line(F, rows, keep: int):
    """The first line of a (N, A, B) array along axis ``keep`` (1 or 2), as a vector.
    It ties a shape to the data inside a graph, where shapes are unknown when it is
    built."""
    first = F.slice_axis(rows, axis=0, begin=0, end=1)
    return F.reshape(F.slice_axis(first, axis=3 - keep, begin=0, end=1), (-1,))


class _ChannelDependent(gluon.HybridBlock):
    """A layer whose graph depends on its channel count (see the module docstring)."""

    def __init__(self, axis: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self._axis = int(axis)
        if self._axis == 0:
            raise InvalidParameterError(_BATCH_AXIS.format(type(self).__name__))
        self._anchor = None  # weakref to the block whose first call resolves the count

    @property
    def axis(self) -> int:
        return self._axis

    def resolved(self) -> bool:
        """Whether the layer knows what its graph needs."""
        raise NotImplementedError

    def resolve(self, shape) -> None:
        """Learn what the graph needs from an input shape (once); refuse a shape that
        does not fit later."""
        raise NotImplementedError

    def _channels_in(self, shape) -> int:
        if self._axis % len(shape) == 0:  # e.g. axis=-2 on (N, C): per-sample rules break
            raise InvalidParameterError(_BATCH_AXIS.format(self.name))
        return int(shape[self._axis % len(shape)])

    def watch(self, anchor) -> None:
        """Resolve at ``anchor``'s first call once hybridized."""
        self._anchor = weakref.ref(anchor)
        if self._active and not self.resolved():
            _install_hook(anchor)

    def hybridize(self, active=True, **kwargs):
        super().hybridize(active, **kwargs)
        anchor = self._anchor() if self._anchor is not None else None
        if active and anchor is not None and not self.resolved():
            _install_hook(anchor)

    def forward(self, x, *args):
        if isinstance(x, nd.NDArray):
            self.resolve(x.shape)
        return super().forward(x, *args)

    def _collect(self, x) -> bool:
        """Record ``x`` while waiting layers are traced for shape inference."""
        if _collecting is None or self.resolved():
            return False
        _collecting.append((self, x))
        return True


class PlainGroupNorm(_ChannelDependent):
    """Group normalization without affine parameters.

    Parameters
    ----------
    num_groups : int or None, default None
        Number of groups; ``None`` chooses :func:`group_count` of the channel count when
        the layer first sees it (see the module docstring).
    epsilon : float, default 1e-5
        Added to the variance.
    axis : int, default 1
        The channel axis.
    """

    def __init__(self, num_groups: Optional[int] = None, epsilon: float = 1e-5,
                 axis: int = 1, **kwargs) -> None:
        super().__init__(axis, **kwargs)
        if num_groups is not None and (not isinstance(num_groups, int) or num_groups < 1):
            raise InvalidParameterError(
                f"num_groups must be a positive integer or None, got {num_groups!r}.")
        if not epsilon > 0:
            raise InvalidParameterError(f"epsilon must be positive, got {epsilon!r}.")
        self._num_groups, self._epsilon = num_groups, float(epsilon)

    @property
    def num_groups(self) -> Optional[int]:
        """The group count, or None while the channel count is unknown."""
        return self._num_groups

    def resolved(self) -> bool:
        return self._num_groups is not None

    def resolve(self, shape) -> None:
        channels = self._channels_in(shape)
        if self._num_groups is None:
            groups = group_count(int(channels))
            size = int(np.prod(shape[1:])) // groups  # values per group and sample
            # a (N, C) input (after Dense), or groups of one value, would normalize single
            # values (or pairs) to constants: normalize over all channels (one group)
            self._num_groups = 1 if len(shape) == 2 or size < 2 else groups
            self._clear_cached_op()
        elif channels % self._num_groups:
            raise InvalidParameterError(
                f"{self.name} has {self._num_groups} groups but got {channels} channels, "
                "which they do not divide: feed it the channel count it was built for.")

    def hybrid_forward(self, F, x):
        if self._collect(x):
            return x  # stands in as identity while shapes are inferred
        if self._num_groups is None:
            raise UnknownChannelsError(
                f"{self.name} chooses its number of groups from its channel count, which "
                "is not known yet, and a symbolic graph needs it now. Run the net once "
                "un-hybridized on a batch (net.hybridize(active=False); net(x)) before "
                "hybridizing, exporting or wrapping it in another block, or give the "
                "BatchNorm in_channels before mxprivacy.fix().")
        moved = _moved(F, x, self._axis)
        rows = F.reshape(moved, (0, self._num_groups, -1))  # (N, G, channels/G * rest)
        ones = F.ones_like(_line(F, rows, keep=2))
        out = F.LayerNorm(rows, ones, F.zeros_like(ones), axis=-1, eps=self._epsilon)
        return _moved(F, F.reshape_like(out, moved), self._axis)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_groups={self._num_groups}, "
                f"eps={self._epsilon}, axis={self._axis})")


class ChannelAffine(_ChannelDependent):
    """Per-channel scale and shift: ``y = gamma[c] * x + beta[c]`` along ``axis``.

    Parameters
    ----------
    in_channels : int, default 0
        Number of channels; 0 infers it from the first input (deferred initialization,
        also inside hybridized graphs).
    axis : int, default 1
        The channel axis (1 for channels-first layouts).
    scale, center : bool, default True
        Whether gamma / beta are trained (``False``: frozen, ``grad_req='null'``).
    gamma_initializer, beta_initializer : str or Initializer
        Default ``'ones'`` and ``'zeros'`` (the identity).
    """

    def __init__(self, in_channels: int = 0, axis: int = 1, scale: bool = True,
                 center: bool = True, gamma_initializer="ones", beta_initializer="zeros",
                 **kwargs) -> None:
        super().__init__(axis, **kwargs)
        self._ndim: Optional[int] = None  # the input rank, known with the first input
        if not isinstance(in_channels, int) or in_channels < 0:
            raise InvalidParameterError(
                f"in_channels must be a non-negative integer, got {in_channels!r}.")
        self.gamma = self.params.get("gamma", grad_req="write" if scale else "null",
                                     shape=(in_channels,), init=gamma_initializer,
                                     allow_deferred_init=True)
        self.beta = self.params.get("beta", grad_req="write" if center else "null",
                                    shape=(in_channels,), init=beta_initializer,
                                    allow_deferred_init=True)

    @property
    def channels(self) -> int:
        """The channel count (0 while unknown)."""
        return int(self.gamma.shape[0]) if self.gamma.shape else 0

    def resolved(self) -> bool:
        return self.channels > 0 and self._ndim is not None

    def resolve(self, shape) -> None:
        channels = self._channels_in(shape)
        if self.resolved() and (channels, len(shape)) != (self.channels, self._ndim):
            raise InvalidParameterError(
                f"{self.name} was built for {self._ndim}-D inputs with {self.channels} "
                f"channels and got {len(shape)}-D with {channels}: use one layer per "
                "input layout.")
        if not self.resolved():
            if not self.channels:
                self.gamma.shape = self.beta.shape = (channels,)
            self._ndim = len(shape)
            self._clear_cached_op()

    def hybrid_forward(self, F, x, gamma, beta):
        self._collect(x)
        moved = _moved(F, x, self._axis)
        channels = self.channels
        if self.resolved() and self._ndim in _CONV_RANKS:  # a depthwise 1x1 convolution
            ones = (1,) * (self._ndim - 2)
            out = F.Convolution(moved, F.reshape(gamma, (channels, 1) + ones), beta,
                                kernel=ones, num_filter=channels, num_group=channels)
            return _moved(F, out, self._axis)
        # Not resolved (or (N, C) inputs): broadcasting, which does not infer gamma's
        # shape, so tie it to the channel axis by adding C zeros taken from the data.
        # (Reshaping the output of a convolution instead would be faster, but MXNet's
        # oneDNN pooling then fails on it inside static graphs.)
        flat = F.reshape(moved, (0, 0, -1))  # (N, C, rest)
        zeros = F.zeros_like(_line(F, flat, keep=1))
        gamma, beta = F.elemwise_add(gamma, zeros), F.elemwise_add(beta, zeros)
        out = F.broadcast_add(F.broadcast_mul(flat, F.reshape(gamma, (1, -1, 1))),
                              F.reshape(beta, (1, -1, 1)))
        return _moved(F, F.reshape_like(out, moved), self._axis)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.channels or None}, axis={self._axis})"


def watch_channels(block, anchor) -> None:
    """Make every layer under ``block`` that waits for its channel count learn it at
    ``anchor``'s first call (once hybridized)."""
    for layer in _waiting(block):
        layer.watch(anchor)


def _install_hook(anchor) -> None:
    if anchor not in _hooks:
        _hooks[anchor] = anchor.register_forward_pre_hook(_resolve_on_first_call)


def _resolve_on_first_call(anchor, args) -> None:
    """Forward pre-hook: infer the channel count of every waiting layer under ``anchor``
    from the shapes of this call's arrays; then remove itself."""
    if not args or not all(isinstance(a, nd.NDArray) for a in args):
        return  # a symbolic call (a capture graph being traced): wait for arrays
    handle = _hooks.pop(anchor, None)
    if handle is not None:
        handle.detach()
    resolve_from_shapes(anchor, [a.shape for a in args])


def _waiting(block) -> List[_ChannelDependent]:
    found = [block] if isinstance(block, _ChannelDependent) and not block.resolved() else []
    for child in block._children.values():
        found.extend(_waiting(child))
    return found


def resolve_from_shapes(block, shapes) -> None:
    """Resolve every waiting layer under ``block`` for inputs of ``shapes``: trace
    ``block`` symbolically (a waiting PlainGroupNorm acts as identity) and infer the
    shape of each waiting layer's input. Layers whose shape cannot be inferred wait."""
    global _collecting
    if not _waiting(block):
        return
    names = ["data"] if len(shapes) == 1 else [f"data{i}" for i in range(len(shapes))]
    _collecting = found = []
    try:
        block(*[mx.sym.var(name) for name in names])
        _, inferred, _ = mx.sym.Group([x for _, x in found]).infer_shape_partial(
            **dict(zip(names, shapes)))
    except Exception:  # noqa: BLE001  (untraceable: the real call reports its own error)
        return
    finally:
        _collecting = None
    for (layer, _), shape in zip(found, inferred):
        if shape and layer._channels_in(shape) > 0:
            layer.resolve(shape)
