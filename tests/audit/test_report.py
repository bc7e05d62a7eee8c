"""Results: evaluate_scores against the metric functions and the auditor, the table
(most vulnerable first), JSON-safe dicts, get_best, data frames, specs."""
import dataclasses
import json

import numpy as np
import pytest

from mxprivacy.audit import metrics
from mxprivacy.audit.canary import CanaryScoreAuditor
from mxprivacy.audit.report import (HEURISTIC_NOTE, NO_BOUND, ONE_RUN_NOTE, OUTPUT_SLICE_NOTE,
                                    AttackResults, AttackType, SingleAttackResult, Slice,
                                    SlicingSpec, evaluate_scores)
from mxprivacy.errors import AuditInputError

MEMBERS = [0.9, 0.8, 0.4]
NONMEMBERS = [0.7, 0.3, 0.2, 0.1]


def test_evaluate_scores_hand_values_and_the_auditor():
    result = evaluate_scores(MEMBERS, NONMEMBERS, bound_significance=0.1, delta=0.0)
    assert (result.n_members, result.n_nonmembers) == (3, 4)
    assert result.auc == pytest.approx(11 / 12)
    assert result.advantage == pytest.approx(3 / 4)
    assert result.ppv_at_advantage == pytest.approx(3 / 4)
    assert result.ppv == 1.0
    assert result.tpr_at_fpr == {0.001: pytest.approx(2 / 3), 0.01: pytest.approx(2 / 3)}
    auditor = CanaryScoreAuditor(MEMBERS, NONMEMBERS)
    assert result.epsilon_lower_bound == auditor.epsilon_clopper_pearson(0.1, 0.0)
    assert result.epsilon_one_run is None and result.bound_significance == 0.1


def test_one_run_scores_get_the_one_run_bound_and_no_clopper_pearson():
    # Canaries of one run are not independent trials: Clopper-Pearson is left out.
    rng = np.random.default_rng(0)
    member, nonmember = rng.normal(2, 1, 500), rng.normal(0, 1, 500)
    result = evaluate_scores(member, nonmember, bound="one-run", bound_significance=0.1,
                             delta=1e-5)
    assert result.epsilon_lower_bound is None and result.bound_significance == 0.1
    assert result.epsilon_one_run == CanaryScoreAuditor(member, nonmember).epsilon_one_run(
        0.1, 1e-5) > 0.5
    results = AttackResults([result], 0.1, 1e-5)
    text = results.summary()
    assert results.epsilon_lower_bound is None and "No Clopper-Pearson" in text
    assert f"One-run epsilon lower bound {result.epsilon_one_run:.4f}" in text
    assert ONE_RUN_NOTE in text and HEURISTIC_NOTE not in text
    head, row = text.splitlines()[:2]
    assert head.split()[-4:] == ["eps", "LB", "one-run", "LB"]
    assert row.split()[-2:] == [NO_BOUND, f"{result.epsilon_one_run:.4f}"]
    out = results.to_dict()
    assert out["epsilon_lower_bound"] is None and out["bounds"] == 0
    assert out["results"][0]["epsilon_one_run"] == result.epsilon_one_run
    none = evaluate_scores(member, nonmember, bound=None)
    assert none.epsilon_lower_bound is None and none.bound_significance is None
    with pytest.raises(AuditInputError, match="bound must be"):
        evaluate_scores(member, nonmember, bound="two-run")


def test_a_strong_attack_gets_a_positive_bound_that_grows_with_confidence_allowed():
    rng = np.random.default_rng(0)
    member, nonmember = rng.normal(3, 1, 2000), rng.normal(0, 1, 2000)
    loose = evaluate_scores(member, nonmember, bound_significance=0.1)
    strict = evaluate_scores(member, nonmember, bound_significance=0.001)
    assert loose.epsilon_lower_bound > strict.epsilon_lower_bound > 0.5


def _result(name, eps, adv, auc=0.6):
    fpr, tpr, thresholds = metrics.roc([1.0, 2.0], [0.0, 1.5])
    return SingleAttackResult(
        slice=Slice("class", name), attack="threshold", n_members=2, n_nonmembers=2,
        auc=auc, advantage=adv, ppv=0.5, ppv_at_advantage=0.5,
        tpr_at_fpr={0.001: 0.0, 0.01: 0.25}, epsilon_lower_bound=eps,
        bound_significance=0.05 / 3, roc=(fpr, tpr, thresholds))


@pytest.fixture
def results():
    return AttackResults([_result(0, 0.0, 0.9), _result(1, 0.7, 0.1),
                          _result(2, 0.0, 0.95, auc=0.2)], significance=0.05, delta=1e-5,
                         skipped=[("class=3", "lr", "2 members and 0 non-members")])


def test_summary_lists_the_most_vulnerable_slice_first(results):
    text = results.summary()
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["Slice", "Attack", "Members", "Non-members"]
    assert [line.split()[0] for line in lines[1:4]] == ["class=1", "class=2", "class=0"]
    assert "Epsilon lower bound 0.7000 (Clopper-Pearson): the largest of 3 bounds" in text
    assert "95 % confidence at delta 1e-05" in text
    assert "Skipped 1" in text and HEURISTIC_NOTE in text
    short = results.summary(max_rows=1)
    assert "... 2 more rows" in short and "class=2" not in short


def test_to_dict_is_strict_json_sorted_and_without_infinities(results):
    out = results.to_dict()
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text)["epsilon_lower_bound"] == 0.7
    assert [r["slice"] for r in out["results"]] == ["class=1", "class=2", "class=0"]
    assert out["results"][0]["tpr_at_fpr"] == {"0.001": 0.0, "0.01": 0.25}
    assert out["results"][0]["slice_value"] == 1 and "roc" not in out["results"][0]
    assert out["skipped"] == [["class=3", "lr", "2 members and 0 non-members"]]
    with_roc = results.to_dict(include_roc=True)["results"][0]["roc"]
    json.dumps(with_roc, allow_nan=False)
    assert with_roc["thresholds"][0] == "inf"     # sklearn's first threshold
    assert with_roc["fpr"][0] == 0.0 and with_roc["tpr"][-1] == 1.0


def test_get_best(results):
    assert results.get_best().slice.value == 1
    assert results.get_best("advantage").slice.value == 2
    assert results.get_best("auc").slice.value == 0
    with pytest.raises(AuditInputError, match="Unknown metric"):
        results.get_best("accuracy")
    with pytest.raises(AuditInputError, match="No attack"):
        AttackResults([], 0.05, 1e-5).get_best()
    assert AttackResults([], 0.05, 1e-5).epsilon_lower_bound == 0.0


def test_to_dataframe(results):
    frame = results.to_dataframe()
    assert list(frame["slice"]) == ["class=1", "class=2", "class=0"]
    assert {"auc", "advantage", "ppv", "tpr_at_fpr_0.001", "epsilon_lower_bound"} <= set(
        frame.columns)


def test_results_without_a_bound_show_a_dash_and_do_not_count():
    bounded = _result(0, 0.4, 0.2)
    loss_slice = dataclasses.replace(_result(1, None, 0.9), slice=Slice("loss_percentile", (0, 25)))
    results = AttackResults([bounded, loss_slice], significance=0.05, delta=1e-5)
    assert results.epsilon_lower_bound == 0.4
    assert results.get_best() is bounded and results.get_best("advantage") is loss_slice
    assert [r.slice.feature for r in results.sorted()] == ["class", "loss_percentile"]
    text = results.summary()
    row = [line for line in text.splitlines() if line.startswith("Loss percentiles")][0]
    assert row.split()[-1] == NO_BOUND
    assert "Epsilon lower bound 0.4000 (Clopper-Pearson): holds with 95 %" in text
    assert OUTPUT_SLICE_NOTE in text and HEURISTIC_NOTE in text
    out = results.to_dict()
    assert out["bounds"] == 1 and out["results"][1]["epsilon_lower_bound"] is None
    json.dumps(out, allow_nan=False)
    only = AttackResults([loss_slice], 0.05, 1e-5)
    assert only.epsilon_lower_bound is None
    with pytest.raises(AuditInputError, match="No result has an epsilon bound"):
        only.get_best()


def test_specs_and_names():
    assert SlicingSpec(by_percentiles=True).percentile_bins() == 4
    assert SlicingSpec(by_percentiles=10).percentile_bins() == 10
    assert SlicingSpec().percentile_bins() == 0
    with pytest.raises(AuditInputError):
        SlicingSpec(by_percentiles=101).percentile_bins()
    assert str(Slice()) == "Entire dataset"
    assert str(Slice("loss_percentile", (25.0, 50.0))) == "Loss percentiles 25-50"
    assert str(Slice("correctly_classified", False)) == "Misclassified"
    assert [Slice(f).depends_on_outputs for f in ("entire", "class", "loss_percentile",
                                                  "correctly_classified")] == [
        False, False, True, True]
    assert AttackType.parse("lr") is AttackType.LOGISTIC_REGRESSION
    assert AttackType.parse(AttackType.RANDOM_FOREST).is_trained_attack
    assert not AttackType("threshold").is_trained_attack
    with pytest.raises(AuditInputError, match="Unknown attack"):
        AttackType.parse("svm")
