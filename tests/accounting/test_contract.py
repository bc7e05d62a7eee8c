"""The contract every accountant satisfies, plus property tests."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxprivacy.accounting import (ComposedEvent, EpsilonDeltaEvent, GaussianEvent, GDPAccountant,
                                  LaplaceEvent, PLDAccountant, PoissonSampledEvent,
                                  RDPAccountant, SampledWithoutReplacementEvent,
                                  SelfComposedEvent, calibrate_noise_multiplier, epsilon_for,
                                  make_accountant)
from mxprivacy.errors import (InvalidParameterError, PrivacyWarning, UnreachableTargetError,
                              UnsupportedEventError)

SAMPLED = PoissonSampledEvent(0.01, GaussianEvent(1.1))
FIXED = SampledWithoutReplacementEvent(1000, 10, GaussianEvent(1.1))
# Refused by every accountant and relation: nothing subsamples an (epsilon, delta) event.
BAD = ComposedEvent([GaussianEvent(5.0), PoissonSampledEvent(0.1, EpsilonDeltaEvent(1.0))])


class AccountantContract:
    """Inherited by the test class of every accountant (and relation).

    ``EVENT`` is a subsampled event the accountant supports, ``OTHER`` an event of the
    other relation (refused), ``RELATION`` its neighbouring relation.
    """

    EVENT = SAMPLED
    OTHER = FIXED
    RELATION = "add_remove"

    def make(self):
        raise NotImplementedError

    def test_count_equals_repetition(self):
        once = self.make().compose(self.EVENT, 7)
        repeated = self.make()
        for _ in range(7):
            repeated.compose(self.EVENT)
        assert once.get_epsilon(1e-5) == pytest.approx(repeated.get_epsilon(1e-5), rel=1e-12)

    def test_self_composed_honours_count(self):
        a = self.make().compose(SelfComposedEvent(self.EVENT, 5), 3)
        b = self.make().compose(self.EVENT, 15)
        assert a.get_epsilon(1e-5) == pytest.approx(b.get_epsilon(1e-5), rel=1e-12)

    def test_composed_honours_count(self):
        a = self.make().compose(ComposedEvent([self.EVENT, GaussianEvent(5.0)]), 4)
        b = self.make().compose(self.EVENT, 4).compose(GaussianEvent(5.0), 4)
        assert a.get_epsilon(1e-5) == pytest.approx(b.get_epsilon(1e-5), rel=1e-9)

    def test_more_steps_cost_more(self):
        acc = self.make().compose(self.EVENT, 10)
        fewer = acc.get_epsilon(1e-5)
        assert 0 < fewer < acc.compose(self.EVENT, 90).get_epsilon(1e-5)

    def test_invalid_event_leaves_state_unchanged(self):
        acc = self.make().compose(self.EVENT, 10)
        before = acc.get_epsilon(1e-5)
        for bad, name in ((BAD, "EpsilonDeltaEvent"), (self.OTHER, type(self.OTHER).__name__)):
            with pytest.raises(UnsupportedEventError, match=name):
                acc.compose(ComposedEvent([self.EVENT, bad]))
            assert not acc.supports(bad)
        assert acc.get_epsilon(1e-5) == before
        assert sum(c for _, c in acc.ledger) == 10

    def test_state_dict_round_trip_is_json_and_keeps_the_relation(self):
        acc = self.make().compose(self.EVENT, 12).compose(GaussianEvent(3.0))
        state = json.loads(json.dumps(acc.state_dict()))
        other = self.make()
        other.load_state_dict(state)
        assert other.get_epsilon(1e-6) == acc.get_epsilon(1e-6)
        assert other.state_dict() == state and other.neighboring == self.RELATION
        assert ("neighboring" in state) == (self.RELATION == "replace_one")

    def test_a_reloaded_ledger_gives_the_bit_identical_epsilon(self):
        """A ledger never decreases, not even in the last bit: a run composed step by step
        and its ledger loaded from a checkpoint must agree exactly (review: RDP added a
        curve n times live but multiplied it by n on load, 1 ulp lower)."""
        for steps in (7, 123, 1001):
            live = self.make()
            for _ in range(steps):
                live.compose(self.EVENT)
            live.compose(GaussianEvent(3.0), 2)
            for _ in range(steps):
                live.compose(self.EVENT)
            loaded = self.make()
            loaded.load_state_dict(json.loads(json.dumps(live.state_dict())))
            for delta in (1e-5, 1e-7):
                assert loaded.get_epsilon(delta) == live.get_epsilon(delta), steps

    def test_ledger_of_the_other_relation_is_refused(self):
        acc = self.make().compose(self.EVENT, 3)
        state = acc.state_dict()
        relation = "add_remove" if self.RELATION == "replace_one" else "replace_one"
        foreign = dict(state, neighboring=relation)
        with pytest.raises(InvalidParameterError, match=relation):
            acc.load_state_dict(foreign)
        with pytest.raises(InvalidParameterError, match="neighboring"):
            acc.load_state_dict(dict(state, neighboring="replace-one"))
        assert acc.state_dict() == state

    def test_empty_like_keeps_settings_and_relation(self):
        acc = self.make().compose(self.EVENT, 5)
        fresh = acc.empty_like()
        assert type(fresh) is type(acc) and fresh.neighboring == acc.neighboring
        assert fresh.ledger == [] and fresh.get_epsilon(1e-5) == 0.0
        assert fresh.compose(self.EVENT, 5).get_epsilon(1e-5) == acc.get_epsilon(1e-5)

    def test_relation_is_read_only_and_validated(self):
        acc = self.make()
        with pytest.raises(AttributeError):
            acc.neighboring = "add_remove"
        with pytest.raises(InvalidParameterError, match="neighboring"):
            type(acc)(neighboring="replace")

    def test_says_whether_it_is_an_upper_bound(self):
        assert type(self.make().is_upper_bound) is bool

    def test_zero_count_is_no_op(self):
        assert self.make().compose(self.EVENT, 0).get_epsilon(1e-5) == 0.0

    def test_bad_count_rejected(self):
        with pytest.raises(InvalidParameterError):
            self.make().compose(self.EVENT, -1)


class ReplaceOneContract(AccountantContract):
    EVENT = FIXED
    OTHER = SAMPLED
    RELATION = "replace_one"


class TestRDPAccountant(AccountantContract):
    def make(self, **kwargs):
        return RDPAccountant(**kwargs)


class TestRDPAccountantReplaceOne(ReplaceOneContract):
    def make(self, **kwargs):
        return RDPAccountant(**{"neighboring": "replace_one", **kwargs})


def test_events_validate_parameters():
    with pytest.raises(InvalidParameterError):
        GaussianEvent(-1.0)
    with pytest.raises(InvalidParameterError):
        PoissonSampledEvent(1.5, GaussianEvent(1.0))
    with pytest.raises(InvalidParameterError):
        SelfComposedEvent(SAMPLED, 1.5)


class TestPLDAccountant(AccountantContract):
    def make(self, **kwargs):
        return PLDAccountant(**kwargs)


class TestPLDAccountantReplaceOne(ReplaceOneContract):
    # Poisson subsampling of a Gaussian is supported under replace-one in PLD: the event
    # of the other relation is Poisson subsampling of a Laplace event.
    OTHER = PoissonSampledEvent(0.01, LaplaceEvent(1.0))

    def make(self, **kwargs):
        return PLDAccountant(**{"neighboring": "replace_one", **kwargs})


class TestGDPAccountant(AccountantContract):
    def make(self, **kwargs):
        return GDPAccountant(**kwargs)


class TestGDPAccountantReplaceOne(ReplaceOneContract):
    def make(self, **kwargs):
        return GDPAccountant(**{"neighboring": "replace_one", **kwargs})


def test_only_gdp_is_an_approximation():
    assert RDPAccountant.is_upper_bound and PLDAccountant.is_upper_bound
    assert GDPAccountant.is_upper_bound is False


ACCOUNTANT_NAMES = pytest.mark.parametrize("name", ["rdp", "pld"])


@ACCOUNTANT_NAMES
@settings(max_examples=15, deadline=None)
@given(q=st.floats(1e-3, 0.2), sigma=st.floats(0.6, 3.0), steps=st.integers(10, 3000))
def test_epsilon_monotone(name, q, sigma, steps):
    eps = epsilon_for(sigma, q, steps, 1e-5, name)
    slack = 1e-9 * (1 + eps)  # PLD: discretization round-off only
    assert epsilon_for(sigma * 1.1, q, steps, 1e-5, name) <= eps + slack
    assert epsilon_for(sigma, q, steps * 2, 1e-5, name) >= eps - slack
    assert epsilon_for(sigma, min(1.0, q * 1.5), steps, 1e-5, name) >= eps - slack


@ACCOUNTANT_NAMES
@settings(max_examples=15, deadline=None)
@given(q=st.floats(1e-3, 0.1), sigma=st.floats(0.7, 3.0), steps=st.integers(10, 3000),
       log_delta=st.floats(-9, -3))
def test_get_delta_inverts_get_epsilon(name, q, sigma, steps, log_delta):
    acc = make_accountant(name).compose(PoissonSampledEvent(q, GaussianEvent(sigma)), steps)
    delta = 10 ** log_delta
    eps = acc.get_epsilon(delta)
    if eps > 0:
        assert acc.get_delta(eps) == pytest.approx(delta, rel=1e-6)


@pytest.mark.parametrize("name,target,q,steps", [
    ("rdp", 1.0, 0.01, 1000), ("rdp", 2.6, 256 / 60000, 14100), ("rdp", 8.0, 0.05, 500),
    ("pld", 1.0, 0.01, 1000), ("pld", 2.0, 256 / 60000, 14100)])
def test_calibration_never_overshoots_and_is_tight(name, target, q, steps):
    sigma = calibrate_noise_multiplier(target, 1e-5, q, steps=steps, accountant=name)
    assert epsilon_for(sigma, q, steps, 1e-5, name) <= target
    assert epsilon_for(sigma * 0.99, q, steps, 1e-5, name) > target


@pytest.mark.parametrize("bad", [dict(sample_rate=0.0), dict(sample_rate=1.5),
                                 dict(noise_multiplier=-1.0), dict(steps=-1),
                                 dict(delta=0.0), dict(delta=1.0)])
@ACCOUNTANT_NAMES
def test_bad_input_is_a_clear_error(name, bad):
    args = dict(noise_multiplier=1.0, sample_rate=0.01, steps=10, delta=1e-5)
    args.update(bad)
    with pytest.raises(InvalidParameterError):
        epsilon_for(accountant=name, **args)


@ACCOUNTANT_NAMES
def test_zero_noise_is_infinite_epsilon_and_says_so(name):
    with pytest.warns(PrivacyWarning, match="infinite"):
        assert epsilon_for(0.0, 1.0, 10, 1e-5, name) == float("inf")


def test_calibration_epochs_and_errors():
    by_epochs = calibrate_noise_multiplier(2.0, 1e-5, 0.01, epochs=3)
    by_steps = calibrate_noise_multiplier(2.0, 1e-5, 0.01, steps=300)
    assert by_epochs == by_steps
    with pytest.raises(InvalidParameterError):
        calibrate_noise_multiplier(-1, 1e-5, 0.01, steps=10)
    with pytest.raises(UnreachableTargetError):
        calibrate_noise_multiplier(1e-9, 1e-12, 1.0, steps=10 ** 6)


def test_laplace_rdp_limits_to_pure_dp():
    # RDP of Laplace(b) at order -> inf tends to the pure-DP epsilon 1/b.
    acc = RDPAccountant(orders=[1e6]).compose(LaplaceEvent(2.0))
    assert acc.rdp[0] == pytest.approx(0.5, rel=1e-4)
    assert np.all(np.diff(RDPAccountant().compose(LaplaceEvent(2.0)).rdp) >= -1e-12)


REFUSALS = [  # (accountant, relation, event, words the error must contain)
    (RDPAccountant, "add_remove", FIXED, ["SampledWithoutReplacementEvent", "replace_one"]),
    (RDPAccountant, "replace_one", SAMPLED, ["PoissonSampledEvent", "add_remove"]),
    (RDPAccountant, "replace_one", SampledWithoutReplacementEvent(9, 3, LaplaceEvent(1.0)),
     ["sub-event", "LaplaceEvent"]),
    (RDPAccountant, "add_remove", PoissonSampledEvent(0.1, EpsilonDeltaEvent(1.0)),
     ["sub-event", "EpsilonDeltaEvent"]),
    (RDPAccountant, "add_remove", EpsilonDeltaEvent(1.0, 1e-6), ["EpsilonDeltaEvent", "PLD"]),
    (PLDAccountant, "add_remove", FIXED, ["SampledWithoutReplacementEvent", "replace_one"]),
    (PLDAccountant, "replace_one", PoissonSampledEvent(0.1, LaplaceEvent(1.0)),
     ["PoissonSampledEvent", "LaplaceEvent", "add_remove"]),
    (PLDAccountant, "replace_one", SampledWithoutReplacementEvent(9, 3, LaplaceEvent(1.0)),
     ["sub-event", "LaplaceEvent"]),
    (PLDAccountant, "add_remove", PoissonSampledEvent(0.1, EpsilonDeltaEvent(1.0)),
     ["sub-event", "EpsilonDeltaEvent"]),
]


@pytest.mark.parametrize("make,relation,event,words", REFUSALS)
def test_unsupported_combinations_name_the_event(make, relation, event, words):
    acc = make(neighboring=relation).compose(GaussianEvent(3.0))
    before = acc.state_dict()
    nested = SelfComposedEvent(ComposedEvent([GaussianEvent(2.0), event]), 4)
    assert not acc.supports(nested)
    with pytest.raises(UnsupportedEventError) as info:
        acc.compose(nested)
    message = str(info.value)
    assert all(word in message for word in words), message
    assert f"neighboring={relation!r}" in message
    assert acc.state_dict() == before
