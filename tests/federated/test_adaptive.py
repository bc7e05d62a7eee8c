"""Adaptive clipping in DPFedAvg (Andrew et al. 2021): C follows the target quantile of
the update norms, the count is centred and noised, the accounted sigma is unchanged."""
import math

import numpy as np
import pytest

pytest.importorskip("flwr")
from mxprivacy.accounting import GaussianEvent, PoissonSampledEvent  # noqa: E402
from mxprivacy.errors import InvalidParameterError  # noqa: E402
from mxprivacy.federated._adaptive import next_clip_norm  # noqa: E402
from mxprivacy.federated.mods import UPDATE_NORM_KEY  # noqa: E402

from .test_strategy import (Manager, assert_noise_std, fitres, make,  # noqa: E402
                            run_round)


def _updates_with_norms(norms, size=6, seed=0):
    """cid -> a fixed update of the given norm (client i gets norms[i])."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, norm in enumerate(norms):
        direction = rng.normal(size=size)
        out[f"c{i:03d}"] = [direction * (norm / np.linalg.norm(direction))]
    return out


@pytest.mark.parametrize("start, quantile, low, high", [
    (1.0, 0.5, 23.0, 28.0), (1000.0, 0.5, 23.0, 28.0), (1.0, 0.9, 42.0, 48.0)])
def test_clip_norm_moves_to_the_target_quantile_of_the_norms(start, quantile, low, high):
    """Norms 1..50 (one client each, q = 1, no noise): the 0.5 quantile is 25-26, the 0.9
    quantile 45-46. C starts far below or above and must end near it."""
    updates = _updates_with_norms(np.arange(1, 51))
    strategy = make([np.zeros(6)], num_clients=50, clip_norm=start, adaptive_clipping=True,
                    target_quantile=quantile, clip_learning_rate=0.2)
    for r in range(1, 101):
        run_round(strategy, Manager(50), r, updates.__getitem__)
    norms = [row["clip_norm"] for row in strategy.history_]
    assert norms[0] == start
    assert low < strategy.clip_norm_ < high, strategy.clip_norm_
    assert all(low * 0.9 < c < high * 1.1 for c in norms[-20:])


def test_geometric_update_by_hand_with_the_centred_count():
    """unclipped 3 of 10 counted, q K = 5: b~ = (3 - 10/2) / 5 + 1/2 = 0.1 (the centred
    count: one client moves sum(b - 1/2) by 1/2), C' = C exp(-0.2 (0.1 - 0.5))."""
    rng = np.random.default_rng(0)
    assert next_clip_norm(2.0, 3, 10, 0.0, 5.0, 0.5, 0.2, rng) == \
        pytest.approx(2.0 * math.exp(0.08), rel=1e-12)
    assert next_clip_norm(2.0, 0, 0, 0.0, 5.0, 0.5, 0.2, rng) == 2.0  # nobody: C stays


def test_the_count_noise_has_std_sigma_b():
    rng = np.random.default_rng(1)
    sigma_b, m, lr = 3.0, 10.0, 0.2
    draws = np.array([next_clip_norm(1.0, 4, 8, sigma_b, m, 0.5, lr, rng)
                      for _ in range(20_000)])
    noise = (-np.log(draws) / lr + 0.5 - 0.5) * m  # = sum(b - 1/2) + noise = 0 + noise
    assert_noise_std([noise], sigma_b)


def test_update_noise_keeps_the_accounted_sigma_theorem_1():
    sigma, sigma_b, clip = 1.5, 2.0, 2.0
    strategy = make([np.zeros(25_000)], num_clients=8, sample_rate=0.5, clip_norm=clip,
                    noise_multiplier=sigma, adaptive_clipping=True,
                    clipped_count_stddev=sigma_b, delta=1e-5)
    z_delta = strategy.update_noise_multiplier_
    assert z_delta == pytest.approx((sigma ** -2 - (2 * sigma_b) ** -2) ** -0.5, rel=1e-12)
    assert (z_delta ** -2 + (2 * sigma_b) ** -2) ** -0.5 == pytest.approx(sigma, rel=1e-12)
    configured, _ = run_round(strategy, Manager(8), 1, lambda cid: [np.zeros(25_000)])
    assert_noise_std(strategy.parameters_, z_delta * clip / 4)  # zero updates: noise only
    assert strategy.accountant_.ledger == [(PoissonSampledEvent(0.5, GaussianEvent(sigma)), 1)]
    assert strategy.noise_multiplier_ == sigma


def test_client_clipping_reads_the_reported_pre_clip_norm():
    strategy = make([np.zeros(3)], num_clients=4, clip_norm=1.0, clipping="client",
                    adaptive_clipping=True, clip_learning_rate=0.2)
    configured = strategy.configure_fit(1, None, Manager(4))
    reported = [0.5, 0.5, 2.0, None]  # None: no metric, counted as clipped
    results = [(p, fitres([np.full(3, 0.1)], 1, {} if n is None else {UPDATE_NORM_KEY: n}))
               for (p, _), n in zip(configured, reported)]
    strategy.aggregate_fit(1, results, [])
    assert strategy.clip_norm_ == pytest.approx(math.exp(-0.2 * (0.5 - 0.5)))
    results = [(p, fitres([np.full(3, 0.1)], 1, {UPDATE_NORM_KEY: 0.1}))
               for p, _ in strategy.configure_fit(2, None, Manager(4))]
    strategy.aggregate_fit(2, results, [])
    assert strategy.clip_norm_ == pytest.approx(math.exp(-0.2 * 0.5))


@pytest.mark.parametrize("change, message", [
    (dict(noise_multiplier=1.0, clipped_count_stddev=0.5), "clipped_count_stddev > "),
    (dict(noise_multiplier=2.5, num_clients=100, sample_rate=0.2), "q K / 20"),
    (dict(clipped_count_stddev=-1.0), "clipped_count_stddev"),
    (dict(target_quantile=1.0), "target_quantile"),
    (dict(clip_learning_rate=0.0), "clip_learning_rate"),
    (dict(secure_aggregation=True), "secure_aggregation"),
])
def test_bad_adaptive_settings_are_refused(change, message):
    options = dict(num_clients=10, sample_rate=0.5, noise_multiplier=0.5,
                   adaptive_clipping=True, clip_norm=1.0)
    options.update(change)
    with pytest.raises(InvalidParameterError, match=message):
        make([np.zeros(3)], **options)
