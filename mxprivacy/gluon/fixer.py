"""``fix(net)``: replace layers that cannot be trained with per-sample privacy.

- ``BatchNorm``, ``BatchNormReLU``, ``SyncBatchNorm`` and their subclasses mix samples
  through batch statistics. Each becomes a ``HybridSequential`` of
  :class:`~mxprivacy.gluon.affine.PlainGroupNorm` (group normalization within each
  sample, no parameters, groups = the largest divisor of the channel count <= 32) and
  :class:`~mxprivacy.ChannelAffine` (BatchNorm's per-channel gamma and beta), followed by
  a ReLU for ``BatchNormReLU``. The running mean and variance are dropped: the new layer
  uses no batch statistics.
- ``gluon.rnn.LSTM`` / ``GRU`` / ``RNN`` (fused, with no per-sample rule) become
  :class:`~mxprivacy.gluon.rnn.DPLSTM` / ``DPGRU`` / ``DPRNN``.

``fix()`` works at any point of a net's life. A replacement is initialized like the layer
it replaces: not at all before ``net.initialize()``; on the same contexts, with deferred
shapes, after it; and with the old layer's weights (BatchNorm gamma/beta, recurrent
weights) once they exist. Hybridized replacements stay hybridized, and cached graphs
that still hold the old layers are dropped. When a channel count is not known yet, the
group count is chosen at the first forward pass (see :mod:`mxprivacy.gluon.affine`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

from mxnet import gluon

from ..errors import InvalidParameterError, UnsupportedLayerError
from .affine import ChannelAffine, PlainGroupNorm, group_count, watch_channels
from .rnn import DPGRU, DPLSTM, DPRNN
from .validators import _SAMPLE_MIXING

__all__ = ["fix", "replacement_for", "LayerFix"]

_RECURRENT = {gluon.rnn.LSTM: DPLSTM, gluon.rnn.GRU: DPGRU, gluon.rnn.RNN: DPRNN}
_DROPPED_STATS = "running_mean/running_var dropped (no batch statistics under DP)"


@dataclass(frozen=True)
class LayerFix:
    """One replacement made by :func:`fix`.

    ``path`` is the layer's structural name (as in ``save_parameters``, ``""`` for the
    net itself); ``notes`` say what happened to its weights and settings.
    """

    path: str
    old_name: str
    old_type: str
    new_name: str
    new_type: str
    notes: Tuple[str, ...]

    def as_dict(self) -> Dict:
        return asdict(self)

    def __str__(self) -> str:
        where = self.path or "(the net)"
        return (f"{where}: {self.old_name} ({self.old_type}) -> {self.new_name} "
                f"({self.new_type}); " + "; ".join(self.notes))


# -- initialization state of the layer being replaced -----------------------------------
def _init_state(params) -> Tuple[str, Optional[list], object]:
    """("data", ctx, None) when every parameter has a value, ("deferred", ctx, default
    initializer) after ``initialize()`` with unknown shapes, ("none", None, None)."""
    if params and all(p._data is not None for p in params):
        return "data", params[0].list_ctx(), None
    for param in params:
        if param._deferred_init:
            _, ctx, default_init, _ = param._deferred_init
            return "deferred", list(ctx), default_init
    return "none", None, None


def _initialize_like(new, state: str, ctx, default_init) -> str:
    """Initialize ``new`` the way the replaced layer was; say how."""
    if state == "none":
        return "not initialized (net.initialize() will)"
    if default_init is None:
        new.initialize(ctx=ctx)
    else:
        new.initialize(init=default_init, ctx=ctx)
    return f"initialized on {ctx}" + (" (deferred: shapes unknown)" if state == "deferred"
                                      else "")


# -- BatchNorm --------------------------------------------------------------------------
def _channels(bn) -> int:
    shape = bn.gamma.shape
    return int(shape[0]) if shape and shape[0] else 0


def _batch_norm_replacement(bn) -> Tuple[gluon.Block, List[str]]:
    """The new layers take the BatchNorm's prefix, so that gamma and beta keep their
    names (``resnetv10_batchnorm0_gamma``): name-based settings still apply."""
    options = getattr(bn, "_kwargs", {})
    axis, channels = options.get("axis", 1), _channels(bn)
    fixed_gamma = bool(options.get("fix_gamma", False))  # BatchNorm(scale=False): gamma = 1
    new = gluon.nn.HybridSequential(prefix=bn.prefix)
    norm = PlainGroupNorm(group_count(channels) if channels else None,
                          epsilon=options.get("eps", 1e-5), axis=axis,
                          prefix=bn.prefix + "groupnorm_")
    affine = ChannelAffine(channels, axis=axis, prefix=bn.prefix,
                           gamma_initializer="ones" if fixed_gamma else bn.gamma.init,
                           beta_initializer=bn.beta.init)
    new.add(norm, affine)
    if getattr(bn, "fuse_relu", False):  # BatchNormReLU: the ReLU follows the affine
        new.add(gluon.nn.Activation("relu", prefix=bn.prefix + "relu_"))
    for mine, theirs in ((affine.gamma, bn.gamma), (affine.beta, bn.beta)):
        mine.grad_req = theirs.grad_req
        mine.lr_mult, mine.wd_mult = theirs.lr_mult, theirs.wd_mult
    notes = [f"num_groups={norm.num_groups}" if channels else
             "num_groups chosen at the first forward pass (channel count not known yet)"]
    state, ctx, default_init = _init_state([bn.gamma, bn.beta])
    notes.append(_initialize_like(new, state, ctx, default_init))
    if state == "data":
        if not fixed_gamma:
            affine.gamma.set_data(bn.gamma.data(ctx[0]))
        affine.beta.set_data(bn.beta.data(ctx[0]))
        notes.append("gamma and beta taken over")
    if fixed_gamma:
        notes.append("gamma frozen at 1 (BatchNorm scale=False)")
    if options.get("use_global_stats"):
        notes.append("use_global_stats=True: it normalized with its running statistics; "
                     "it now normalizes each sample over groups of channels")
    notes.append(_DROPPED_STATS)
    return new, notes


# -- fused recurrent layers -------------------------------------------------------------
def _check_convertible(fused) -> None:
    extras = {"projection_size": fused._projection_size,
              "lstm_state_clip_min": fused._lstm_state_clip_min,
              "lstm_state_clip_max": fused._lstm_state_clip_max,
              "use_sequence_length": fused._use_sequence_length or None}
    used = [name for name, value in extras.items() if value is not None]
    if used:
        raise UnsupportedLayerError(
            f"{fused.name} ({type(fused).__name__}) uses {used}, which the DP recurrent "
            "layers do not support: fix() cannot convert it. Build the net without them, "
            "or train it with PrivateBlock(net, mode='microbatch').")


def _dp_recurrent(fused) -> Tuple[gluon.Block, List[str]]:
    """The DP layer takes the fused layer's prefix: the parameter names stay the same."""
    _check_convertible(fused)
    cls = _RECURRENT[type(fused)]
    options = dict(num_layers=fused._num_layers, layout=fused._layout,
                   dropout=fused._dropout, bidirectional=fused._dir == 2,
                   input_size=fused._input_size, dtype=fused._dtype,
                   i2h_weight_initializer=fused._i2h_weight_initializer,
                   h2h_weight_initializer=fused._h2h_weight_initializer,
                   i2h_bias_initializer=fused._i2h_bias_initializer,
                   h2h_bias_initializer=fused._h2h_bias_initializer)
    if cls is DPRNN:
        options["activation"] = fused._mode.split("_")[1]
    replacement = cls(fused._hidden_size, prefix=fused.prefix, **options)
    state, ctx, default_init = _init_state(list(fused.collect_params().values()))
    notes = [_initialize_like(replacement, state, ctx, default_init)]
    if state == "data":
        replacement.copy_from(fused)
        notes.append("weights taken over")
    elif state == "deferred":
        notes.append("weights drawn afresh from the same initializers (the layer never ran)")
    return replacement, notes


def replacement_for(block) -> Optional[Callable]:
    """The function ``make(block) -> (replacement, notes)`` that builds
    ``block``'s DP-compatible replacement, or None when it needs none.

    Batch-statistics layers are replaced only when they are Gluon's (or subclasses);
    a custom block with running statistics stays, and :func:`~mxprivacy.validate`
    names it."""
    if _SAMPLE_MIXING and isinstance(block, _SAMPLE_MIXING):
        return _batch_norm_replacement
    if type(block) in _RECURRENT:
        return _dp_recurrent
    return None


# -- the walk ---------------------------------------------------------------------------
def _targets(net) -> List[Tuple]:
    """(parent, key, child, path, anchor) for every child to replace, outermost first;
    ``anchor`` is the outermost HybridBlock above the child (None: there is none)."""
    found: List[Tuple] = []

    def visit(block, path: str, anchor) -> None:
        for key, child in list(block._children.items()):
            here = f"{path}.{key}" if path else key
            below = anchor if anchor is not None else (
                child if isinstance(child, gluon.HybridBlock) else None)
            if replacement_for(child) is not None:
                found.append((block, key, child, here, anchor))
            else:
                visit(child, here, below)

    visit(net, "", net if isinstance(net, gluon.HybridBlock) else None)
    return found


def _refuse_wrapped(block) -> None:
    from .private_block import owner_of

    if any(owner_of(p) is not None for p in block.collect_params().values()):
        raise InvalidParameterError(
            f"{block.name} belongs to a net wrapped by a PrivateBlock, whose trainer would "
            "not see the replacement's parameters: call mxprivacy.fix(net) before "
            "wrapping, or private_block.release() first.")


def _describe(block) -> str:
    if isinstance(block, gluon.nn.HybridSequential):
        inner = ", ".join(type(child).__name__ for child in block._children.values())
        return f"{type(block).__name__}[{inner}]"
    return type(block).__name__


def _replace(child, path: str, anchor) -> Tuple[gluon.Block, LayerFix]:
    _refuse_wrapped(child)
    new, notes = replacement_for(child)(child)
    if getattr(child, "_active", False) and isinstance(new, gluon.HybridBlock):
        new.hybridize(True, **dict(child._flags))
    watch_channels(new, anchor if anchor is not None else new)
    record = LayerFix(path, child.name, type(child).__name__, new.name, _describe(new),
                      tuple(notes))
    return new, record


def _walk(block):
    yield block
    for child in block._children.values():
        yield from _walk(child)


def fix(net: gluon.Block, verbose: bool = False) -> gluon.Block:
    """Replace, in place, every layer that cannot be trained with per-sample privacy.

    Parameters
    ----------
    net : gluon.Block
        At any point: before or after ``initialize()``, after forward passes,
        hybridized or not (but not yet wrapped by a ``PrivateBlock``).
    verbose : bool, default False
        Print one line per replacement.

    Returns
    -------
    gluon.Block
        ``net`` itself, or its replacement when ``net`` itself needed one. Its
        ``fixed_layers_`` lists a :class:`LayerFix` (path, old and new name and type,
        notes such as ``num_groups=32``, ``gamma and beta taken over``,
        ``running_mean/running_var dropped``) for each replacement of this call.
    """
    if not isinstance(net, gluon.Block):
        raise InvalidParameterError(f"fix() needs a gluon Block, got {type(net).__name__}.")
    if replacement_for(net) is not None:
        new, record = _replace(net, "", None)
        new.fixed_layers_ = [record]
        return _report(new, verbose)
    targets = _targets(net)
    done: Dict[int, gluon.Block] = {}  # one replacement for a layer registered twice
    records: List[LayerFix] = []
    for _, _, child, path, anchor in targets:  # all built (or refused) before any swap
        if id(child) not in done:
            done[id(child)], record = _replace(child, path, anchor)
            records.append(record)
    swap_children(targets, done)
    if records:
        for block in _walk(net):  # cached graphs would still run the old layers
            if isinstance(block, gluon.HybridBlock):
                block._clear_cached_op()
    net.fixed_layers_ = records
    return _report(net, verbose)


def _report(net, verbose: bool):
    if verbose:
        for record in net.fixed_layers_:
            print(record)
        if not net.fixed_layers_:
            print("fix(): nothing to replace")
    return net


def swap_children(targets, done: Dict[int, gluon.Block]) -> None:
    """Put ``done[id(child)]`` where each ``(parent, key, child, ...)`` target sat: in the
    parent's children and in any attribute that held the child."""
    for parent, key, child, *_ in targets:
        new = done[id(child)]
        parent._children[key] = new
        for attr, value in list(vars(parent).items()):
            if value is child:
                object.__setattr__(parent, attr, new)
