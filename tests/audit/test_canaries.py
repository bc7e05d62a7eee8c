"""mxprivacy.audit.canaries: canary construction, secret inclusion, and scores."""
import math

import numpy as np
import pytest

from mxprivacy.audit.canaries import AuditReport, CanarySet, canary_bounds, canary_scores, make_canaries
from mxprivacy.audit.canary import CanaryScoreAuditor
from mxprivacy.errors import AuditInputError

RANGE = (-1.0, 2.0)  # a public value range for the ood canaries of these tests


def _pool(n=300, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, classes, size=n).astype(np.float32)
    y[:classes] = np.arange(classes)  # every class present
    return x, y


def test_inclusion_rate_is_one_half_within_a_stated_binomial_tolerance():
    # Included count ~ Binomial(4000, 1/2): sd = sqrt(4000)/2 = 31.6. The tolerance of
    # 5 sd (158) fails a correct implementation with probability < 1e-6 per seed; an
    # inclusion rate of 0.45 or 0.55 (shift 200) is outside it.
    x, y = _pool(n=4000)
    for seed in range(5):
        count = make_canaries(x, y, 4000, "ood", num_classes=10, value_range=RANGE,
                              seed=seed).num_included
        assert abs(count - 2000) <= 5 * math.sqrt(4000) / 2, count


def test_inclusion_is_secret_by_default_and_reproducible_with_a_seed():
    x, y = _pool()
    first, second = make_canaries(x, y, 200, num_classes=10), make_canaries(x, y, 200, num_classes=10)
    assert not np.array_equal(first.included, second.included)  # equal w.p. 2^-200
    assert not np.array_equal(first.source_index, second.source_index)
    a, b = (make_canaries(x, y, 200, num_classes=10, seed=7),
            make_canaries(x, y, 200, num_classes=10, seed=7))
    for name in ("x", "y", "included", "source_index"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.included, make_canaries(x, y, 200, num_classes=10, seed=8).included)


def test_a_seed_does_not_reproduce_a_sampler_stream_with_the_same_seed():
    # The Poisson sampler and the noise use numpy's default_rng(seed); the same integer
    # given to both must not make the inclusion mask a window of a sampling stream
    # (inclusion would then be correlated with which examples a step samples). A
    # 200-bit window matches by chance with probability 1e5 * 2^-200.
    x, y = _pool()
    for kind in ("mislabeled", "ood"):
        for seed in range(3):
            mask = make_canaries(x, y, 200, kind, num_classes=10, value_range=RANGE,
                                 seed=seed).included
            stream = np.random.default_rng(seed).random(100_000) < 0.5
            assert mask.astype(np.uint8).tobytes() not in stream.astype(np.uint8).tobytes()


def test_mislabeled_canaries_copy_distinct_inputs_and_always_change_the_label():
    x, y = _pool()
    canaries = make_canaries(x, y, 250, num_classes=10, seed=3)
    assert isinstance(canaries, CanarySet) and len(canaries) == 250
    assert len(set(canaries.source_index.tolist())) == 250
    np.testing.assert_array_equal(canaries.x, x[canaries.source_index])
    assert np.all(canaries.y != y[canaries.source_index])
    assert canaries.y.dtype == y.dtype and canaries.x.dtype == x.dtype
    # the new label is uniform over the 9 other classes: each shift 1..9 occurs
    shifts = (canaries.y - y[canaries.source_index]) % 10
    assert set(shifts.astype(int).tolist()) == set(range(1, 10))
    canaries.x[0] += 1  # a copy, not a view of the pool
    assert not np.array_equal(canaries.x[0], x[canaries.source_index[0]])


def test_members_are_the_included_canaries():
    x, y = _pool()
    canaries = make_canaries(x, y, 100, num_classes=10, seed=1)
    mx_, my = canaries.members()
    assert len(mx_) == len(my) == canaries.num_included
    np.testing.assert_array_equal(mx_, canaries.x[canaries.included])
    np.testing.assert_array_equal(my, canaries.y[canaries.included])


def test_ood_canaries_match_the_input_shape_and_the_public_range():
    x, y = _pool()
    x *= 0.01  # data in about [-0.04, 0.04]: the canaries must span RANGE all the same
    low, high = RANGE
    ood = make_canaries(x, y, 50, "ood", num_classes=10, value_range=RANGE, seed=0)
    assert ood.x.shape == (50, 1, 8, 8) and ood.x.dtype == np.float32
    assert ood.x.min() >= low and ood.x.max() <= high and ood.source_index is None
    assert ood.x.min() < low + 0.1 and ood.x.max() > high - 0.1  # the given range
    assert set(ood.y.astype(int).tolist()) <= set(range(10))
    pattern = make_canaries(x, y, 50, "ood_pattern", num_classes=10, value_range=RANGE, seed=0)
    assert pattern.x.shape == (50, 1, 8, 8)
    assert set(np.unique(pattern.x).tolist()) == {low, high}
    lit = (pattern.x == high).mean()
    assert 0.05 < lit < 0.15  # 10 % of 3200 pixels: sd 0.5 %


@pytest.mark.parametrize("kind", ["ood", "ood_pattern"])
def test_ood_canaries_do_not_depend_on_the_data_values(kind):
    # The canaries are records of the training set: if they depended on the private data
    # (e.g. its minimum and maximum), changing one private record would change hundreds
    # of training records. Same seed, a pool whose values all differ: same canaries.
    x, y = _pool()
    other = x * 3.0 + 1.0
    other[0] = 100.0  # one record far outside the old range
    first = make_canaries(x, y, 80, kind, num_classes=10, value_range=RANGE, seed=4)
    second = make_canaries(other, y, 80, kind, num_classes=10, value_range=RANGE, seed=4)
    for name in ("x", "y", "included"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))


def test_labels_respect_num_classes_not_the_labels_seen():
    x, y = _pool(classes=3)
    canaries = make_canaries(x, y, 100, "ood", num_classes=5, value_range=RANGE, seed=0)
    assert canaries.y.max() <= 4 and canaries.y.max() >= 3  # classes 3, 4 drawn as well
    # mislabeled: the new labels range over all num_classes classes, absent ones too
    wrong = make_canaries(x, y, 200, num_classes=5, seed=0)
    assert set(wrong.y.astype(int).tolist()) == set(range(5))
    with pytest.raises(TypeError, match="num_classes"):  # no default from max(y) + 1
        make_canaries(x, y, 10)


def _make(x, y, m, kind="mislabeled", **options):
    return make_canaries(x, y, m, kind, **dict(dict(num_classes=10), **options))


@pytest.mark.parametrize("call, match", [
    (lambda x, y: _make(x, y[:-1], 10), "lengths differ"),
    (lambda x, y: _make(x, y, 1), "m must be"),
    (lambda x, y: _make(x, y, 0), "m must be"),
    (lambda x, y: _make(x, y, 2.0), "m must be"),
    (lambda x, y: _make(x, y, 2 ** 62, "ood", value_range=RANGE), "lower m"),
    (lambda x, y: _make(x, y, 10, "noise"), "kind must be"),
    (lambda x, y: _make(x, y, 301), "distinct inputs"),
    (lambda x, y: _make(x, y + 0.5, 10), "integer class labels"),
    (lambda x, y: _make(x, y, 10, num_classes=5), r"\[0, 4\]"),
    (lambda x, y: _make(x, y, 10, num_classes=1), "num_classes"),
    (lambda x, y: _make(x, y, 10, num_classes=None), "num_classes"),
    (lambda x, y: _make(x[:, 0, 0, 0], y, 10), "non-empty batch"),
    (lambda x, y: _make(x * np.nan, y, 10), "non-finite"),
    (lambda x, y: _make(x, y, 10, seed=-1), "seed"),
    (lambda x, y: _make(x, y, 10, "ood"), "value_range"),
    (lambda x, y: _make(x, y, 10, "ood_pattern", value_range=(1.0, 1.0)), "low < high"),
    (lambda x, y: _make(x, y, 10, "ood", value_range=(0.0, np.inf)), "finite"),
    (lambda x, y: _make(x, y, 10, "ood", value_range=(0.0,)), "two numbers"),
])
def test_bad_input_is_refused(call, match):
    x, y = _pool()
    with pytest.raises(AuditInputError, match=match):
        call(x, y)


def test_scores_on_hand_computed_logits():
    logits = np.array([[0.0, math.log(3.0)], [0.0, 0.0], [1000.0, 0.0]])
    labels = np.array([1, 0, 0])
    np.testing.assert_allclose(canary_scores(logits, labels),
                               [math.log(0.75), math.log(0.5), -math.exp(-1000.0)], atol=1e-12)
    np.testing.assert_allclose(canary_scores(logits, labels, "logit"),
                               [math.log(3.0), 0.0, 1000.0], atol=1e-12)
    three = np.array([[1.0, 2.0, 3.0]])  # p = softmax; logit = log(p2 / (p0 + p1))
    p = np.exp(three[0]) / np.exp(three[0]).sum()
    np.testing.assert_allclose(canary_scores(three, [2], "logit"), [math.log(p[2] / (1 - p[2]))])


def test_scores_refuse_bad_input():
    with pytest.raises(AuditInputError, match="score must be"):
        canary_scores(np.zeros((2, 3)), [0, 1], "loss")
    with pytest.raises(AuditInputError, match="lengths differ"):
        canary_scores(np.zeros((2, 3)), [0, 1, 2])
    with pytest.raises(AuditInputError, match=r"\[0, 2\]"):
        canary_scores(np.zeros((2, 3)), [0, 3])
    with pytest.raises(AuditInputError, match="non-finite"):
        canary_scores(np.array([[0.0, np.inf]]), [0])


def test_canary_bounds_split_the_scores_by_the_mask_for_the_auditor():
    rng = np.random.default_rng(0)
    included = rng.random(400) < 0.5
    scores = rng.normal(size=400) + 3.0 * included  # members score higher
    result = canary_bounds(scores, included, significance=0.05, delta=1e-5)
    auditor = CanaryScoreAuditor(scores[included], scores[~included])
    assert result == {  # no Clopper-Pearson: canaries of one run are not independent
        "epsilon_lower_bound": auditor.epsilon_one_run(significance=0.05, delta=1e-5),
        "epsilon_lower_bound_fdp": auditor.epsilon_one_run_fdp(significance=0.05, delta=1e-5),
        "auroc": auditor.auroc()}
    assert result["epsilon_lower_bound"] > 0.5 and result["auroc"] > 0.95
    flipped = canary_bounds(scores, ~included)  # members would score lower: nothing shown
    assert flipped["epsilon_lower_bound"] == 0.0 and flipped["auroc"] < 0.05


def test_canary_bounds_refuse_one_sided_or_non_boolean_masks():
    scores = np.arange(4.0)
    with pytest.raises(AuditInputError, match="one side"):
        canary_bounds(scores, np.ones(4, bool))
    with pytest.raises(AuditInputError, match="boolean"):
        canary_bounds(scores, np.array([1, 0, 1, 0]))
    with pytest.raises(AuditInputError, match="lengths differ"):
        canary_bounds(scores, np.array([True, False]))
    with pytest.raises(AuditInputError, match="delta"):
        canary_bounds(scores, np.array([True, False, True, False]), delta=0.0)
    # a split that fair coins would give with probability < 1e-3: no bound at all
    uneven = np.arange(40) < 35
    with pytest.raises(AuditInputError, match="fair coin"):
        canary_bounds(np.arange(40.0), uneven)


def _report(**changes):
    fields = dict(epsilon_lower_bound=0.2, epsilon_lower_bound_fdp=0.5, auroc=0.6,
                  epsilon=1.0, delta=1e-5, significance=0.05, test_accuracy=0.9, m=10,
                  num_included=4, dataset_size=104, kind="mislabeled", score="log_prob",
                  private=True, noise_multiplier=1.1, max_grad_norm=1.0,
                  expected_batch_size=8, sample_rate=8 / 105, epochs=2.0, steps=27,
                  seconds=0.5, in_scores=np.zeros(4), out_scores=np.ones(6))
    fields.update(changes)
    return AuditReport(**fields)


def test_report_summary_flags_only_a_one_run_bound_above_the_accountants_epsilon():
    assert "WARNING" not in _report().summary() and "NOTE" not in _report().summary()
    assert "accountant epsilon 1.000" in _report().summary()
    assert "WARNING: the one-run lower bound exceeds" in _report(epsilon_lower_bound=1.2).summary()
    # the f-DP bound tests the Gaussian curve only (it exceeds the true epsilon of
    # randomized response in 14-17 % of runs): never a bug verdict
    fdp_above = _report(epsilon_lower_bound_fdp=1.2).summary()
    assert "WARNING" not in fdp_above and "NOTE" not in fdp_above
    assert "f-DP test of the Gaussian curve 1.200 (a separate 95 % confidence" in fdp_above
    baseline = _report(epsilon=None, private=False, noise_multiplier=None, max_grad_norm=None,
                       epsilon_lower_bound=3.0)
    assert "WARNING" not in baseline.summary() and "non-private" in baseline.summary()
    data = _report().to_dict()
    assert data["epsilon"] == 1.0 and "in_scores" not in data and "net" not in data
