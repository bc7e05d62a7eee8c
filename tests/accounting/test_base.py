"""Ledgers keep the neighbouring relation: round trips, and refusal of the other one."""
import json

import pytest

from mxprivacy.accounting import (GaussianEvent, GDPAccountant, PLDAccountant, PoissonSampledEvent,
                                  RDPAccountant, SampledWithoutReplacementEvent)
from mxprivacy.accounting.base import ledger_neighboring, parse_ledger
from mxprivacy.errors import InvalidParameterError

FIXED = SampledWithoutReplacementEvent(1000, 10, GaussianEvent(1.0))
ACCOUNTANTS = pytest.mark.parametrize("make", [
    RDPAccountant, lambda **kw: PLDAccountant(value_discretization_interval=1e-3, **kw),
    GDPAccountant])


@ACCOUNTANTS
def test_replace_one_ledger_round_trip(make):
    acc = make(neighboring="replace_one").compose(FIXED, 50).compose(GaussianEvent(4.0), 2)
    state = json.loads(json.dumps(acc.state_dict()))
    assert state["neighboring"] == "replace_one" and ledger_neighboring(state) == "replace_one"
    again = make(neighboring="replace_one")
    again.load_state_dict(state)
    assert again.get_epsilon(1e-6) == acc.get_epsilon(1e-6)
    assert again.state_dict() == state
    entries = parse_ledger(state, neighboring="replace_one")
    assert entries == [(FIXED, 50), (GaussianEvent(4.0), 2)]


@ACCOUNTANTS
def test_a_ledger_is_never_read_under_the_other_relation(make):
    # The plain Gaussian event is valid under both relations but means sensitivity C under
    # add/remove and 2C under replace-one: reading it under the other relation would
    # silently change the guarantee, so the relation is checked, not just the events.
    replaced = make(neighboring="replace_one").compose(GaussianEvent(2.0), 10)
    state = replaced.state_dict()
    plain = make()
    with pytest.raises(InvalidParameterError, match="replace_one"):
        plain.load_state_dict(state)
    with pytest.raises(InvalidParameterError, match="replace_one"):
        parse_ledger(state)  # the default reader is add/remove (checkpoints, NoisyOutput)
    assert plain.ledger == []  # the refused load changed nothing
    added = plain.compose(GaussianEvent(2.0), 10).state_dict()
    with pytest.raises(InvalidParameterError, match="add_remove"):
        make(neighboring="replace_one").load_state_dict(added)


def test_add_remove_ledgers_keep_their_old_form():
    # Ledgers written before the relation existed have no 'neighboring' field and load
    # unchanged; an add/remove accountant writes the same form.
    acc = RDPAccountant().compose(PoissonSampledEvent(0.01, GaussianEvent(1.0)), 5)
    state = acc.state_dict()
    assert state == {"accountant": "rdp", "ledger": [
        {"event": {"type": "poisson_sampled", "sample_rate": 0.01,
                   "event": {"type": "gaussian", "noise_multiplier": 1.0}}, "count": 5}]}
    explicit = dict(state, neighboring="add_remove")
    other = RDPAccountant()
    other.load_state_dict(explicit)
    assert other.get_epsilon(1e-5) == acc.get_epsilon(1e-5)


@pytest.mark.parametrize("relation", ["replace", "REPLACE_ONE", 1, None, ["add_remove"]])
def test_unknown_relations_are_refused(relation):
    state = RDPAccountant().compose(GaussianEvent(1.0)).state_dict()
    with pytest.raises(InvalidParameterError, match="neighboring"):
        parse_ledger(dict(state, neighboring=relation))
    with pytest.raises(InvalidParameterError, match="neighboring"):
        RDPAccountant(neighboring=relation)


def test_repr_names_a_replace_one_accountant():
    assert "replace_one" in repr(PLDAccountant(neighboring="replace_one").compose(FIXED, 2))
    assert "neighboring" not in repr(PLDAccountant())
