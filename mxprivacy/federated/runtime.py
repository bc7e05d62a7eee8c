"""``run_federated``: a Flower server and K Gluon clients on Flower's simulation engine.

One ``ServerApp`` (in this process, on a thread) and one ``ClientApp`` (in Ray actors,
one simulated SuperNode per client) run through ``flwr.simulation.run_simulation``:

- without secure aggregation, Flower's legacy server loop (``ServerConfig``) drives the
  strategy; with ``DPFedAvg(clipping="client")`` the clients run ``clip_update_mod``;
- with secure aggregation, ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))``
  with the settings of :mod:`.secure`, and clients run
  ``mods=[secaggplus_mod, clip_update_mod]`` (clipping inside the masking).

The strategy object stays in this process, so after the run its ``parameters_``,
``history_`` and accountant are the ones the rounds used. Before round 1 the server
waits until all K clients are connected (the strategy's "available clients" is then
the declared K). Each round prints one line
``round r/R  accuracy a  epsilon e (delta d)`` (accuracy from the strategy's
``evaluate_fn``; see :func:`gluon_evaluate_fn`).

Data reach the clients with every message: ``client_data`` given as a list is shipped
to a Ray actor each time a client is called; for large data give a callable
``client_data(partition_id)`` that loads the partition inside the actor. A client
object is built for each message (Flower's simulation); with local example-level DP
(``client_kwargs=dict(dp=...)``) its ledger lives in the client's ``context.state``,
so the ``example_epsilon`` it reports covers all its rounds.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..errors import ConflictingParametersError, FederatedError, InvalidParameterError

try:  # Flower is an optional extra
    from flwr.server.strategy import Strategy
except ImportError as _err:  # pragma: no cover - exercised only without the extra
    raise ImportError("mxprivacy.federated needs Flower: pip install 'mxprivacy[federated]' "
                      f"(flwr[simulation]==1.12.0). ({_err})") from _err

__all__ = ["run_federated", "FederatedResult", "gluon_evaluate_fn"]

CONNECT_TIMEOUT = 300.0  # seconds the server waits for the K clients before round 1


@dataclasses.dataclass
class FederatedResult:
    """What :func:`run_federated` returns.

    ``history``: one dict per round (``round``, ``accuracy``, ``loss``, ``epsilon``,
    ``seconds``, and the strategy's ``history_`` row when it has one);
    ``parameters``: the final global arrays; ``epsilon`` at ``delta`` (inf without DP);
    ``seconds_per_round``: mean wall time of rounds 2..R (round 1 includes the start of
    the Ray actors; with one round, that round); ``total_seconds``: the whole run."""

    history: List[Dict[str, object]]
    parameters: List[np.ndarray]
    epsilon: float
    delta: Optional[float]
    rounds: int
    clients: int
    secure_aggregation: bool
    seconds_per_round: float
    total_seconds: float


def gluon_evaluate_fn(net_fn: Callable, test_data, *, batch_size: int = 512, ctx=None):
    """A server-side ``evaluate_fn(server_round, arrays, config) -> (loss, {"accuracy"})``
    for DPFedAvg (or Flower's FedAvg): softmax cross-entropy and accuracy of the
    global arrays loaded into ``net_fn()`` on ``test_data = (X, y)``."""
    x, y = (np.asarray(a) for a in test_data)
    if len(x) != len(y) or len(x) == 0:
        raise InvalidParameterError("test_data must be a non-empty pair (X, y) of equal length.")
    state = {}

    def evaluate(server_round, arrays, config):
        import mxnet as mx

        from .params import set_weights

        if "net" not in state:
            state["net"] = net_fn()
        net = state["net"]
        set_weights(net, list(arrays))
        loss_fn, device = mx.gluon.loss.SoftmaxCrossEntropyLoss(), ctx or mx.cpu()
        total_loss, correct = 0.0, 0
        for start in range(0, len(x), batch_size):
            xb = mx.nd.array(x[start:start + batch_size], ctx=device)
            yb = mx.nd.array(y[start:start + batch_size], ctx=device)
            out = net(xb)
            total_loss += float(loss_fn(out, yb).sum().asscalar())
            correct += int((out.argmax(axis=1) == yb).sum().asscalar())
        return total_loss / len(x), {"accuracy": correct / len(x)}

    return evaluate


def _client_app(net_fn, client_data, client_kwargs, mods):
    from flwr.client import ClientApp

    from .client import GluonClient

    def client_fn(context):
        pid = int(context.node_config["partition-id"])
        data = client_data(pid) if callable(client_data) else client_data[pid]
        train, test = (data.get("train"), data.get("test")) if isinstance(data, dict) \
            else (data, None)
        return GluonClient(net_fn(), train, test, state=context.state,
                           **client_kwargs).to_client()

    return ClientApp(client_fn=client_fn, mods=list(mods))


def _client_mods(strategy, secure: bool, extra_mods) -> list:
    from flwr.client.mod import secaggplus_mod

    from .mods import clip_update_mod

    mods = list(extra_mods)
    if secure:
        return mods + [secaggplus_mod, clip_update_mod]
    if getattr(strategy, "clipping", "server") == "client":
        return mods + [clip_update_mod]
    return mods


def _server_app(progress, rounds: int, secure: bool, workflow_settings: dict):
    from flwr.server import LegacyContext, ServerApp, ServerConfig

    config = ServerConfig(num_rounds=rounds)
    if not secure:
        return ServerApp(config=config, strategy=progress)
    from flwr.server.workflow import DefaultWorkflow

    from .secure import secagg_workflow

    app = ServerApp()

    @app.main()
    def main(driver, context):
        legacy = LegacyContext(context=context, config=config, strategy=progress)
        DefaultWorkflow(fit_workflow=secagg_workflow(**workflow_settings))(driver, legacy)

    return app


def _check_args(net_fn, client_data, strategy, rounds, num_clients):
    if not callable(net_fn):
        raise InvalidParameterError("net_fn must be a callable returning an initialized Gluon Block.")
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise InvalidParameterError(f"rounds must be an integer >= 1, got {rounds!r}.")
    planned = getattr(strategy, "rounds", None)
    if planned is not None and rounds > planned:
        raise ConflictingParametersError(
            f"rounds={rounds} exceeds the {planned} rounds the strategy was planned (and "
            "calibrated) for: run at most that many, or build the strategy with rounds=.")
    if callable(client_data):
        if num_clients is None:
            raise InvalidParameterError("client_data as a callable needs num_clients=.")
        count = num_clients
    elif isinstance(client_data, Sequence) and not isinstance(client_data, (str, bytes)):
        count = len(client_data)
    else:
        raise InvalidParameterError(
            "client_data must be a list with one entry per client ((X, y), a gluon Dataset, "
            "or dict(train=..., test=...)), or a callable partition_id -> entry.")
    declared = getattr(strategy, "num_clients", None)
    if declared is not None and declared != count:
        raise ConflictingParametersError(
            f"The strategy declares num_clients={declared} but {count} clients would run: "
            "give one client_data entry per declared client.")
    if count < 2:
        raise InvalidParameterError(f"A federated run needs at least 2 clients, got {count}.")
    return int(count)


def _secure_setting(strategy, secure_aggregation) -> bool:
    declared = getattr(strategy, "secure_aggregation", None)
    if secure_aggregation is None:
        return bool(declared)
    if declared is None or bool(declared) != bool(secure_aggregation):
        raise ConflictingParametersError(
            f"secure_aggregation={secure_aggregation} but the strategy has "
            f"secure_aggregation={declared}: build DPFedAvg(secure_aggregation=...) with the "
            "same value (it decides how clients are sampled and clip).")
    return bool(secure_aggregation)


def _workflow_settings(strategy, count: int, secagg_kwargs: dict) -> dict:
    from .secure import secagg_settings

    if not hasattr(strategy, "clip_norm") or not hasattr(strategy, "parameters_"):
        raise InvalidParameterError("secure aggregation needs a DPFedAvg strategy.")
    num_params = int(sum(a.size for a in strategy.parameters_))
    kwargs = dict(secagg_kwargs)
    if "quantization_range" in kwargs and kwargs["quantization_range"] != \
            getattr(strategy, "quantization_range", None):
        raise ConflictingParametersError(
            "Give quantization_range to DPFedAvg only: its C_eff must use the workflow's Q.")
    kwargs["quantization_range"] = getattr(strategy, "quantization_range", None)
    secagg_settings(strategy.clip_norm, num_params, count, **kwargs)  # refuse bad ones now
    return dict(kwargs, clip_norm=strategy.clip_norm, num_params=num_params, num_clients=count)


def run_federated(net_fn: Callable, client_data, strategy, *, rounds: int,
                  secure_aggregation: Optional[bool] = None,
                  client_kwargs: Optional[dict] = None, backend: str = "simulation",
                  progress: bool = True, verbose: bool = False, num_clients: Optional[int] = None,
                  delta: Optional[float] = None, secagg_kwargs: Optional[dict] = None,
                  client_mods: Sequence[Callable] = (), cpus_per_client: float = 1.0,
                  print_fn: Callable[[str], None] = print) -> FederatedResult:
    """Train ``net_fn()`` federated over the clients of ``client_data`` for ``rounds`` rounds.

    Parameters
    ----------
    net_fn : callable
        Returns an initialized Gluon Block (called once per client message, and by
        :func:`gluon_evaluate_fn`).
    client_data : list or callable
        One entry per client: ``(X, y)``, a gluon Dataset, or ``dict(train=, test=)``;
        or ``f(partition_id)`` returning one (with ``num_clients=``).
    strategy : DPFedAvg or a Flower Strategy
        Kept in this process: read ``strategy.history_`` / ``epsilon()`` afterwards.
    rounds : int
        Rounds to run (at most the strategy's planned ``rounds``).
    secure_aggregation : bool, optional
        Defaults to the strategy's setting; must agree with it.
    client_kwargs : dict
        More arguments for each ``GluonClient`` (``local_epochs``, ``batch_size``,
        ``optimizer_params``, ``dp`` ...).
    progress, verbose : bool
        Print one line per round; show Flower's and Ray's own logs.
    delta : float, optional
        The delta of the reported epsilon (default: the strategy's).
    secagg_kwargs : dict
        ``num_shares``, ``reconstruction_threshold``, ``modulus_range``, ``timeout`` for
        :func:`.secure.secagg_settings` (``quantization_range`` belongs to DPFedAvg).
    client_mods : sequence
        Flower mods run outside the client's own stack (before ``secaggplus_mod``).
    """
    if backend != "simulation":
        raise InvalidParameterError(
            f"backend={backend!r}: only 'simulation' (Flower's simulation engine) is supported.")
    count = _check_args(net_fn, client_data, strategy, rounds, num_clients)
    secure = _secure_setting(strategy, secure_aggregation)
    settings = _workflow_settings(strategy, count, secagg_kwargs or {}) if secure else {}
    client_kwargs = dict(client_kwargs or {})
    watcher = _ProgressStrategy(strategy, rounds=rounds, clients=count, delta=delta,
                               print_fn=print_fn if progress else None,
                               connect_timeout=CONNECT_TIMEOUT)
    start = time.perf_counter()
    with _quiet_flower(verbose):
        client_app = _client_app(net_fn, client_data, client_kwargs,
                                 _client_mods(strategy, secure, client_mods))
        server_app = _server_app(watcher, int(rounds), secure, settings)
        _simulate(server_app, client_app, count, cpus_per_client, verbose, watcher)
    total = time.perf_counter() - start
    if hasattr(strategy, "settle"):
        strategy.settle()  # a last round SecAgg+ aborted still releases its noise
    return watcher.result(secure, total)


@contextlib.contextmanager
def _quiet_flower(verbose: bool):
    """Flower's logger at ERROR and its deprecation/preview notices hidden, unless verbose."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            if not verbose:
                warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        flwr_logger.setLevel(level)


def _simulate(server_app, client_app, count, cpus_per_client, verbose, watcher) -> None:
    from flwr.simulation import run_simulation

    init_args = {} if verbose else {"logging_level": logging.ERROR, "log_to_driver": False}
    try:
        run_simulation(server_app, client_app, num_supernodes=count,
                       backend_config={"client_resources": {"num_cpus": cpus_per_client},
                                       "init_args": init_args},
                       verbose_logging=verbose)
    except Exception as err:
        if watcher.error is not None:  # the strategy's own error, not Flower's wrapper
            raise watcher.error from err
        raise FederatedError(f"The Flower simulation failed: {err} (rerun with verbose=True "
                             "for Flower's and Ray's logs).") from err
    if watcher.error is not None:
        raise watcher.error
    if watcher.rounds_done < watcher.rounds:
        raise FederatedError(f"The simulation stopped after {watcher.rounds_done} of "
                             f"{watcher.rounds} rounds: rerun with verbose=True to see why.")


class _ProgressStrategy(Strategy):
    """Delegates every call to the user's strategy; waits for the K clients before round
    1, times and prints the rounds, and keeps the strategy's first exception."""

    def __init__(self, inner, *, rounds, clients, delta, print_fn, connect_timeout):
        super().__init__()
        self.inner, self.rounds, self.clients = inner, int(rounds), int(clients)
        self.delta = delta if delta is not None else getattr(inner, "delta", None)
        self.print_fn, self.connect_timeout = print_fn, connect_timeout
        self.error: Optional[BaseException] = None
        self.rows: List[Dict[str, object]] = []
        self.times: Dict[int, float] = {}
        self.rounds_done = 0
        self.last_parameters = None

    def _call(self, name, *args):
        try:
            return getattr(self.inner, name)(*args)
        except Exception as err:
            self.error = self.error or err
            raise

    def initialize_parameters(self, client_manager):
        if not client_manager.wait_for(self.clients, timeout=self.connect_timeout):
            self.error = FederatedError(
                f"Only {client_manager.num_available()} of {self.clients} clients connected "
                f"within {self.connect_timeout:g} s: check the client app (verbose=True).")
            raise self.error
        parameters = self._call("initialize_parameters", client_manager)
        self.last_parameters = parameters
        return parameters

    def configure_fit(self, server_round, parameters, client_manager):
        return self._call("configure_fit", server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
        out = self._call("aggregate_fit", server_round, results, failures)
        if out[0] is not None:
            self.last_parameters = out[0]
        return out

    def configure_evaluate(self, server_round, parameters, client_manager):
        return self._call("configure_evaluate", server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round, results, failures):
        return self._call("aggregate_evaluate", server_round, results, failures)

    def evaluate(self, server_round, parameters):
        out = self._call("evaluate", server_round, parameters)
        self.times[int(server_round)] = time.perf_counter()
        if server_round >= 1:
            self._record(int(server_round), out)
        return out

    def epsilon(self) -> Optional[float]:
        if not hasattr(self.inner, "epsilon"):
            return math.inf
        return None if self.delta is None else float(self.inner.epsilon(self.delta))

    def _record(self, server_round: int, out) -> None:
        loss, metrics = out if out is not None else (None, {})
        accuracy = metrics.get("accuracy")
        row = {"round": server_round, "accuracy": accuracy, "loss": loss,
               "epsilon": self.epsilon(),
               "seconds": self.times[server_round] - self.times.get(server_round - 1, math.nan)}
        for strategy_row in getattr(self.inner, "history_", []):
            if strategy_row.get("round") == server_round:
                row = dict(strategy_row, **row)
        self.rows.append(row)
        self.rounds_done = server_round
        if self.print_fn is not None:
            self.print_fn(_round_line(row, self.rounds, self.delta))

    def result(self, secure: bool, total: float) -> FederatedResult:
        from flwr.common import parameters_to_ndarrays

        final = getattr(self.inner, "parameters_", None)
        if final is None and self.last_parameters is not None:
            final = parameters_to_ndarrays(self.last_parameters)
        spans = [row["seconds"] for row in self.rows]
        per_round = float(np.mean(spans[1:])) if len(spans) > 1 else float(spans[0])
        epsilon = self.epsilon()
        return FederatedResult(history=self.rows, parameters=[np.array(a) for a in final],
                               epsilon=math.nan if epsilon is None else epsilon,
                               delta=self.delta, rounds=self.rounds, clients=self.clients,
                               secure_aggregation=secure, seconds_per_round=per_round,
                               total_seconds=total)


def _round_line(row, rounds: int, delta) -> str:
    accuracy = "-" if row["accuracy"] is None else f"{float(row['accuracy']):.4f}"
    epsilon = row["epsilon"]
    if epsilon is None:
        privacy = "epsilon - (no delta given)"
    elif math.isinf(epsilon):
        privacy = "epsilon inf (not private)"
    else:
        privacy = f"epsilon {epsilon:.4g} (delta {delta:g})"
    return f"round {row['round']}/{rounds}  accuracy {accuracy}  {privacy}"
