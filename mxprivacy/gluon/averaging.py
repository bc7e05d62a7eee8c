"""Parameter averaging: an exponential moving average (EMA) of the weights.

De et al. (2022, "Unlocking high-accuracy differentially private image classification
through scale") evaluate DP-SGD models with an exponential moving average of the
parameters, with decay 0.9999 and a warm-up:

    avg_0     = theta_0                                  (the weights before training)
    avg_{t+1} = d_t * avg_t + (1 - d_t) * theta_{t+1},   d_t = min(decay, (1 + t) / (10 + t))

where theta_{t+1} are the weights after the (t+1)-th update. The warm-up keeps the
random initial weights from dominating the average early on (d_0 = 0.1, d_1 = 2/11, ...).

Privacy
    The average is post-processing of the released, privatized parameters, so it costs
    no privacy: it reads the parameters' values (``Parameter.data()``) and nothing else.
    It must only ever read parameters *after* a private update (and the starting
    weights, which precede training), never raw gradients or weights moved by a
    non-private step. :class:`~mxprivacy.gluon.DPTrainer` (``ema_decay=``) calls
    :meth:`ParameterAverage.update` at the end of each ``update()``, after the noisy
    gradient was applied, and refuses to train while the averaged weights are swapped in.
    Used on its own, call :meth:`~ParameterAverage.update` right after each
    ``trainer.step()`` of a DP trainer, and nowhere else.
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, List, Optional, Tuple

import numpy as np
from mxnet import nd

from ..errors import AveragingError, InvalidParameterError

__all__ = ["ParameterAverage", "AveragingMixin", "warmup_decay"]

_STATE_KEYS = ("decay", "warmup", "updates", "names", "arrays")


def warmup_decay(decay: float, t: int, warmup: bool = True) -> float:
    """The decay of the (t+1)-th update (t = 0, 1, ...): ``min(decay, (1+t)/(10+t))``
    with warm-up, else ``decay``."""
    return min(decay, (1.0 + t) / (10.0 + t)) if warmup else decay


def check_decay(decay) -> float:
    """``decay`` as a float in (0, 1), or :class:`~mxprivacy.InvalidParameterError`."""
    try:
        value = float(decay)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(decay, bool) or not 0.0 < value < 1.0:
        raise InvalidParameterError(
            f"The averaging decay must be a number in (0, 1), for example 0.9999 "
            f"(De et al. 2022), got {decay!r}.")
    return value


def named_parameters(params) -> Tuple[List[str], List, bool]:
    """(names, trainable parameters, whether the names are structural).

    A Block gives its structural names (``"0.weight"``: the same in every process and
    for every net built the same way), a dict its keys (taken as such names), a
    ParameterDict or a list the parameters' own names."""
    structural = hasattr(params, "_collect_params_with_prefix") or type(params) is dict
    if hasattr(params, "_collect_params_with_prefix"):  # a Block
        params = params._collect_params_with_prefix()
    elif not hasattr(params, "items"):  # a list
        params = {p.name: p for p in params}
    seen, named = set(), []
    for name, param in params.items():
        if param.grad_req != "null" and id(param) not in seen:
            seen.add(id(param))
            named.append((name, param))
    if not named:
        raise InvalidParameterError("ParameterAverage got no trainable parameters.")
    return [n for n, _ in named], [p for _, p in named], structural


class ParameterAverage:
    """Exponential moving average of parameters, with De et al.'s warm-up.

    Parameters
    ----------
    params : Block, dict, ParameterDict or list of Parameter
        The parameters to average (those with ``grad_req != "null"``). Give a Block
        (the plain net) for names that :meth:`state_dict` and :meth:`copy_to` can match
        in another process or another net built the same way.
    decay : float
        In (0, 1); 0.9999 in De et al. (2022). Larger decays average over more steps
        (about ``1 / (1 - decay)``).
    warmup : bool, default True
        Use ``min(decay, (1+t)/(10+t))`` for the (t+1)-th update.

    The average starts at the weights of :meth:`start` (``DPTrainer`` calls it just
    before its first update). Without ``start()``, the first :meth:`update` starts it
    at the parameters it sees. Averages live on each parameter's first context, in
    float32 for float16 parameters, else in the parameter's dtype. See the module
    docstring for what may be averaged without a privacy cost.
    """

    def __init__(self, params, decay: float = 0.9999, warmup: bool = True) -> None:
        self.decay = check_decay(decay)
        if not isinstance(warmup, bool):
            raise InvalidParameterError(f"warmup must be True or False, got {warmup!r}.")
        self.warmup = warmup
        self.names, self.params, self._structural = named_parameters(params)
        self.updates = 0
        self._averages: Optional[List[nd.NDArray]] = None
        self._saved: Optional[List[List[nd.NDArray]]] = None

    # -- averaging ---------------------------------------------------------------------
    @property
    def started(self) -> bool:
        """Whether the average holds values (after :meth:`start` or a first update)."""
        return self._averages is not None

    @property
    def swapped(self) -> bool:
        """Whether the averaged weights are swapped into the parameters right now."""
        return self._saved is not None

    @property
    def next_decay(self) -> float:
        """The decay the next :meth:`update` uses."""
        return warmup_decay(self.decay, self.updates, self.warmup)

    def start(self) -> None:
        """Start the average at the current parameters (update count 0)."""
        self._refuse_while_swapped("start()")
        self._averages = [self._buffer(p) for p in self.params]
        self.updates = 0

    def update(self) -> None:
        """Fold the current parameters into the average: ``avg += (1-d) (theta - avg)``.

        Call it only after a private update (see the module docstring)."""
        self._refuse_while_swapped("update()")
        if self._averages is None:
            self.start()
        weight = 1.0 - self.next_decay
        for param, avg in zip(self.params, self._averages):
            value = param.list_data()[0].as_in_context(avg.context).astype(avg.dtype, copy=False)
            avg += (value - avg) * weight
        self.updates += 1

    @classmethod
    def _buffer(cls, param) -> nd.NDArray:
        return param.list_data()[0].astype(cls._buffer_dtype(param), copy=True)

    # -- using the average -------------------------------------------------------------
    @contextlib.contextmanager
    def swapped_in(self):
        """Context manager: the averaged weights replace the parameters (on every
        context) inside the block, and the current weights are restored exactly at its
        end, even after an exception. Use it to evaluate or save the averaged model."""
        self._refuse_while_swapped("swapped_in()")
        averages = self._require_started()
        self._saved = [[d.copy() for d in p.list_data()] for p in self.params]
        try:
            self._write(averages)
            yield self
        finally:
            for param, saved in zip(self.params, self._saved):
                for data, old in zip(param.list_data(), saved):
                    data[:] = old
            self._saved = None

    def copy_to(self, params=None) -> None:
        """Write the averaged weights into ``params`` for good.

        ``params`` is None (the averaged parameters themselves: the raw weights are
        lost, so do it after training) or another net built the same way (a Block,
        matched by structural names, or a ParameterDict or list, matched in order).
        Shapes must agree.
        """
        self._refuse_while_swapped("copy_to()")
        averages = self._require_started()
        if params is None:
            self._write(averages)
            return
        names, targets, structural = named_parameters(params)
        same_names = names == self.names or not (structural and self._structural)
        if not same_names or [p.shape for p in targets] != [p.shape for p in self.params]:
            raise InvalidParameterError(
                f"copy_to() needs a net with the same trainable parameters: got "
                f"{list(zip(names, [p.shape for p in targets]))[:4]}..., the average holds "
                f"{list(zip(self.names, [p.shape for p in self.params]))[:4]}...")
        self._write(averages, targets)

    def _write(self, averages, targets=None) -> None:
        for param, avg in zip(targets or self.params, averages):
            for data in param.list_data():
                data[:] = avg.as_in_context(data.context).astype(data.dtype, copy=False)

    def _require_started(self) -> List[nd.NDArray]:
        if self._averages is None:
            raise AveragingError(
                "The average has no values yet: it starts at the first trainer update "
                "(or call start()). Train at least one step first.")
        return self._averages

    def _refuse_while_swapped(self, what: str) -> None:
        if self._saved is not None:
            raise AveragingError(
                f"{what} while the averaged weights are swapped in: leave the "
                "`with ... averaged():` block first (it restores the trained weights).")

    # -- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> Dict:
        """The average as plain values: ``decay``, ``warmup``, ``updates``, ``names``
        and ``arrays`` (numpy copies, one per name; None before the start)."""
        arrays = None if self._averages is None else [a.asnumpy() for a in self._averages]
        return {"decay": self.decay, "warmup": self.warmup, "updates": self.updates,
                "names": list(self.names), "arrays": arrays}

    def load_state_dict(self, state: Dict) -> None:
        """Restore :meth:`state_dict`; the settings, names and shapes must match."""
        self._refuse_while_swapped("load_state_dict()")
        if not isinstance(state, dict) or set(state) != set(_STATE_KEYS):
            raise InvalidParameterError(
                f"An averaging state is a dict with keys {list(_STATE_KEYS)}.")
        if check_decay(state["decay"]) != self.decay or state["warmup"] != self.warmup:
            raise InvalidParameterError(
                f"The state was saved with decay={state['decay']!r}, "
                f"warmup={state['warmup']!r}; this average uses decay={self.decay!r}, "
                f"warmup={self.warmup!r}.")
        updates = state["updates"]
        if isinstance(updates, bool) or int(updates) != updates or updates < 0:
            raise InvalidParameterError(f"updates must be an integer >= 0, got {updates!r}.")
        arrays = state["arrays"]
        if arrays is None:
            self._averages, self.updates = None, 0
            return
        arrays = [np.asarray(a) for a in arrays]
        if list(state["names"]) != self.names or \
                [a.shape for a in arrays] != [tuple(p.shape) for p in self.params]:
            raise InvalidParameterError(
                "The saved averages do not match these parameters' names or shapes: "
                f"saved {list(state['names'])[:4]}..., here {self.names[:4]}...")
        self._averages = [nd.array(a, ctx=p.list_ctx()[0], dtype=self._buffer_dtype(p))
                          for a, p in zip(arrays, self.params)]
        self.updates = int(updates)

    @staticmethod
    def _buffer_dtype(param):
        return np.float32 if np.dtype(param.dtype) == np.float16 else np.dtype(param.dtype)


class AveragingMixin:
    """``ema_decay=`` of :class:`~mxprivacy.gluon.DPTrainer`: :attr:`average` is a
    :class:`ParameterAverage` of the trainable parameters (None without ``ema_decay``)."""

    average: Optional[ParameterAverage] = None

    def _init_average(self, ema_decay) -> None:
        if ema_decay is None:
            return
        trainable = {id(p) for p in self._trainable()}
        structural = self._block.net._collect_params_with_prefix()
        named = {n: p for n, p in structural.items() if id(p) in trainable}
        if len(named) < len(trainable):  # not reachable from the net: own names
            named.update({p.name: p for p in self._trainable() if id(p) not in
                          {id(q) for q in named.values()}})
        self.average = ParameterAverage(named, check_decay(ema_decay))

    def averaged(self):
        """Context manager: evaluate (or save) with the averaged weights, restored after.

        ``with trainer.averaged(): accuracy = evaluate(net)``. Training steps inside
        the block raise :class:`~mxprivacy.AveragingError`."""
        if self.average is None:
            raise AveragingError(
                "averaged() needs parameter averaging: build the trainer with "
                "DPTrainer(..., ema_decay=0.9999).")
        return self.average.swapped_in()

    def _refuse_while_averaged(self) -> None:
        if self.average is not None and self.average.swapped:
            raise AveragingError(
                "A training step while the averaged weights are swapped in would train "
                "them and then be undone: leave the `with trainer.averaged():` block first.")

    def _average_before_update(self) -> None:
        """The average starts at the weights the first private update starts from."""
        if self.average is not None and not self.average.started:
            self.average.start()

    def _average_after_update(self) -> None:
        """Fold in the weights just written by a private update (post-processing)."""
        if self.average is not None:
            self.average.update()
