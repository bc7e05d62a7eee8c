"""``DPFedAvg``: user-level DP-FedAvg (McMahan et al. 2018) as a Flower strategy.

The unit of privacy is a whole client. Every round each available client is sampled
with probability q (Poisson sampling, secret randomness), its update is clipped to L2
norm C, Gaussian noise of std sigma C is added to the sum of the clipped updates once,
the noisy sum is divided by the expected number of clients q K (K = ``num_clients``, a
public constant), and the global model moves by ``server_learning_rate`` times that.
Each round composes one ``PoissonSampledEvent(q, GaussianEvent(sigma))``: the user-level
epsilon is ``epsilon(delta)`` at any time, and ``history_`` has one row per round.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Dict, List, Optional

import numpy as np

from ..accounting import GaussianEvent, PoissonSampledEvent, calibrate_noise_multiplier
from ..accounting import make_accountant
from ..errors import FederatedError, InvalidParameterError, PrivacyBudgetExceeded
from ..errors import InvalidUpdateError
from . import _adaptive
from ._rounds import (RoundTally, client_contribution, describe_failure, generators,
                      in_range, initial_arrays, integer, positive, release,
                      resolve_clipping, secure_sum)
from .mods import (CLIP_NORM_KEY, PARTICIPATE_KEY, REJECTED_KEY, REPORT_NORM_KEY, SECURE_KEY,
                   UPDATE_NORM_KEY)

try:  # Flower is an optional extra: the class needs it, the module's import explains
    from flwr.common import EvaluateIns, FitIns, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import Strategy
except ImportError as _err:  # pragma: no cover - exercised only without the extra
    raise ImportError("mxprivacy.federated needs Flower: pip install 'mxprivacy[federated]' "
                      f"(flwr[simulation]==1.12.0). ({_err})") from _err

__all__ = ["DPFedAvg"]

class DPFedAvg(Strategy):
    """User-level DP-FedAvg: Poisson sampling, clipping, one noise draw per round, accounting.

    Parameters
    ----------
    num_clients : int
        K, the number of clients the federation is declared to have (a public
        constant: never counted from who is connected). The noisy sum is divided by q K.
    sample_rate : float
        q in (0, 1]: each available client joins a round with this probability.
    clip_norm : float
        C > 0: every client's update (all arrays together, float64) is clipped to it.
    noise_multiplier, target_epsilon : float
        Exactly one: sigma (noise std sigma C on the sum), or the epsilon to reach at
        ``delta`` after ``rounds`` rounds (sigma from ``calibrate_noise_multiplier``).
    delta : float, optional
        In (0, 1); needed by ``target_epsilon`` and by the epsilon reported per round.
    rounds : int, optional
        Rounds planned (needed by ``target_epsilon``). Configuring more is refused with
        PrivacyBudgetExceeded.
    initial_parameters : list of numpy arrays or flwr Parameters
        The global model at round 0 (for a Gluon net: ``params.get_weights(net)``).
    server_learning_rate : float
        Scale of the noisy mean update added to the global model (1.0: plain FedAvg).
    accountant : "rdp" or "pld" (or an accountant instance, used empty)
    adaptive_clipping : bool
        Move C toward the ``target_quantile`` of the update norms (Andrew et al. 2021)
        with ``clip_learning_rate``; the unclipped count is noised with std
        ``clipped_count_stddev`` (default q K / 20) and the update noise is raised so that
        the accounted multiplier stays sigma (see :mod:`._adaptive`).
    clipping : "server" or "client"
        "server": clients send weights; the server clips ``weights - global``.
        "client": clients send their clipped update (``clip_update_mod``) and the
        server checks and clips it again. Default: "client" with secure aggregation,
        else "server".
    secure_aggregation : bool
        SecAgg+ mode: all available clients are contacted each round, the sampling coin
        goes in the fit config (``"mxp-participate"``: 1/0), clients clip to the
        effective norm C_eff of :func:`.secure.effective_clip_norm` (``"mxp-clip-norm"``),
        and ``aggregate_fit`` receives the mean of the active clients' vectors.
    quantization_range : int, optional
        SecAgg+'s quantization levels, as given to ``secure.secagg_workflow`` (C_eff
        depends on it); None: ``secure.default_quantization_range(num_clients)``, the
        workflow's default.
    fraction_evaluate : float
        Fraction of the clients asked for federated evaluation (default 0). Their
        metrics reach the server unprotected: they are outside the DP guarantee.
    evaluate_fn : callable, optional
        ``evaluate_fn(server_round, arrays, config) -> (loss, metrics) or None``, on the
        server's own data, as in Flower's FedAvg.
    seed : int, optional
        For tests only: seeds sampling and noise, which voids the guarantee (warns).

    Attributes
    ----------
    parameters_ : list of numpy arrays
        The global model. The strategy owns it: a round Flower cancels (nobody sampled)
        or a SecAgg+ round that aborts still releases its noise-only update, applied
        before the next round is configured or the round is evaluated.
    accountant_, noise_multiplier_, clip_norm_ (current C), history_ (a dict per round:
        sampled, available, received, contributed, rejected (+ reasons), failures
        (+ reasons), clip_norm, aggregated, epsilon). ``history_`` is the server's
        own record: its counts and the reasons clients give depend on who takes part
        and are not covered by the guarantee (Flower's History gets C and epsilon only).

    Why not Flower's DP wrappers
    ----------------------------
    ``DifferentialPrivacyServerSideFixedClipping`` / ``...AdaptiveClipping`` (and the
    client-side variants) wrap a strategy that samples a fixed number of clients with
    the non-secret ``random`` module, add noise of std ``sigma C / num_sampled_clients``
    to FedAvg's *example-weighted* average (a client with many examples has a weight
    above 1/m, so its contribution can exceed C/m), and Flower's server loop cancels a
    round with no clients, so nothing is released or charged for it. Poisson sampling,
    uniform weights, the division by the fixed q K, and one release and one accounting
    event per round whatever happens are what ``PoissonSampledEvent(q,
    GaussianEvent(sigma))`` assumes, so they are implemented here. What does carry over
    is tested: our clipping equals ``flwr.common.differential_privacy``'s flat clipping,
    and our noise std on the mean equals its ``compute_stdv(sigma, C, q K)``.
    """

    def __init__(self, *, num_clients: int, sample_rate: float, clip_norm: float,
                 initial_parameters, noise_multiplier: Optional[float] = None,
                 target_epsilon: Optional[float] = None, delta: Optional[float] = None,
                 rounds: Optional[int] = None, server_learning_rate: float = 1.0,
                 accountant="rdp", adaptive_clipping: bool = False,
                 target_quantile: float = 0.5, clip_learning_rate: float = 0.2,
                 clipped_count_stddev: Optional[float] = None,
                 clipping: Optional[str] = None, secure_aggregation: bool = False,
                 quantization_range: Optional[int] = None, fraction_evaluate: float = 0.0,
                 evaluate_fn: Optional[Callable] = None, seed: Optional[int] = None) -> None:
        super().__init__()
        self.num_clients = integer("num_clients", num_clients, 1)
        self.sample_rate = in_range("sample_rate", sample_rate, 0.0, 1.0, low_open=True)
        self.clip_norm = positive("clip_norm", clip_norm)
        self.delta = None if delta is None else in_range("delta", delta, 0.0, 1.0,
                                                          low_open=True, high_open=True)
        self.rounds = None if rounds is None else integer("rounds", rounds, 1)
        self.server_learning_rate = positive("server_learning_rate", server_learning_rate)
        self.accountant_ = make_accountant(accountant, "add_remove")
        self.expected_clients = self.sample_rate * self.num_clients
        self.noise_multiplier_ = self._resolve_sigma(noise_multiplier, target_epsilon)
        self.target_epsilon = target_epsilon
        self.secure_aggregation = bool(secure_aggregation)
        self.clipping = resolve_clipping(clipping, self.secure_aggregation)
        self.adaptive_clipping = bool(adaptive_clipping)
        self._setup_adaptive(target_quantile, clip_learning_rate, clipped_count_stddev)
        self.parameters_ = initial_arrays(initial_parameters)
        self.quantization_range = quantization_range
        self._num_params = int(sum(a.size for a in self.parameters_))
        self.fraction_evaluate = in_range("fraction_evaluate", fraction_evaluate, 0.0, 1.0)
        if evaluate_fn is not None and not callable(evaluate_fn):
            raise InvalidParameterError("evaluate_fn must be callable (or None).")
        self.evaluate_fn = evaluate_fn
        self.clip_norm_ = self.clip_norm
        self._secure_clip(self.clip_norm_)  # refuse SecAgg settings now, not at round 1
        self._sample_rng, self._noise_rng = generators(seed)
        self.history_: List[Dict[str, object]] = []
        self._pending: Optional[RoundTally] = None

    # -- set-up ---------------------------------------------------------------------
    def _resolve_sigma(self, noise_multiplier, target_epsilon) -> float:
        if (noise_multiplier is None) == (target_epsilon is None):
            raise InvalidParameterError(
                "Give exactly one of noise_multiplier= (sigma) or target_epsilon= (with "
                "delta= and rounds=, to calibrate sigma).")
        if noise_multiplier is not None:
            return in_range("noise_multiplier", noise_multiplier, 0.0, math.inf)
        if self.delta is None or self.rounds is None:
            raise InvalidParameterError(
                "target_epsilon needs delta= (in (0, 1), e.g. below 1 / num_clients) and "
                "rounds= (the number of rounds planned) to calibrate the noise multiplier.")
        return float(calibrate_noise_multiplier(
            positive("target_epsilon", target_epsilon), self.delta,
            sample_rate=self.sample_rate, steps=self.rounds, accountant=self.accountant_.name))

    def _setup_adaptive(self, target_quantile, clip_learning_rate, clipped_count_stddev):
        self.target_quantile = in_range("target_quantile", target_quantile, 0.0, 1.0,
                                         low_open=True, high_open=True)
        self.clip_learning_rate = positive("clip_learning_rate", clip_learning_rate)
        self.clipped_count_stddev = 0.0
        self.update_noise_multiplier_ = self.noise_multiplier_
        if not self.adaptive_clipping:
            return
        if self.secure_aggregation:
            raise InvalidParameterError(
                "adaptive_clipping cannot be combined with secure_aggregation: the "
                "per-client clipped bits would reach the server outside SecAgg+, and C "
                "would have to change inside the SecAgg+ settings. Use a fixed clip_norm.")
        self.clipped_count_stddev = _adaptive.count_stddev(
            self.noise_multiplier_, self.expected_clients, clipped_count_stddev)
        self.update_noise_multiplier_ = _adaptive.update_noise_multiplier(
            self.noise_multiplier_, self.clipped_count_stddev)

    def _secure_clip(self, clip_norm: float) -> Optional[float]:
        """C_eff sent to clients under SecAgg+ (None otherwise), from :mod:`.secure`."""
        if not self.secure_aggregation:
            return None
        from .secure import secagg_settings

        narrow = min((a.dtype for a in self.parameters_), key=lambda t: np.finfo(t).bits)
        return float(secagg_settings(clip_norm, self._num_params, self.num_clients,
                                     quantization_range=self.quantization_range,
                                     dtype=narrow)["effective_clip_norm"])

    # -- Flower's Strategy ----------------------------------------------------------
    def initialize_parameters(self, client_manager):
        """The initial global model (clients are not asked for theirs)."""
        return ndarrays_to_parameters(self.parameters_)

    def configure_fit(self, server_round, parameters, client_manager):
        """Poisson-sample the clients of ``server_round`` and send them the global model.

        ``parameters`` from Flower is ignored: ``parameters_`` is the global model. A
        previous round left unaggregated is released (noise only) and charged first.
        """
        self.settle()
        if self.rounds is not None and len(self.history_) >= self.rounds:
            raise PrivacyBudgetExceeded(
                f"All {self.rounds} planned rounds have run (epsilon {self._epsilon_or_none()}"
                f" at delta={self.delta}): run the server for num_rounds={self.rounds}, or "
                "plan more rounds (which spends more budget).")
        proxies = [proxy for _, proxy in sorted(client_manager.all().items())]
        coins = self._sample_rng.random(len(proxies)) < self.sample_rate
        sampled = [p for p, coin in zip(proxies, coins) if coin]
        self._pending = RoundTally(round=int(server_round), clip_norm=self.clip_norm_,
                                   sampled=len(sampled), available=len(proxies),
                                   sampled_cids=tuple(p.cid for p in sampled))
        model = ndarrays_to_parameters(self.parameters_)
        config: Dict[str, object] = {"server_round": int(server_round)}
        if self.secure_aggregation:
            config.update({CLIP_NORM_KEY: self._secure_clip(self.clip_norm_), SECURE_KEY: 1})
            return [(p, FitIns(model, dict(config, **{PARTICIPATE_KEY: int(coin)})))
                    for p, coin in zip(proxies, coins)]
        if self.clipping == "client":
            config.update({CLIP_NORM_KEY: self.clip_norm_, PARTICIPATE_KEY: 1,
                           REPORT_NORM_KEY: int(self.adaptive_clipping)})
        return [(p, FitIns(model, dict(config))) for p in sampled]

    def aggregate_fit(self, server_round, results, failures):
        """Clip, sum, noise once, divide by q K, update ``parameters_``, charge the round."""
        tally = self._pending
        if tally is None or tally.released or tally.round != int(server_round):
            raise FederatedError(
                f"aggregate_fit for round {server_round}, but the round configured last is "
                f"{None if tally is None else tally.round} (or it was aggregated already): "
                "call configure_fit once before each aggregate_fit.")
        tally.received = len(results)
        tally.failures = [describe_failure(f) for f in failures]
        if self.secure_aggregation:  # Flower 1.12 lists a SecAgg+ dropout twice
            missing = max(0, tally.available - len(results))
            reasons = list(dict.fromkeys(tally.failures))[:missing]
            tally.failures = reasons + ["no reply"] * (missing - len(reasons))
            total, reason = secure_sum(results, self.parameters_,
                                       self.num_clients * self.clip_norm_)
            tally.contributed = 0 if total is None else len(results)
            if reason:
                tally.rejected.append(("secure-aggregate", reason))
        else:
            total = self._plain_sum(results, tally)
        tally.aggregated = True
        self._release(tally, total)
        return ndarrays_to_parameters(self.parameters_), self._metrics(self.history_[-1])

    def configure_evaluate(self, server_round, parameters, client_manager):
        """Federated evaluation of ``parameters_`` on ``fraction_evaluate`` of the clients."""
        self.settle()
        if self.fraction_evaluate == 0:
            return []
        proxies = [proxy for _, proxy in sorted(client_manager.all().items())]
        count = min(len(proxies), max(1, math.ceil(self.fraction_evaluate * len(proxies))))
        chosen = self._sample_rng.choice(len(proxies), size=count, replace=False)
        ins = EvaluateIns(ndarrays_to_parameters(self.parameters_), {})
        return [(proxies[i], ins) for i in sorted(chosen)]

    def aggregate_evaluate(self, server_round, results, failures):
        """Loss and accuracy averaged with the clients' example counts as weights."""
        results = [(p, r) for p, r in results if r.num_examples > 0]
        if not results:
            return None, {}
        total = float(sum(r.num_examples for _, r in results))
        loss = sum(r.num_examples * float(r.loss) for _, r in results) / total
        metrics: Dict[str, object] = {"failures": len(failures)}
        scored = [(r.num_examples, r.metrics["accuracy"]) for _, r in results
                  if "accuracy" in r.metrics]
        if scored:
            metrics["accuracy"] = sum(n * float(a) for n, a in scored) / sum(n for n, _ in scored)
        return loss, metrics

    def evaluate(self, server_round, parameters):
        """``evaluate_fn`` on ``parameters_`` (after releasing a cancelled round), with the
        user-level epsilon added to its metrics."""
        self.settle()
        if self.evaluate_fn is None:
            return None
        out = self.evaluate_fn(int(server_round), [a.copy() for a in self.parameters_], {})
        if out is None:
            return None
        loss, metrics = out
        return loss, dict(metrics, **self._metrics(None))

    # -- rounds ---------------------------------------------------------------------
    def settle(self) -> None:
        """Release and charge a configured round that was never aggregated (Flower
        cancelled it: no client sampled; or SecAgg+ aborted): its update is noise only.
        Called by configure_fit, configure_evaluate and evaluate; call it after the last
        round if that round may have been cancelled."""
        if self._pending is not None and not self._pending.released:
            self._release(self._pending, None)

    def _plain_sum(self, results, tally: RoundTally) -> Optional[List[np.ndarray]]:
        total, allowed, seen = None, set(tally.sampled_cids), set()
        for proxy, res in results:
            cid = str(proxy.cid)
            try:
                contribution, norm = self._contribution(cid, res, allowed, seen)
            except InvalidUpdateError as err:
                tally.rejected.append((cid, str(err)))
                continue
            seen.add(cid)
            tally.contributed += 1
            tally.unclipped += int(norm <= tally.clip_norm)
            total = contribution if total is None else [t + c for t, c in zip(total, contribution)]
        return total

    def _contribution(self, cid: str, res, allowed, seen):
        if cid not in allowed or cid in seen:
            raise InvalidUpdateError(f"client {cid} was not sampled this round, or sent twice: "
                                     "only one result per sampled client is used.")
        if self.clipping == "client" and REJECTED_KEY in res.metrics:
            raise InvalidUpdateError(f"the client sent a zero update: {res.metrics[REJECTED_KEY]}")
        try:
            arrays = parameters_to_ndarrays(res.parameters)
        except ValueError as err:  # not numpy's .npy format (pickles are never loaded)
            raise InvalidUpdateError(f"unreadable arrays from client {cid}: {err}") from err
        contribution, norm = client_contribution(arrays, self.parameters_, self.clip_norm_,
                                                 sends_update=self.clipping == "client")
        if self.clipping == "client":  # b of adaptive clipping: the norm before the mod clipped
            reported = res.metrics.get(UPDATE_NORM_KEY)
            norm = float(reported) if isinstance(reported, (int, float)) else math.inf
        return contribution, norm

    def _release(self, tally: RoundTally, total) -> None:
        """Noise once, update ``parameters_``, adapt C, charge the round, record it."""
        std = self.update_noise_multiplier_ * tally.clip_norm
        self.parameters_ = release(self.parameters_, total, std, self.expected_clients,
                                   self.server_learning_rate, self._noise_rng)
        if self.adaptive_clipping:
            self.clip_norm_ = _adaptive.next_clip_norm(
                tally.clip_norm, tally.unclipped, tally.contributed, self.clipped_count_stddev,
                self.expected_clients, self.target_quantile, self.clip_learning_rate,
                self._noise_rng)
        self.accountant_.compose(PoissonSampledEvent(
            self.sample_rate, GaussianEvent(self.noise_multiplier_)))
        tally.released = True
        self.history_.append(tally.row(self._epsilon_or_none()))

    # -- privacy --------------------------------------------------------------------
    def epsilon(self, delta: Optional[float] = None) -> float:
        """User-level epsilon of the rounds released so far, at ``delta`` (default:
        the ``delta`` given at construction)."""
        delta = self.delta if delta is None else delta
        if delta is None:
            raise InvalidParameterError("epsilon needs a delta: pass epsilon(delta=...) or "
                                        "construct DPFedAvg with delta=.")
        if not self.history_:
            return 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(self.accountant_.get_epsilon(delta))

    def _epsilon_or_none(self) -> Optional[float]:
        return None if self.delta is None else self.epsilon()

    def _metrics(self, row) -> Dict[str, object]:
        """What Flower's History records: C and epsilon only. The per-round counts
        (sampled, received, rejected, failures) depend on who takes part and are not
        covered by the guarantee: they stay in ``history_``, the server's own record."""
        out: Dict[str, object] = {"clip_norm": float(self.clip_norm_)}
        if self.delta is not None:
            out["epsilon"] = self.epsilon()
        return out
