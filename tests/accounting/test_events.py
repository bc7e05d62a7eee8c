"""Events: validation and serialization of sampling without replacement."""
import json

import pytest

from mxprivacy.accounting import (GaussianEvent, LaplaceEvent, PoissonSampledEvent,
                                  RDPAccountant, SampledWithoutReplacementEvent, event_from_dict)
from mxprivacy.accounting.base import parse_ledger
from mxprivacy.errors import InvalidParameterError


def test_fields_rate_and_round_trip():
    event = SampledWithoutReplacementEvent(60000, 256, GaussianEvent(1.1))
    assert event.sample_rate == 256 / 60000
    data = json.loads(json.dumps(event.to_dict()))
    assert data == {"type": "sampled_without_replacement", "dataset_size": 60000,
                    "sample_size": 256, "event": {"type": "gaussian", "noise_multiplier": 1.1}}
    assert event_from_dict(data) == event
    nested = SampledWithoutReplacementEvent(10, 10, PoissonSampledEvent(0.5, LaplaceEvent(2.0)))
    assert event_from_dict(nested.to_dict()) == nested
    assert event.children() == (GaussianEvent(1.1),)


@pytest.mark.parametrize("size,sample,sub", [
    (0, 0, GaussianEvent(1.0)), (10, 11, GaussianEvent(1.0)), (10, -1, GaussianEvent(1.0)),
    (10.5, 2, GaussianEvent(1.0)), (10, 2.5, GaussianEvent(1.0)), (True, 1, GaussianEvent(1.0)),
    (10, True, GaussianEvent(1.0)), ("10", 2, GaussianEvent(1.0)), (float("nan"), 2, GaussianEvent(1.0)),
    (float("inf"), 2, GaussianEvent(1.0)), (10, 2, 1.0)])
def test_invalid_fields_are_refused(size, sample, sub):
    with pytest.raises(InvalidParameterError):
        SampledWithoutReplacementEvent(size, sample, sub)


def test_whole_floats_are_integers():
    event = SampledWithoutReplacementEvent(100.0, 10.0, GaussianEvent(1.0))
    assert type(event.dataset_size) is int and type(event.sample_size) is int


@pytest.mark.parametrize("edit", [
    {"dataset_size": True}, {"sample_size": "10"}, {"sample_size": 10.5}, {"extra": 1},
    {"sample_size": 200}])
def test_ledger_entries_are_parsed_strictly(edit):
    acc = RDPAccountant(neighboring="replace_one").compose(
        SampledWithoutReplacementEvent(100, 10, GaussianEvent(1.0)), 3)
    state = json.loads(json.dumps(acc.state_dict()))
    state["ledger"][0]["event"].update(edit)
    with pytest.raises(InvalidParameterError):
        parse_ledger(state, neighboring="replace_one")
