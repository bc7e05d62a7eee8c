"""mxprivacy.federated.strategy.DPFedAvg, driven directly (no Flower server, no ray).

configure_fit / aggregate_fit are called as Flower's server loop calls them, with a fake
ClientManager and FitRes built by ``ndarrays_to_parameters``.
"""
import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("flwr")
from flwr.common import Code, EvaluateRes, FitRes, Parameters, Status  # noqa: E402
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays  # noqa: E402
from flwr.common import differential_privacy as flwr_dp  # noqa: E402
from flwr.server.client_proxy import ClientProxy  # noqa: E402
from flwr.server.strategy.aggregate import aggregate as flwr_weighted_mean  # noqa: E402
from scipy import stats  # noqa: E402

from mxprivacy.accounting import (GaussianEvent, PoissonSampledEvent, epsilon_for,  # noqa: E402
                                  make_accountant)
from mxprivacy.errors import (FederatedError, InvalidParameterError,  # noqa: E402
                              PrivacyBudgetExceeded, PrivacyWarning)
from mxprivacy.federated.mods import (CLIP_NORM_KEY, PARTICIPATE_KEY, REJECTED_KEY,  # noqa: E402
                                      REPORT_NORM_KEY, SECURE_KEY)
from mxprivacy.federated.params import clip_update, global_norm  # noqa: E402
from mxprivacy.federated.secure import secagg_settings  # noqa: E402
from mxprivacy.federated.strategy import DPFedAvg  # noqa: E402


class Proxy(ClientProxy):
    """A client the strategy can address; it is never asked to run."""

    def get_properties(self, ins, timeout, group_id):
        raise NotImplementedError

    def get_parameters(self, ins, timeout, group_id):
        raise NotImplementedError

    def fit(self, ins, timeout, group_id):
        raise NotImplementedError

    def evaluate(self, ins, timeout, group_id):
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):
        raise NotImplementedError


class Manager:
    """The part of Flower's ClientManager the strategy uses: ``all()``."""

    def __init__(self, count):
        self.clients = {f"c{i:03d}": Proxy(f"c{i:03d}") for i in range(count)}

    def all(self):
        return dict(self.clients)


def fitres(arrays, num_examples=1, metrics=None):
    return FitRes(status=Status(Code.OK, "ok"), parameters=ndarrays_to_parameters(arrays),
                  num_examples=num_examples, metrics=dict(metrics or {}))


def make(initial, **kwargs):
    options = dict(num_clients=4, sample_rate=1.0, clip_norm=1e6, noise_multiplier=0.0,
                   initial_parameters=initial, seed=0)
    options.update(kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        return DPFedAvg(**options)


def run_round(strategy, manager, server_round, update_of, num_examples=1):
    """configure_fit, then each configured client sends global + update_of(cid)."""
    configured = strategy.configure_fit(server_round, None, manager)
    results = []
    for proxy, ins in configured:
        received = parameters_to_ndarrays(ins.parameters)
        weights = [r + u for r, u in zip(received, update_of(proxy.cid))]
        results.append((proxy, fitres(weights, num_examples)))
    return configured, strategy.aggregate_fit(server_round, results, [])


def chi_square_bounds(size, alpha=1e-6):
    """Two-sided acceptance interval of sum(r^2) / s^2 for ``size`` N(0, s^2) values."""
    return stats.chi2.ppf(alpha / 2, size), stats.chi2.isf(alpha / 2, size)


def assert_noise_std(residual, std):
    """sum(residual^2) / std^2 inside the chi-square interval at level 1e-6."""
    flat = np.concatenate([r.ravel() for r in residual])
    low, high = chi_square_bounds(flat.size)
    statistic = float(np.sum(flat ** 2)) / std ** 2
    assert low < statistic < high, (statistic / flat.size, low / flat.size, high / flat.size)


# -- exactness, clipping -------------------------------------------------------------
def test_exactness_sigma_zero_is_the_plain_mean_of_the_updates_by_hand():
    global_ = [np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), np.array([0.5], np.float32)]
    updates = {"c000": [np.array([[0.3, 0], [0, 0]]), np.array([0.3])],
               "c001": [np.array([[0, -0.6], [0, 0]]), np.array([0.0])],
               "c002": [np.array([[0, 0], [0.9, 0]]), np.array([-0.9])]}
    strategy = make(global_, num_clients=3)
    configured = strategy.configure_fit(1, None, Manager(3))
    results = []
    for (proxy, ins), examples in zip(configured, (1, 10, 100)):  # counts are ignored
        received = parameters_to_ndarrays(ins.parameters)
        weights = [(r + u).astype(np.float32) for r, u in zip(received, updates[proxy.cid])]
        results.append((proxy, fitres(weights, examples)))
    released, metrics = strategy.aggregate_fit(1, results, [])
    new = parameters_to_ndarrays(released)
    np.testing.assert_allclose(new[0], [[1.1, 1.8], [3.3, 4.0]], atol=1e-6)
    np.testing.assert_allclose(new[1], [0.3], atol=1e-6)
    assert new[0].dtype == np.float32 and strategy.history_[0]["contributed"] == 3
    assert set(metrics) == {"clip_norm"}  # counts stay server-side (outside the guarantee)
    # parity: Flower's weighted FedAvg with equal weights gives the same model
    flower = flwr_weighted_mean([(parameters_to_ndarrays(r.parameters), 1) for _, r in results])
    for ours, theirs in zip(new, flower):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_clipping_a_huge_update_contributes_norm_at_most_c():
    global_ = [np.linspace(-1, 1, 12).reshape(3, 4), np.ones(5)]
    rng = np.random.default_rng(1)
    small = [[rng.normal(size=(3, 4)), rng.normal(size=5)] for _ in range(2)]
    small = [[a * (s / global_norm(u)) for a in u] for u, s in zip(small, (0.3, 0.5))]
    huge = [rng.normal(size=(3, 4)), rng.normal(size=5)]
    huge = [a * (1e6 / global_norm(huge)) for a in huge]
    updates = {"c000": small[0], "c001": small[1], "c002": huge}
    strategy = make(global_, num_clients=3, clip_norm=1.0)
    _, (released, _) = run_round(strategy, Manager(3), 1, updates.__getitem__)
    step = [n - g for n, g in zip(parameters_to_ndarrays(released), global_)]
    scale = 1.0 / global_norm(huge)
    expected = [(a + b + c * scale) / 3 for a, b, c in zip(small[0], small[1], huge)]
    for got, want in zip(step, expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    huge_share = [3 * s - a - b for s, a, b in zip(step, small[0], small[1])]
    assert global_norm(huge_share) <= 1.0 + 1e-9
    assert strategy.history_[0]["contributed"] == 3


def test_our_clip_equals_flowers_flat_clipping():
    rng = np.random.default_rng(2)
    for norm in (0.1, 0.99, 1.0, 3.0, 1e6):
        arrays = [rng.normal(size=(4, 3)), rng.normal(size=7)]
        arrays = [a * (norm / global_norm(arrays)) for a in arrays]
        theirs = [a.copy() for a in arrays]
        flwr_dp.clip_inputs_inplace(theirs, 1.0)
        ours, before = clip_update(arrays, 1.0)
        assert before == pytest.approx(norm, rel=1e-12)
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_client_clipping_mode_sends_c_and_clips_again():
    global_ = [np.zeros((2, 3)), np.zeros(2)]
    strategy = make(global_, num_clients=2, clip_norm=1.0, clipping="client")
    configured = strategy.configure_fit(1, None, Manager(2))
    assert all(ins.config[CLIP_NORM_KEY] == 1.0 and ins.config[PARTICIPATE_KEY] == 1
               for _, ins in configured)
    unclipped = [np.full((2, 3), 10.0), np.full(2, 10.0)]  # a client whose mod did not clip
    results = [(configured[0][0], fitres(unclipped)),
               (configured[1][0], fitres([np.ones((2, 3)), np.ones(2)],
                                         metrics={REJECTED_KEY: "app raised"}))]
    released, _ = strategy.aggregate_fit(1, results, [])
    new = parameters_to_ndarrays(released)
    assert global_norm(new) == pytest.approx(1.0 / 2)  # clipped to C, divided by q K = 2
    assert strategy.history_[0]["rejected"] == 1
    assert "app raised" in strategy.history_[0]["rejected_reasons"][0][1]


# -- noise -----------------------------------------------------------------------------
def test_noise_once_per_round_has_std_sigma_c_over_qk():
    """Seeded chi-square test on d = 25,000 released coordinates.

    Residual r = new - global - (sum of the sampled clients' updates) / (q K) should be
    N(0, s^2) with s = sigma C / (q K) (here 1.5 x 2 / 4 = 0.75). Acceptance: S =
    sum(r^2) / s^2 inside the central 1 - 1e-6 chi-square(d) interval. Power,
    computed below with scipy: noise twice (std s sqrt 2, S ~ 2 chi2_d) or half the
    variance (S ~ chi2_d / 2) is accepted with probability < 1e-9 (about 1e-300), i.e.
    both are rejected with probability > 1 - 1e-9.
    """
    d_shapes = [(100, 150), (10_000,)]
    size = sum(int(np.prod(s)) for s in d_shapes)
    low, high = chi_square_bounds(size)
    for factor in (2.0, 0.5):  # variance ratio of the alternatives
        accept = stats.chi2.cdf(high / factor, size) - stats.chi2.cdf(low / factor, size)
        assert accept < 1e-9
    rng = np.random.default_rng(3)
    global_ = [rng.normal(size=s) for s in d_shapes]
    updates = {f"c{i:03d}": [rng.normal(size=s) * 0.002 for s in d_shapes] for i in range(8)}
    sigma, clip, q, k = 1.5, 2.0, 0.5, 8
    strategy = make(global_, num_clients=k, sample_rate=q, clip_norm=clip,
                    noise_multiplier=sigma, seed=11)
    configured, (released, _) = run_round(strategy, Manager(k), 1, updates.__getitem__)
    assert 0 < len(configured) < k
    mean = [sum(updates[p.cid][i] for p, _ in configured) / (q * k) for i in range(2)]
    residual = [n - g - m for n, g, m in zip(parameters_to_ndarrays(released), global_, mean)]
    std = sigma * clip / (q * k)
    assert std == flwr_dp.compute_stdv(sigma, clip, q * k)  # Flower's std on the mean
    assert_noise_std(residual, std)


def test_server_learning_rate_scales_the_noisy_mean():
    global_ = [np.zeros(30_000)]
    strategy = make(global_, num_clients=5, sample_rate=1.0, clip_norm=1.0,
                    noise_multiplier=1.0, server_learning_rate=0.5)
    run_round(strategy, Manager(5), 1, lambda cid: [np.zeros(30_000)])
    assert_noise_std(strategy.parameters_, 0.5 * 1.0 / 5)


def test_an_empty_sample_still_releases_noise_and_is_charged():
    global_ = [np.zeros(25_000)]
    strategy = make(global_, num_clients=3, sample_rate=1e-3, clip_norm=2.0,
                    noise_multiplier=1.0, delta=1e-5)
    assert strategy.configure_fit(1, None, Manager(3)) == []  # Flower cancels the round
    assert strategy.history_ == [] and np.all(strategy.parameters_[0] == 0)
    configured = strategy.configure_fit(2, None, Manager(3))  # round 1 released first
    row = strategy.history_[0]
    assert row["round"] == 1 and row["sampled"] == 0 and row["aggregated"] is False
    assert_noise_std(strategy.parameters_, 1.0 * 2.0 / (1e-3 * 3))
    assert strategy.accountant_.ledger[0][1] == 1
    assert configured == []


# -- accounting, cancelled rounds -----------------------------------------------------
def test_epsilon_equals_the_accountant_composed_over_the_rounds():
    sigma, q, rounds, delta = 1.1, 0.3, 5, 1e-5
    strategy = make([np.zeros(3)], num_clients=10, sample_rate=q, noise_multiplier=sigma,
                    delta=delta, clip_norm=1.0)
    for r in range(1, rounds + 1):
        strategy.configure_fit(r, None, Manager(10))
        _, metrics = strategy.aggregate_fit(r, [], [])
    reference = make_accountant("rdp").compose(
        PoissonSampledEvent(q, GaussianEvent(sigma)), rounds).get_epsilon(delta)
    assert strategy.epsilon() == reference == metrics["epsilon"]
    assert strategy.epsilon() == pytest.approx(epsilon_for(sigma, q, rounds, delta), rel=1e-12)
    assert [row["epsilon"] for row in strategy.history_][-1] == reference
    assert strategy.accountant_.ledger == [(PoissonSampledEvent(q, GaussianEvent(sigma)), rounds)]


def test_pld_accountant_is_used_when_asked():
    strategy = make([np.zeros(3)], num_clients=10, sample_rate=0.3, noise_multiplier=1.0,
                    delta=1e-5, clip_norm=1.0, accountant="pld")
    for r in (1, 2):
        strategy.configure_fit(r, None, Manager(10))
        strategy.aggregate_fit(r, [], [])
    assert strategy.epsilon() == pytest.approx(
        epsilon_for(1.0, 0.3, 2, 1e-5, accountant="pld"), rel=1e-9)


def test_target_epsilon_calibrates_and_the_plan_is_enforced():
    strategy = make([np.zeros(3)], num_clients=10, sample_rate=0.2, noise_multiplier=None,
                    target_epsilon=3.0, delta=1e-5, rounds=6, clip_norm=1.0)
    for r in range(1, 7):
        strategy.configure_fit(r, None, Manager(10))
        strategy.aggregate_fit(r, [], [])
    assert 3.0 - 0.01 <= strategy.epsilon() <= 3.0
    with pytest.raises(PrivacyBudgetExceeded, match="planned rounds"):
        strategy.configure_fit(7, None, Manager(10))


def test_every_round_is_charged_once_even_when_flower_cancels_it():
    delta, sigma, q = 1e-5, 1.0, 0.5
    strategy = make([np.zeros(20_000)], num_clients=6, sample_rate=q, clip_norm=1.0,
                    noise_multiplier=sigma, delta=delta)
    manager = Manager(6)
    strategy.configure_fit(1, None, manager)  # round 1: never aggregated
    assert np.all(strategy.parameters_[0] == 0)
    configured = strategy.configure_fit(2, None, manager)
    assert len(strategy.history_) == 1 and strategy.history_[0]["aggregated"] is False
    after_round_1 = strategy.parameters_[0].copy()
    assert_noise_std([after_round_1], sigma / (q * 6))  # its noise-only update
    sent = parameters_to_ndarrays(configured[0][1].parameters)[0]
    np.testing.assert_array_equal(sent, after_round_1)  # round 2 trains on it
    results = [(p, fitres(parameters_to_ndarrays(ins.parameters))) for p, ins in configured]
    strategy.aggregate_fit(2, results, [])
    strategy.configure_fit(3, None, manager)  # round 3: never aggregated either
    assert [row["aggregated"] for row in strategy.history_] == [False, True]
    assert strategy.accountant_.ledger[0][1] == 2
    strategy.evaluate(3, None)  # Flower's evaluation after round 3 releases it
    assert [row["round"] for row in strategy.history_] == [1, 2, 3]
    assert strategy.accountant_.ledger[0][1] == 3
    assert strategy.epsilon() == pytest.approx(epsilon_for(sigma, q, 3, delta), rel=1e-12)
    strategy.settle()  # idempotent
    assert len(strategy.history_) == 3


def test_aggregate_without_configure_or_twice_is_refused():
    strategy = make([np.zeros(3)])
    with pytest.raises(FederatedError, match="configure_fit"):
        strategy.aggregate_fit(1, [], [])
    strategy.configure_fit(1, None, Manager(4))
    strategy.aggregate_fit(1, [], [])
    with pytest.raises(FederatedError, match="aggregated already"):
        strategy.aggregate_fit(1, [], [])


# -- sampling ----------------------------------------------------------------------
def test_poisson_sampling_frequencies_binomial_and_per_client():
    k, q, rounds = 40, 0.25, 100
    strategy = make([np.zeros(2)], num_clients=k, sample_rate=q, seed=5)
    counts = dict.fromkeys(Manager(k).clients, 0)
    sizes = []
    for r in range(1, rounds + 1):
        configured = strategy.configure_fit(r, None, Manager(k))
        cids = [p.cid for p, _ in configured]
        assert cids == sorted(set(cids))
        sizes.append(len(cids))
        for cid in cids:
            counts[cid] += 1
    total = sum(sizes)  # Binomial(K R, q): two-sided test at level 1e-6
    assert stats.binom.cdf(total, k * rounds, q) > 5e-7
    assert stats.binom.sf(total - 1, k * rounds, q) > 5e-7
    per_client = np.array(list(counts.values()))  # each Binomial(R, q), independent
    statistic = np.sum((per_client - rounds * q) ** 2) / (rounds * q * (1 - q))
    assert statistic < stats.chi2.isf(1e-6, k)
    assert len(set(sizes)) > 3  # the sample size varies (not a fixed-size draw)


def test_unseeded_sampling_draws_fresh_secret_coins():
    patterns = []
    for _ in range(2):
        strategy = DPFedAvg(num_clients=30, sample_rate=0.5, clip_norm=1.0,
                            noise_multiplier=1.0, initial_parameters=[np.zeros(2)])
        patterns.append([tuple(p.cid for p, _ in strategy.configure_fit(r, None, Manager(30)))
                         for r in range(1, 4)])
    assert patterns[0] != patterns[1]  # equal with probability 2^-90


def test_a_seed_warns_that_it_voids_the_guarantee():
    with pytest.warns(PrivacyWarning, match="no\nprivacy guarantee|no privacy guarantee"):
        DPFedAvg(num_clients=3, sample_rate=0.5, clip_norm=1.0, noise_multiplier=1.0,
                 initial_parameters=[np.zeros(2)], seed=1)


# -- bad results, failures -----------------------------------------------------------
def test_bad_results_are_rejected_counted_and_the_run_continues():
    global_ = [np.zeros((2, 2)), np.zeros(3)]
    good = [np.full((2, 2), 0.1), np.full(3, 0.2)]
    strategy = make(global_, num_clients=6, clip_norm=10.0)
    manager = Manager(6)
    proxies = [p for p, _ in strategy.configure_fit(1, None, manager)]
    nan = [np.full((2, 2), np.nan), np.zeros(3)]
    pickled = Parameters(tensors=[pickle.dumps(np.zeros((2, 2))), pickle.dumps(np.zeros(3))],
                         tensor_type="numpy.ndarray")
    bad = FitRes(Status(Code.OK, "ok"), pickled, 1, {})
    results = [(proxies[0], fitres(good)), (proxies[1], fitres(nan)),
               (proxies[2], fitres([np.zeros((3, 2)), np.zeros(3)])),
               (proxies[3], fitres([np.zeros((2, 2))])),
               (proxies[4], fitres([np.zeros((2, 2), np.int64), np.zeros(3, np.int64)])),
               (proxies[5], bad), (Proxy("intruder"), fitres(good)), (proxies[0], fitres(good))]
    failures = [RuntimeError("client c009 disconnected"),
                (proxies[5], FitRes(Status(Code.FIT_NOT_IMPLEMENTED, "no fit"), pickled, 0, {}))]
    released, metrics = strategy.aggregate_fit(1, results, failures)
    for new, g in zip(parameters_to_ndarrays(released), good):
        np.testing.assert_allclose(new, g / 6, atol=1e-12)  # only the good client counts
    row = strategy.history_[0]
    assert (row["received"], row["contributed"], row["rejected"], row["failures"]) == (8, 1, 7, 2)
    assert "rejected" not in metrics and "failures" not in metrics  # server-side only
    reasons = [reason for _, reason in row["rejected_reasons"]]
    for needle in ("NaN/inf", "shape (3, 2)", "Expected 2 arrays", "dtype int64",
                   "unreadable", "not sampled", "not sampled"):
        assert any(needle in r for r in reasons), needle
    assert "disconnected" in row["failure_reasons"][0]
    assert "no fit" in row["failure_reasons"][1]
    run_round(strategy, manager, 2, lambda cid: good)  # the run goes on
    assert strategy.history_[1]["contributed"] == 6


# -- secure aggregation mode ---------------------------------------------------------
def _secure(global_, **kwargs):
    return make(global_, num_clients=4, sample_rate=0.5, clip_norm=1.0,
                secure_aggregation=True, **kwargs)


def test_secure_mode_contacts_everyone_with_the_coin_and_c_eff():
    global_ = [np.zeros((3, 3), np.float32), np.zeros(2, np.float32)]
    strategy = _secure(global_)
    configured = strategy.configure_fit(1, None, Manager(4))
    assert [p.cid for p, _ in configured] == sorted(Manager(4).clients)
    c_eff = secagg_settings(1.0, 11, 4)["effective_clip_norm"]
    assert all(ins.config[CLIP_NORM_KEY] == c_eff < 1.0 for _, ins in configured)
    assert all(ins.config[SECURE_KEY] == 1 for _, ins in configured)  # no metrics in the clear
    assert all(not ins.config.get(REPORT_NORM_KEY) for _, ins in configured)
    coins = [ins.config[PARTICIPATE_KEY] for _, ins in configured]
    assert set(coins) <= {0, 1}
    updates = [[np.full((3, 3), 0.1 * (i + 1)) * c, np.full(2, 0.05) * c]
               for i, c in enumerate(coins)]
    mean = [sum(u[j] for u in updates) / 4 for j in range(2)]  # SecAgg's weighted mean
    results = [(p, fitres(mean, 1)) for p, _ in configured]
    released, _ = strategy.aggregate_fit(1, results, [])
    for new, j in zip(parameters_to_ndarrays(released), range(2)):
        np.testing.assert_allclose(new, sum(u[j] for u in updates) / (0.5 * 4), atol=1e-6)
    assert strategy.history_[0]["sampled"] == sum(coins)
    assert strategy.history_[0]["contributed"] == 4


def test_secure_mode_counts_a_dropout_once():
    """Flower 1.12's SecAgg+ workflow lists a client that dropped out twice."""
    strategy = _secure([np.zeros(4)])
    configured = strategy.configure_fit(1, None, Manager(4))
    results = [(p, fitres([np.zeros(4)], 1)) for p, _ in configured[:3]]
    dropped = RuntimeError("client 3 timed out")
    strategy.aggregate_fit(1, results, [dropped, dropped])
    assert strategy.history_[0]["failures"] == 1


def test_secure_aggregate_past_the_bound_is_projected_onto_the_fixed_ball():
    """A decision on the un-noised sum must not depend on who is present: the aggregate
    is projected onto the ball of the public radius K x C (1-Lipschitz), never discarded
    by a threshold of n x C (one present client then moved the release by 9.5 C)."""
    global_ = [np.zeros(4)]
    strategy = _secure(global_)
    configured = strategy.configure_fit(1, None, Manager(4))
    results = [(p, fitres([np.full(4, 10.0)], 1)) for p, _ in configured]
    strategy.aggregate_fit(1, results, [])
    radius = 4 * strategy.clip_norm_
    expected = np.full(4, radius / 2.0) / (0.5 * 4)  # sum 4 x (10,10,10,10) onto the ball
    np.testing.assert_allclose(strategy.parameters_[0], expected, rtol=1e-12)
    note = strategy.history_[0]["rejected_reasons"][0][1]
    assert "projected" in note and "80" not in note  # the un-noised norm is never quoted


def test_secure_aggregate_within_the_ball_is_kept_whatever_the_claimed_weights():
    global_ = [np.zeros(4)]
    strategy = _secure(global_)
    configured = strategy.configure_fit(1, None, Manager(4))
    results = [(p, fitres([np.full(4, 0.1)], 7)) for p, _ in configured]
    strategy.aggregate_fit(1, results, [])
    np.testing.assert_allclose(strategy.parameters_[0], 0.4 / (0.5 * 4), rtol=1e-12)


# -- evaluation ----------------------------------------------------------------------
def test_evaluate_fn_sees_the_global_model_and_gets_epsilon():
    seen = []

    def evaluate_fn(server_round, arrays, config):
        seen.append((server_round, arrays))
        return 0.25, {"accuracy": 0.75}

    strategy = make([np.ones(3)], evaluate_fn=evaluate_fn, delta=1e-5, noise_multiplier=1.0)
    loss, metrics = strategy.evaluate(0, None)
    assert (loss, metrics["accuracy"], metrics["epsilon"]) == (0.25, 0.75, 0.0)
    np.testing.assert_array_equal(seen[0][1][0], np.ones(3))


def test_federated_evaluation_is_off_by_default_and_weighted_when_on():
    assert make([np.ones(3)]).configure_evaluate(1, None, Manager(4)) == []
    strategy = make([np.ones(3)], fraction_evaluate=0.5)
    assert len(strategy.configure_evaluate(1, None, Manager(4))) == 2
    results = [(Proxy("a"), EvaluateRes(Status(Code.OK, ""), 1.0, 10, {"accuracy": 0.5})),
               (Proxy("b"), EvaluateRes(Status(Code.OK, ""), 0.2, 30, {"accuracy": 0.9}))]
    loss, metrics = strategy.aggregate_evaluate(1, results, [])
    assert loss == pytest.approx((10 * 1.0 + 30 * 0.2) / 40)
    assert metrics["accuracy"] == pytest.approx((5 + 27) / 40)


# -- bad hyper-parameters ------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    (dict(sample_rate=0.0), "sample_rate"), (dict(sample_rate=1.5), "sample_rate"),
    (dict(clip_norm=0.0), "clip_norm"), (dict(clip_norm=-1.0), "clip_norm"),
    (dict(noise_multiplier=-0.1), "noise_multiplier"),
    (dict(noise_multiplier=1.0, target_epsilon=1.0, delta=1e-5, rounds=3), "exactly one"),
    (dict(noise_multiplier=None), "exactly one"),
    (dict(noise_multiplier=None, target_epsilon=1.0, delta=1e-5), "rounds="),
    (dict(noise_multiplier=None, target_epsilon=1.0, rounds=3), "delta="),
    (dict(num_clients=0), "num_clients"), (dict(num_clients=2.5), "num_clients"),
    (dict(delta=0.0), "delta"), (dict(delta=1.0), "delta"), (dict(rounds=0), "rounds"),
    (dict(server_learning_rate=0.0), "server_learning_rate"),
    (dict(accountant="gdp"), "approximation"), (dict(clipping="both"), "clipping"),
    (dict(secure_aggregation=True, clipping="server"), "clipping='client'"),
    (dict(initial_parameters=[np.array([np.nan])]), "NaN"),
    (dict(initial_parameters=[]), "initial_parameters"),
    (dict(fraction_evaluate=2.0), "fraction_evaluate"),
])
def test_bad_hyper_parameters_are_refused_with_what_to_do(change, message):
    options = dict(num_clients=4, sample_rate=0.5, clip_norm=1.0, noise_multiplier=1.0,
                   initial_parameters=[np.zeros(3)])
    options.update(change)
    with pytest.raises(InvalidParameterError, match=message):
        DPFedAvg(**options)


def test_epsilon_needs_a_delta():
    with pytest.raises(InvalidParameterError, match="delta"):
        make([np.zeros(2)]).epsilon()
    assert make([np.zeros(2)]).epsilon(delta=1e-5) == 0.0  # nothing released yet


# -- Flower's own server loop (in-process clients, no ray) ---------------------------
class TrainingProxy(Proxy):
    """Sends global + 0.01 everywhere; client c004 raises (Flower records a failure)."""

    def fit(self, ins, timeout, group_id):
        if self.cid == "c004":
            raise RuntimeError("client lost")
        return fitres([r + 0.01 for r in parameters_to_ndarrays(ins.parameters)])


def test_flower_server_loop_cancelled_rounds_and_failures_are_all_charged():
    from flwr.server import Server, SimpleClientManager

    manager = SimpleClientManager()
    for i in range(5):
        manager.register(TrainingProxy(f"c{i:03d}"))
    strategy = make([np.zeros(3)], num_clients=5, sample_rate=0.2, clip_norm=1.0,
                    noise_multiplier=1.0, delta=1e-5, seed=3, evaluate_fn=lambda *a: (0.0, {}))
    history, _ = Server(client_manager=manager, strategy=strategy).fit(8, timeout=None)
    rows = strategy.history_
    assert [row["round"] for row in rows] == list(range(1, 9))
    assert any(row["sampled"] == 0 for row in rows)  # Flower cancelled those rounds
    assert any(row["failures"] for row in rows)
    assert all(row["aggregated"] == (row["sampled"] > 0) for row in rows)
    assert strategy.accountant_.ledger[0][1] == 8
    assert strategy.epsilon() == pytest.approx(epsilon_for(1.0, 0.2, 8, 1e-5), rel=1e-12)
    assert history.metrics_centralized["epsilon"][-1] == (8, strategy.epsilon())
