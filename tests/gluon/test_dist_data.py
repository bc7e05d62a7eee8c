"""How DPDataLoader assigns records to the workers of a dist_sync job
(mxprivacy.gluon.dist_data): one canonical encoding for every container, gluon's lazy
transforms looked through, record_ids, the partition in the agreement check, and the
job's W and rank. One 2-worker job (tests/gluon/dist_data_worker.py) checks it end to
end: a float64 copy trains every record once; one record with another content stops
the job at the first step.
"""
import json
import os
import sys
import time
import types
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon, nd

from mxprivacy import (DPDataLoader, DPTrainer, InvalidParameterError,
                       NondeterministicDatasetError, PrivateBlock)
from mxprivacy.distributed.launch import launch_local
from mxprivacy.gluon import dist_kvstore
from mxprivacy.gluon.dist_agreement import dist_settings
from mxprivacy.gluon.dist_data import (content_digests, owner_counts, owners, plan_shard,
                                       record_digests)
from tests.gluon import dist_data_worker as worker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def records(size=40, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(size, 3)).astype("float32"),
            rng.integers(0, 5, size=size).astype("float32"))


def dist_stub(workers=2, rank=0):
    """What DPDataLoader reads from a dist trainer, and what the loader gives it."""
    return types.SimpleNamespace(
        num_workers=workers, rank=rank, sampling="poisson", sample_rate=0.25,
        secure_mode=False, distributed=True, dataset_size=None,
        _register_loader=lambda size, shard: None)


# -- (a) one canonical encoding --------------------------------------------------------
def copies_of(x, y):
    """Copies a worker may hold of the same records."""
    minus_zero, nan_payload = x.copy(), x.copy()
    minus_zero[0, 0], nan_payload[1, 1] = -0.0, np.nan
    other_nan = nan_payload.copy()
    other_nan.view(np.uint32)[1, 1] = 0xFFC01234  # a NaN with another sign and payload
    wide = x.astype("float64") + 1e-12  # values not exact in float32
    wide[0, 0] = 0.0
    wide_copy = wide.astype(">f8")
    wide_copy[0, 0] = -0.0
    return {"float64 features": ((x.astype("float64"), y), (x, y)),
            "int64 labels": ((x, y.astype("int64")), (x, y)),
            "uint8 labels": ((x, y.astype("uint8")), (x, y)),
            "big-endian": ((x.astype(">f4"), y.astype(">f8")), (x, y)),
            "Fortran order": ((np.asfortranarray(x), y), (x, y)),
            "-0.0": ((minus_zero, y), (np.where(minus_zero == 0, 0.0, minus_zero), y)),
            "NaN payload": ((other_nan, y), (nan_payload, y)),
            "float64 values, big-endian, -0.0": ((wide_copy, y), (wide, y)),
            "bool labels": ((x, y > 2), (x, (y > 2).astype("float32")))}


@pytest.mark.parametrize("name", list(copies_of(*records(4))))
def test_a_record_has_one_digest_whatever_its_dtype_byte_order_or_zero_sign(name):
    """The review moved a canary to the other worker by holding float64 features (or
    int64 labels, big-endian, -0.0, another NaN) on one worker: 2 C per step. The digest,
    not only the owner, must be equal; one changed value must change it. Mutation
    checked: hashing the raw row bytes fails every case but Fortran order."""
    x, y = records()
    copy, reference = copies_of(x, y)[name]
    assert content_digests(40, copy) == content_digests(40, reference)
    changed = reference[0].copy()
    changed[7, 2] = np.nextafter(changed[7, 2], np.float32(np.inf))
    differ = [a != b for a, b in zip(content_digests(40, (changed, reference[1])),
                                     content_digests(40, reference))]
    assert differ == [i == 7 for i in range(40)]


class Items(gluon.data.Dataset):
    """A Dataset of lists: NDArray features and Python int labels."""

    def __init__(self, x, y):
        self._x, self._y = x, y

    def __len__(self):
        return len(self._y)

    def __getitem__(self, index):
        return [nd.array(self._x[index]), int(self._y[index])]


def test_arrays_and_dataset_items_give_the_same_digests():
    """The same record has one owner in arrays, in an ArrayDataset of numpy arrays or
    NDArrays, and item by item (NDArray features, Python int labels)."""
    x, y = records()
    expected = content_digests(40, (x, y))
    for dataset in (gluon.data.ArrayDataset(x, y), gluon.data.ArrayDataset(nd.array(x), y),
                    Items(x, y), gluon.data.SimpleDataset(list(zip(x, y)))):
        assert content_digests(40, dataset=dataset) == expected
    assert content_digests(40, dataset=gluon.data.SimpleDataset(list(x))) == \
        content_digests(40, (x,)) != content_digests(40, (x, y))


def test_big_integers_text_and_shapes_have_one_encoding():
    """Integers beyond 2**53 are int64 whatever the container; strings are UTF-8 (fixed
    width or not); a field's shape counts, its size-1 axes do not."""
    big = np.array([[2 ** 60], [-3], [2 ** 53]], dtype="int64")
    assert content_digests(3, (big,)) == content_digests(3, (big.astype("float64"),))
    odd = np.array([[2 ** 53 + 1]], dtype="int64")
    assert content_digests(1, (odd,)) != content_digests(1, (odd.astype("float64"),))
    wide = np.array([[2 ** 30 + 1], [2 ** 30]], dtype="int64")  # float32: both 2**30
    assert content_digests(2, (wide,)) == content_digests(2, (wide.astype("float64"),))
    narrow = content_digests(2, (wide.astype("float32"),))
    assert narrow[0] == narrow[1] == content_digests(2, (wide,))[1] != \
        content_digests(2, (wide,))[0]
    words = np.array(["ab", "ba", "é"])
    assert content_digests(3, (words,)) == content_digests(3, (words.astype("U9"),))
    assert content_digests(3, (words,))[0] != content_digests(3, (words,))[1]
    assert content_digests(2, (np.array([b"ab", b"c"]),)) == \
        content_digests(2, (np.array(["ab", "c"]),))
    square = np.arange(8, dtype="float32").reshape(2, 2, 2)
    assert content_digests(2, (square,)) != content_digests(2, (square.reshape(2, 4),))
    assert content_digests(2, (square.reshape(2, 1, 4),)) == \
        content_digests(2, (square.reshape(2, 4),))
    for bad in (np.array([[object()]]), np.array([[1 + 2j]]), np.array([[2 ** 63]], "u8")):
        with pytest.raises(InvalidParameterError, match="onvert it to"):
            content_digests(1, (bad,))
    with pytest.raises(InvalidParameterError, match="field 0 holds object values"):
        content_digests(2, dataset=gluon.data.SimpleDataset([({"a": 1}, 1), ({"b": 2}, 2)]))


# -- (b) random augmentation -------------------------------------------------------------
def jitter(features):
    return features * np.float32(np.random.uniform(0.5, 2.0))


def test_a_randomly_augmented_dataset_is_hashed_before_gluon_transforms():
    """The review: hashed after a random transform_first, a record was on both workers
    with probability 1/4. Before gluon's lazy transforms (also under filter and take),
    owners do not depend on the draw. Mutation checked: hashing dataset[index] fails."""
    x, y = records()
    plain = gluon.data.ArrayDataset(x, y)
    expected = owners(content_digests(40, (x, y)), 2)
    kept = [i for i in range(40) if y[i] != 0]
    for seed in range(3):
        np.random.seed(seed)
        for dataset in (plain.transform_first(jitter), gluon.data.SimpleDataset(
                list(zip(x, y))).transform(lambda a, b: (jitter(a), b))):
            assert np.array_equal(owners(content_digests(40, dataset=dataset), 2), expected)
        subset = plain.transform_first(jitter).filter(lambda item: item[1] != 0).take(20)
        assert np.array_equal(owners(content_digests(20, dataset=subset), 2),
                              expected[kept[:20]])


class Augmented(gluon.data.Dataset):
    """A random augmentation inside __getitem__ (as MNIST(transform=fn) does)."""

    def __init__(self, x, y):
        self._x, self._y = x, y

    def __len__(self):
        return len(self._y)

    def __getitem__(self, index):
        return jitter(self._x[index]), self._y[index]


@pytest.mark.parametrize("record_ids", [None, list(range(40))])
def test_a_dataset_that_changes_between_reads_is_refused(record_ids):
    """Its items cannot be hashed the same way on two workers (with record_ids the pairs
    of the partition could not be either). Mutation checked: one read builds it."""
    x, y = records()
    with pytest.raises(NondeterministicDatasetError, match="transform_first"):
        DPDataLoader(Augmented(x, y), sample_rate=0.5, num_workers=2, rank=0,
                     record_ids=record_ids)
    DPDataLoader(Augmented(x, y), sample_rate=0.5, num_workers=1, rank=0)  # nothing hashed


# -- (c, d) the partition, record_ids ---------------------------------------------------
def loader_partition(data, workers=2, rank=0, **options):
    stub = dist_stub(workers, rank)
    loader = DPDataLoader(data, sample_rate=0.25, trainer=stub, **options)
    return loader, stub._loader_partition


def test_every_worker_registers_the_same_partition_summing_to_n():
    """owners=[n_0, n_1, n_2]: each rank's shard size, the same on every rank; a float64
    copy gives the same, a copy with one record moved to another owner does not."""
    x, y = records()
    shards = [loader_partition((x, y), 3, rank) for rank in range(3)]
    sizes = [len(loader.shard) for loader, _ in shards]
    assert sum(sizes) == 40 and all(size > 0 for size in sizes)
    assert {partition for _, partition in shards} == {f"owners={sizes}"}
    assert loader_partition((x.astype("float64"), y), 3)[1] == f"owners={sizes}"
    mine = owners(content_digests(40, (x, y)), 3)
    moved = next(v for v in range(1, 50) if owners(content_digests(
        1, (np.full((1, 3), v, "float32"), y[:1])), 3)[0] != mine[0])
    other = x.copy()
    other[0] = moved
    assert loader_partition((other, y), 3)[1] != f"owners={sizes}"


def test_record_ids_own_the_records_and_the_digest_covers_the_pairs():
    """The owner is the id's; ids that travel with their records give the same shards,
    digest and partition in any order; positional ids over another order (the review:
    2 C, and the same digest) give another digest and another partition. Mutation
    checked: a digest of the ids alone (or pairs left out of the partition) fails."""
    x, y = records()
    ids = [f"file-{i}" for i in range(40)]
    loader, partition = loader_partition((x, y), record_ids=ids)
    by_id = owners(record_digests(40, record_ids=ids), 2)
    assert loader.shard.tolist() == np.flatnonzero(by_id == 0).tolist()
    assert partition.startswith(f"owners={owner_counts(by_id, 2)} (by record_ids), pairs=")
    order = np.random.default_rng(1).permutation(40)
    travelled = loader_partition((x[order], y[order]), record_ids=[ids[i] for i in order])
    assert (travelled[0].data_digest, travelled[1]) == (loader.data_digest, partition)
    positional = loader_partition((x[order], y[order]), record_ids=ids)
    assert positional[0].data_digest != loader.data_digest
    assert positional[1] != partition
    assert positional[1].split(", pairs")[0] == partition.split(", pairs")[0]


@pytest.fixture
def fresh_process(monkeypatch):
    monkeypatch.setattr(dist_kvstore, "_PROCESS", dist_kvstore._Process())


def test_the_partition_is_part_of_the_agreement_data_setting(monkeypatch, fresh_process):
    """The loader of a dist trainer (here presented as rank 0 of 2) puts N and the owner
    counts into the "data" setting every worker compares at every step. Mutation
    checked: without the registration the setting is N alone."""
    class OneWorker(mx.kvstore.KVStore):
        type = "dist_sync"

    store = mx.kv.create("local")
    store.__class__ = OneWorker
    net = gluon.nn.Dense(2, in_units=3)
    net.initialize()
    trainer = DPTrainer(PrivateBlock(net).collect_params(), "sgd", noise_multiplier=1.0,
                        max_grad_norm=1.0, expected_batch_size=10, dataset_size=40,
                        kvstore=store)
    monkeypatch.setattr(type(trainer), "num_workers", property(lambda self: 2))
    x, y = records()
    loader = DPDataLoader((x, y), expected_batch_size=10, trainer=trainer)
    counts = owner_counts(owners(content_digests(40, (x, y)), 2), 2)
    assert counts[0] == len(loader.shard)
    assert dist_settings(trainer)["data"] == f"N=40, owners={counts}"


# -- (e) the job's W and rank ------------------------------------------------------------
def test_an_explicit_shard_other_than_the_jobs_is_refused(monkeypatch, fresh_process):
    """The review: num_workers=1, rank=0 on both workers of a 2-worker job (with
    dist_own_sampler=True) trained every record twice. Mutation checked: without the
    check num_workers=1 is accepted."""
    x, _ = records()
    monkeypatch.setenv("DMLC_ROLE", "worker")
    monkeypatch.setenv("DMLC_NUM_WORKER", "2")
    for workers in (1, 3):
        with pytest.raises(InvalidParameterError, match=f"num_workers={workers}\\) in a "
                                                         "worker of a job of 2 workers"):
            DPDataLoader((x,), sample_rate=0.5, num_workers=workers, rank=0)
    DPDataLoader((x,), sample_rate=0.5, num_workers=2, rank=1)  # the rank is not known yet
    dist_kvstore._PROCESS.started = (1, 2)  # a started dist trainer: rank 1 of 2
    with pytest.raises(InvalidParameterError, match="rank=0\\) in worker rank 1"):
        DPDataLoader((x,), sample_rate=0.5, num_workers=2, rank=0)
    DPDataLoader((x,), sample_rate=0.5, num_workers=2, rank=1)
    monkeypatch.delenv("DMLC_ROLE")
    with pytest.raises(InvalidParameterError, match="job of 2 workers"):
        DPDataLoader((x,), sample_rate=0.5, num_workers=1, rank=0)


def test_plan_shard_of_one_worker_hashes_nothing():
    x, _ = records()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shard = plan_shard(40, dataset=Augmented(x, x[:, 0]))
    assert (shard.num_workers, shard.data_digest, shard.partition) == (1, None, None)
    assert shard.indices.tolist() == list(range(40))


# -- end to end: a 2-worker job ----------------------------------------------------------
@pytest.fixture(scope="module")
def data_job(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    start = time.monotonic()
    code = launch_local([sys.executable, "-m", "tests.gluon.dist_data_worker", str(out)], 2,
                        env={"OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1"},
                        timeout=120, grace=2.0, cwd=ROOT)
    assert code == 0, f"exit code {code} after {time.monotonic() - start:.0f} s"
    return [json.load(open(out / f"data-{rank}.json")) for rank in (0, 1)]


def test_a_float64_copy_trains_every_record_once(data_job):
    """Rank 1 holds float64 big-endian features and int64 labels in reverse order:
    sigma = 0, q = 1, C = 1, only the canary has a gradient, and the pulled gradient has
    norm 1.000 C (the review measured 2.000 C: the canary on both workers). The workers'
    records are disjoint and cover the data set."""
    assert sorted(data_job[0]["records"] + data_job[1]["records"]) == list(range(worker.N))
    for report in data_job:
        assert report["pulled_norm"] == pytest.approx(1.0, abs=1e-5)
        assert report["steps"] == 1


def test_a_record_with_another_content_stops_the_job_at_the_first_step(data_job):
    """Rank 1's copy has one record whose other content moves it to the other worker:
    every worker raises WorkerMismatchError naming the data and the owner counts, before
    any gradient is pushed. Mutation checked: without the partition both step."""
    for rank, report in enumerate(data_job):
        error = report["other content"]
        assert error is not None and f"disagree on data (worker rank {rank}" in error
        assert "data=N=12, owners=[" in error
        assert report["steps after other content"] == 0
