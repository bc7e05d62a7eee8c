"""``fix(net)``: replace layers that cannot be trained with per-sample privacy.

- ``BatchNorm``, ``BatchNormReLU``, ``SyncBatchNorm`` and their subclasses mix samples
  through batch statistics. They become ``GroupNorm`` (followed by a ReLU for
  ``BatchNormReLU``), with up to 32 groups that divide the channel count (one group when the
  count is not known yet).
- ``gluon.rnn.LSTM`` / ``GRU`` / ``RNN`` (fused, with no per-sample rule) become
  :class:`~mxprivacy.gluon.rnn.DPLSTM` / ``DPGRU`` / ``DPRNN``, with the same weights
  once initialized.
"""
from __future__ import annotations

from typing import Callable, List, Optional

from mxnet import gluon

from .rnn import DPGRU, DPLSTM, DPRNN
from .validators import _walk, mixes_samples

__all__ = ["fix", "replacement_for"]

_RECURRENT = {gluon.rnn.LSTM: DPLSTM, gluon.rnn.GRU: DPGRU, gluon.rnn.RNN: DPRNN}


def _group_norm(bn) -> gluon.Block:
    gamma = bn._reg_params.get("gamma")
    channels = int(gamma.shape[0]) if gamma is not None and gamma.shape and gamma.shape[0] \
        else 0
    groups = max((g for g in range(1, 33) if channels and channels % g == 0), default=1)
    norm = gluon.nn.GroupNorm(num_groups=groups,
                              epsilon=getattr(bn, "_kwargs", {}).get("eps", 1e-5))
    if not isinstance(bn, getattr(gluon.nn, "BatchNormReLU", ())):
        return norm
    fused = gluon.nn.HybridSequential()  # BatchNormReLU applies a ReLU after normalizing
    fused.add(norm, gluon.nn.Activation("relu"))
    return fused


def _dp_recurrent(fused) -> gluon.Block:
    cls = _RECURRENT[type(fused)]
    options = dict(num_layers=fused._num_layers, layout=fused._layout,
                   dropout=fused._dropout, bidirectional=fused._dir == 2,
                   input_size=fused._input_size)
    if cls is DPRNN:
        options["activation"] = fused._mode.split("_")[1]
    replacement = cls(fused._hidden_size, **options)
    if all(p._data is not None for p in fused.collect_params().values()):
        ctx = next(iter(fused.collect_params().values())).list_ctx()
        replacement.initialize(ctx=ctx)
        replacement.copy_from(fused)
    return replacement


def replacement_for(block) -> Optional[Callable]:
    """The function that builds ``block``'s DP-compatible replacement, if it needs one."""
    if mixes_samples(block):
        return _group_norm
    if type(block) in _RECURRENT:
        return _dp_recurrent
    return None


def fix(net: gluon.Block) -> gluon.Block:
    """Replace, in place, every child that :func:`replacement_for` knows how to fix.

    Returns the net (the same object, or its replacement when ``net`` itself needed
    one). ``net.fixed_layers_`` lists what changed, as ``(old name, new name)``.
    """
    make = replacement_for(net)
    if make is not None:
        new = make(net)
        new.fixed_layers_ = [(net.name, new.name)]
        return new
    changes: List = []
    for parent in list(_walk(net)):
        for key, child in list(parent._children.items()):
            make = replacement_for(child)
            if make is None:
                continue
            new = make(child)
            parent._children[key] = new
            for attr, value in list(vars(parent).items()):
                if value is child:
                    object.__setattr__(parent, attr, new)
            changes.append((child.name, new.name))
    net.fixed_layers_ = changes
    return net

