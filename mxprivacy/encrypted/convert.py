"""``to_he_friendly(net)``: swap the layers homomorphic encryption cannot evaluate.

CKKS evaluates additions and multiplications only. In place, like
:func:`mxprivacy.fix`:

- ``nn.Activation("relu" | "tanh" | "sigmoid")`` becomes a
  :class:`~mxprivacy.gluon.PolyActivation`: ``x * x`` with ``activation="square"``, or
  with ``activation=("fit", degree, input_range)`` the least squares polynomial of the
  activation's own function (``("relu", degree, input_range)`` fits ReLU for every
  activation, and so on). Fused activations (``Dense(activation="relu")``,
  ``Conv2D(activation=...)``) are ``nn.Activation`` children named ``act`` and are
  swapped the same way. A subclass of ``nn.Activation`` is swapped only when it does
  not override ``hybrid_forward`` (otherwise what it computes is unknown);
- ``MaxPool1D/2D/3D`` becomes ``AvgPool1D/2D/3D`` with the same pool size, strides,
  padding, ceil mode and layout, and ``GlobalMaxPool*`` becomes ``GlobalAvgPool*``
  (``pooling=None`` leaves pooling alone).

Everything else is kept, with its structural name (``0.weight`` ...): the swapped layers
have no parameters, so saved weights still load. Layers with no polynomial equivalent
here (``LeakyReLU``, ``PReLU``, ``ELU``, ``SELU``, ``GELU``, ``Swish``, softrelu and
softsign activations, custom ``Activation`` subclasses) are refused with
:class:`~mxprivacy.UnsupportedLayerError` before anything changes. The model changes:
retrain (or fine-tune) it after the swap.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

from mxnet import gluon

from ..errors import InvalidParameterError, UnsupportedLayerError
from ..gluon.fixer import LayerFix, swap_children
from ..gluon.poly import FIT_TARGETS, PolyActivation

__all__ = ["to_he_friendly", "LayerFix"]

nn = gluon.nn
_POOLS = {nn.MaxPool1D: nn.AvgPool1D, nn.MaxPool2D: nn.AvgPool2D, nn.MaxPool3D: nn.AvgPool3D}
_GLOBAL_POOLS = {nn.GlobalMaxPool1D: nn.GlobalAvgPool1D, nn.GlobalMaxPool2D: nn.GlobalAvgPool2D,
                 nn.GlobalMaxPool3D: nn.GlobalAvgPool3D}
_NO_POLYNOMIAL = (nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.GELU, nn.Swish)
_REPLACE_BY = ("Replace it by nn.Activation('relu' | 'tanh' | 'sigmoid') before the swap, or "
               "by a PolyActivation yourself.")


def _parse_activation(activation) -> Tuple[str, int, Tuple[float, float]]:
    """("square", 0, ()) or (target, degree, input_range), target "fit" = own function."""
    if activation == "square":
        return "square", 0, ()
    if isinstance(activation, tuple) and len(activation) == 3 and \
            activation[0] in ("fit",) + tuple(FIT_TARGETS):
        target, degree, input_range = activation
        PolyActivation.fit("relu", degree, input_range)  # checks degree and range
        return target, degree, tuple(float(v) for v in input_range)
    raise InvalidParameterError(
        f"activation must be 'square' or a tuple (target, degree, input_range) with target "
        f"'fit' (each activation's own function) or one of {sorted(FIT_TARGETS)}, e.g. "
        f"('fit', 2, (-4, 4)); got {activation!r}.")


def _act_type(block) -> Optional[str]:
    return getattr(block, "_act_type", None)


def _poly_maker(spec) -> Callable:
    target, degree, input_range = spec

    def make(block) -> Tuple[gluon.Block, List[str]]:
        if type(block).hybrid_forward is not nn.Activation.hybrid_forward:
            raise UnsupportedLayerError(
                f"{block.name} ({type(block).__name__}) overrides hybrid_forward, so what "
                f"it computes is unknown and to_he_friendly() cannot swap it. {_REPLACE_BY}")
        act = _act_type(block)
        if act not in FIT_TARGETS:
            raise UnsupportedLayerError(
                f"{block.name} is Activation({act!r}), which to_he_friendly() cannot "
                f"approximate (it fits {sorted(FIT_TARGETS)}). {_REPLACE_BY}")
        if target == "square":
            return PolyActivation("square", prefix=block.prefix), [f"{act} -> x * x"]
        fitted = act if target == "fit" else target
        new = PolyActivation.fit(fitted, degree, input_range, prefix=block.prefix)
        return new, [f"{act} -> least squares fit of {fitted}, degree {new.degree} on "
                     f"{input_range}, max error {new.max_error:.3g}"]

    return make


def _avg_pool(block) -> Tuple[gluon.Block, List[str]]:
    options = block._kwargs
    pool_size, strides, padding = options["kernel"], options["stride"], options["pad"]
    layout = options.get("layout")
    cls = _POOLS[type(block)]
    new = cls(pool_size=pool_size, strides=strides, padding=padding,
              ceil_mode=options["pooling_convention"] == "full", layout=layout,
              count_include_pad=False, prefix=block.prefix)
    notes = [f"pool_size={pool_size}, strides={strides}, padding={padding} kept"]
    if any(padding):
        notes.append("padded positions are left out of each average (count_include_pad=False)")
    return new, notes


def _global_avg_pool(block) -> Tuple[gluon.Block, List[str]]:
    layout = block._kwargs.get("layout")
    return _GLOBAL_POOLS[type(block)](layout=layout, prefix=block.prefix), ["global average"]


def _maker_for(block, spec, pooling) -> Optional[Callable]:
    """The function ``make(block) -> (replacement, notes)``, or None to keep ``block``."""
    if isinstance(block, _NO_POLYNOMIAL):
        def refuse(layer):
            raise UnsupportedLayerError(
                f"{layer.name} ({type(layer).__name__}) has no polynomial equivalent in "
                f"to_he_friendly(). {_REPLACE_BY}")
        return refuse
    if isinstance(block, nn.Activation):
        return _poly_maker(spec)
    if pooling == "avg" and type(block) in _POOLS:
        return _avg_pool
    if pooling == "avg" and type(block) in _GLOBAL_POOLS:
        return _global_avg_pool
    return None


def _targets(net, spec, pooling) -> List[Tuple]:
    """(parent, key, child, path, make) for every child to swap."""
    found: List[Tuple] = []

    def visit(block, path: str) -> None:
        for key, child in list(block._children.items()):
            here = f"{path}.{key}" if path else key
            make = _maker_for(child, spec, pooling)
            if make is not None:
                found.append((block, key, child, here, make))
            else:
                visit(child, here)

    visit(net, "")
    return found


def _build(child, path: str, make) -> Tuple[gluon.Block, LayerFix]:
    new, notes = make(child)
    if getattr(child, "_active", False):
        new.hybridize(True, **dict(child._flags))
    return new, LayerFix(path, child.name, type(child).__name__, new.name,
                         type(new).__name__, tuple(notes))


def _clear_graphs(block) -> None:
    if isinstance(block, gluon.HybridBlock):
        block._clear_cached_op()
    for child in block._children.values():
        _clear_graphs(child)


def to_he_friendly(net: gluon.Block, *, activation="square", pooling: Optional[str] = "avg",
                   verbose: bool = False) -> gluon.Block:
    """Swap, in place, activations and max pooling for HE-friendly layers.

    Parameters
    ----------
    net : gluon.Block
    activation : "square" or (target, degree, input_range)
        ``"square"``: ``x * x``. A tuple: the least squares polynomial of ``degree``
        (2 to 4) on ``input_range``, of each activation's own function (target
        ``"fit"``) or of ``"relu"``, ``"tanh"`` or ``"sigmoid"`` for all.
    pooling : "avg" or None
        ``"avg"``: max pooling becomes average pooling of the same geometry.
    verbose : bool
        Print one line per swap.

    Returns
    -------
    gluon.Block
        ``net`` (or its replacement when ``net`` itself is swapped), whose
        ``he_friendly_changes_`` lists a :class:`~mxprivacy.gluon.fixer.LayerFix` (path,
        old and new name and type, notes) per swap. Nothing changes when a layer is
        refused (all replacements are built before any swap).
    """
    if not isinstance(net, gluon.Block):
        raise InvalidParameterError(
            f"to_he_friendly() needs a gluon Block, got {type(net).__name__}.")
    if pooling not in ("avg", None):
        raise InvalidParameterError(f"pooling must be 'avg' or None, got {pooling!r}.")
    spec = _parse_activation(activation)
    own = _maker_for(net, spec, pooling)
    if own is not None:
        net, record = _build(net, "", own)
        records = [record]
    else:
        targets = _targets(net, spec, pooling)
        done: Dict[int, gluon.Block] = {}  # one replacement for a layer registered twice
        records = []
        for _, _, child, path, make in targets:
            if id(child) not in done:
                done[id(child)], record = _build(child, path, make)
                records.append(record)
        swap_children(targets, done)
        if records:
            _clear_graphs(net)  # cached graphs would still run the old layers
    net.he_friendly_changes_ = records
    if verbose:
        for record in records:
            print(record)
        if not records:
            print("to_he_friendly(): nothing to swap")
    return net
