"""LiRA scores (mxprivacy.audit.lira): the statistic, the Gaussian tests by hand, the gain
from per-example calibration, and the refusals."""
import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from mxprivacy.audit.lira import (MIN_STD, lira_offline_scores, lira_online_scores,
                                  logit_scaled_confidence)
from mxprivacy.errors import AuditInputError


def _naive(logits, labels):
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    p_y = p[np.arange(len(labels)), labels]
    return np.log(p_y / (1 - p_y))


def test_logit_scaled_confidence_is_log_odds_of_the_true_class():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(200, 10))
    labels = rng.integers(0, 10, size=200)
    np.testing.assert_allclose(logit_scaled_confidence(logits, labels),
                               _naive(logits, labels), rtol=1e-9, atol=1e-9)


def test_logit_scaled_confidence_is_exact_for_huge_logits():
    logits = np.array([[1e3, 0.0, 5.0], [0.0, 1e3, 999.0], [-1e3, 1e3, 0.0]],
                      dtype=np.float32)
    labels = np.array([0, 1, 0])
    with np.errstate(all="ignore"):
        naive = _naive(logits.astype(np.float64), labels)
    assert not np.isfinite(naive).any()  # exp(1000) overflows: the naive formula fails
    by_hand = [1e3 - (5 + np.log1p(np.exp(-5.0))),  # z_y - logsumexp(0, 5)
               1e3 - 999 - np.log1p(np.exp(-999.0)),  # = 1 - log1p(e^-999) = 1
               -1e3 - 1e3]  # p_y = e^-2000: log-odds -2000
    np.testing.assert_allclose(logit_scaled_confidence(logits, labels), by_hand, rtol=1e-12)


def test_augmentations_are_averaged():
    rng = np.random.default_rng(1)
    views = rng.normal(0, 2, size=(3, 50, 4))
    labels = rng.integers(0, 4, size=50)
    each = [logit_scaled_confidence(view, labels) for view in views]
    np.testing.assert_allclose(logit_scaled_confidence(views, labels), np.mean(each, axis=0),
                               rtol=1e-12)


def _three_shadows(mean, std):
    """Rows mean - std, mean, mean + std: sample mean `mean`, sample std (ddof 1) `std`."""
    return np.stack([mean - std, mean, mean + std])


MU_OUT = np.array([-2.0, 0.5, 3.0, 7.0])
SD_OUT = np.array([0.5, 1.0, 2.0, 0.25])
MU_IN = np.array([1.0, 2.5, 3.5, 9.0])
SD_IN = np.array([0.4, 1.5, 1.0, 0.25])
TARGET = np.array([-1.0, 0.0, 6.0, 8.5])


def test_offline_score_is_the_normal_tail_by_hand():
    shadow = _three_shadows(MU_OUT, SD_OUT)
    scores = lira_offline_scores(TARGET, shadow)
    tail = stats.norm.sf(TARGET, loc=MU_OUT, scale=SD_OUT)  # P(Z >= c), Z ~ N(mu, sd^2)
    np.testing.assert_allclose(np.exp(-scores), tail, rtol=1e-10)
    np.testing.assert_allclose(1 - np.exp(-scores), stats.norm.cdf(TARGET, MU_OUT, SD_OUT),
                               rtol=1e-10)  # the paper's Lambda
    assert np.all(np.diff(scores[[1, 2, 0, 3]]) > 0)  # z = 2, -0.5, 1.5, 6: ranked by z


def test_offline_score_ignores_in_shadows_and_keeps_ranks_at_tiny_p():
    shadow = np.concatenate([_three_shadows(MU_OUT, SD_OUT), np.full((2, 4), 50.0)])
    mask = np.zeros(shadow.shape, dtype=bool)
    mask[3:] = True
    np.testing.assert_allclose(lira_offline_scores(TARGET, shadow, mask),
                               lira_offline_scores(TARGET, shadow[:3]), rtol=1e-12)
    far = lira_offline_scores([10.0, 11.0], _three_shadows(np.zeros(2), np.ones(2)))
    assert np.all(np.isfinite(far)) and far[1] > far[0] > 40  # 1 - p would be 1.0 for both


def test_online_score_is_the_likelihood_ratio_by_hand():
    shadow = np.concatenate([_three_shadows(MU_IN, SD_IN), _three_shadows(MU_OUT, SD_OUT)])
    mask = np.zeros(shadow.shape, dtype=bool)
    mask[:3] = True
    by_hand = (np.log(SD_OUT / SD_IN) - (TARGET - MU_IN) ** 2 / (2 * SD_IN ** 2)
               + (TARGET - MU_OUT) ** 2 / (2 * SD_OUT ** 2))
    np.testing.assert_allclose(lira_online_scores(TARGET, shadow, mask), by_hand, rtol=1e-10)
    np.testing.assert_allclose(lira_online_scores(TARGET, shadow, mask.astype(int)), by_hand,
                               rtol=1e-10)
    order = np.random.default_rng(2).permutation(6)  # rows in any order
    np.testing.assert_allclose(lira_online_scores(TARGET, shadow[order], mask[order]),
                               by_hand, rtol=1e-10)


def test_fixed_variance_pools_the_residuals():
    shadow = np.concatenate([_three_shadows(MU_IN, SD_IN), _three_shadows(MU_OUT, SD_OUT)])
    mask = np.zeros(shadow.shape, dtype=bool)
    mask[:3] = True
    # each example: residuals -sd, 0, +sd (2 degrees of freedom) -> pooled var = mean(sd^2)
    pooled_out = np.sqrt(np.mean(SD_OUT ** 2))
    pooled_in = np.sqrt(np.mean(SD_IN ** 2))
    np.testing.assert_allclose(
        lira_offline_scores(TARGET, shadow, mask, fix_variance=True),
        -stats.norm.logsf(TARGET, MU_OUT, pooled_out), rtol=1e-10)
    np.testing.assert_allclose(
        lira_online_scores(TARGET, shadow, mask, fix_variance=True),
        stats.norm.logpdf(TARGET, MU_IN, pooled_in) - stats.norm.logpdf(TARGET, MU_OUT,
                                                                        pooled_out),
        rtol=1e-10)


def test_identical_shadows_give_finite_scores():
    shadow = np.full((4, 3), 2.0)
    mask = np.array([[1, 1, 1], [1, 1, 1], [0, 0, 0], [0, 0, 0]], dtype=bool)
    target = np.array([2.0, 2.0 + 1e-3, 1.0])
    offline = lira_offline_scores(target, shadow, mask)
    online = lira_online_scores(target, shadow, mask)
    assert np.all(np.isfinite(offline)) and np.all(np.isfinite(online))
    assert offline[1] == pytest.approx(-stats.norm.logsf(1e-3 / MIN_STD))


def _difficulty_world(seed, n=4000, num_shadow=16, shift=1.0):
    """Each example has its own difficulty mu_j ~ N(0, 3^2) and spread sd_j ~ U(0.3, 1);
    training on it shifts its confidence by +shift."""
    rng = np.random.default_rng(seed)
    mu, sd = rng.normal(0, 3, n), rng.uniform(0.3, 1.0, n)
    mask = rng.random((num_shadow, n)).argsort(0).argsort(0) < num_shadow // 2
    shadow = mu + shift * mask + sd * rng.standard_normal((num_shadow, n))
    member = rng.random(n) < 0.5
    target = mu + shift * member + sd * rng.standard_normal(n)
    return target, shadow, mask, member


@pytest.mark.parametrize("online", [False, True])
@pytest.mark.parametrize("fix_variance", [False, True])
def test_per_example_calibration_beats_a_global_threshold(online, fix_variance):
    target, shadow, mask, member = _difficulty_world(seed=0)
    score = lira_online_scores if online else lira_offline_scores
    lira = roc_auc_score(member, score(target, shadow, mask, fix_variance=fix_variance))
    threshold = roc_auc_score(member, target)  # the loss attack: one threshold for all
    # measured: threshold 0.583; LiRA 0.837-0.851 (Bayes-optimal with known mu, sd ~ 0.86)
    assert threshold < 0.62
    assert lira > threshold + 0.2


def test_shape_mismatches_are_refused():
    shadow = np.zeros((4, 3)) + np.arange(4)[:, None]
    with pytest.raises(AuditInputError, match=r"\(num_shadow, 3\)"):
        lira_offline_scores(np.zeros(3), shadow.T)
    with pytest.raises(AuditInputError, match="num_shadow"):
        lira_offline_scores(np.zeros(3), shadow[0])
    with pytest.raises(AuditInputError, match="shape of shadow_conf"):
        lira_online_scores(np.zeros(3), shadow, np.ones((4, 2), dtype=bool))
    with pytest.raises(AuditInputError, match="booleans"):
        lira_online_scores(np.zeros(3), shadow, np.full((4, 3), 2))
    with pytest.raises(AuditInputError, match=r"\(n, num_classes\)"):
        logit_scaled_confidence(np.zeros(5), np.zeros(5, dtype=int))
    with pytest.raises(AuditInputError, match="shape \\(2,\\)"):
        logit_scaled_confidence(np.zeros((2, 3)), np.zeros(3, dtype=int))
    with pytest.raises(AuditInputError, match="at least 2 classes"):
        logit_scaled_confidence(np.zeros((2, 1)), np.zeros(2, dtype=int))


def test_bad_labels_are_refused():
    with pytest.raises(AuditInputError, match=r"in \[0, 3\).*index 1"):
        logit_scaled_confidence(np.zeros((2, 3)), [0, 3])
    with pytest.raises(AuditInputError, match="whole numbers"):
        logit_scaled_confidence(np.zeros((2, 3)), [0.5, 1])


def test_fewer_than_two_shadows_per_side_are_refused():
    shadow = np.arange(12.0).reshape(4, 3)
    mask = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=bool)
    # example 0: 2 IN, 2 OUT; example 1: 2 IN, 2 OUT; example 2: 1 IN, 3 OUT
    lira_offline_scores(np.zeros(3), shadow, mask)
    with pytest.raises(AuditInputError, match="fewer than 2 IN.*example 2 has 1"):
        lira_online_scores(np.zeros(3), shadow, mask)
    mask[:, 2] = [1, 1, 1, 0]
    with pytest.raises(AuditInputError, match="fewer than 2 OUT.*example 2 has 1"):
        lira_offline_scores(np.zeros(3), shadow, mask)
    with pytest.raises(AuditInputError, match="fewer than 2 OUT"):
        lira_offline_scores(np.zeros(3), shadow[:1])
    with pytest.raises(AuditInputError, match="needs shadow_in_mask"):
        lira_online_scores(np.zeros(3), shadow, None)


def test_non_finite_values_are_refused():
    shadow = np.arange(12.0).reshape(4, 3)
    with pytest.raises(AuditInputError, match="target_conf has 1 non-finite"):
        lira_offline_scores([0.0, np.nan, 1.0], shadow)
    bad = shadow.copy()
    bad[2, 1] = np.inf
    with pytest.raises(AuditInputError, match=r"shadow_conf\[2\].*index 1"):
        lira_offline_scores(np.zeros(3), bad)
    with pytest.raises(AuditInputError, match="logits has 1 non-finite"):
        logit_scaled_confidence([[0.0, np.nan], [1.0, 2.0]], [0, 1])
    with pytest.raises(AuditInputError, match="fix_variance"):
        lira_offline_scores(np.zeros(3), shadow, fix_variance="yes")
