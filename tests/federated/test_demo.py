"""`mxprivacy federated-demo` end to end on Flower's simulation engine (digits, 10
clients, few rounds), and the demo's parts (split, strategy) without Flower.

Each end-to-end run costs ~11 s of Ray start-up: three runs in all (DP non-IID, DP with
SecAgg+ and a calibrated sigma, the non-private IID baseline)."""
import json
import pickle

import numpy as np
import pytest

from mxprivacy.accounting import calibrate_noise_multiplier, epsilon_for
from mxprivacy.cli import main
from mxprivacy.federated.demo import ClientPartitions, DemoConfig, _strategy

JSON_KEYS = {"test_accuracy", "epsilon", "delta", "rounds", "clients", "secure_aggregation",
             "noise_multiplier", "sample_rate", "clip_norm", "seconds_per_round", "rejected",
             "failures"}


def _run(argv, capsys):
    assert main(["federated-demo", "--json", "--partition-seed", "0", "--seed", "0"]
                + argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return json.loads(lines[-1]), lines[:-1]


def _round_lines(lines, rounds):
    found = [line for line in lines if line.startswith("round ")]
    assert [line.split()[1] for line in found] == [f"{r}/{rounds}" for r in
                                                   range(1, rounds + 1)]
    return found


def test_dp_demo_non_iid_epsilon_is_the_accountants(capsys):
    out, lines = _run(["--rounds", "3", "--noise-multiplier", "0.3", "--sample-rate",
                       "0.8"], capsys)
    assert JSON_KEYS <= set(out)
    assert (out["rounds"], out["clients"], out["secure_aggregation"]) == (3, 10, False)
    assert (out["noise_multiplier"], out["sample_rate"], out["delta"]) == (0.3, 0.8, 1e-5)
    assert out["epsilon"] == pytest.approx(epsilon_for(0.3, 0.8, 3, 1e-5), rel=1e-9)
    assert (out["rejected"], out["failures"]) == (0, 0)
    assert out["iid"] is False and out["classes_per_client"] == 2
    assert 0.0 <= out["test_accuracy"] <= 1.0 and out["seconds_per_round"] > 0
    epsilons = [float(line.split("epsilon ")[1].split()[0]) for line in _round_lines(lines, 3)]
    assert epsilons == sorted(epsilons) and epsilons[-1] == pytest.approx(out["epsilon"],
                                                                          rel=1e-3)
    assert "user-level" in lines[-1] and "test accuracy" in lines[-1]


def test_secure_aggregation_demo_with_target_epsilon(capsys):
    out, lines = _run(["--rounds", "2", "--target-epsilon", "40", "--sample-rate", "0.5",
                       "--secure-aggregation"], capsys)
    sigma = calibrate_noise_multiplier(40.0, 1e-5, 0.5, steps=2)
    assert out["secure_aggregation"] is True
    assert out["noise_multiplier"] == pytest.approx(sigma, rel=1e-12)
    assert out["epsilon"] == pytest.approx(epsilon_for(sigma, 0.5, 2, 1e-5), rel=1e-9)
    assert out["epsilon"] <= 40.0
    assert (out["rejected"], out["failures"]) == (0, 0)
    _round_lines(lines, 2)
    assert "SecAgg+" in lines[-1]


def test_non_private_iid_baseline_learns(capsys):
    out, lines = _run(["--rounds", "3", "--no-dp", "--iid"], capsys)
    assert out["epsilon"] == "inf" and out["dp"] is False and out["clip_norm"] is None
    assert out["test_accuracy"] > 0.8  # FedAvg on IID digits: ~0.9 after 3 rounds
    assert all("epsilon inf (not private)" in line for line in _round_lines(lines, 3))


# -- the parts, without Flower -----------------------------------------------------------
def test_non_iid_split_gives_each_client_at_most_its_labels():
    parts = ClientPartitions("digits", None, 10, iid=False, classes_per_client=2,
                             partition_seed=3)
    clients, (x_test, _) = parts.split()
    assert len(clients) == 10 and x_test.shape[1:] == (1, 8, 8)
    labels = [set(np.unique(y).tolist()) for _, y in clients]
    assert all(1 <= len(s) <= 2 for s in labels) and set().union(*labels) == set(range(10))
    assert sum(len(y) for _, y in clients) == 1348


def test_split_is_the_same_in_every_process():
    """Each Ray actor unpickles its own ClientPartitions: the split must not depend on
    the process (the seed is part of the object, the cache only saves time)."""
    parts = ClientPartitions("digits", None, 10, iid=True, classes_per_client=2,
                             partition_seed=7)
    copy = pickle.loads(pickle.dumps(parts))
    from mxprivacy.federated import demo

    first = [y.copy() for _, y in (parts(i) for i in range(10))]
    demo._CACHE.clear()
    again = [y for _, y in (copy(i) for i in range(10))]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert max(len(np.unique(y)) for y in first) > 2  # IID: many labels each


def test_strategy_carries_the_declared_privacy_settings():
    pytest.importorskip("flwr")
    initial = [np.zeros((3, 2), np.float32), np.zeros(3, np.float32)]
    cfg = DemoConfig(clients=12, rounds=5, sample_rate=0.5, clip_norm=0.7,
                     noise_multiplier=1.3, delta=1e-6, accountant="pld").validate()
    strategy = _strategy(cfg, initial, None)
    assert (strategy.num_clients, strategy.sample_rate, strategy.clip_norm) == (12, 0.5, 0.7)
    assert (strategy.noise_multiplier_, strategy.rounds, strategy.delta) == (1.3, 5, 1e-6)
    assert strategy.accountant_.name == "pld" and not strategy.secure_aggregation
    default = _strategy(DemoConfig().validate(), initial, None)
    assert default.noise_multiplier_ == DemoConfig().sigma() > 0


def test_no_dp_strategy_is_flowers_fedavg():
    flwr = pytest.importorskip("flwr")
    cfg = DemoConfig(dp=False, sample_rate=0.5).validate()
    strategy = _strategy(cfg, [np.zeros(2, np.float32)], None)
    assert type(strategy) is flwr.server.strategy.FedAvg
    assert strategy.fraction_fit == 0.5
