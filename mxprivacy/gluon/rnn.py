"""Recurrent layers built from ``nn.Dense``, so the vectorized rules cover them.

``DPLSTM``, ``DPGRU`` and ``DPRNN`` have the constructor and call signature of
``gluon.rnn.LSTM``/``GRU``/``RNN`` (layouts TNC and NTC, several layers, bidirectional,
dropout between layers, optional initial states). They use MXNet's gate order (LSTM: i,
f, g, o; GRU: r, z, n) and the fused layers' parameter shapes and names:

- ``collect_params()``: ``<prefix>l0_i2h_weight``, ... (``r0_`` for the reverse
  direction), and the attributes ``layer.l0_i2h_weight``, ...;
- ``save_parameters``/``load_parameters``: MXNet 1.9's fused key format,
  ``_unfused.0.i2h_weight`` (one direction) or ``_unfused.0.l_cell.i2h_weight`` /
  ``_unfused.0.r_cell.i2h_weight`` (bidirectional).

So a file saved from a net with ``DPLSTM`` loads into the same net with
``gluon.rnn.LSTM`` (to deploy without mxprivacy), and the reverse (to fine-tune a
pretrained model privately). :meth:`copy_from` copies the weights of a live fused layer,
also one whose input size was inferred by a forward pass.

Each direction of each layer has an input projection ``i2h``, applied once to the whole
sequence, and a recurrent projection ``h2h``, applied once per time step. Both are
``Dense(flatten=False)`` on batch-major inputs, so their per-sample gradients are exact.
The Dense rule adds up the T calls of ``h2h``.
"""
from __future__ import annotations

import re
from typing import List

from mxnet import autograd, gluon, nd

from ..errors import InvalidParameterError
from . import capture

__all__ = ["DPLSTM", "DPGRU", "DPRNN"]

_PARAM_NAME = re.compile(r"([lr])(\d+)_(i2h|h2h)_(weight|bias)")


def _fused_key(direction: str, layer: int, part: str, kind: str, bidirectional: bool) -> str:
    """The key of a parameter in a file saved by a fused ``gluon.rnn`` layer (MXNet 1.9
    ``_RNNLayer._collect_params_with_prefix``)."""
    if bidirectional:
        return f"_unfused.{layer}.{direction}_cell.{part}_{kind}"
    return f"_unfused.{layer}.{part}_{kind}"


class _DPRecurrent(gluon.Block):
    _gates = 1
    _states = 1
    _fused_mode = ""  # the ``_mode`` of the matching fused layer

    def __init__(self, hidden_size: int, num_layers: int = 1, layout: str = "TNC",
                 dropout: float = 0.0, bidirectional: bool = False, input_size: int = 0,
                 i2h_weight_initializer=None, h2h_weight_initializer=None,
                 i2h_bias_initializer="zeros", h2h_bias_initializer="zeros",
                 dtype: str = "float32", **kwargs) -> None:
        super().__init__(**kwargs)
        if layout not in ("TNC", "NTC"):
            raise InvalidParameterError(f"layout must be 'TNC' or 'NTC', got {layout!r}.")
        self._hidden_size, self._num_layers = hidden_size, num_layers
        self._layout, self._dropout = layout, dropout
        self._directions = ["l", "r"] if bidirectional else ["l"]
        self._input_size = input_size
        width = self._gates * hidden_size
        with self.name_scope():
            for layer in range(num_layers):
                in_units = input_size if layer == 0 else hidden_size * len(self._directions)
                for d in self._directions:
                    i2h = gluon.nn.Dense(width, flatten=False, in_units=in_units, dtype=dtype,
                                         weight_initializer=i2h_weight_initializer,
                                         bias_initializer=i2h_bias_initializer,
                                         prefix=f"{d}{layer}_i2h_")
                    h2h = gluon.nn.Dense(width, flatten=False, in_units=hidden_size,
                                         dtype=dtype, weight_initializer=h2h_weight_initializer,
                                         bias_initializer=h2h_bias_initializer,
                                         prefix=f"{d}{layer}_h2h_")
                    self.register_child(i2h, f"{d}{layer}_i2h")
                    self.register_child(h2h, f"{d}{layer}_h2h")

    def _cell(self, direction: str, layer: int, name: str):
        return self._children[f"{direction}{layer}_{name}"]

    def begin_state(self, batch_size: int = 0, ctx=None, **kwargs) -> List:
        """Zero initial states, shaped like ``gluon.rnn``'s: (layers * dirs, N, H)."""
        shape = (self._num_layers * len(self._directions), batch_size, self._hidden_size)
        return [nd.zeros(shape, ctx=ctx, **kwargs) for _ in range(self._states)]

    def forward(self, inputs, states=None):
        given_states = states is not None
        x = inputs.swapaxes(0, 1) if self._layout == "TNC" else inputs  # (N, T, C)
        if states is None:
            states = self.begin_state(x.shape[0], ctx=x.context, dtype=x.dtype)
        elif isinstance(states, nd.NDArray):
            states = [states]
        final: List[List] = [[] for _ in range(self._states)]
        for layer in range(self._num_layers):
            outputs = []
            for k, direction in enumerate(self._directions):
                slot = layer * len(self._directions) + k
                init = [s[slot] for s in states]
                seq, last = self._run(direction, layer, x, init)
                outputs.append(seq)
                for store, value in zip(final, last):
                    store.append(value)
            x = outputs[0] if len(outputs) == 1 else nd.concat(*outputs, dim=2)
            if self._dropout and layer < self._num_layers - 1 and autograd.is_training():
                x = nd.Dropout(x, p=self._dropout)
        out = x.swapaxes(0, 1) if self._layout == "TNC" else x
        if not given_states:
            return out
        return out, [nd.stack(*store, axis=0) for store in final]

    def _run(self, direction: str, layer: int, x, init: List):
        projected = self._cell(direction, layer, "i2h")(x)  # (N, T, G*H), one call
        h2h = self._cell(direction, layer, "h2h")
        ctx = x.context
        shard = capture.active_shard(h2h)
        if shard is not None:
            # The capture protocol with the probe as an input of the core's cached graph:
            # the rule rebuilds h2h's gradient from the probe's gradient (d loss / d h2h
            # output at every step) and the states fed to h2h, which the core outputs.
            probe = capture.new_probe(projected)
            weight, bias = h2h.weight.data(ctx).detach(), h2h.bias.data(ctx).detach()
        else:
            probe = nd.zeros_like(projected)
            weight, bias = h2h.weight.data(ctx), h2h.bias.data(ctx)
        outputs = self._core(x.shape[1], direction)(projected, probe, weight, bias, *init)
        sequence, fed, last = outputs[0], outputs[1], list(outputs[2:])
        if shard is not None:
            shard.add(h2h, fed, probe)
        return sequence, last

    def _core(self, steps: int, direction: str) -> "_RecurrentCore":
        cores = self.__dict__.setdefault("_cores", {})
        key = (steps, direction)
        if key not in cores:
            core = _RecurrentCore(self, steps, reverse=direction == "r")
            core.hybridize(static_alloc=True)
            cores[key] = core
        return cores[key]

    def _step(self, F, projected, hidden, state: List) -> List:  # pragma: no cover
        """One time step, feature-major: the x-projection and the h2h output (with the
        probe) are (G*H, N), the states (H, N)."""
        raise NotImplementedError

    # -- the fused layers' parameter names --------------------------------------------
    def _named_params(self) -> List:
        """``(direction, layer, part, kind, Parameter)`` in the fused layers' order."""
        return [(d, layer, part, kind, getattr(self._cell(d, layer, part), kind))
                for layer in range(self._num_layers) for d in self._directions
                for part in ("i2h", "h2h") for kind in ("weight", "bias")]

    def __getattr__(self, name: str):
        """``layer.l0_i2h_weight`` and the like, as on a fused layer."""
        match = _PARAM_NAME.fullmatch(name)
        cells = self.__dict__.get("_children", {})
        if match and f"{match[1]}{match[2]}_{match[3]}" in cells:
            return getattr(cells[f"{match[1]}{match[2]}_{match[3]}"], match[4])
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _collect_params_with_prefix(self, prefix: str = "") -> dict:
        """The structural names of ``save_parameters``/``load_parameters``: those of the
        fused layer, so that files are interchangeable."""
        if prefix:
            prefix += "."
        bidirectional = len(self._directions) == 2
        found = {prefix + _fused_key(d, layer, part, kind, bidirectional): param
                 for d, layer, part, kind, param in self._named_params()}
        cells = {f"{d}{layer}_{part}" for d, layer, part, _, _ in self._named_params()}
        for name, child in self._children.items():  # children a subclass added
            if name not in cells:
                found.update(child._collect_params_with_prefix(prefix + name))
        return found

    def copy_from(self, fused) -> "_DPRecurrent":
        """Load the weights of a ``gluon.rnn`` layer with the same configuration.

        ``fused`` must be initialized; its shapes may have been inferred by a forward
        pass (``input_size=0``): this layer's unknown sizes are then taken from it, and
        its parameters are initialized (on ``fused``'s contexts when they are not).
        """
        self._check_same_kind(fused)
        theirs = fused._collect_params_with_prefix()
        ours = self._collect_params_with_prefix()
        if set(theirs) != set(ours):
            raise InvalidParameterError(
                f"{fused.name} has parameters {sorted(set(theirs) - set(ours))} and lacks "
                f"{sorted(set(ours) - set(theirs))}: build the DP layer with the same "
                "hidden_size, num_layers and bidirectional.")
        for key, param in ours.items():
            source = theirs[key]
            if source._data is None:
                raise InvalidParameterError(
                    f"{fused.name}'s parameter {source.name} has no value yet: initialize "
                    f"{fused.name} and run it once (or skip copy_from).")
            _take_value(param, source.data(), source.list_ctx(), f"{fused.name} {key}")
        return self

    def _check_same_kind(self, fused) -> None:
        mode = getattr(fused, "_mode", None)
        if mode != self._fused_mode:
            raise InvalidParameterError(
                f"{type(self).__name__} computes a {self._fused_mode!r} layer, {fused.name} "
                f"is {mode!r}: copy the weights of the matching kind.")
        for option in ("_projection_size", "_lstm_state_clip_min", "_lstm_state_clip_max"):
            if getattr(fused, option, None):
                raise InvalidParameterError(
                    f"{fused.name} uses {option.lstrip('_')}, which {type(self).__name__} "
                    "does not implement: its outputs would differ.")


def _take_value(param, value, contexts, what: str) -> None:
    """Set ``param`` to ``value``, filling in the sizes deferred initialization left
    unknown (0) and initializing it if needed."""
    known = param.shape or ()
    if len(known) != len(value.shape) or any(k not in (0, v) for k, v in
                                             zip(known, value.shape)):
        raise InvalidParameterError(
            f"{what} has shape {value.shape}, but {param.name} expects {param.shape}: "
            "build the DP layer with the same sizes.")
    param.shape = value.shape
    if param._data is None:
        if param._deferred_init:
            param._finish_deferred_init()
        else:
            param.initialize(ctx=contexts)
    param.set_data(value)


class DPLSTM(_DPRecurrent):
    """LSTM from Dense parts; same API and parameters as ``gluon.rnn.LSTM``."""

    _gates, _states, _fused_mode = 4, 2, "lstm"

    def _step(self, F, projected, hidden, state):
        h, c = state
        i, f, g, o = F.split(projected + hidden, num_outputs=4, axis=0)
        c = _sigmoid(F, f) * c + _sigmoid(F, i) * _tanh(F, g)
        return [_sigmoid(F, o) * _tanh(F, c), c]


class DPGRU(_DPRecurrent):
    """GRU from Dense parts; same API and parameters as ``gluon.rnn.GRU``."""

    _gates, _fused_mode = 3, "gru"

    def _step(self, F, projected, hidden, state):
        (h,) = state
        x_r, x_z, x_n = F.split(projected, num_outputs=3, axis=0)
        h_r, h_z, h_n = F.split(hidden, num_outputs=3, axis=0)
        reset = _sigmoid(F, x_r + h_r)
        update = _sigmoid(F, x_z + h_z)
        new = _tanh(F, x_n + reset * h_n)
        return [(1 - update) * new + update * h]


class DPRNN(_DPRecurrent):
    """Elman RNN from Dense parts; same API and parameters as ``gluon.rnn.RNN``."""

    def __init__(self, hidden_size: int, num_layers: int = 1, activation: str = "relu",
                 layout: str = "TNC", dropout: float = 0.0, bidirectional: bool = False,
                 **kwargs) -> None:
        if activation not in ("relu", "tanh"):
            raise InvalidParameterError(f"activation must be 'relu' or 'tanh', got {activation!r}.")
        self._activation = activation
        super().__init__(hidden_size, num_layers, layout, dropout, bidirectional, **kwargs)

    @property
    def _fused_mode(self) -> str:
        return f"rnn_{self._activation}"

    def _step(self, F, projected, hidden, state):
        (h,) = state
        return [F.Activation(projected + hidden, act_type=self._activation)]


class _RecurrentCore(gluon.HybridBlock):
    """The time loop of one direction of one layer, as one hybridized graph.

    Inputs: the x-projection (N, T, G*H), a probe (N, T, G*H) added to the h2h output,
    the h2h weight and bias (as data: detached when captured), and the initial states.
    Outputs: the hidden sequence (N, T, H), the states fed to h2h at each step
    (N, T, H), and the final states.

    Inside, everything is feature-major (features, N): the gates of a step are then
    contiguous row blocks, and splitting them is cheap (splitting columns was 60 % of
    the forward time).
    """

    def __init__(self, owner: "_DPRecurrent", steps: int, reverse: bool) -> None:
        super().__init__(prefix=owner.prefix + ("core_r" if reverse else "core_l"))
        self._step_fn, self._steps, self._reverse = owner._step, steps, reverse

    def hybrid_forward(self, F, projected, probe, weight, bias, *init):
        xs = [F.transpose(x) for x in _split_steps(F, projected, self._steps)]
        ps = [F.transpose(p) for p in _split_steps(F, probe, self._steps)]
        order = list(range(self._steps - 1, -1, -1) if self._reverse else range(self._steps))
        state = [F.transpose(s) for s in init]
        # Broadcast once: a per-step broadcast_add has a slow reducing backward.
        bias_block = F.broadcast_like(F.reshape(bias, shape=(-1, 1)), xs[0])
        outputs = [None] * self._steps  # batch-major hidden state after each step
        for t in order:
            hidden = F.dot(weight, state[0]) + bias_block + ps[t]
            state = self._step_fn(F, xs[t], hidden, state)
            outputs[t] = F.transpose(state[0])
        # The state fed to h2h at step t: the initial one first, then the previous output.
        fed = [init[0] if k == 0 else outputs[order[k - 1]] for k in range(self._steps)]
        fed_in_time = [None] * self._steps
        for k, t in enumerate(order):
            fed_in_time[t] = fed[k]
        return tuple([F.stack(*outputs, axis=1), F.stack(*fed_in_time, axis=1)]
                      + [outputs[order[-1]]] + [F.transpose(s) for s in state[1:]])


def _sigmoid(F, x):
    # Activation runs oneDNN's vectorized kernel: 12x faster than F.sigmoid on CPU here.
    return F.Activation(x, act_type="sigmoid")


def _tanh(F, x):
    return F.Activation(x, act_type="tanh")  # 47x faster than F.tanh on CPU here


def _split_steps(F, value, steps: int) -> List:
    """A (N, T, F) array as T arrays (N, F)."""
    if steps == 1:
        return [F.squeeze(value, axis=1)]
    return list(F.split(value, num_outputs=steps, axis=1, squeeze_axis=True))
