"""``NoisyOutput``: a Gluon Block whose every released output row is a private query.

What it protects: each output row is clipped to norm ``output_bound`` and then noised,
so a row's replace-one sensitivity is ``2 * output_bound`` for *any* change of the
model or of the input. That covers the training data behind the model: a model trained
on a dataset with or without one person gives outputs that are equally well hidden.
Every released row is charged to a budget, and the query that would exceed the budget
raises :class:`~mxprivacy.PrivacyBudgetExceeded` before the model is even run.

Ledger
    One format for every ledger of the library: ``privacy`` is an accountant
    ``state_dict`` (events and integer counts), next to the mechanism settings and the
    budget. Files are sealed with a SHA-256 and written atomically (see
    :mod:`mxprivacy._io`); a corrupt or edited file raises
    :class:`~mxprivacy.CheckpointError` and never resets the budget. A loaded ledger only
    ever raises the count of answered rows.

Write-ahead ledger
    With ``ledger_path=PATH`` every query is written to ``PATH`` (atomically, fsynced)
    before its answer is returned, and a new ``NoisyOutput`` with the same path resumes
    the spent budget. One process at a time may use a ledger path; deleting the file
    forgets the spending, so keep it where only the budget's owner can write.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np
from mxnet import gluon, nd
from mxnet.base import MXNetError

from .._io import atomic_path, atomic_write, read_sealed, seal
from .._ledger import merge_ledgers
from ..accounting import make_accountant
from ..accounting.base import _same, parse_ledger
from ..errors import (CheckpointError, InvalidParameterError, MXPrivacyError,
                      PrivacyBudgetExceeded)
from ..mechanisms.calibration import check_delta, check_epsilon, check_sensitivity
from ..mechanisms.mechanisms import GaussianMechanism, LaplaceMechanism

__all__ = ["NoisyOutput"]

_LEDGER_FORMAT = "mxprivacy-noisy-output-2"
_KIND = "noisy-output-ledger"


class NoisyOutput(gluon.Block):
    """Wrap ``block`` so that its outputs are released under (epsilon, delta)-DP per row.

    Parameters
    ----------
    block : gluon.Block
        The model; each output row (first axis) is one answer.
    mechanism : {"gaussian", "laplace"}
        Gaussian clips rows in L2 norm; Laplace clips them in L1 norm.
    epsilon, delta : float
        Privacy of one row. Laplace needs ``delta=0``; Gaussian needs ``0 < delta < 1``.
    output_bound : float
        Rows are clipped to this norm, so the sensitivity is ``2 * output_bound``.
    budget_epsilon, budget_delta : float
        Total privacy all released rows may spend.
    mode : {"values", "label"}
        ``label`` returns only the arg-max class of each noisy row. This is
        post-processing, so it has the same guarantee as ``values``.
    accountant : {"auto", "basic", "rdp", "pld"}
        How rows compose. ``auto`` uses basic composition (k * epsilon) when everything
        is pure; otherwise it uses PLD, or RDP for the secure Gaussian (its guarantee
        is zCDP).
    secure : bool
        Noise from exact samplers with a CSPRNG (see :mod:`mxprivacy.mechanisms.secure`).
    random_state : int, optional
        Seed of the fast-mode noise.
    ledger_path : str, optional
        Write-ahead ledger: every query is recorded there durably before its answer is
        returned, and an existing file is resumed (a corrupt one raises
        :class:`~mxprivacy.CheckpointError`).
    """

    def __init__(self, block: gluon.Block, *, mechanism: str = "gaussian", epsilon: float,
                 delta: float = 0.0, output_bound: float, budget_epsilon: float,
                 budget_delta: float = 0.0, mode: str = "values", accountant: str = "auto",
                 secure: bool = False, random_state: Optional[int] = None,
                 ledger_path: Optional[str] = None) -> None:
        super().__init__()
        self.output_bound = check_sensitivity(output_bound)
        self.budget_epsilon = check_epsilon(budget_epsilon)
        self.budget_delta = check_delta(budget_delta, allow_zero=True)
        if mode not in ("values", "label"):
            raise InvalidParameterError(f"mode must be 'values' or 'label', got {mode!r}.")
        self.mode = mode
        self.mechanism = _build_mechanism(mechanism, epsilon, delta, 2 * self.output_bound,
                                          secure, random_state)
        self.mechanism_name = mechanism
        self.accountant = _resolve_accountant(accountant, self.mechanism, self.budget_delta)
        self.queries = 0
        self._max_queries: Optional[int] = None
        with self.name_scope():
            self.block = block
        if self.max_queries() == 0:
            raise InvalidParameterError(
                f"The budget (epsilon={budget_epsilon}, delta={budget_delta}) does not "
                "cover a single row: raise the budget or lower the per-row epsilon.")
        self.ledger_path = None if ledger_path is None else os.fspath(ledger_path)
        if self.ledger_path is not None:
            if os.path.exists(self.ledger_path):
                self.load_ledger(self.ledger_path)
            else:
                self._write_ahead(0)

    # -- budget ----------------------------------------------------------------------
    def _spend(self, rows: int) -> Tuple[float, float]:
        """(epsilon, delta) of ``rows`` answered rows."""
        if rows == 0:
            return 0.0, 0.0
        basic = rows * self.mechanism.epsilon
        if self.accountant == "basic":
            return basic, 0.0
        acc = make_accountant(self.accountant).compose(self.mechanism.event, rows)
        try:
            eps = acc.get_epsilon(self.budget_delta)
        except InvalidParameterError:  # beyond the accountant's resolution
            eps = math.inf
        if isinstance(self.mechanism, LaplaceMechanism):
            eps = min(eps, basic)  # both are valid bounds for a pure mechanism
        return eps, self.budget_delta

    def _fits(self, rows: int) -> bool:
        return self._spend(rows)[0] <= self.budget_epsilon * (1 + 1e-12)

    def max_queries(self) -> int:
        """The number of rows the whole budget pays for."""
        if self._max_queries is None:
            lo, hi = 0, 1
            while self._fits(hi):
                lo, hi = hi, hi * 2
                if hi > 1 << 40:
                    break
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if self._fits(mid) else (lo, mid)
            self._max_queries = lo
        return self._max_queries

    def spent(self) -> Tuple[float, float]:
        """(epsilon, delta) spent by the rows answered so far."""
        return self._spend(self.queries)

    def remaining(self) -> Tuple[float, float]:
        """Budget left as (epsilon, delta), and see :meth:`remaining_queries`."""
        eps, delta = self.spent()
        return max(0.0, self.budget_epsilon - eps), max(0.0, self.budget_delta - delta)

    def remaining_queries(self) -> int:
        return self.max_queries() - self.queries

    # -- answering ---------------------------------------------------------------------
    def forward(self, x):
        rows = int(x.shape[0])
        if rows > self.remaining_queries():
            raise PrivacyBudgetExceeded(
                f"Answering {rows} rows would exceed the budget (epsilon="
                f"{self.budget_epsilon}, delta={self.budget_delta}): only "
                f"{self.remaining_queries()} of {self.max_queries()} rows remain. Nothing "
                "was computed.")
        out = self.block(x)
        values = out.asnumpy().astype(np.float64).reshape(rows, -1)
        if not np.all(np.isfinite(values)):
            raise InvalidParameterError(
                "The wrapped block produced NaN or inf; nothing was released or charged.")
        noisy = self.mechanism.randomise(_clip_rows(values, self.output_bound,
                                                    self.mechanism_name))
        self._write_ahead(self.queries + rows)  # durable before anything is returned
        self.queries += rows
        if self.mode == "label":
            return nd.array(noisy.argmax(axis=1), ctx=out.context, dtype="int64")
        return nd.array(noisy.reshape(out.shape), ctx=out.context, dtype=out.dtype)

    # -- persistence -----------------------------------------------------------------
    def _config(self) -> Dict[str, Any]:
        mech = self.mechanism
        return {"mechanism": self.mechanism_name, "epsilon": mech.epsilon,
                "delta": getattr(mech, "delta", 0.0), "output_bound": self.output_bound,
                "secure": mech.secure, "accountant": self.accountant}

    def state_dict(self, queries: Optional[int] = None) -> Dict[str, Any]:
        """The ledger: an accountant ``state_dict`` plus the settings and the budget."""
        queries = self.queries if queries is None else queries
        entries = [{"event": self.mechanism.event.to_dict(), "count": queries}] if queries \
            else []
        return {"format": _LEDGER_FORMAT, "config": self._config(),
                "privacy": {"accountant": self.accountant, "ledger": entries},
                "budget": {"epsilon": self.budget_epsilon, "delta": self.budget_delta}}

    def _ledger_bytes(self, queries: Optional[int] = None) -> bytes:
        return seal(_KIND, json.dumps(self.state_dict(queries), allow_nan=False).encode())

    def _write_ahead(self, queries: int) -> None:
        if self.ledger_path is not None:
            atomic_write(self.ledger_path, self._ledger_bytes(queries))

    def save_ledger(self, fname: str) -> None:
        """Write the ledger atomically (sealed JSON, see the module docstring)."""
        atomic_write(fname, self._ledger_bytes())

    def _parse_ledger(self, body: bytes) -> int:
        """The number of answered rows in a ledger body, after every check."""
        state = json.loads(body.decode("utf-8"))
        if not isinstance(state, dict) or set(state) != {"format", "config", "privacy",
                                                         "budget"}:
            raise ValueError("missing or unknown fields")
        if state["format"] != _LEDGER_FORMAT:
            raise ValueError(f"format {state['format']!r}")
        if not _same(state["config"], self._config()):
            raise ValueError(f"settings differ: {state['config']} != {self._config()}")
        budget = state["budget"]
        if not isinstance(budget, dict) or set(budget) != {"epsilon", "delta"}:
            raise ValueError("the budget needs exactly 'epsilon' and 'delta'")
        entries = parse_ledger(state["privacy"])
        if state["privacy"].get("accountant") != self.accountant or any(
                event != self.mechanism.event for event, _ in entries):
            raise ValueError("its events are not this mechanism's")
        return sum(count for _, count in entries)

    def load_ledger(self, fname: str) -> None:
        """Merge a saved ledger: the count of answered rows never decreases."""
        body = read_sealed(_KIND, fname)
        try:
            queries = self._parse_ledger(body)
        except (ValueError, KeyError, TypeError, AttributeError, MXPrivacyError) as exc:
            raise CheckpointError(f"{fname} is not a usable NoisyOutput ledger ({exc}). "
                                  "The ledger is unchanged.") from exc
        current = [(self.mechanism.event, self.queries)]
        _, kept = merge_ledgers(current, [(self.mechanism.event, queries)], "NoisyOutput ledger")
        merged = sum(count for _, count in kept)
        if merged != self.queries:
            self._write_ahead(merged)
            self.queries = merged

    def save_parameters(self, filename: str, deduplicate: bool = False) -> None:
        """Save the ledger (``filename + ".ledger.json"``), then the wrapped block's
        parameters; both atomically. The ledger goes first, so a crash in between
        leaves a ledger that over-states, never under-states, the spending."""
        self.save_ledger(filename + ".ledger.json")
        with atomic_path(filename) as tmp:
            self.block.save_parameters(tmp, deduplicate=deduplicate)

    def load_parameters(self, filename: str, ctx=None, **kwargs) -> None:
        """Load parameters and the ledger saved with them (a missing ledger is an error)."""
        self.load_ledger(filename + ".ledger.json")
        try:
            self.block.load_parameters(filename, ctx=ctx, **kwargs)
        except MXNetError as exc:
            raise CheckpointError(
                f"{filename} is not a readable parameter file for this block ({exc}). The "
                "ledger was merged (it never decreases); the parameters are unchanged.") \
                from exc


def _build_mechanism(name: str, epsilon: float, delta: float, sensitivity: float,
                     secure: bool, random_state: Optional[int]):
    if name == "gaussian":
        return GaussianMechanism(epsilon, delta, sensitivity, secure=secure,
                                 random_state=random_state)
    if name == "laplace":
        if delta:
            raise InvalidParameterError("The Laplace mechanism is pure: use delta=0.")
        return LaplaceMechanism(epsilon, sensitivity, secure=secure, random_state=random_state)
    raise InvalidParameterError(f"mechanism must be 'gaussian' or 'laplace', got {name!r}.")


def _resolve_accountant(name: str, mechanism, budget_delta: float) -> str:
    pure = isinstance(mechanism, LaplaceMechanism)
    if not pure and budget_delta == 0:
        raise InvalidParameterError("The Gaussian mechanism needs budget_delta > 0.")
    if name == "auto":
        if pure and budget_delta == 0:
            return "basic"
        return "rdp" if mechanism.secure and not pure else "pld"
    if name not in ("basic", "rdp", "pld"):
        raise InvalidParameterError(
            f"accountant must be 'auto', 'basic', 'rdp' or 'pld', got {name!r}.")
    if name == "basic" and not pure:
        raise InvalidParameterError("Basic composition counts pure epsilon only: the "
                                    "Gaussian mechanism needs 'rdp' or 'pld'.")
    if name == "pld" and mechanism.secure and not pure:
        raise InvalidParameterError("The secure Gaussian is accounted through zCDP: use "
                                    "accountant='rdp' (or 'auto').")
    return name


def _clip_rows(values: np.ndarray, bound: float, mechanism: str) -> np.ndarray:
    order = 1 if mechanism == "laplace" else 2
    norms = np.linalg.norm(values, ord=order, axis=1)
    factors = np.minimum(1.0, bound / np.maximum(norms, 1e-300))
    return values * factors[:, None]
