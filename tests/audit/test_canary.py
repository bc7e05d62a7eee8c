"""mxprivacy.audit.canary: Clopper-Pearson bounds, ROC metrics, the two-run epsilon bound.

Reference values marked "JAX Privacy <test name>" come from google-deepmind/jax_privacy
``jax_privacy/auditing_test.py`` (our ``auroc(convex_hull=True)`` is its
``attack_auroc``, ``tpr_at_fpr`` its ``tpr_at_given_fpr``, ``bonferroni="hull"`` its
default ``Bonferroni()`` strategy). The one-run bounds are in test_one_run.py.
"""
import itertools

import numpy as np
import pytest
from scipy import special, stats
from sklearn import metrics

from mxprivacy.accounting.gdp import gdp_epsilon
from mxprivacy.audit.canary import (CanaryScoreAuditor, _raw_counts_epsilon, _upper_hull,
                                    clopper_pearson_lower, clopper_pearson_upper,
                                    epsilon_from_counts)
from mxprivacy.errors import AuditInputError


def deterministic_normal(mu, sigma, n):
    """n scores at the mid-quantiles of N(mu, sigma^2) (JAX Privacy's helper)."""
    return stats.norm.ppf(np.linspace(0, 1, n, endpoint=False) + 1 / (2 * n)) * sigma + mu


def circular_roc_scores(n_in, n_out):
    """Scores whose ROC curve is the quarter circle tpr = sqrt(fpr (2 - fpr))."""
    return np.sqrt(1 - np.linspace(0, 1, n_in) ** 2), np.linspace(0, 1, n_out)


# ----- Clopper-Pearson, by hand against scipy.stats ------------------------------------

@pytest.mark.parametrize("n, k_frac, significance",
                         itertools.product([10, 100, 1000], [0.3, 0.4, 0.5, 0.8, 0.9],
                                           [0.1, 0.03, 0.01]))
def test_clopper_pearson_upper_solves_the_binomial_cdf(n, k_frac, significance):
    # JAX Privacy test_clopper_pearson_upper checks P(Bin(n, p) <= k) ~ significance by
    # Monte Carlo (rtol 0.05); here the identity is checked exactly.
    k = round(k_frac * n)
    upper = clopper_pearson_upper(k, n, significance)
    assert stats.binom.cdf(k, n, upper) == pytest.approx(significance, rel=1e-9)
    assert upper == pytest.approx(stats.beta.ppf(1 - significance, k + 1, n - k), rel=1e-10)
    lower = clopper_pearson_lower(k, n, significance)
    assert stats.binom.sf(k - 1, n, lower) == pytest.approx(significance, rel=1e-9)
    assert lower == pytest.approx(stats.beta.ppf(significance, k, n - k + 1), rel=1e-10)
    assert lower < k / n < upper
    # lower(k) = 1 - upper(n - k): the failures' upper bound, mirrored
    assert lower == pytest.approx(1 - clopper_pearson_upper(n - k, n, significance), abs=1e-12)


def test_clopper_pearson_edges_and_arrays():
    assert clopper_pearson_upper(5, 5, 0.05) == 1.0
    assert clopper_pearson_lower(0, 5, 0.05) == 0.0
    # no successes: (1 - p)^n = significance
    assert clopper_pearson_upper(0, 20, 0.05) == pytest.approx(1 - 0.05 ** (1 / 20), rel=1e-12)
    assert clopper_pearson_lower(20, 20, 0.05) == pytest.approx(0.05 ** (1 / 20), rel=1e-12)
    ks = np.array([0, 3, 10])
    np.testing.assert_allclose(clopper_pearson_upper(ks, 10, 0.1),
                               [clopper_pearson_upper(int(k), 10, 0.1) for k in ks])
    assert isinstance(clopper_pearson_upper(3, 10), float)


@pytest.mark.parametrize("k, n", [(4, 3), (-1, 3), (1.5, 3), (0, 0), (np.nan, 3)])
def test_clopper_pearson_refuses_impossible_counts(k, n):
    with pytest.raises(AuditInputError, match="k"):
        clopper_pearson_upper(k, n, 0.05)


def test_epsilon_from_counts_is_the_ratio_of_half_significance_bounds():
    tp, n_pos, fp, n_neg, sig, delta = 80, 100, 5, 120, 0.05, 1e-3
    tpr_lb = stats.beta.ppf(sig / 2, tp, n_pos - tp + 1)
    fpr_ub = stats.beta.ppf(1 - sig / 2, fp + 1, n_neg - fp)
    expected = np.log((tpr_lb - delta) / fpr_ub)
    assert epsilon_from_counts(tp, n_pos, fp, n_neg, sig, delta) == pytest.approx(expected, rel=1e-10)
    assert epsilon_from_counts(10, 100, 50, 100) == 0.0  # worse than chance: nothing shown
    np.testing.assert_allclose(epsilon_from_counts(np.array([tp, 10]), n_pos, np.array([fp, 50]), n_neg,
                                                   sig, delta), [expected, 0.0], rtol=1e-10)


# ----- ROC counts and hull -----------------------------------------------------------

@pytest.mark.parametrize("in_scores, out_scores, thresholds, tn, fn", [
    # JAX Privacy test_get_tn_fn_counts, _ties_convex, _ties_nonconvex, _zeros
    ([1.5, 2.5, 0.5, 3.5], [0, 3, 2, 1], [0, 0.5, 3.5, np.inf], [0, 1, 4, 4], [0, 0, 3, 4]),
    ([0, 1, 1, 2], [0, 0, 1, 1], [0, 1, 2, np.inf], [0, 2, 4, 4], [0, 1, 3, 4]),
    ([0, 0, 1, 2], [0, 1, 1, 1], [0, 2, np.inf], [0, 4, 4], [0, 3, 4]),
    (np.zeros(4), np.zeros(4), [0, np.inf], [0, 4], [0, 4]),
])
def test_hull_thresholds_and_counts_match_jax_privacy(in_scores, out_scores, thresholds, tn, fn):
    auditor = CanaryScoreAuditor(in_scores, out_scores)
    hull = auditor._hull[::-1]  # JAX lists thresholds increasing
    np.testing.assert_equal(auditor._thresholds[hull], thresholds)
    np.testing.assert_equal(auditor.n_out - auditor._fp[hull], tn)
    np.testing.assert_equal(auditor.n_in - auditor._tp[hull], fn)


@pytest.mark.parametrize("points, expected", [
    # JAX Privacy test_pareto_frontier_two_points, _linear (n = 5), _simple_1 .. _simple_4
    ([[0, 0], [1, 1]], [0, 1]),
    ([[i, i] for i in range(5)], [0, 4]),
    ([[0, 0], [0, 2], [3, 2], [3, 5], [5, 5]], [0, 1, 3, 4]),
    ([[0, 0], [0, 2], [2, 2], [2, 3], [3, 3], [3, 5], [5, 5]], [0, 1, 5, 6]),
    ([[0, 0], [0, 2], [1, 2], [1, 4], [3, 4], [3, 5], [5, 5]], [0, 1, 3, 5, 6]),
    ([[0, 0], [0, 2], [1, 2], [1, 3], [2, 3], [2, 4], [4, 4]], [0, 1, 5, 6]),
])
def test_upper_hull_on_jax_privacy_frontier_cases(points, expected):
    points = np.array(points)
    np.testing.assert_equal(_upper_hull(points[:, 0], points[:, 1]), expected)


@pytest.mark.parametrize("seed", range(5))
def test_upper_hull_matches_the_cubic_definition(seed):
    # JAX Privacy test_pareto_frontier_random: a point is dropped iff some pair around
    # it has it on or below their chord.
    rng = np.random.default_rng(seed)
    x = np.linspace(0, np.pi, 60)
    y = np.sin(x) + rng.normal(scale=0.1, size=60)
    below = {j for i, j, k in itertools.combinations(range(60), 3)
             if (x[j] - x[i]) * (y[k] - y[i]) - (y[j] - y[i]) * (x[k] - x[i]) >= 0}
    np.testing.assert_equal(_upper_hull(x, y), sorted(set(range(60)) - below))


# ----- descriptive metrics -----------------------------------------------------------

@pytest.mark.parametrize("seed, ties", [(0, False), (1, False), (2, True), (3, True)])
def test_roc_and_auroc_match_sklearn(seed, ties):
    rng = np.random.default_rng(seed)
    in_scores, out_scores = rng.normal(0.5, 1, 300), rng.normal(0, 1, 200)
    if ties:
        in_scores, out_scores = np.round(in_scores), np.round(out_scores)
    labels = np.r_[np.ones(300), np.zeros(200)]
    scores = np.r_[in_scores, out_scores]
    auditor = CanaryScoreAuditor(in_scores, out_scores)
    assert auditor.auroc() == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr = auditor.roc_curve()
    ref_fpr, ref_tpr, _ = metrics.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    assert auditor.auroc(convex_hull=True) >= auditor.auroc()


def test_hull_auroc_matches_jax_privacy():
    # JAX Privacy test_attack_auroc_simple: frontier (0,0) (0,2) (1,3) (4,4) -> 13/16
    assert CanaryScoreAuditor([0, 4, 6, 7], [1, 2, 3, 5]).auroc(convex_hull=True) == pytest.approx(13 / 16)
    for n_out in (15, 30, 45):  # test_attack_auroc_worst_case / _best_case
        assert CanaryScoreAuditor(np.zeros(30), np.ones(n_out)).auroc(convex_hull=True) == pytest.approx(0.5)
        assert CanaryScoreAuditor(np.ones(30), np.zeros(n_out)).auroc(convex_hull=True) == pytest.approx(1.0)
        # test_attack_auroc_circular_roc: pi / 4 to 3 places
        auditor = CanaryScoreAuditor(*circular_roc_scores(10_000, n_out * 10_000 // 30))
        assert auditor.auroc(convex_hull=True) == pytest.approx(np.pi / 4, abs=5e-4)
    rng = np.random.default_rng(0xBAD5EED)  # test_attack_auroc_random: 0.5, rtol 0.05
    auditor = CanaryScoreAuditor(rng.uniform(0, 1, 10_000), rng.uniform(0, 1, 15_000))
    assert auditor.auroc(convex_hull=True) == pytest.approx(0.5, rel=0.05)


@pytest.mark.parametrize("n_out", [15, 30, 45])
def test_tpr_at_fpr_matches_jax_privacy(n_out):
    fprs = np.linspace(0, 1, 10)
    worst = CanaryScoreAuditor(np.zeros(30), np.ones(n_out))  # test_tpr_at_given_fpr_worst_case
    np.testing.assert_allclose(worst.tpr_at_fpr(fprs), fprs)
    np.testing.assert_allclose([worst.tpr_at_fpr(f) for f in fprs], fprs)
    best = CanaryScoreAuditor(np.ones(30), np.zeros(n_out))  # test_tpr_at_given_fpr_best_case
    np.testing.assert_equal(best.tpr_at_fpr(fprs), np.ones(10))
    # test_tpr_at_given_fpr_circular_roc: sqrt(fpr (2 - fpr)), rtol 1e-3
    circle = CanaryScoreAuditor(*circular_roc_scores(10_000, n_out * 10_000 // 30))
    np.testing.assert_allclose(circle.tpr_at_fpr(fprs), np.sqrt(fprs * (2 - fprs)), rtol=1e-3)
    rng = np.random.default_rng(0xBAD5EED)  # test_tpr_at_given_fpr_random
    uniform = CanaryScoreAuditor(rng.uniform(0, 1, 100_000), rng.uniform(0, 1, n_out * 100_000 // 30))
    np.testing.assert_allclose(uniform.tpr_at_fpr(fprs), fprs, rtol=0.05, atol=1e-3)


def test_tpr_at_fpr_simple_and_bad_rates():
    auditor = CanaryScoreAuditor([1, 3], [0, 2])  # JAX Privacy test_tpr_at_given_fpr_simple
    np.testing.assert_allclose(auditor.tpr_at_fpr([0, 0.25, 0.5, 0.75, 1.0]), [0.5, 0.75, 1, 1, 1])
    assert isinstance(auditor.tpr_at_fpr(0.25), float)
    for bad in (-0.1, 1.5, np.nan):
        with pytest.raises(AuditInputError, match="fpr"):
            auditor.tpr_at_fpr(bad)


@pytest.mark.parametrize("prevalence", [None, 0.0, 0.1, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("ratio", [0.5, 1.0, 1.5])
def test_max_accuracy_matches_jax_privacy(prevalence, ratio):
    # JAX Privacy test_max_accuracy_simple (significance=None)
    n_in, n_out = 1000, int(1000 * ratio)
    auditor = CanaryScoreAuditor([1] * 500 + [3] * 500, [0] * (n_out // 2) + [2] * (n_out // 2))
    p = n_in / (n_in + n_out) if prevalence is None else prevalence
    expected = max(p + 0.5 * (1 - p), 0.5 * p + (1 - p))
    assert auditor.max_accuracy(prevalence) == pytest.approx(expected)
    if prevalence is not None:  # test_max_accuracy_circular_roc: 3 places
        circle = CanaryScoreAuditor(*circular_roc_scores(10_000, int(10_000 * ratio)))
        expected = np.sqrt(prevalence ** 2 + (1 - prevalence) ** 2)
        assert circle.max_accuracy(prevalence) == pytest.approx(expected, abs=5e-4)


# ----- raw counts ----------------------------------------------------------------------

@pytest.mark.parametrize("min_count", [1, 50])
@pytest.mark.parametrize("ratio", [0.5, 1.0, 1.5])
def test_raw_counts_accurate_at_large_delta(min_count, ratio):
    # JAX Privacy test_epsilon_raw_counts_helper_accurate_large_delta: rtol 0.1
    auditor = CanaryScoreAuditor(deterministic_normal(1, 1, 200_000),
                                 deterministic_normal(0, 1, int(200_000 * ratio)))
    assert auditor.epsilon_raw_counts(min_count, 1e-2) == pytest.approx(gdp_epsilon(1.0, 1e-2), rel=0.1)


@pytest.mark.parametrize("min_count, n_neg, n_pos", itertools.product([1, 3], [10, 13], [9, 12]))
def test_raw_counts_perfect_attack_uses_the_smallest_fpr(min_count, n_neg, n_pos):
    # JAX Privacy test_epsilon_raw_counts_helper_worst_case: log(n_neg / min_count)
    auditor = CanaryScoreAuditor(np.ones(n_pos), np.zeros(n_neg))
    assert auditor.epsilon_raw_counts(min_count, 0.0) == pytest.approx(np.log(n_neg / min_count))


@pytest.mark.parametrize("min_count, delta", itertools.product([1, 2], [0, 1 / 8, 1 / 4, 3 / 8, 1 / 2]))
def test_raw_counts_table_with_delta(min_count, delta):
    # JAX Privacy test_epsilon_raw_counts_helper_nonzero_delta: hull (0,0) (0,2) (4,6) (8,8)
    slopes = {1: {0: 3, 1 / 8: 2}, 2: {0: 2, 1 / 8: 3 / 2}}[min_count]
    slopes.update({1 / 4: 1, 3 / 8: 3 / 4, 1 / 2: 1 / 2})
    expected = max(np.log(slopes[delta]), 0)
    tp, fp = np.array([0, 2, 6, 8]), np.array([0, 0, 4, 8])
    assert _raw_counts_epsilon(tp, fp, min_count, delta) == pytest.approx(expected)
    auditor = CanaryScoreAuditor([3, 3, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0])  # same hull
    assert auditor.epsilon_raw_counts(min_count, delta) == pytest.approx(expected)


@pytest.mark.parametrize("one_sided, delta", itertools.product([True, False], [0, 0.1]))
def test_raw_counts_zero_without_enough_false_positives(one_sided, delta):
    # JAX Privacy test_epsilon_raw_counts_zero_if_no_min_counts
    auditor = CanaryScoreAuditor(np.arange(10) + 0.5, np.arange(10))
    assert auditor.epsilon_raw_counts(12, delta, one_sided) == 0.0


def _low_tail_scores(n, seed=0):
    """Non-members ~ U(0, 1), members ~ U(0.2, 1): log(TPR / FPR) <= log(1.25) at every
    threshold, but TNR / FNR is unbounded near 0.2 (no member scores below it)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.2, 1, n), rng.uniform(0, 1, n)


def test_raw_counts_two_sided_uses_the_complementary_inequality():
    auditor = CanaryScoreAuditor(*_low_tail_scores(5000))
    assert auditor.epsilon_raw_counts(50, 0.0) < 0.5  # log(1.25) plus the estimate's noise
    assert auditor.epsilon_raw_counts(50, 0.0, one_sided=False) > 2.0


# ----- the two-run Clopper-Pearson bound ---------------------------------------------

@pytest.mark.parametrize("n_in, ratio, threshold", itertools.product([100, 1000], [0.5, 1.0, 1.5], [0, 0.5, 1.0]))
def test_explicit_threshold_matches_jax_privacy(n_in, ratio, threshold):
    # JAX Privacy test_epsilon_clopper_pearson_explicit (significance 0.1, split in two)
    in_scores = deterministic_normal(1, 1, n_in)
    n_out = int(n_in * ratio)
    out_scores = deterministic_normal(0, 1, n_out)
    fn, fp = np.sum(in_scores < threshold), np.sum(out_scores >= threshold)
    tpr_lb = 1 - stats.beta.ppf(1 - 0.05, fn + 1, n_in - fn)
    fpr_ub = stats.beta.ppf(1 - 0.05, fp + 1, n_out - fp)
    expected = max(0, np.log(tpr_lb / fpr_ub))
    auditor = CanaryScoreAuditor(in_scores, out_scores)
    assert auditor.epsilon_clopper_pearson(0.1, threshold=threshold) == pytest.approx(expected, rel=1e-9)
    assert epsilon_from_counts(n_in - fn, n_in, fp, n_out, 0.1) == pytest.approx(expected, rel=1e-9)


def _tight_case(mu, ratio, n, one_sided):
    auditor = CanaryScoreAuditor(deterministic_normal(mu, 1, n), deterministic_normal(0, 1, int(n * ratio)))
    true_eps = gdp_epsilon(mu, 0.1)
    for rule in ("hull", "all"):
        bound = auditor.epsilon_clopper_pearson(0.2, 0.1, one_sided, bonferroni=rule)
        assert bound < true_eps
        if rule == "hull":  # JAX Privacy's tolerance for its rule
            assert bound == pytest.approx(true_eps, rel=0.2)


@pytest.mark.parametrize("mu, ratio, one_sided", itertools.product([1.0, 1.5], [0.5, 1.0, 1.5], [True, False]))
def test_bound_is_tight_on_many_gaussian_scores(mu, ratio, one_sided):
    # JAX Privacy test_epsilon_clopper_pearson_tight (Bonferroni) at 200,000 rather than
    # 2,000,000 members; the slow test below runs its full grid.
    _tight_case(mu, ratio, 200_000, one_sided)


@pytest.mark.slow
@pytest.mark.parametrize("mu, ratio", itertools.product([0.3, 1.0, 1.5], [0.5, 1.0, 1.5]))
def test_bound_is_tight_on_many_gaussian_scores_jax_size(mu, ratio):
    for one_sided in (True, False):
        _tight_case(mu, ratio, 2_000_000, one_sided)


def test_simultaneous_bounds_cover_every_threshold():
    # The "all" rule claims the FNR and FPR upper bounds hold at every threshold at
    # once with probability >= 1 - significance. Members ~ U(0.3, 1.3) and non-members
    # ~ U(0, 1) have known rates at any threshold. 400 draws; if the joint failure
    # rate were 0.2 (the claim), P(more than 100 failures) < 0.01; 23 are measured.
    # Without the per-order-statistic correction 306 fail (mutation-checked).
    significance, failures = 0.2, 0
    for seed in range(400):
        rng = np.random.default_rng(seed)
        auditor = CanaryScoreAuditor(rng.uniform(0.3, 1.3, 60), rng.uniform(0, 1, 50))
        cuts, tp, fp, sig_in, sig_out = auditor._cp_tests(significance, None, "all")
        fnr_ub = clopper_pearson_upper(60 - tp, 60, sig_in)
        fpr_ub = clopper_pearson_upper(fp, 50, sig_out)
        true_fnr = np.clip(cuts - 0.3, 0, 1)
        true_fpr = np.clip(1 - cuts, 0, 1)
        failures += bool(np.any(true_fnr > fnr_ub) or np.any(true_fpr > fpr_ub))
    assert failures <= 100, failures


def _randomized_response(rng, member, q):
    """An epsilon-DP score: the membership bit, flipped with probability 1 - q, plus an
    independent uniform tie-break. TPR / FPR = q / (1 - q) at every threshold in (1, 1.5]."""
    flag = np.where(rng.random(member.size) < q, member, ~member)
    return flag + 0.5 * rng.random(member.size)


def test_soundness_on_an_epsilon_dp_mechanism():
    # Randomized response with epsilon 1, delta 1e-6: true epsilon(delta) =
    # log((q - delta) / (1 - q)), attained at many thresholds. 200 trials: a sound
    # 95 % bound exceeds it in at most ~5 % of them; allowing 18 (P(> 18) < 0.01 at a
    # 5 % rate), and in practice none does (the correction is conservative).
    q, delta = special.expit(1.0), 1e-6
    true_eps = np.log((q - delta) / (1 - q))
    bounds = []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        auditor = CanaryScoreAuditor(_randomized_response(rng, np.ones(400, bool), q),
                                     _randomized_response(rng, np.zeros(400, bool), q))
        bounds.append(auditor.epsilon_clopper_pearson(0.05, delta))
    bounds = np.array(bounds)
    assert np.sum(bounds > true_eps) <= 18
    assert bounds.max() < true_eps * 1.1
    assert np.median(bounds) > 0.5 * true_eps  # and it has power


def test_soundness_on_gaussian_scores():
    # Scores N(mu, 1) against N(0, 1) are mu-GDP: epsilon(delta) from gdp_epsilon.
    # The bound must stay below it (at most 18 of 200 trials, never by much).
    mu, delta = 1.0, 0.05
    true_eps = gdp_epsilon(mu, delta)  # 1.57
    bounds = np.array([
        CanaryScoreAuditor(rng.normal(mu, 1, 1000), rng.normal(0, 1, 1000)).epsilon_clopper_pearson(0.05, delta)
        for rng in map(np.random.default_rng, range(200))])
    assert np.sum(bounds > true_eps) <= 18
    assert bounds.max() < true_eps * 1.1
    assert np.median(bounds) > 0.4 * true_eps  # 0.74 measured


def test_two_sided_uses_the_complementary_inequality():
    auditor = CanaryScoreAuditor(*_low_tail_scores(2000))
    assert auditor.epsilon_clopper_pearson() < np.log(1.25)
    assert auditor.epsilon_clopper_pearson(one_sided=False) > 2.5


def test_hull_rule_is_jax_privacy_and_differs_from_the_default():
    rng = np.random.default_rng(0)
    auditor = CanaryScoreAuditor(rng.normal(1, 1, 10_000), rng.normal(0, 1, 10_000))
    hull = auditor._hull
    tests = 0.05 / (2 * len(hull))  # JAX Privacy's Bonferroni() strategy
    tpr_lb = 1 - stats.beta.ppf(1 - tests, 10_000 - auditor._tp[hull] + 1, auditor._tp[hull])
    fpr_ub = stats.beta.ppf(1 - tests, auditor._fp[hull] + 1, 10_000 - auditor._fp[hull])
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.nanmax(np.log(tpr_lb - 1e-5) - np.log(fpr_ub))
    assert auditor.epsilon_clopper_pearson(0.05, 1e-5, bonferroni="hull") == pytest.approx(expected, rel=1e-9)
    assert auditor.epsilon_clopper_pearson(0.05, 1e-5) < expected


# ----- bad input ---------------------------------------------------------------------

@pytest.mark.parametrize("in_scores, out_scores, match", [
    ([], [1.0], "in_scores is empty"),
    ([1.0], [], "out_scores is empty"),
    ([1.0, np.nan], [0.0], "non-finite"),
    ([1.0], [np.inf], "non-finite"),
    (np.ones((3, 2)), [0.0], "1-D"),
    (["a"], [0.0], "numbers"),
])
def test_bad_scores_are_refused(in_scores, out_scores, match):
    with pytest.raises(AuditInputError, match=match):
        CanaryScoreAuditor(in_scores, out_scores)


@pytest.mark.parametrize("kwargs, match", [
    ({"significance": 0.0}, "significance"), ({"significance": 1.0}, "significance"),
    ({"significance": -0.1}, "significance"), ({"delta": -0.1}, "delta"),
    ({"delta": 1.0}, "delta"), ({"delta": 1.1}, "delta"), ({"bonferroni": "none"}, "bonferroni"),
])
def test_bad_settings_are_refused(kwargs, match):
    auditor = CanaryScoreAuditor([1, 2, 3], [0, 1, 2])
    with pytest.raises(AuditInputError, match=match):
        auditor.epsilon_clopper_pearson(**kwargs)
    if "bonferroni" not in kwargs:
        with pytest.raises(AuditInputError, match=match):
            epsilon_from_counts(3, 3, 0, 3, **kwargs)


def test_bad_metric_settings_are_refused():
    auditor = CanaryScoreAuditor([1, 2, 3], [0, 1, 2])
    for bad in (0, -1, 2.5, True, "50"):
        with pytest.raises(AuditInputError, match="min_count"):
            auditor.epsilon_raw_counts(bad)
    for bad in (1.5, np.nan, "0.5"):
        with pytest.raises(AuditInputError, match="prevalence"):
            auditor.max_accuracy(bad)
    for bad in (np.nan, "high", [1, 2]):
        with pytest.raises(AuditInputError, match="threshold"):
            auditor.epsilon_clopper_pearson(threshold=bad)
        with pytest.raises(AuditInputError, match="threshold"):
            auditor.epsilon_one_run(threshold=bad)
