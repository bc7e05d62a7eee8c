"""``GluonClient``: a Flower NumPyClient for any Gluon Block.

``fit`` loads the received weights, trains locally and returns the new weights;
``evaluate`` returns the loss, the number of examples and ``{"accuracy": ...}``.
Local training is one of:

- the standard loop: a ``gluon.Trainer`` (``optimizer``, ``optimizer_params``) on
  shuffled mini-batches for ``local_epochs`` epochs, with ``SoftmaxCrossEntropyLoss``
  unless ``loss`` is given;
- ``train_fn(net, train_data, config) -> dict`` of your own (its dict becomes the fit
  metrics);
- ``dp=dict(noise_multiplier=..., max_grad_norm=..., delta=...)``: DP-SGD with
  :class:`~mxprivacy.DPTrainer` and :class:`~mxprivacy.DPDataLoader` (Poisson batches
  of expected size ``batch_size``), example-level DP inside the client. The reported
  ``"example_epsilon"`` (at ``delta``, default 1e-5) composes every DP-SGD step this
  client has taken in all its rounds: the ledger lives in the object and, with
  ``state=context.state`` (Flower's per-client RecordSet, which outlives the client
  objects a ``client_fn`` builds per message), in that state too. Other keys go to
  DPTrainer (``accountant``, ``secure_mode``, ...).

The fit config may override ``"local_epochs"``, ``"batch_size"`` (not in DP mode: it
fixes the sampling rate of the accounted steps) and ``"learning_rate"``. When
``"mxp-participate"`` is 0 (the server's coin did not sample this client) ``fit``
returns the received weights unchanged, without training. Key names: :mod:`.mods`.
"""
from __future__ import annotations

import json
import math
import warnings
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from ..errors import ConflictingParametersError, InvalidParameterError, PrivacyWarning
from .mods import (BATCH_SIZE_KEY, EXAMPLE_EPSILON_KEY, LEARNING_RATE_KEY, LOCAL_EPOCHS_KEY,
                   participates)
from .params import get_weights, set_weights

try:
    from flwr.client import NumPyClient
except ImportError as _err:  # pragma: no cover - flwr is an extra
    raise ImportError("mxprivacy.federated needs Flower: pip install 'mxprivacy[federated]'"
                      ) from _err

__all__ = ["GluonClient"]

_LEDGER_RECORD = "mxp-example-ledger"
_DP_OWNED = ("expected_batch_size", "sample_rate", "dataset_size", "sampling")


def _dataset(data, what: str):
    from mxnet import gluon

    if data is None or isinstance(data, gluon.data.Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = (np.asarray(a) for a in data)
        if len(x) != len(y):
            raise InvalidParameterError(
                f"{what}: X has {len(x)} rows but y has {len(y)}: give one label per row.")
        return gluon.data.ArrayDataset(x.astype(np.float32), y.astype(np.float32))
    raise InvalidParameterError(
        f"{what} must be a pair (X, y) of arrays or a gluon Dataset, got "
        f"{type(data).__name__}.")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidParameterError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise InvalidParameterError(f"{name} must be a positive number, got {value!r}.")
    return float(value)


class GluonClient(NumPyClient):
    """A Flower client that trains ``net`` on its local ``train_data``.

    Parameters
    ----------
    net : gluon.Block
        The model; initialized here (Xavier) if it is not, and its shapes inferred from
        one training example. Weights are exchanged in :func:`.params.get_weights` order.
    train_data, test_data : (X, y) arrays or gluon Dataset
        Local data (``test_data`` for :meth:`evaluate`; None: evaluate on train_data).
    loss : gluon Loss, optional
        Per-example loss; ``SoftmaxCrossEntropyLoss()`` by default.
    local_epochs, batch_size : int
        Passes over the local data per fit, and the (expected) batch size.
    optimizer, optimizer_params
        As in ``gluon.Trainer`` (default SGD at learning rate 0.1).
    train_fn : callable, optional
        ``train_fn(net, train_data, config) -> dict`` replaces the standard loop.
    dp : dict, optional
        Local DP-SGD (see the module docstring). Not with ``train_fn``.
    state : flwr.common.RecordSet, optional
        Flower's ``context.state``: keeps the example-level ledger across the client
        objects built for each message.
    ctx : mx.Context, optional
        Device (``mx.cpu()`` by default).
    """

    def __init__(self, net, train_data, test_data=None, *, loss=None, local_epochs=1,
                 batch_size=32, optimizer="sgd", optimizer_params=None,
                 train_fn: Optional[Callable] = None, dp: Optional[dict] = None, ctx=None,
                 state=None):
        import mxnet as mx
        from mxnet import gluon

        self._train_arrays = tuple(train_data) if isinstance(train_data, (tuple, list)) \
            else None
        self.train_data = _dataset(train_data, "train_data")
        if self.train_data is None or len(self.train_data) == 0:
            raise InvalidParameterError("train_data is empty: every client needs examples.")
        self.test_data = _dataset(test_data, "test_data")
        self.local_epochs = _positive_int("local_epochs", local_epochs)
        self.batch_size = _positive_int("batch_size", batch_size)
        if train_fn is not None and not callable(train_fn):
            raise InvalidParameterError("train_fn must be callable(net, train_data, config).")
        if train_fn is not None and dp is not None:
            raise ConflictingParametersError(
                "Give train_fn or dp, not both: dp runs mxprivacy's DP-SGD loop; a "
                "train_fn of your own must then use DPTrainer itself.")
        self.train_fn, self.ctx = train_fn, ctx or mx.cpu()
        self.loss = loss if loss is not None else gluon.loss.SoftmaxCrossEntropyLoss()
        self.optimizer = optimizer
        self.optimizer_params = dict(optimizer_params or {"learning_rate": 0.1})
        self.net = net
        self._materialize()
        self.dp = None if dp is None else self._check_dp(dp)
        self._dp_trainer = self._dp_net = None
        self.state = state
        if self.dp is not None and state is None:
            warnings.warn(
                "GluonClient(dp=...) without state=: the example-level ledger lives only as "
                "long as this object, and a client_fn that builds a client per message would "
                "report the epsilon of one fit. Pass state=context.state.",
                PrivacyWarning, stacklevel=2)

    # -- setup -------------------------------------------------------------------------
    def _materialize(self) -> None:
        import mxnet as mx
        from mxnet import autograd

        params = self.net.collect_params()
        if any(p._data is None and p._deferred_init == () for p in params.values()):
            params.initialize(mx.init.Xavier(), ctx=self.ctx)
        if any(p._data is None for p in params.values()):
            x = self.train_data[0][0]
            x = x.asnumpy() if hasattr(x, "asnumpy") else np.asarray(x, dtype=np.float32)
            with autograd.train_mode():
                self.net(mx.nd.array(x[None], ctx=self.ctx))

    def _check_dp(self, dp: dict) -> dict:
        if not isinstance(dp, dict):
            raise InvalidParameterError(f"dp must be a dict of DPTrainer options, got {dp!r}.")
        missing = [k for k in ("noise_multiplier", "max_grad_norm") if k not in dp]
        if missing:
            raise InvalidParameterError(f"dp needs {missing}: e.g. dp=dict(noise_multiplier"
                                        "=1.0, max_grad_norm=1.0, delta=1e-5).")
        owned = [k for k in _DP_OWNED if k in dp]
        if owned:
            raise InvalidParameterError(
                f"dp sets {owned}: the client derives them from batch_size and its data "
                "size (Poisson sampling at rate batch_size / n). Remove them.")
        dp = dict(dp)
        delta = dp.setdefault("delta", 1e-5)
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
            raise InvalidParameterError(f"dp delta must be in (0, 1), got {delta!r}.")
        return dp

    # -- Flower API --------------------------------------------------------------------
    def get_parameters(self, config) -> list:
        """The model's weights (:func:`.params.get_weights`)."""
        return get_weights(self.net)

    def fit(self, parameters, config) -> Tuple[list, int, Dict]:
        """Load ``parameters``, train locally, return (weights, examples, metrics)."""
        config = dict(config or {})
        if not participates(config):
            return [np.array(p, copy=True) for p in parameters], len(self.train_data), {}
        set_weights(self.net, parameters)
        if self.train_fn is not None:
            metrics = self.train_fn(self.net, self.train_data, config)
            metrics = dict(metrics or {})
        elif self.dp is not None:
            metrics = self._fit_dp(config)
        else:
            metrics = self._fit_standard(config)
        return get_weights(self.net), len(self.train_data), metrics

    def evaluate(self, parameters, config) -> Tuple[float, int, Dict]:
        """Load ``parameters``; return (mean loss, examples, {"accuracy": ...})."""
        from mxnet import gluon

        set_weights(self.net, parameters)
        data = self.test_data if self.test_data is not None else self.train_data
        total_loss, correct = 0.0, 0
        for x, y in gluon.data.DataLoader(data, batch_size=max(self.batch_size, 256)):
            x, y = x.as_in_context(self.ctx), y.as_in_context(self.ctx)
            out = self.net(x)
            total_loss += float(self.loss(out, y).sum().asscalar())
            correct += int((out.argmax(axis=1) == y.astype(out.dtype)).sum().asscalar())
        return total_loss / len(data), len(data), {"accuracy": correct / len(data)}

    # -- local training ----------------------------------------------------------------
    def _settings(self, config) -> Tuple[int, int, Optional[float]]:
        epochs = _positive_int(LOCAL_EPOCHS_KEY, config.get(LOCAL_EPOCHS_KEY, self.local_epochs))
        batch = _positive_int(BATCH_SIZE_KEY, config.get(BATCH_SIZE_KEY, self.batch_size))
        lr = config.get(LEARNING_RATE_KEY)
        return epochs, batch, None if lr is None else _positive_float(LEARNING_RATE_KEY, lr)

    def _fit_standard(self, config) -> Dict:
        from mxnet import autograd, gluon

        epochs, batch, lr = self._settings(config)
        trainer = gluon.Trainer(self.net.collect_params(), self.optimizer,
                                dict(self.optimizer_params))
        if lr is not None:
            trainer.set_learning_rate(lr)
        loader = gluon.data.DataLoader(self.train_data, batch_size=batch, shuffle=True)
        total, seen = 0.0, 0
        for _ in range(epochs):
            for x, y in loader:
                x, y = x.as_in_context(self.ctx), y.as_in_context(self.ctx)
                with autograd.record():
                    loss = self.loss(self.net(x), y)
                loss.backward()
                trainer.step(x.shape[0])
                total, seen = total + float(loss.sum().asscalar()), seen + x.shape[0]
        return {"train_loss": total / max(seen, 1)}

    def _dp_setup(self):
        from ..gluon import DPTrainer, PrivateBlock

        if self._dp_trainer is None:
            options = {k: v for k, v in self.dp.items() if k != "delta"}
            options.setdefault("warn_delta", self.dp["delta"])
            net = self.net if isinstance(self.net, PrivateBlock) else PrivateBlock(self.net)
            self._dp_net = net
            self._dp_trainer = DPTrainer(
                net.collect_params(), self.optimizer, dict(self.optimizer_params),
                expected_batch_size=self.batch_size,
                sample_rate=self.batch_size / len(self.train_data), **options)
            saved = self._saved_ledger()
            if saved is not None:
                self._dp_trainer.accountant.load_state_dict(saved)
        return self._dp_net, self._dp_trainer

    def _saved_ledger(self):
        if self.state is None or _LEDGER_RECORD not in self.state.configs_records:
            return None
        return json.loads(self.state.configs_records[_LEDGER_RECORD]["ledger"])

    def _save_ledger(self, trainer) -> None:
        if self.state is not None:
            from flwr.common import ConfigsRecord
            text = json.dumps(trainer.accountant.state_dict())
            self.state.configs_records[_LEDGER_RECORD] = ConfigsRecord({"ledger": text})

    def _fit_dp(self, config) -> Dict:
        from mxnet import autograd

        from ..gluon import DPDataLoader

        epochs, batch, lr = self._settings(config)
        if batch != self.batch_size:
            raise InvalidParameterError(
                f"Fit config {BATCH_SIZE_KEY!r}={batch} differs from this DP client's "
                f"batch_size={self.batch_size}: the sampling rate of accounted DP-SGD "
                "steps is fixed. Do not override batch_size with dp=.")
        net, trainer = self._dp_setup()
        if lr is not None:
            trainer.set_learning_rate(lr)
        rate = trainer.sample_rate
        data = self._train_arrays if self._train_arrays is not None else self.train_data
        loader = DPDataLoader(data, rate, trainer=trainer, ctx=self.ctx,
                              num_batches=int(math.ceil(epochs / rate)))
        try:
            for x, y in loader:
                with autograd.record():
                    loss = self.loss(net(x), y)
                loss.backward()
                trainer.step(x.shape[0])
        finally:  # a fit that fails half-way still spent what it stepped
            self._save_ledger(trainer)
        return {EXAMPLE_EPSILON_KEY: float(trainer.epsilon(self.dp["delta"]))}
