"""``NoisyOutput``: a Gluon Block whose every released output row is a private query.

What it protects: each output row is clipped to norm ``output_bound`` and then noised,
so a row's replace-one sensitivity is ``2 * output_bound`` for *any* change of the
model or of the input. That covers the training data behind the model: a model trained
on a dataset with or without one person gives outputs that are equally well hidden.
Every released row is charged to a budget, and the query that would exceed the budget
raises :class:`~mxprivacy.PrivacyBudgetExceeded` before the model is even run.

Charging and refusals
    Rows are charged *before* the model runs (write-ahead with ``ledger_path``). The only
    refusal is the budget check, which depends on the number of rows asked for and on
    the ledger, never on the model or its data. After it passes, nothing data-dependent
    raises: a row with a NaN or an infinity is replaced by a row of zeros and noised like
    any other (a :class:`~mxprivacy.NonFiniteOutputWarning` says so once per instance;
    that warning and :attr:`NoisyOutput.nonfinite_rows` are for the operator and are not
    private, so do not show them to whoever asks the queries). An exception raised by the
    wrapped block itself propagates and the rows stay charged; a block must not raise in
    a way that depends on its training data. A query of zero rows is refused with
    :class:`~mxprivacy.InvalidParameterError` (it depends only on the query's shape)
    and charges nothing.

Threads
    The budget check and the charge are one step under a lock; the model and the noise
    run outside it. Concurrent queries from several threads never answer more rows than
    the budget pays for, and the in-memory count equals the ledger's.

Ledger
    One format for every ledger of the library: ``privacy`` is an accountant
    ``state_dict`` (events and integer counts), next to the mechanism settings, the
    budget and a ``run_id`` (the lineage of the answered rows). Files are sealed with a
    SHA-256 and written atomically (see :mod:`mxprivacy._io`); a corrupt or edited file
    raises :class:`~mxprivacy.CheckpointError` and never resets the budget. A loaded
    ledger only ever raises the count of answered rows: by the rule of
    :mod:`mxprivacy._ledger`, a ledger of the same lineage keeps the larger count, a
    ledger of another lineage is added to a non-zero count (with a
    :class:`~mxprivacy.PrivacyWarning`), and an instance that has answered nothing adopts
    the loaded count and lineage.

Write-ahead ledger (the file is the source of truth)
    With ``ledger_path=PATH`` the file ``PATH`` is the shared record of the budget. Every
    query takes an advisory lock (``fcntl.flock`` on ``PATH + ".lock"``, a file that is
    created and never removed), re-reads ``PATH``, checks the budget against the count in
    the file, writes count + rows (atomically, fsynced) and only then releases the lock and
    runs the model. Several ``NoisyOutput`` instances, in one process or in several
    processes on one host, can therefore share one ledger path and one budget. The
    in-memory :attr:`~NoisyOutput.queries` is the file's count as of this instance's last
    query or load. ``flock`` is advisory and local: processes on different hosts (some
    network file systems) or writers that ignore the lock are not serialized. Deleting
    the file forgets the spending of whoever does not hold it in memory, so keep it where
    only the budget's owner can write.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import threading
import uuid
import warnings
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
from mxnet import gluon, nd
from mxnet.base import MXNetError

from .._io import atomic_path, atomic_write, read_sealed, seal
from .._ledger import merge_ledgers
from ..accounting import make_accountant
from ..accounting.base import _same, parse_ledger
from ..errors import (CheckpointError, InvalidParameterError, MXPrivacyError,
                      NonFiniteOutputWarning, PrivacyBudgetExceeded, PrivacyWarning)
from ..mechanisms.calibration import check_delta, check_epsilon, check_sensitivity
from ..mechanisms.mechanisms import GaussianMechanism, LaplaceMechanism

__all__ = ["NoisyOutput"]

_LEDGER_FORMAT = "mxprivacy-noisy-output-3"
_LEGACY_FORMAT = "mxprivacy-noisy-output-2"  # no run id: read as another lineage
_KIND = "noisy-output-ledger"
_MAX_ROWS = 1 << 53  # far beyond any budget, and exact in a float
_SEEDED_WARNING = (
    "NoisyOutput(random_state=...) seeds the noise of the released rows: the guarantee "
    "assumes secret noise, and anyone who knows the seed can subtract it. Use "
    "random_state=None (OS entropy) or secure=True outside reproducible experiments.")


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
        Seed of the fast-mode noise, for reproducible experiments only: it raises a
        :class:`~mxprivacy.PrivacyWarning` (whoever knows the seed removes the noise).
    ledger_path : str, optional
        Write-ahead ledger shared through a file lock: every query is recorded there
        durably before the model runs, and an existing file is resumed (a corrupt one
        raises :class:`~mxprivacy.CheckpointError`). See the module docstring.
    """

    def __init__(self, block: gluon.Block, *, mechanism: str = "gaussian", epsilon: float,
                 delta: float = 0.0, output_bound: float, budget_epsilon: float,
                 budget_delta: float = 0.0, mode: str = "values", accountant: str = "auto",
                 secure: bool = False, random_state: Optional[int] = None,
                 ledger_path: Optional[str] = None) -> None:
        super().__init__()
        if random_state is not None and not secure:
            warnings.warn(_SEEDED_WARNING, PrivacyWarning, stacklevel=2)
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
        self.run_id = uuid.uuid4().hex  # lineage of the answered rows
        self._ancestors: dict = {}  # lineage of a copy this one continues -> its rows
        self.nonfinite_rows = 0  # not private: for the operator only
        self._warned_nonfinite = False
        self._lock = threading.Lock()
        self._max_queries: Optional[int] = None
        with self.name_scope():
            self.block = block
        if self.max_queries() == 0:
            raise InvalidParameterError(
                f"The budget (epsilon={budget_epsilon}, delta={budget_delta}) does not "
                "cover a single row: raise the budget or lower the per-row epsilon.")
        self.ledger_path = None if ledger_path is None else os.fspath(ledger_path)
        with self._reservation():  # resumes an existing file, or creates it
            pass

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
    def _charge(self, rows: int) -> None:
        """Check the budget and charge ``rows``, durably, as one step (see the module
        docstring); :class:`PrivacyBudgetExceeded` leaves everything unchanged."""
        with self._reservation():
            left = self.max_queries() - self.queries
            if rows > left:
                raise PrivacyBudgetExceeded(
                    f"Answering {rows} rows would exceed the budget (epsilon="
                    f"{self.budget_epsilon}, delta={self.budget_delta}): only {left} of "
                    f"{self.max_queries()} rows remain. Nothing was computed.")
            self._write_ahead(self.queries + rows)  # durable before the model runs
            self.queries += rows

    def forward(self, x):
        rows = int(x.shape[0])
        if rows == 0:
            raise InvalidParameterError(
                "A query needs at least one row (x.shape[0] is 0); nothing was computed "
                "or charged.")
        self._charge(rows)
        # From here on nothing raises because of what the model computes.
        out = self.block(x)
        values = out.asnumpy().astype(np.float64).reshape(rows, -1)
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            values = np.where(finite[:, None], values, 0.0)
            self._note_nonfinite(int(rows - finite.sum()))
        noisy = self.mechanism.randomise(_clip_rows(values, self.output_bound,
                                                    self.mechanism_name))
        if self.mode == "label":
            return nd.array(noisy.argmax(axis=1), ctx=out.context, dtype="int64")
        return nd.array(noisy.reshape(out.shape), ctx=out.context, dtype=out.dtype)

    def _note_nonfinite(self, count: int) -> None:
        with self._lock:
            self.nonfinite_rows += count
            if self._warned_nonfinite:
                return
            self._warned_nonfinite = True
        warnings.warn(
            "The wrapped block produced NaN or inf in some output rows; they were replaced "
            "by rows of zeros and noised like the others (their rows were charged). This "
            "warning and NoisyOutput.nonfinite_rows are not private: do not show them to "
            "whoever asks the queries.", NonFiniteOutputWarning, stacklevel=4)

    # -- persistence -----------------------------------------------------------------
    def _config(self) -> Dict[str, Any]:
        mech = self.mechanism
        return {"mechanism": self.mechanism_name, "epsilon": mech.epsilon,
                "delta": getattr(mech, "delta", 0.0), "output_bound": self.output_bound,
                "secure": mech.secure, "accountant": self.accountant}

    def state_dict(self, queries: Optional[int] = None,
                   run_id: Optional[str] = None) -> Dict[str, Any]:
        """The ledger: an accountant ``state_dict`` plus the settings, the budget and the
        run id."""
        queries = self.queries if queries is None else queries
        entries = [{"event": self.mechanism.event.to_dict(), "count": queries}] if queries \
            else []
        return {"format": _LEDGER_FORMAT, "config": self._config(),
                "privacy": {"accountant": self.accountant, "ledger": entries},
                "budget": {"epsilon": self.budget_epsilon, "delta": self.budget_delta},
                "run_id": self.run_id if run_id is None else run_id}

    def _ledger_bytes(self, queries: Optional[int] = None,
                      run_id: Optional[str] = None) -> bytes:
        state = self.state_dict(queries, run_id)
        return seal(_KIND, json.dumps(state, allow_nan=False).encode())

    def _write_ahead(self, queries: int, run_id: Optional[str] = None) -> None:
        if self.ledger_path is not None:
            atomic_write(self.ledger_path, self._ledger_bytes(queries, run_id))

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        if self.ledger_path is None:
            yield
            return
        handle = os.open(os.path.realpath(self.ledger_path) + ".lock",
                         os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            os.close(handle)  # releases the lock

    @contextlib.contextmanager
    def _reservation(self) -> Iterator[None]:
        """Hold the thread lock and the ledger file's lock, with ``queries`` synced to the
        file (the shared source of truth); the file is brought up to date first."""
        with self._lock, self._file_lock():
            if self.ledger_path is not None:
                body = read_sealed(_KIND, self.ledger_path) \
                    if os.path.lexists(self.ledger_path) else None
                if body is None:  # new (or deleted): what this instance knows is kept
                    self._write_ahead(self.queries)
                else:
                    run_id, count = self._checked(body, self.ledger_path)
                    self._merge(run_id, count, "write-ahead ledger", on_file=count)
            yield

    def _merge(self, run_id: Optional[str], count: int, what: str,
               on_file: Optional[int] = None, shared: bool = True) -> None:
        """Merge a ledger of ``count`` rows of lineage ``run_id`` into this one (the rule of
        :mod:`mxprivacy._ledger`); ``on_file`` is the write-ahead file's current count.

        ``shared``: the live ``ledger_path`` file, whose lineage every instance on it
        shares. A *copy* loaded into a fresh instance starts a child lineage instead
        (the loaded one becomes its ancestor): two replicas resumed from one copy are
        then two lineages, whose later ledgers add up (over-stating the common base,
        never under-stating the rows both answered)."""
        new_run = self.run_id
        if count == 0:
            merged = self.queries
        elif self.queries == 0:
            merged = count
            if run_id is not None and shared:
                new_run = run_id  # instances on one ledger file share its lineage
            elif run_id is not None:
                self._ancestors[run_id] = count  # rows of the copy this one continues
                new_run = uuid.uuid4().hex
        elif run_id in self._ancestors:
            # the ancestor answered count - copied rows after the copy was taken: add them
            merged = self.queries + max(0, count - self._ancestors[run_id])
            self._ancestors[run_id] = max(count, self._ancestors[run_id])
        else:
            event = self.mechanism.event
            _, kept = merge_ledgers([(event, self.queries)], [(event, count)], what,
                                    same_run=run_id == self.run_id)
            merged = sum(n for _, n in kept)
        if merged != on_file or new_run != self.run_id:
            self._write_ahead(merged, new_run)  # no-op without a ledger_path
        self.run_id = new_run
        self.queries = merged

    def save_ledger(self, fname: str) -> None:
        """Write the ledger atomically (sealed JSON, see the module docstring). With a
        ``ledger_path``, the shared file's count is read first."""
        with self._reservation():
            data = self._ledger_bytes()
        if self.ledger_path is None or \
                os.path.realpath(fname) != os.path.realpath(self.ledger_path):
            atomic_write(fname, data)

    def _parse_ledger(self, body: bytes) -> Tuple[Optional[str], int]:
        """(run id or None, number of answered rows) of a ledger body, after every check."""
        state = json.loads(body.decode("utf-8"))
        legacy = isinstance(state, dict) and state.get("format") == _LEGACY_FORMAT
        keys = {"format", "config", "privacy", "budget"} | (set() if legacy else {"run_id"})
        if not isinstance(state, dict) or set(state) != keys:
            raise ValueError("missing or unknown fields")
        if state["format"] not in (_LEDGER_FORMAT, _LEGACY_FORMAT):
            raise ValueError(f"format {state['format']!r}")
        run_id = None if legacy else state["run_id"]
        if run_id is not None and (not isinstance(run_id, str) or
                                   not 8 <= len(run_id) <= 64):
            raise ValueError(f"run_id {run_id!r} is not a run identifier")
        if not _same(state["config"], self._config()):
            raise ValueError(f"settings differ: {state['config']} != {self._config()}")
        budget = state["budget"]
        if not isinstance(budget, dict) or set(budget) != {"epsilon", "delta"}:
            raise ValueError("the budget needs exactly 'epsilon' and 'delta'")
        entries = parse_ledger(state["privacy"])
        if state["privacy"].get("accountant") != self.accountant or any(
                event != self.mechanism.event for event, _ in entries):
            raise ValueError("its events are not this mechanism's")
        rows = sum(count for _, count in entries)
        if rows > _MAX_ROWS:
            raise ValueError("it counts more than 2**53 rows")
        return run_id, rows

    def _checked(self, body: bytes, fname: str) -> Tuple[Optional[str], int]:
        try:
            return self._parse_ledger(body)
        except (ValueError, KeyError, TypeError, AttributeError, MXPrivacyError) as exc:
            raise CheckpointError(f"{fname} is not a usable NoisyOutput ledger ({exc}). "
                                  "The ledger is unchanged.") from exc

    def load_ledger(self, fname: str) -> None:
        """Merge a saved ledger: the count of answered rows never decreases. A ledger of
        another lineage (run id) is added to a non-zero count; see the module docstring."""
        run_id, count = self._checked(read_sealed(_KIND, fname), fname)
        with self._reservation():
            if self.ledger_path is not None and \
                    os.path.realpath(fname) == os.path.realpath(self.ledger_path):
                return  # the reservation has just merged it
            self._merge(run_id, count, "NoisyOutput ledger", on_file=self.queries,
                        shared=False)

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
