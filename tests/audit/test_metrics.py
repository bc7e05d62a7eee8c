"""ROC metrics of membership scores: sklearn's AUC, and advantage, PPV and TPR at FPR on
hand-computed tables."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mxprivacy.audit import metrics
from mxprivacy.errors import AuditInputError

# Members 0.9, 0.8, 0.4 and non-members 0.7, 0.3, 0.2, 0.1. Rule "score >= t":
#   t     TP FP   TPR  FPR
#   inf    0  0   0    0
#   0.9    1  0   1/3  0
#   0.8    2  0   2/3  0
#   0.7    2  1   2/3  1/4
#   0.4    3  1   1    1/4    <- |TPR - FPR| = 3/4, the largest
#   0.3    3  2   1    1/2
#   0.2    3  3   1    3/4
#   0.1    3  4   1    1
# AUC: 0.9 and 0.8 beat all 4 non-members, 0.4 beats 3: 11 / 12.
MEMBERS = [0.9, 0.8, 0.4]
NONMEMBERS = [0.7, 0.3, 0.2, 0.1]


@pytest.fixture
def curve():
    fpr, tpr, thresholds = metrics.roc(MEMBERS, NONMEMBERS)
    return fpr, tpr, thresholds


def test_roc_points_of_the_hand_table(curve):
    fpr, tpr, thresholds = curve
    np.testing.assert_allclose(fpr, [0, 0, 0, 1 / 4, 1 / 4, 1 / 2, 3 / 4, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1, 1])
    np.testing.assert_allclose(thresholds[1:], [0.9, 0.8, 0.7, 0.4, 0.3, 0.2, 0.1])


def test_auc_hand_value_and_sklearn(curve):
    fpr, tpr, _ = curve
    assert metrics.auc(fpr, tpr) == pytest.approx(11 / 12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_equals_roc_auc_score_with_ties_and_unequal_sizes(seed):
    rng = np.random.default_rng(seed)
    member = rng.integers(0, 20, 300).astype(float)          # many ties
    nonmember = rng.integers(0, 18, 170).astype(float)
    fpr, tpr, _ = metrics.roc(member, nonmember)
    labels = np.r_[np.ones(300), np.zeros(170)]
    expected = roc_auc_score(labels, np.r_[member, nonmember])
    assert metrics.auc(fpr, tpr) == pytest.approx(expected, abs=1e-12)


def test_advantage_and_its_index(curve):
    fpr, tpr, thresholds = curve
    assert metrics.advantage(fpr, tpr) == pytest.approx(3 / 4)
    assert thresholds[metrics.advantage_index(fpr, tpr)] == 0.4


def test_advantage_counts_a_reversed_attack():
    fpr, tpr, _ = metrics.roc([0.0, 0.1], [0.8, 0.9])   # members score LOW
    assert metrics.advantage(fpr, tpr) == 1.0
    assert metrics.auc(fpr, tpr) == 0.0


def test_ppv_at_the_advantage_threshold(curve):
    fpr, tpr, _ = curve
    best = metrics.advantage_index(fpr, tpr)
    assert metrics.ppv_at(fpr, tpr, best, 3, 4) == pytest.approx(3 / 4)   # TP 3, FP 1
    assert metrics.ppv_at(fpr, tpr, 3, 3, 4) == pytest.approx(2 / 3)      # TP 2, FP 1
    assert metrics.ppv_at(fpr, tpr, 0, 3, 4) == pytest.approx(3 / 7)      # flags nobody


def test_ppv_tf_privacy_definition(curve):
    fpr, tpr, _ = curve
    # Default: the point (1/3, 0) has TPR above 1e-3 and PPV 1.
    assert metrics.ppv(fpr, tpr, 3, 4) == 1.0
    # With min_rate 0.7 the points with TPR and FPR both <= 0.7 count as the base rate
    # 3/7; left: (1, 1/4) -> 3/4, (1, 1/2) -> 3/5, (1, 3/4) -> 1/2, (1, 1) -> 3/7.
    assert metrics.ppv(fpr, tpr, 3, 4, min_rate=0.7) == pytest.approx(3 / 4)
    # Everything below min_rate: the base rate.
    assert metrics.ppv([0.0, 0.0005], [0.0, 0.0008], 3, 4) == pytest.approx(3 / 7)


def test_ppv_weights_rates_by_the_class_sizes():
    # TPR 0.5, FPR 0.1 with 100 members and 1000 non-members: TP 50, FP 100.
    assert metrics.ppv_at([0.1], [0.5], 0, 100, 1000) == pytest.approx(50 / 150)
    assert metrics.ppv([0.0, 0.1], [0.0, 0.5], 100, 1000) == pytest.approx(50 / 150)


def test_tpr_at_fpr_hand_table_without_interpolation():
    fpr = np.array([0, 0, 0.005, 0.01, 0.02, 1])
    tpr = np.array([0, 0.1, 0.3, 0.35, 0.5, 1])
    assert metrics.tpr_at_fpr(fpr, tpr, 0.001) == 0.1
    assert metrics.tpr_at_fpr(fpr, tpr, 0.005) == 0.3
    assert metrics.tpr_at_fpr(fpr, tpr, 0.01) == 0.35
    assert metrics.tpr_at_fpr(fpr, tpr, 0.015) == 0.35   # not 0.425 (no interpolation)
    assert metrics.tpr_at_fpr(fpr, tpr, 0.02) == 0.5


def test_tpr_at_fpr_of_the_hand_scores(curve):
    fpr, tpr, _ = curve
    assert metrics.tpr_at_fpr(fpr, tpr, 0.1) == pytest.approx(2 / 3)
    assert metrics.tpr_at_fpr(fpr, tpr, 0.25) == 1.0


def test_roc_keeps_points_on_straight_stretches():
    # Two tie groups, each one member and one non-member: the curve (0,0)-(.5,.5)-(1,1)
    # is straight, and sklearn's default drops its middle point.
    fpr, tpr, _ = metrics.roc([3.0, 2.0], [3.0, 2.0])
    np.testing.assert_allclose(fpr, [0, 0.5, 1])
    assert metrics.tpr_at_fpr(fpr, tpr, 0.5) == 0.5


def test_thin_curve_keeps_ends_and_the_advantage_point():
    rng = np.random.default_rng(0)
    fpr, tpr, thresholds = metrics.roc(rng.normal(0.2, 1, 5000), rng.normal(0, 1, 5000))
    small = metrics.thin_curve(fpr, tpr, thresholds, max_points=100)
    assert len(small[0]) <= 100
    assert (small[0][0], small[0][-1]) == (0.0, 1.0)
    assert metrics.advantage(small[0], small[1]) == metrics.advantage(fpr, tpr)
    assert metrics.thin_curve(fpr[:50], tpr[:50], thresholds[:50])[0].size == 50


@pytest.mark.parametrize("call", [
    lambda: metrics.roc([], [1.0]),
    lambda: metrics.roc([np.nan, 1.0], [1.0]),
    lambda: metrics.roc([1.0], [np.inf]),
    lambda: metrics.tpr_at_fpr([0, 1], [0, 1], 0.0),
    lambda: metrics.tpr_at_fpr([0, 1], [0, 1], 1.5),
    lambda: metrics.ppv([0, 1], [0, 1], 0, 4),
    lambda: metrics.ppv_at([0, 1], [0, 1], 1, 3, 0),
])
def test_bad_inputs_raise_audit_input_error(call):
    with pytest.raises(AuditInputError):
        call()
