"""Membership-inference attacks: inputs (loss, entropy, checks), slices, threshold and
trained attacks (held-out, balanced, seeded), and the per-run bound correction."""
import math

import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score

from mxprivacy.audit import membership
from mxprivacy.audit.canary import CanaryScoreAuditor
from mxprivacy.audit.membership import (AttackInputData, SlicingSpec, balanced_subsample,
                                        run_membership_attacks, slice_indices)
from mxprivacy.errors import AuditInputError


# ---- inputs ----------------------------------------------------------------------------

def test_loss_from_logits_is_the_log_softmax_cross_entropy():
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]])
    data = AttackInputData(logits_train=logits, logits_test=logits,
                           labels_train=np.array([0, 1]), labels_test=np.array([2, 0]))
    by_hand = math.log(math.e + math.e ** 2 + math.e ** 3) - 1.0    # 2.4076059644
    assert data.loss_train[0] == pytest.approx(by_hand, rel=1e-12)
    assert data.loss_train[0] == pytest.approx(2.4076059644443806, rel=1e-12)
    assert data.loss_train[1] == pytest.approx(1000.0)     # no overflow: log-softmax
    assert data.loss_test[0] == pytest.approx(logsumexp([1, 2, 3]) - 3)
    assert data.loss_test[1] == pytest.approx(0.0, abs=1e-12)
    assert data.loss_test[1] >= 0


def test_loss_from_probabilities_clips_zero():
    probs = np.array([[0.25, 0.75], [1.0, 0.0]])
    data = AttackInputData(probs_train=probs, probs_test=probs,
                           labels_train=np.array([1, 1]), labels_test=np.array([0, 0]))
    np.testing.assert_allclose(data.loss_train, [-math.log(0.75), -math.log(1e-30)])
    np.testing.assert_allclose(data.loss_test, [-math.log(0.25), 0.0], atol=1e-15)


def test_entropy_shannon_without_labels_modified_with_labels():
    probs = np.array([[0.8, 0.2], [0.5, 0.5]])
    plain = AttackInputData(loss_train=[1.0, 1.0], loss_test=[1.0, 1.0],
                            probs_train=probs, probs_test=probs)
    np.testing.assert_allclose(plain.entropy_train,
                               [-(0.8 * math.log(0.8) + 0.2 * math.log(0.2)), math.log(2)])
    labeled = AttackInputData(probs_train=probs, probs_test=probs,
                              labels_train=np.array([0, 0]), labels_test=np.array([1, 0]))
    # Song & Mittal: -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)
    assert labeled.entropy_train[0] == pytest.approx(-0.4 * math.log(0.8))
    assert labeled.entropy_test[0] == pytest.approx(-1.6 * math.log(0.2))
    assert labeled.entropy_train[1] == pytest.approx(-math.log(0.5))


def test_given_loss_is_kept_and_features_are_predictions_then_loss():
    logits = np.array([[0.0, 1.0], [2.0, 0.0]])
    data = AttackInputData(loss_train=[5.0, 6.0], loss_test=[7.0, 8.0],
                           logits_train=logits, logits_test=logits,
                           labels_train=[0, 0], labels_test=[1, 1])
    np.testing.assert_array_equal(data.loss_train, [5.0, 6.0])
    np.testing.assert_array_equal(data.features("test"), [[0, 1, 7], [2, 0, 8]])
    assert (data.n_train, data.n_test) == (2, 2)


GOOD = dict(loss_train=[0.1, 0.2], loss_test=[0.3, 0.4])


@pytest.mark.parametrize("kwargs, words", [
    (dict(loss_train=[], loss_test=[0.3]), "empty"),
    (dict(loss_train=[0.1, np.nan], loss_test=[0.3]), "non-finite"),
    (dict(loss_train=[0.1], loss_test=None), "together"),
    (dict(GOOD, labels_train=[0, 1, 1], labels_test=[0, 1]), "lengths differ"),
    (dict(logits_train=np.zeros((2, 2)), logits_test=np.zeros((2, 2)),
          probs_train=np.full((2, 2), .5), probs_test=np.full((2, 2), .5),
          labels_train=[0, 1], labels_test=[0, 1]), "not both"),
    (dict(probs_train=[[0.7, 0.7]], probs_test=[[0.5, 0.5]], labels_train=[0],
          labels_test=[0]), "summing to 1"),
    (dict(logits_train=[[0.0, 1.0]], logits_test=[[0.0, 1.0]], labels_train=[2],
          labels_test=[0]), "outputs 2 classes"),
    (dict(logits_train=[[0.0, 1.0]], logits_test=[[0.0, 1.0, 2.0]], labels_train=[0],
          labels_test=[0]), "different numbers of classes"),
    (dict(GOOD, labels_train=[0.5, 1], labels_test=[0, 1]), "integer"),
    (dict(GOOD, labels_train=[[1, 0], [0, 1]], labels_test=[0, 1]), "one-hot"),
    (dict(GOOD, labels_train=[-1, 0], labels_test=[0, 1]), "negative"),
    (dict(labels_train=[0, 1], labels_test=[0, 1]), "Labels alone"),
    (dict(logits_train=[[0.0, 1.0]], logits_test=[[0.0, 1.0]]), "needs labels"),
    (dict(logits_train=[[0.0, np.inf]], logits_test=[[0.0, 1.0]], labels_train=[0],
          labels_test=[0]), "non-finite"),
    (dict(), "Give loss_train"),
])
def test_bad_inputs_raise_audit_input_error(kwargs, words):
    with pytest.raises(AuditInputError, match=words):
        AttackInputData(**kwargs)


def test_float_labels_with_whole_values_are_accepted():
    data = AttackInputData(GOOD["loss_train"], GOOD["loss_test"],
                           labels_train=np.array([0.0, 1.0]), labels_test=[1, 1])
    assert data.labels_train.dtype == np.int64


# ---- slices ----------------------------------------------------------------------------

@pytest.fixture
def small():
    """4 members, 3 non-members: given losses, labels and 2-class logits."""
    return AttackInputData(
        loss_train=[0.1, 0.2, 0.3, 0.4], loss_test=[0.5, 0.6, 0.05],
        labels_train=[0, 1, 0, 1], labels_test=[1, 0, 1],
        logits_train=[[2, 0], [0, 3], [0, 1], [0, 0]],   # right, right, wrong, wrong (tie -> 0)
        logits_test=[[1, 0], [0, 2], [0, 1]])            # wrong, wrong, right


def _picked(slices):
    return {str(s): (list(np.flatnonzero(a)), list(np.flatnonzero(b))) for s, a, b in slices}


def test_slices_pick_the_right_examples(small):
    spec = SlicingSpec(by_class=True, by_percentiles=2, by_classification_correctness=True)
    picked = _picked(slice_indices(small, spec))
    assert picked == {
        "Entire dataset": ([0, 1, 2, 3], [0, 1, 2]),
        "class=0": ([0, 2], [1]),
        "class=1": ([1, 3], [0, 2]),
        # median of the 7 losses is 0.3: [lo, hi) then the last bin closed
        "Loss percentiles 0-50": ([0, 1], [2]),
        "Loss percentiles 50-100": ([2, 3], [0, 1]),
        "Correctly classified": ([0, 1], [2]),
        "Misclassified": ([2, 3], [0, 1]),
    }


def test_percentile_bins_partition_the_examples_even_with_ties():
    rng = np.random.default_rng(0)
    data = AttackInputData(loss_train=rng.integers(0, 5, 400).astype(float),
                           loss_test=rng.integers(0, 5, 300).astype(float))
    slices = slice_indices(data, SlicingSpec(entire_dataset=False, by_percentiles=True))
    assert [str(s) for s, _, _ in slices] == [
        "Loss percentiles 0-25", "Loss percentiles 25-50", "Loss percentiles 50-75",
        "Loss percentiles 75-100"]
    assert np.array_equal(sum(a.astype(int) for _, a, _ in slices), np.ones(400))
    assert np.array_equal(sum(b.astype(int) for _, _, b in slices), np.ones(300))


def test_chosen_classes_and_slicing_needs(small):
    picked = _picked(slice_indices(small, SlicingSpec(entire_dataset=False, by_class=[1])))
    assert picked == {"class=1": ([1, 3], [0, 2])}
    no_labels = AttackInputData(**GOOD)
    with pytest.raises(AuditInputError, match="labels"):
        slice_indices(no_labels, SlicingSpec(by_class=True))
    with pytest.raises(AuditInputError, match="labels"):
        slice_indices(no_labels, SlicingSpec(by_classification_correctness=True))
    with pytest.raises(AuditInputError, match="by_percentiles"):
        slice_indices(no_labels, SlicingSpec(by_percentiles=0.5))
    with pytest.raises(AuditInputError, match="class indices"):
        slice_indices(small, SlicingSpec(by_class=["a"]))


def test_full_slicing_uses_what_the_data_has(small):
    assert membership.full_slicing(small) == SlicingSpec(True, True, 4, True)
    assert membership.full_slicing(AttackInputData(**GOOD)) == SlicingSpec(True, False, 4, False)


# ---- attacks ---------------------------------------------------------------------------

def _gaussian_data(n, shift, seed=0):
    rng = np.random.default_rng(seed)
    member = rng.normal(shift, 1.0, (n, 3))
    nonmember = rng.normal(-shift, 1.0, (n, 3))
    return AttackInputData(loss_train=rng.normal(0, 1, n) ** 2,
                           loss_test=rng.normal(0, 1, n) ** 2,
                           logits_train=member, logits_test=nonmember)


def test_threshold_attacks_score_minus_loss_and_minus_entropy():
    rng = np.random.default_rng(3)
    logits_in, logits_out = rng.normal(0, 2, (200, 4)), rng.normal(0, 1, (150, 4))
    y_in, y_out = rng.integers(0, 4, 200), rng.integers(0, 4, 150)
    data = AttackInputData(logits_train=logits_in, logits_test=logits_out,
                           labels_train=y_in, labels_test=y_out)
    results = run_membership_attacks(data, ["threshold", "threshold-entropy"])
    labels = np.r_[np.ones(200), np.zeros(150)]
    by_attack = {r.attack: r for r in results.results}
    assert by_attack["threshold"].auc == pytest.approx(
        roc_auc_score(labels, -np.r_[data.loss_train, data.loss_test]))
    assert by_attack["threshold-entropy"].auc == pytest.approx(
        roc_auc_score(labels, -np.r_[data.entropy_train, data.entropy_test]))


# With 500 + 500 examples the AUC of a null attack has standard deviation about 0.013;
# 0.06 is more than four of them.
NULL_TOLERANCE = 0.06


@pytest.mark.parametrize("attack", ["lr", "rf", "knn"])
def test_trained_attacks_separate_and_do_not_invent_signal(attack):
    separable = run_membership_attacks(_gaussian_data(500, 1.5), [attack])
    assert separable.results[0].auc > 0.9
    same = run_membership_attacks(_gaussian_data(500, 0.0, seed=1), [attack])
    assert abs(same.results[0].auc - 0.5) < NULL_TOLERANCE
    assert same.results[0].n_members == same.results[0].n_nonmembers == 500


class _Memorizer:
    """Says "member" exactly for the member rows it was fitted on, 0.5 for rows unseen."""
    classes_ = np.array([False, True])

    def fit(self, x, y):
        self.seen = {row.tobytes(): label for row, label in zip(x, y)}
        return self

    def predict_proba(self, x):
        p = np.array([float(self.seen.get(row.tobytes(), 0.5)) for row in x])
        return np.column_stack([1 - p, p])


def test_trained_attacks_score_every_example_held_out(monkeypatch):
    monkeypatch.setattr(membership, "_make_model", lambda attack, seed: _Memorizer())
    result = run_membership_attacks(_gaussian_data(200, 0.0), ["lr"]).results[0]
    assert result.auc == 0.5     # scored in-sample, a memorizer would reach AUC 1


class _Recorder(_Memorizer):
    fits = []

    def fit(self, x, y):
        _Recorder.fits.append((int(y.sum()), int((~y).sum())))
        return super().fit(x, y)


def test_each_fit_is_balanced_and_capped(monkeypatch):
    monkeypatch.setattr(membership, "_make_model", lambda attack, seed: _Recorder())
    rng = np.random.default_rng(0)
    data = AttackInputData(loss_train=rng.random(300), loss_test=rng.random(60))
    _Recorder.fits.clear()
    run_membership_attacks(data, ["rf"], folds=3)
    assert _Recorder.fits == [(40, 40)] * 3     # 2/3 of 60 non-members per fold
    _Recorder.fits.clear()
    run_membership_attacks(data, ["rf"], folds=3, max_fit_per_class=7)
    assert _Recorder.fits == [(7, 7)] * 3


def test_balanced_subsample():
    rng = np.random.default_rng(0)
    is_member = np.r_[np.ones(50, bool), np.zeros(8, bool)]
    idx = balanced_subsample(is_member, rng)
    assert len(np.unique(idx)) == 16 and is_member[idx].sum() == 8
    capped = balanced_subsample(is_member, rng, max_per_class=3)
    assert is_member[capped].sum() == 3 and (~is_member[capped]).sum() == 3


def test_seeded_runs_repeat():
    data = _gaussian_data(150, 0.3)
    first = run_membership_attacks(data, ["rf", "knn"], random_state=5)
    again = run_membership_attacks(data, ["rf", "knn"], random_state=5)
    other = run_membership_attacks(data, ["rf"], random_state=6)
    assert [r.auc for r in first.results] == [r.auc for r in again.results]
    assert other.results[0].auc != first.results[0].auc


# ---- runs ------------------------------------------------------------------------------

def test_bounds_are_corrected_for_the_number_of_slices_and_attacks():
    rng = np.random.default_rng(0)
    labels_in, labels_out = rng.integers(0, 2, 400), rng.integers(0, 2, 400)
    loss_in, loss_out = rng.exponential(0.2, 400), rng.exponential(1.0, 400)
    data = AttackInputData(loss_train=loss_in, loss_test=loss_out,
                           labels_train=labels_in, labels_test=labels_out)
    results = run_membership_attacks(data, ["threshold"], SlicingSpec(by_class=True),
                                     significance=0.05, delta=1e-5)
    assert len(results.results) == 3                         # entire, class 0, class 1
    entire = results.results[0]
    assert entire.bound_significance == pytest.approx(0.05 / 3)
    auditor = CanaryScoreAuditor(-loss_in, -loss_out)
    corrected = auditor.epsilon_clopper_pearson(significance=0.05 / 3, delta=1e-5)
    assert entire.epsilon_lower_bound == pytest.approx(corrected)
    assert corrected < auditor.epsilon_clopper_pearson(significance=0.05, delta=1e-5)
    assert results.epsilon_lower_bound == max(r.epsilon_lower_bound for r in results.results)


def test_slices_chosen_from_the_outputs_get_metrics_but_no_bound():
    rng = np.random.default_rng(0)
    data = AttackInputData(logits_train=rng.normal(1, 1, (400, 2)),
                           logits_test=rng.normal(0, 1, (400, 2)),
                           labels_train=rng.integers(0, 2, 400), labels_test=rng.integers(0, 2, 400))
    results = run_membership_attacks(data, ["threshold"], membership.full_slicing(data, bins=4))
    by_feature = {}
    for r in results.results:
        by_feature.setdefault(r.slice.feature, []).append(r)
    assert sorted(map(len, by_feature.values())) == [1, 2, 2, 4]
    for feature in ("loss_percentile", "correctly_classified"):
        for r in by_feature[feature]:
            assert r.epsilon_lower_bound is None and r.bound_significance is None
            assert 0 <= r.auc <= 1  # the metrics are still there
    # the Bonferroni count is that of the bounded pairs: entire and the two classes
    for r in by_feature["entire"] + by_feature["class"]:
        assert r.bound_significance == pytest.approx(0.05 / 3)
    assert results.to_dict()["bounds"] == 3


# A pure 1-DP mechanism on each example's loss (independent examples, membership by a fair
# coin): three loss regions whose member/non-member probability ratios are e, 1/e and
# 1.61. Its true epsilon is 1, so no valid bound exceeds 1. A loss quartile or the
# correct/misclassified split selects examples by what training did to them: bounds on
# those slices exceeded 1 in 20 of 20 runs (median 1.33-1.37), the entire set's never.
_P_OUT = np.array([0.01, 0.5, 0.49])
_P_IN = np.array([np.e * 0.01, 0.5 / np.e, 1 - np.e * 0.01 - 0.5 / np.e])
_LOW, _HIGH = np.array([0.0, 0.1, 0.8]), np.array([0.1, 0.6, 3.0])


def _one_dp_data(seed, n=20_000):
    rng = np.random.default_rng(seed)
    member = rng.random(2 * n) < 0.5
    region = np.where(member, rng.choice(3, 2 * n, p=_P_IN), rng.choice(3, 2 * n, p=_P_OUT))
    loss = rng.uniform(_LOW[region], _HIGH[region])
    z = -np.log(np.expm1(loss))  # two classes, label 0: loss = log(1 + e^-z)
    logits = np.stack([z, np.zeros_like(z)], axis=1)
    labels = np.zeros(2 * n, int)
    return AttackInputData(logits_train=logits[member], logits_test=logits[~member],
                           labels_train=labels[member], labels_test=labels[~member])


def test_no_bound_exceeds_the_true_epsilon_of_a_one_dp_mechanism_on_any_slice():
    assert np.max(np.abs(np.log(_P_IN / _P_OUT))) == pytest.approx(1.0)
    for seed in range(3):
        data = _one_dp_data(seed)
        results = run_membership_attacks(data, ["threshold"], membership.full_slicing(data))
        assert {r.slice.feature for r in results.results} == {
            "entire", "class", "loss_percentile", "correctly_classified"}
        # measured 0.28, 0.35, 0.47; bounding every slice (a mutation) gives 1.17-1.35
        assert results.epsilon_lower_bound <= 1.0, results.summary()
        assert results.epsilon_lower_bound > 0.2  # and the entire-set bound has power


def test_small_slices_are_skipped_with_a_reason(small):
    results = run_membership_attacks(small, ["threshold", "lr"],
                                     SlicingSpec(by_class=True))
    assert {(r.slice.feature, r.attack) for r in results.results} == {
        ("entire", "threshold"), ("class", "threshold")}
    assert len(results.skipped) == 3
    assert all("at least 10" in reason for _, attack, reason in results.skipped
               if attack == "lr")
    assert results.results[0].bound_significance == pytest.approx(0.05 / 3)


def test_attack_choice(small):
    loss_only = AttackInputData(**GOOD)
    assert {r.attack for r in run_membership_attacks(loss_only, "threshold").results} == {
        "threshold"}
    assert [a.value for a in membership._attacks(loss_only, "all")] == [
        "threshold", "lr", "rf", "knn"]
    assert len(membership._attacks(small, "all")) == 5
    with pytest.raises(AuditInputError, match="entropy"):
        run_membership_attacks(loss_only, ["threshold-entropy"])
    with pytest.raises(AuditInputError, match="Unknown attack"):
        run_membership_attacks(loss_only, ["mlp"])
    with pytest.raises(AuditInputError, match="No attack"):
        run_membership_attacks(loss_only, [])


@pytest.mark.parametrize("kwargs", [
    dict(significance=0.0), dict(significance=1.0), dict(delta=1.0), dict(delta=-1e-5),
    dict(folds=1), dict(folds=2.5), dict(max_fit_per_class=0), dict(random_state=-1),
    dict(fpr_targets=[0.0]),
])
def test_bad_run_arguments(kwargs):
    with pytest.raises(AuditInputError):
        run_membership_attacks(AttackInputData(**GOOD), **kwargs)


def test_data_must_be_attack_input_data():
    with pytest.raises(AuditInputError, match="AttackInputData"):
        run_membership_attacks({"loss_train": [1.0]})


def test_audit_scores_gives_the_one_run_bound_only_when_asked():
    rng = np.random.default_rng(0)
    member = rng.random(2000) < 0.5
    scores = rng.normal(size=2000) + 2.0 * member
    auditor = CanaryScoreAuditor(scores[member], scores[~member])
    plain = membership.audit_scores(scores[member], scores[~member]).results[0]
    assert plain.epsilon_one_run is None
    assert plain.epsilon_lower_bound == auditor.epsilon_clopper_pearson(0.05, 1e-5)
    one_run = membership.audit_scores(scores[member], scores[~member], one_run=True).results[0]
    assert one_run.epsilon_lower_bound is None  # canaries of one run: no Clopper-Pearson
    assert one_run.epsilon_one_run == auditor.epsilon_one_run(0.05, 1e-5) > 1.0
    with pytest.raises(AuditInputError, match="one_run"):
        membership.audit_scores(scores[member], scores[~member], one_run="yes")


def test_audit_scores_refuses_the_one_run_bound_on_an_unfair_split():
    # Identical N(0, 1) scores (no information) on a 50,000/10,000 split gave a one-run
    # bound of 1.33 and an f-DP bound of 1.63 before the split check.
    rng = np.random.default_rng(1)
    members, nonmembers = rng.normal(size=50_000), rng.normal(size=10_000)
    with pytest.raises(AuditInputError, match="independent fair coin"):
        membership.audit_scores(members, nonmembers, one_run=True)
    assert membership.audit_scores(members, nonmembers).results[0].epsilon_one_run is None
