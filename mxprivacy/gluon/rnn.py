"""Recurrent layers built from ``nn.Dense``, so the vectorized rules cover them.

``DPLSTM``, ``DPGRU`` and ``DPRNN`` have the constructor and call signature of
``gluon.rnn.LSTM``/``GRU``/``RNN`` (layouts TNC and NTC, several layers, bidirectional,
dropout between layers, optional initial states). Their parameters have the same names
and shapes, so :meth:`copy_from` loads the weights of a fused layer. They use MXNet's
gate order (LSTM: i, f, g, o; GRU: r, z, n).

Each direction of each layer has an input projection ``i2h``, applied once to the whole
sequence, and a recurrent projection ``h2h``, applied once per time step. Both are
``Dense(flatten=False)`` on batch-major inputs, so their per-sample gradients are exact.
The Dense rule adds up the T calls of ``h2h``.
"""
from __future__ import annotations

from typing import List

from mxnet import autograd, gluon, nd

from ..errors import InvalidParameterError
from . import capture

__all__ = ["DPLSTM", "DPGRU", "DPRNN"]


class _DPRecurrent(gluon.Block):
    _gates = 1
    _states = 1

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

    def copy_from(self, fused) -> "_DPRecurrent":
        """Load the weights of a ``gluon.rnn`` layer with the same configuration."""
        theirs = {name[len(fused.prefix):]: p for name, p in fused.collect_params().items()}
        for name, param in self.collect_params().items():
            key = name[len(self.prefix):]
            if key not in theirs or theirs[key].shape != param.shape:
                raise InvalidParameterError(
                    f"{fused.name} has no parameter matching {key} {param.shape}.")
            param.set_data(theirs[key].data())
        return self


class DPLSTM(_DPRecurrent):
    """LSTM from Dense parts; same API and parameters as ``gluon.rnn.LSTM``."""

    _gates, _states = 4, 2

    def _step(self, F, projected, hidden, state):
        h, c = state
        i, f, g, o = F.split(projected + hidden, num_outputs=4, axis=0)
        c = _sigmoid(F, f) * c + _sigmoid(F, i) * _tanh(F, g)
        return [_sigmoid(F, o) * _tanh(F, c), c]


class DPGRU(_DPRecurrent):
    """GRU from Dense parts; same API and parameters as ``gluon.rnn.GRU``."""

    _gates = 3

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
