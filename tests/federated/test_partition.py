"""partition: disjoint, covering, non-empty splits; label skew as promised."""
import numpy as np
import pytest

from mxprivacy.errors import InvalidParameterError
from mxprivacy.federated.partition import (dirichlet_partition, partition_by_label,
                                           partition_iid)


def _labels(n=1000, classes=10, seed=0):
    return np.random.default_rng(seed).integers(0, classes, n)


def _check_split(parts, n, num_clients):
    assert len(parts) == num_clients
    assert all(len(p) > 0 and p.dtype == np.int64 for p in parts)
    joined = np.concatenate(parts)
    assert len(joined) == n  # disjoint ...
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))  # ... and covering


@pytest.mark.parametrize("num_clients, per_client", [(10, 2), (7, 3), (25, 1), (3, 4),
                                                     (4, 20)])
def test_label_shards_are_a_partition_with_few_labels_each(num_clients, per_client):
    y = _labels()
    parts = partition_by_label(y, num_clients, classes_per_client=per_client, seed=1)
    _check_split(parts, len(y), num_clients)
    labels = [set(y[p].tolist()) for p in parts]
    assert all(len(s) <= min(per_client, 10) for s in labels)
    assert set().union(*labels) == set(range(10))
    if num_clients * per_client >= 10 and per_client < 10:
        assert max(len(s) for s in labels) == per_client  # really skewed, not IID


def test_label_shards_split_each_label_evenly_among_its_holders():
    y = np.repeat(np.arange(4), 30)  # 4 labels x 30
    parts = partition_by_label(y, 4, classes_per_client=2, seed=0)  # each label: 2 holders
    for p in parts:
        counts = np.bincount(y[p], minlength=4)
        assert sorted(counts[counts > 0].tolist()) == [15, 15]


def test_label_shards_refuse_impossible_settings():
    y = _labels()
    with pytest.raises(InvalidParameterError, match="cannot hold all 10 labels.*at least 4"):
        partition_by_label(y, 3, classes_per_client=3)
    with pytest.raises(InvalidParameterError, match="Label 1 has 1 examples but 2 clients"):
        partition_by_label(np.array([0, 0, 0, 1]), 2, classes_per_client=2)
    with pytest.raises(InvalidParameterError, match="1-D array of labels"):
        partition_by_label(np.eye(3), 2)
    with pytest.raises(InvalidParameterError, match="classes_per_client must be a positive"):
        partition_by_label(y, 2, classes_per_client=0)


def test_iid_is_a_balanced_partition_and_seed_reproduces():
    parts = partition_iid(103, 10, seed=3)
    _check_split(parts, 103, 10)
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3
    for a, b in zip(parts, partition_iid(103, 10, seed=3)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(InvalidParameterError, match="5 examples cannot give each of 6"):
        partition_iid(5, 6)
    with pytest.raises(InvalidParameterError, match="num_clients must be a positive"):
        partition_iid(5, 1.5)


@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
def test_dirichlet_is_a_partition(alpha):
    y = _labels()
    parts = dirichlet_partition(y, 10, alpha, seed=0)
    _check_split(parts, len(y), 10)


def test_dirichlet_small_alpha_skews_labels_more_than_large_alpha():
    y = _labels(5000)

    def mean_top_share(alpha):
        parts = dirichlet_partition(y, 10, alpha, seed=0)
        return np.mean([np.bincount(y[p], minlength=10).max() / len(p) for p in parts])

    assert mean_top_share(0.05) > 0.6 > 0.2 > mean_top_share(1000.0)


def test_dirichlet_refuses_bad_alpha_and_impossible_splits():
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(InvalidParameterError, match="alpha must be a positive"):
            dirichlet_partition(_labels(), 10, bad)
    with pytest.raises(InvalidParameterError, match="left a client without examples"):
        dirichlet_partition(np.zeros(12, int), 12, 0.01, seed=0)
