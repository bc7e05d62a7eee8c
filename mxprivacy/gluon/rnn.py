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
        steps = range(x.shape[1]) if direction == "l" else range(x.shape[1] - 1, -1, -1)
        state = list(init)
        outputs = [None] * x.shape[1]
        for t in steps:
            state = self._step(projected[:, t, :], h2h, state)
            outputs[t] = state[0]
        return nd.stack(*outputs, axis=1), state

    def _step(self, projected, h2h, state: List) -> List:  # pragma: no cover - abstract
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

    def _step(self, projected, h2h, state):
        h, c = state
        gates = projected + h2h(h)
        i, f, g, o = nd.split(gates, num_outputs=4, axis=1)
        c = nd.sigmoid(f) * c + nd.sigmoid(i) * nd.tanh(g)
        return [nd.sigmoid(o) * nd.tanh(c), c]


class DPGRU(_DPRecurrent):
    """GRU from Dense parts; same API and parameters as ``gluon.rnn.GRU``."""

    _gates = 3

    def _step(self, projected, h2h, state):
        (h,) = state
        x_r, x_z, x_n = nd.split(projected, num_outputs=3, axis=1)
        h_r, h_z, h_n = nd.split(h2h(h), num_outputs=3, axis=1)
        reset = nd.sigmoid(x_r + h_r)
        update = nd.sigmoid(x_z + h_z)
        new = nd.tanh(x_n + reset * h_n)
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

    def _step(self, projected, h2h, state):
        (h,) = state
        return [nd.Activation(projected + h2h(h), act_type=self._activation)]
