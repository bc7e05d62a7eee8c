"""The layers that :func:`~mxprivacy.fix` puts in place of BatchNorm.

BatchNorm ``y = gamma_c (x - mean_batch) / std_batch + beta_c`` becomes

- :class:`PlainGroupNorm`: normalization within each sample over groups of channels,
  with no parameters. MXNet 1.9's ``nn.GroupNorm`` has one gamma and beta per *group* (and its
  ``center``/``scale`` flags only freeze them), so it cannot keep BatchNorm's per-channel
  affine. The group count is the largest divisor of the channel count that is at most 32
  (:func:`group_count`), chosen when the channel count is first known;
- :class:`ChannelAffine`: a per-channel scale and shift, ``y = gamma_c x + beta_c``, with
  a per-sample gradient rule (:mod:`mxprivacy.gluon.rules.affine`). It takes over
  BatchNorm's gamma and beta.

**When the channel count is not known yet** (a BatchNorm built without ``in_channels``
that has not run, as in ``model_zoo``), :class:`PlainGroupNorm` waits for it:

- an imperative call reads it from its input;
- a hybridized graph fixes the group count when it is traced, before any shape is known.
  So once the layer is hybridized (``net.hybridize()``, or ``fix()`` on a hybridized
  net), a one-time forward pre-hook on its *anchor* (the outermost HybridBlock above it
  that ``fix()`` was given) infers the input shape of every waiting layer from the first
  batch, by symbolic shape inference, before the anchor's graph is built;
- a symbolic use before that (``export``, or an enclosing block the anchor does not
  know) raises :class:`~mxprivacy.UnknownChannelsError`, which says what to do.
"""
from __future__ import annotations

import weakref
from typing import List, Optional

import mxnet as mx
from mxnet import gluon, nd

from ..errors import InvalidParameterError, UnknownChannelsError

__all__ = ["ChannelAffine", "PlainGroupNorm", "group_count", "MAX_GROUPS"]

MAX_GROUPS = 32  # Wu & He (2018): 32 groups is the recommended default

_collecting: Optional[List] = None  # (layer, input symbol) while waiting layers are traced
_hooks: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # anchor -> HookHandle


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


class PlainGroupNorm(gluon.HybridBlock):
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
        super().__init__(**kwargs)
        if num_groups is not None and (not isinstance(num_groups, int) or num_groups < 1):
            raise InvalidParameterError(
                f"num_groups must be a positive integer or None, got {num_groups!r}.")
        if not epsilon > 0:
            raise InvalidParameterError(f"epsilon must be positive, got {epsilon!r}.")
        self._num_groups, self._epsilon, self._axis = num_groups, float(epsilon), int(axis)
        self._anchor = None  # weakref to the block whose first call resolves num_groups

    @property
    def num_groups(self) -> Optional[int]:
        """The group count, or None while the channel count is unknown."""
        return self._num_groups

    def resolve(self, channels: int) -> int:
        """Fix the group count for ``channels`` input channels (once); return it."""
        if self._num_groups is None:
            self._num_groups = group_count(int(channels))
            self._clear_cached_op()
        elif channels % self._num_groups:
            raise InvalidParameterError(
                f"{self.name} has {self._num_groups} groups but got {channels} channels, "
                "which they do not divide: feed it the channel count it was built for.")
        return self._num_groups

    def watch(self, anchor) -> None:
        """Resolve the group count at ``anchor``'s first call once hybridized."""
        self._anchor = weakref.ref(anchor)
        if self._active:
            _install_hook(anchor)

    def hybridize(self, active=True, **kwargs):
        super().hybridize(active, **kwargs)
        anchor = self._anchor() if self._anchor is not None else None
        if active and self._num_groups is None and anchor is not None:
            _install_hook(anchor)

    def forward(self, x, *args):
        if isinstance(x, nd.NDArray):
            self.resolve(x.shape[self._axis])
        return super().forward(x, *args)

    def hybrid_forward(self, F, x):
        if self._num_groups is None:
            if _collecting is not None:  # traced to infer shapes: stand in as identity
                _collecting.append((self, x))
                return x
            raise UnknownChannelsError(
                f"{self.name} chooses its number of groups from its channel count, which "
                "is not known yet, and a symbolic graph needs it now. Run the net once "
                "un-hybridized on a batch (net.hybridize(active=False); net(x)) before "
                "hybridizing, exporting or wrapping it in another block, or give the "
                "BatchNorm in_channels before mxprivacy.fix().")
        groups = self._num_groups
        if F is nd:
            ones = nd.ones((groups,), ctx=x.context, dtype=x.dtype)
            zeros = nd.zeros((groups,), ctx=x.context, dtype=x.dtype)
        else:
            ones, zeros = F.ones(shape=(groups,)), F.zeros(shape=(groups,))
        out = F.GroupNorm(_moved(F, x, self._axis), ones, zeros, num_groups=groups,
                          eps=self._epsilon)
        return _moved(F, out, self._axis)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_groups={self._num_groups}, "
                f"eps={self._epsilon}, axis={self._axis})")


def _install_hook(anchor) -> None:
    if anchor not in _hooks:
        _hooks[anchor] = anchor.register_forward_pre_hook(_resolve_on_first_call)


def _resolve_on_first_call(anchor, args) -> None:
    """Forward pre-hook: infer the channel count of every waiting PlainGroupNorm under
    ``anchor`` from the shapes of this call's arrays; then remove itself."""
    if not args or not all(isinstance(a, nd.NDArray) for a in args):
        return  # a symbolic call (a capture graph being traced): wait for arrays
    handle = _hooks.pop(anchor, None)
    if handle is not None:
        handle.detach()
    resolve_from_shapes(anchor, [a.shape for a in args])


def _waiting(block) -> List[PlainGroupNorm]:
    found = [block] if isinstance(block, PlainGroupNorm) and block.num_groups is None \
        else []
    for child in block._children.values():
        found.extend(_waiting(child))
    return found


def resolve_from_shapes(block, shapes) -> None:
    """Resolve every waiting :class:`PlainGroupNorm` under ``block`` for inputs of
    ``shapes``, by tracing ``block`` symbolically (waiting layers act as identity) and
    inferring the shape of each one's input. Layers whose shape cannot be inferred keep
    waiting."""
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
        axis = layer._axis % len(shape) if shape else 0
        if shape and shape[axis] > 0:
            layer.resolve(shape[axis])


class ChannelAffine(gluon.HybridBlock):
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
        super().__init__(**kwargs)
        if not isinstance(in_channels, int) or in_channels < 0:
            raise InvalidParameterError(
                f"in_channels must be a non-negative integer, got {in_channels!r}.")
        self._axis = int(axis)
        self.gamma = self.params.get("gamma", grad_req="write" if scale else "null",
                                     shape=(in_channels,), init=gamma_initializer,
                                     allow_deferred_init=True)
        self.beta = self.params.get("beta", grad_req="write" if center else "null",
                                    shape=(in_channels,), init=beta_initializer,
                                    allow_deferred_init=True)

    @property
    def axis(self) -> int:
        return self._axis

    def hybrid_forward(self, F, x, gamma, beta):
        moved = _moved(F, x, self._axis)
        flat = F.reshape(moved, (0, 0, -1))  # (N, C, positions)
        if F is not nd:
            # Broadcasting does not infer gamma's shape: tie it to the channel axis with
            # an elementwise sum with C zeros (taken from the first position of row 0).
            corner = F.slice_axis(F.slice_axis(flat, axis=0, begin=0, end=1), axis=2,
                                  begin=0, end=1)
            zeros = F.zeros_like(F.reshape(corner, (-1,)))
            gamma, beta = F.elemwise_add(gamma, zeros), F.elemwise_add(beta, zeros)
        out = F.broadcast_add(F.broadcast_mul(flat, F.reshape(gamma, (1, -1, 1))),
                              F.reshape(beta, (1, -1, 1)))
        return _moved(F, F.reshape_like(out, moved), self._axis)

    def __repr__(self) -> str:
        channels = self.gamma.shape[0] if self.gamma.shape else 0
        return f"{type(self).__name__}({channels or None}, axis={self._axis})"
