"""The ``mxprivacy federated-demo`` run: a Gluon MLP trained by K simulated Flower clients.

The training set (scikit-learn's digits, or MNIST read offline from ``data_dir`` /
``MXPRIVACY_DATA``) is split among ``clients`` clients, non-IID by label (each holds at
most ``classes_per_client`` labels) or IID, and trained with user-level DP-FedAvg
(:class:`.strategy.DPFedAvg`), optionally with SecAgg+, or with Flower's plain FedAvg
(``dp=False``: the non-private baseline). The server evaluates the global model on the
test set after every round; :func:`.runtime.run_federated` prints accuracy and epsilon.

Defaults (measured on digits, 10 clients, non-IID with 2 labels each, 30 rounds of 2
local SGD epochs at learning rate 0.1): q = 1, C = 0.5, sigma = 0.5 reach 0.91 test
accuracy at user-level epsilon 111 (delta 1e-5, RDP); sigma = 1 gives 0.71 at epsilon
40, q = 0.5 with sigma = 0.7 only 0.49; Flower's FedAvg without DP reaches 0.96. With
only 10 clients user-level DP is weak: the noise must hide one whole client's update
among ten, so every useful sigma costs a large epsilon (the lines printed say how
large). Federations of thousands of clients get a small epsilon from the same sigma.
"""
from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional

import numpy as np

from ..errors import ConflictingParametersError, InvalidParameterError

__all__ = ["DemoConfig", "DemoResult", "run_demo", "ClientPartitions", "DATASETS"]

DATASETS = ("digits", "mnist")
ACCOUNTANTS = ("rdp", "pld")
DEFAULT_NOISE_MULTIPLIER = 0.5  # measured: see the module docstring
MODEL = "mlp"  # mxprivacy.train.build_model's Dense 256 - Dense 10 (fits 8x8 and 28x28)
_CACHE: Dict[tuple, object] = {}  # per process (each Ray actor loads the data once)


@dataclass
class DemoConfig:
    """Options of one federated demo run (each one a ``federated-demo`` flag).

    ``noise_multiplier`` and ``target_epsilon`` are exclusive; with neither, sigma is
    ``DEFAULT_NOISE_MULTIPLIER``. ``dp=False`` trains with Flower's FedAvg (no clipping,
    no noise, epsilon infinite) and refuses the DP options. ``partition_seed`` fixes the
    split of the data (a simulation device, public; default: random), ``seed`` the
    model's initialization; sampling and noise always use OS entropy.
    """

    dataset: str = "digits"
    data_dir: Optional[str] = None
    clients: int = 10
    rounds: int = 30
    sample_rate: float = 1.0
    clip_norm: float = 0.5
    noise_multiplier: Optional[float] = None
    target_epsilon: Optional[float] = None
    delta: float = 1e-5
    secure_aggregation: bool = False
    iid: bool = False
    classes_per_client: int = 2
    local_epochs: int = 2
    batch_size: int = 32
    lr: float = 0.1
    server_learning_rate: float = 1.0
    dp: bool = True
    accountant: str = "rdp"
    partition_seed: Optional[int] = None
    seed: Optional[int] = None
    train_limit: Optional[int] = None
    progress: bool = True

    def validate(self) -> "DemoConfig":
        """Check every option; raise InvalidParameterError (or Conflicting...) naming it."""
        if self.dataset not in DATASETS:
            raise InvalidParameterError(
                f"dataset must be one of {list(DATASETS)}, got {self.dataset!r}.")
        if self.accountant not in ACCOUNTANTS:
            raise InvalidParameterError(
                f"accountant must be one of {list(ACCOUNTANTS)}, got {self.accountant!r}.")
        for name, minimum in (("clients", 2), ("rounds", 1), ("classes_per_client", 1),
                              ("local_epochs", 1), ("batch_size", 1)):
            _check_int(getattr(self, name), name, minimum)
        for name in ("partition_seed", "seed", "train_limit"):
            if getattr(self, name) is not None:
                _check_int(getattr(self, name), name, 0 if "seed" in name else 1)
        for name, test, wanted in (("sample_rate", lambda v: 0 < v <= 1, "in (0, 1]"),
                                   ("clip_norm", lambda v: v > 0, "> 0"),
                                   ("delta", lambda v: 0 < v < 1, "in (0, 1)"),
                                   ("lr", lambda v: v > 0, "> 0"),
                                   ("server_learning_rate", lambda v: v > 0, "> 0")):
            _check_float(getattr(self, name), name, test, wanted)
        if self.noise_multiplier is not None:
            _check_float(self.noise_multiplier, "noise_multiplier", lambda v: v >= 0, ">= 0")
        if self.target_epsilon is not None:
            _check_float(self.target_epsilon, "target_epsilon", lambda v: v > 0, "> 0")
        if self.noise_multiplier is not None and self.target_epsilon is not None:
            raise ConflictingParametersError(
                "Give noise_multiplier or target_epsilon, not both: target_epsilon "
                "calibrates the noise multiplier.")
        if not self.dp:
            self._validate_no_dp()
        return self

    def _validate_no_dp(self) -> None:
        given = [f"{name} (--{name.replace('_', '-')})" for name, value in (
            ("noise_multiplier", self.noise_multiplier), ("target_epsilon", self.target_epsilon),
            ("secure_aggregation", self.secure_aggregation or None)) if value is not None]
        if given:
            raise ConflictingParametersError(
                f"dp=False (--no-dp) trains without privacy, so {' and '.join(given)} "
                "would be ignored: drop it, or drop --no-dp.")

    def sigma(self) -> Optional[float]:
        """The noise multiplier given (None with target_epsilon: DPFedAvg calibrates)."""
        if self.target_epsilon is not None:
            return None
        return DEFAULT_NOISE_MULTIPLIER if self.noise_multiplier is None \
            else float(self.noise_multiplier)



def _check_int(value, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidParameterError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _check_float(value, name: str, test, wanted: str) -> None:
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and test(value)):
        raise InvalidParameterError(f"{name} must be a finite number {wanted}, got {value!r}.")


@dataclass
class DemoResult:
    """What a demo run reached, and its settings. ``epsilon`` is user-level, at ``delta``
    (inf without DP); ``accuracy`` and ``epsilons`` have one entry per round."""

    test_accuracy: float
    epsilon: float
    delta: Optional[float]
    rounds: int
    clients: int
    secure_aggregation: bool
    noise_multiplier: Optional[float]
    sample_rate: float
    clip_norm: Optional[float]
    seconds_per_round: float
    total_seconds: float
    rejected: int
    failures: int
    dataset: str
    iid: bool
    classes_per_client: Optional[int]
    local_epochs: int
    dp: bool
    accountant: Optional[str]
    accuracy: List[float] = field(default_factory=list)
    epsilons: List[float] = field(default_factory=list)

    def to_dict(self, with_curves: bool = False) -> Dict:
        data = asdict(self)
        if not with_curves:
            data.pop("accuracy")
            data.pop("epsilons")
        return data


class ClientPartitions:
    """``partition_id -> (X, y)``: loads the data set once per process and splits it.

    Picklable and deterministic (the split uses ``partition_seed``), so every Ray actor
    computes the same split and no client data travel with the messages."""

    def __init__(self, dataset: str, data_dir: Optional[str], clients: int, *, iid: bool,
                 classes_per_client: int, partition_seed: int,
                 train_limit: Optional[int] = None) -> None:
        self.dataset, self.data_dir, self.clients = dataset, data_dir, int(clients)
        self.iid, self.classes_per_client = bool(iid), int(classes_per_client)
        self.partition_seed, self.train_limit = int(partition_seed), train_limit

    def _key(self) -> tuple:
        return (self.dataset, self.data_dir, self.clients, self.iid, self.classes_per_client,
                self.partition_seed, self.train_limit)

    def split(self):
        """(list of (X, y) per client, (x_test, y_test)), cached in this process."""
        key = self._key()
        if key not in _CACHE:
            from ..train import load_dataset
            from .partition import partition_by_label, partition_iid

            (xtr, ytr), test = load_dataset(self.dataset, self.data_dir, self.train_limit)
            if self.iid:
                parts = partition_iid(len(ytr), self.clients, seed=self.partition_seed)
            else:
                parts = partition_by_label(ytr.astype(np.int64), self.clients,
                                           classes_per_client=self.classes_per_client,
                                           seed=self.partition_seed)
            _CACHE[key] = ([(xtr[p], ytr[p]) for p in parts], test)
        return _CACHE[key]

    def __call__(self, partition_id: int):
        return self.split()[0][int(partition_id)]


def make_net_fn(input_shape, seed: Optional[int] = None):
    """``net_fn()``: the demo's MLP, initialized (Xavier) with its shapes inferred."""
    def net_fn():
        import mxnet as mx
        from mxnet import autograd

        from ..train import build_model

        if seed is not None:
            mx.random.seed(seed)
        net = build_model(MODEL)
        net.initialize(mx.init.Xavier())
        with autograd.train_mode():
            net(mx.nd.zeros((1,) + tuple(input_shape)))
        return net
    return net_fn


def _strategy(cfg: DemoConfig, initial, evaluate_fn):
    if not cfg.dp:
        from flwr.common import ndarrays_to_parameters
        from flwr.server.strategy import FedAvg

        return FedAvg(fraction_fit=cfg.sample_rate, fraction_evaluate=0.0,
                      min_fit_clients=1, min_evaluate_clients=0,
                      min_available_clients=cfg.clients, evaluate_fn=evaluate_fn,
                      initial_parameters=ndarrays_to_parameters(initial))
    from .strategy import DPFedAvg

    return DPFedAvg(num_clients=cfg.clients, sample_rate=cfg.sample_rate,
                    clip_norm=cfg.clip_norm, noise_multiplier=cfg.sigma(),
                    target_epsilon=cfg.target_epsilon, delta=cfg.delta, rounds=cfg.rounds,
                    initial_parameters=initial,
                    server_learning_rate=cfg.server_learning_rate,
                    accountant=cfg.accountant, secure_aggregation=cfg.secure_aggregation,
                    evaluate_fn=evaluate_fn)


def run_demo(cfg: DemoConfig, print_fn=print) -> DemoResult:
    """Split the data, build the strategy, run the rounds on Flower's simulation engine."""
    from .params import get_weights
    from .runtime import gluon_evaluate_fn, run_federated

    cfg = cfg.validate()
    if cfg.partition_seed is None:  # one split shared by every actor (public: not a secret)
        cfg = replace(cfg, partition_seed=secrets.randbits(31))
    partitions = ClientPartitions(cfg.dataset, cfg.data_dir, cfg.clients, iid=cfg.iid,
                                  classes_per_client=cfg.classes_per_client,
                                  partition_seed=cfg.partition_seed,
                                  train_limit=cfg.train_limit)
    _, test = partitions.split()  # loads here first: a missing MNIST fails before Flower
    net_fn = make_net_fn(test[0].shape[1:], cfg.seed)
    strategy = _strategy(cfg, get_weights(net_fn()), gluon_evaluate_fn(net_fn, test))
    client_kwargs = dict(local_epochs=cfg.local_epochs, batch_size=cfg.batch_size,
                         optimizer_params={"learning_rate": cfg.lr})
    result = run_federated(net_fn, partitions, strategy, rounds=cfg.rounds,
                           secure_aggregation=cfg.secure_aggregation if cfg.dp else None,
                           client_kwargs=client_kwargs, num_clients=cfg.clients,
                           delta=cfg.delta if cfg.dp else None, progress=cfg.progress,
                           print_fn=print_fn)
    return _demo_result(cfg, strategy, result)


def _demo_result(cfg: DemoConfig, strategy, result) -> DemoResult:
    rows = result.history
    history = getattr(strategy, "history_", [])
    return DemoResult(
        test_accuracy=float(rows[-1]["accuracy"]),
        epsilon=float(result.epsilon) if cfg.dp else math.inf,
        delta=cfg.delta if cfg.dp else None, rounds=result.rounds, clients=result.clients,
        secure_aggregation=result.secure_aggregation,
        noise_multiplier=getattr(strategy, "noise_multiplier_", None),
        sample_rate=cfg.sample_rate, clip_norm=cfg.clip_norm if cfg.dp else None,
        seconds_per_round=result.seconds_per_round, total_seconds=result.total_seconds,
        rejected=int(sum(row["rejected"] for row in history)),
        failures=int(sum(row["failures"] for row in history)),
        dataset=cfg.dataset, iid=cfg.iid,
        classes_per_client=None if cfg.iid else cfg.classes_per_client,
        local_epochs=cfg.local_epochs, dp=cfg.dp, accountant=cfg.accountant if cfg.dp else None,
        accuracy=[float(row["accuracy"]) for row in rows],
        epsilons=[float(row["epsilon"]) if cfg.dp else math.inf for row in rows])
