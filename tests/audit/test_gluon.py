"""mxprivacy.audit.gluon: logits of a trained net, attack inputs, and the canary audit."""
import json
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import mxprivacy
from mxprivacy.accounting import epsilon_for
from mxprivacy.accounting.calibration import loader_steps
from mxprivacy.audit.canaries import canary_scores, make_canaries
from mxprivacy.audit import _training
from mxprivacy.audit import gluon as gluon_audit
from mxprivacy.audit.gluon import attack_inputs, audit_training, model_logits
from mxprivacy.errors import AuditInputError, PrivacyWarning
from mxprivacy.train import load_dataset


def _small_net(seed=0, dropout=False):
    mx.random.seed(seed)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(7, activation="tanh"))
    if dropout:
        net.add(gluon.nn.Dropout(0.5))
    net.add(gluon.nn.Dense(3))
    net.initialize(mx.init.Xavier())
    return net


def _hand_batch():
    return np.arange(5 * 4, dtype=np.float32).reshape(5, 4) / 10 - 1


def test_model_logits_equal_the_forward_pass_on_a_hand_batch():
    net = _small_net()
    x = _hand_batch()
    expected = net(mx.nd.array(x)).asnumpy()
    got = model_logits(net, x, batch_size=2)  # three batches: 2, 2, 1 rows
    assert got.dtype == np.float64 and got.shape == (5, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model_logits(net, mx.nd.array(x)), expected, rtol=1e-6, atol=1e-6)


def test_model_logits_of_a_private_block_equal_the_plain_net_and_capture_nothing():
    net = _small_net()
    x = _hand_batch()
    expected = net(mx.nd.array(x)).asnumpy()
    wrapped = mxprivacy.PrivateBlock(net)
    with autograd.record():  # even inside a recording scope: predict mode, no capture
        got = model_logits(wrapped, x, batch_size=3)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert wrapped.pending_shards() == []
    wrapped.release()


def test_model_logits_run_in_predict_mode():
    net = _small_net(dropout=True)
    x = _hand_batch()
    first, second = model_logits(net, x), model_logits(net, x)
    np.testing.assert_array_equal(first, second)  # dropout off: deterministic
    with autograd.train_mode():
        np.testing.assert_array_equal(model_logits(net, x), first)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_model_logits_refuse_a_bad_batch_size(bad):
    with pytest.raises(AuditInputError, match="batch_size"):
        model_logits(_small_net(), _hand_batch(), batch_size=bad)


def test_model_logits_refuse_empty_or_non_numeric_inputs():
    with pytest.raises(AuditInputError, match="empty"):
        model_logits(_small_net(), np.zeros((0, 4), np.float32))
    with pytest.raises(AuditInputError, match="numeric"):
        model_logits(_small_net(), np.array([["a"] * 4]))


# -- attack_inputs ----------------------------------------------------------------------

def test_attack_inputs_hold_the_logits_and_labels_of_both_sides():
    net = _small_net()
    x = _hand_batch()
    members, non_members = (x[:3], np.array([0.0, 2.0, 1.0])), (x[3:], np.array([2, 0]))
    data = attack_inputs(net, members, non_members, batch_size=2)
    expected = net(mx.nd.array(x)).asnumpy().astype(np.float64)
    np.testing.assert_allclose(data.logits_train, expected[:3], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(data.logits_test, expected[3:], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(data.labels_train, [0, 2, 1])
    np.testing.assert_array_equal(data.labels_test, [2, 0])
    # the attack's loss is the cross-entropy of these logits, by hand
    z = expected[:3]
    by_hand = np.log(np.exp(z).sum(axis=1)) - z[np.arange(3), [0, 2, 1]]
    np.testing.assert_allclose(data.loss_train, by_hand, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("members, match", [
    ((np.zeros((3, 4), np.float32), np.zeros(2)), "lengths differ"),
    ((np.zeros((3, 4), np.float32),), r"\(x, y\) pair"),
    ((np.zeros((2, 4), np.float32), np.array([0, 3])), r"\[0, 2\]"),
    ((np.zeros((2, 4), np.float32), np.array([0, 0.5])), "integer class labels"),
])
def test_attack_inputs_refuse_bad_pairs(members, match):
    good = (np.zeros((2, 4), np.float32), np.array([0, 1]))
    with pytest.raises(AuditInputError, match=match):
        attack_inputs(_small_net(), members, good)


# -- audit_training ---------------------------------------------------------------------
# Measured (digits: 1,348 training records, 449 test; canaries seeded 0, sampling 0; the
# 500 mislabeled canaries' source rows held out, so 848 records + 251 included
# canaries): baseline, 100 epochs: one-run bound 3.18 (f-DP 5.05), AUROC 1.00, 87 %
# accuracy; DP-SGD at accountant epsilon 1.00 (sigma 5.6, 30 epochs): one-run bound
# 0.00, AUROC 0.47.

BASELINE = dict(private=False, m=500, epochs=100)
PRIVATE = dict(private=True, target_epsilon=1.0, m=500, epochs=30)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _audit(digits, **options):
    mx.random.seed(0)  # model initialization
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)  # seeded batches and noise
        return audit_training(*digits, num_classes=10, seed=0, sampling_seed=0, **options)


@pytest.fixture(scope="module")
def baseline(digits):
    return _audit(digits, **BASELINE)


@pytest.fixture(scope="module")
def private(digits):
    return _audit(digits, **PRIVATE)


def test_the_non_private_baseline_gives_a_clearly_positive_one_run_bound(baseline):
    assert baseline.epsilon is None and not baseline.private
    assert baseline.epsilon_lower_bound > 2.0, baseline.summary()  # measured 3.18
    assert baseline.epsilon_lower_bound_fdp >= baseline.epsilon_lower_bound
    assert baseline.auroc > 0.95 and baseline.test_accuracy > 0.85


def test_dp_sgd_keeps_the_lower_bounds_at_or_below_the_accountants_epsilon(private):
    assert private.private and 0.99 < private.epsilon <= 1.0
    assert private.epsilon_lower_bound <= private.epsilon, private.summary()
    assert private.epsilon_lower_bound_fdp <= private.epsilon, private.summary()
    assert private.test_accuracy > 0.3  # it learns (chance is 0.1)


def test_the_sampling_rate_and_steps_come_from_public_counts_only(private, digits):
    # q = B / (n + m / 2), n = 1348 - 500 held-out sources, and steps from q: fixed
    # before the inclusion coins. The realized count (n + 251) would make every coin
    # change every record's rate and the number of steps.
    n = len(digits[0][0]) - 500
    k = private.num_included
    assert private.dataset_size == n + k and private.m == 500 and 200 < k < 300 and k != 250
    rate = 64 / (n + 250)
    assert private.sample_rate == pytest.approx(rate, rel=1e-12)
    steps = loader_steps(rate, 30)
    assert private.steps == steps
    expected = epsilon_for(private.noise_multiplier, rate, steps, 1e-5)
    assert private.epsilon == pytest.approx(expected, rel=1e-9)
    # the check can tell: the realized count (251, not 250) gives another epsilon
    realized = 64 / (n + k)
    other = epsilon_for(private.noise_multiplier, realized, loader_steps(realized, 30), 1e-5)
    assert abs(other - private.epsilon) > 1e-6 * private.epsilon


def test_mislabeled_canaries_come_from_held_out_rows(digits):
    # A canary copying a training input would put that input in training twice (the
    # accountant charges it once). Each canary's source row leaves the training data.
    (x, y), _ = digits
    canaries, (x_rest, y_rest) = gluon_audit._resolve_canaries(
        None, (x, y), dict(m=300, kind=None, value_range=None, seed=2, num_classes=10))
    assert len(x_rest) == len(x) - 300 and len(y_rest) == len(y) - 300
    np.testing.assert_array_equal(canaries.x, x[canaries.source_index])
    x_all, _ = _training.training_set(x_rest, y_rest, canaries)
    _, counts = np.unique(x_all.reshape(len(x_all), -1), axis=0, return_counts=True)
    assert counts.max() == 1  # no input twice (digits has no duplicate images)
    default = gluon_audit._resolve_canaries(
        None, (x[:100], y[:100]), dict(m=None, kind=None, value_range=None, seed=0,
                                       num_classes=10))[0]
    assert len(default) == 50  # default m: 1000, at most half the training rows


def test_given_canaries_must_not_copy_training_inputs(digits):
    (x, y), _ = digits
    copied = make_canaries(x, y, 20, num_classes=10, seed=0)  # made from the training rows
    with pytest.raises(AuditInputError, match="trained on twice"):
        audit_training((x, y), num_classes=10, canaries=copied, noise_multiplier=1.0)
    rest = np.delete(x, copied.source_index, axis=0), np.delete(y, copied.source_index)
    gluon_audit._resolve_canaries(copied, rest, dict(m=None, kind=None, value_range=None,
                                                     seed=None, num_classes=10))


def test_scores_are_split_by_the_inclusion_mask(baseline, digits):
    (x, y), _ = digits
    canaries = make_canaries(x, y, 500, num_classes=10, seed=0)  # as audit_training, seed 0
    assert baseline.num_included == canaries.num_included
    scores = canary_scores(model_logits(baseline.net, canaries.x), canaries.y)
    np.testing.assert_allclose(baseline.in_scores, scores[canaries.included])
    np.testing.assert_allclose(baseline.out_scores, scores[~canaries.included])


def test_a_custom_net_trains_and_comes_back_released(digits):
    (x, y), test = digits

    def build_net():
        net = gluon.nn.HybridSequential()
        net.add(gluon.nn.Dense(10))
        return net  # not initialized: audit_training initializes it

    canaries = make_canaries(x, y, 40, "ood_pattern", num_classes=10, value_range=(-0.75, 1.75),
                             seed=1)
    report = audit_training((x, y), test, num_classes=10, canaries=canaries,
                            build_net=build_net, noise_multiplier=1.0, epochs=1,
                            expected_batch_size=128)
    assert report.net.collect_params() and report.kind == "ood_pattern" and report.m == 40
    gluon.Trainer(report.net.collect_params(), "sgd")  # released: a plain trainer is fine
    data = json.loads(json.dumps(report.to_dict(with_scores=True)))
    assert len(data["in_scores"]) == canaries.num_included and "net" not in data
    assert "accountant epsilon" in report.summary() and "one-run lower bound" in report.summary()


@pytest.mark.parametrize("options, match", [
    (dict(train=(np.zeros((5, 1, 8, 8)), np.zeros(4))), "lengths differ"),
    (dict(m=1), "m must be"),
    (dict(kind="noise"), "kind must be"),
    (dict(canaries="x", m=None), "CanarySet"),
    (dict(private=True, noise_multiplier=None), "exactly one of"),
    (dict(private=True, noise_multiplier=1.0, target_epsilon=1.0), "exactly one of"),
    (dict(private=False, noise_multiplier=1.0), "baseline"),
    (dict(expected_batch_size=10_000), "exceeds"),
    (dict(lr=0.0), "lr"),
    (dict(momentum=1.0), "momentum"),
    (dict(score="loss"), "score must be"),
    (dict(significance=1.5), "significance"),
    (dict(delta=0.0), "delta"),
    (dict(lr=1e300), "float32"),
    (dict(lr=float("nan")), "lr"),
    (dict(num_classes=9), r"\[0, 8\]"),
    (dict(num_classes=None), "num_classes"),
    (dict(kind="ood"), "value_range"),
    (dict(kind="ood", value_range=(0, 1), m=2 ** 62), "lower m"),
    (dict(test=(np.zeros((5, 1, 8, 7), np.float32), np.zeros(5))), "same kind"),
    (dict(test=(np.zeros((5, 1, 8, 8), np.float32), np.full(5, 99))), r"\[0, 9\]"),
    (dict(test=(np.zeros((5, 1, 8, 8), np.float32), np.zeros(4))), "lengths differ"),
])
def test_audit_training_refuses_bad_input_before_training(digits, monkeypatch, options, match):
    def no_training(*args):
        raise AssertionError("trained before the input was checked")

    monkeypatch.setattr(_training, "train_private", no_training)
    options = dict(dict(train=digits[0], num_classes=10, m=20, noise_multiplier=1.0,
                        epochs=1), **options)
    with pytest.raises(AuditInputError, match=match):
        audit_training(options.pop("train"), **options)


def test_a_diverging_net_is_a_clear_error(digits):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        with pytest.raises(AuditInputError, match="training diverged. Lower lr"):
            audit_training(digits[0], num_classes=10, m=20, private=False, epochs=2,
                           lr=1e30, seed=0, sampling_seed=0)


def test_given_canaries_must_match_the_inputs_and_exclude_m_kind_seed(digits):
    (x, y), _ = digits
    canaries = make_canaries(x, y, 20, num_classes=10, seed=0)
    with pytest.raises(AuditInputError, match="pass one or the other"):
        audit_training((x, y), num_classes=10, canaries=canaries, m=20, noise_multiplier=1.0)
    wide = make_canaries(np.zeros((30, 2, 8, 8), np.float32), np.arange(30) % 10, 20,
                         num_classes=10, seed=0)
    with pytest.raises(AuditInputError, match="shape"):
        audit_training((x, y), num_classes=10, canaries=wide, noise_multiplier=1.0)
    many = make_canaries(x, y, 20, "ood", num_classes=12, value_range=(0, 1), seed=0)
    assert many.y.max() >= 10  # labels of 12 classes for a 10-class task
    with pytest.raises(AuditInputError, match=r"\[0, 9\]"):
        audit_training((x, y), num_classes=10, canaries=many, noise_multiplier=1.0)
