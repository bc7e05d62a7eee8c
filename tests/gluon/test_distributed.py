"""DP-SGD on MXNet's parameter server (mxprivacy.gluon.distributed), on loopback.

Each job runs a scheduler, a server and two workers (tests/gluon/dist_worker.py) under
``launch_local`` with a wall-time bound; the workers write their results to files and
the tests compare them with single-machine references computed here.
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
from scipy import stats

from mxprivacy import (CheckpointError, DPDataLoader, DPTrainer, InvalidParameterError,
                       PrivateBlock, SamplingError, WorkerMismatchError,
                       WorkersOutOfStepError)
from mxprivacy.accounting import RDPAccountant
from mxprivacy.accounting.events import GaussianEvent, PoissonSampledEvent
from mxprivacy.distributed.launch import launch_local
from mxprivacy.gluon import dist_kvstore
from mxprivacy.gluon.distributed import SETTINGS_KEY
from mxprivacy.gluon import watchdog as watchdog_module
from mxprivacy.gluon.dist_agreement import (SUMS, disagreements, dist_settings, farewell,
                                            round_vector, settings_digest)
from mxprivacy.gluon.dist_data import owners, record_digests
from mxprivacy.gluon.watchdog import TIMEOUT_EXIT_CODE, Watchdog
from tests.gluon import dist_worker as worker
from tests.gluon.ckpt_helpers import read_meta, write_meta
from tests.gluon.helpers import allow_fixed_batches

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {"OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1"}
ALPHA = 1e-6  # two-sided level of each noise test


def run_job(scenario, out, timeout=60):
    """(exit code, seconds) of a 2-worker job; every process is stopped by ``timeout``."""
    start = time.monotonic()
    code = launch_local([sys.executable, "-m", "tests.gluon.dist_worker", scenario, str(out)],
                        2, env=ENV, timeout=timeout, grace=2.0, cwd=ROOT)
    return code, time.monotonic() - start


@pytest.fixture(scope="module")
def exact_job(tmp_path_factory):
    out = tmp_path_factory.mktemp("exact")
    assert run_job("exact", out)[0] == 0
    return out


@pytest.fixture(scope="module")
def noise_job(tmp_path_factory):
    out = tmp_path_factory.mktemp("noise")
    assert run_job("noise", out)[0] == 0
    reports = [json.load(open(out / f"report-{rank}.json")) for rank in (0, 1)]
    pulled = [dict(np.load(out / f"pulled-{rank}.npz")) for rank in (0, 1)]
    return out, reports, pulled


def load_params(block, arrays):
    for number, param in enumerate(block.collect_params().values()):
        param.set_data(nd.array(arrays[str(number)]))


# -- exactness ------------------------------------------------------------------------
def test_two_workers_update_as_one_process_on_the_union_of_their_batches(exact_job):
    """sigma = 0: two dist_device_sync steps (local batches of 5 + 3, then 2 + 5) equal
    two single-process steps on the 8 and 7 rows, to 1e-5 (momentum included). Rank 1's
    parameters have other names (the agreement check compares shapes, not names).
    Mutation checked: dividing by the local expected batch size (q N / W) fails it."""
    init = [np.load(exact_job / f"init-{rank}.npz") for rank in (0, 1)]
    final = [np.load(exact_job / f"final-{rank}.npz") for rank in (0, 1)]
    for key in init[0]:  # rank 0's weights were broadcast; the updates are identical
        np.testing.assert_array_equal(init[0][key], init[1][key])
        np.testing.assert_array_equal(final[0][key], final[1][key])
    block = worker.exact_net()
    load_params(block, init[0])
    trainer = DPTrainer(block.collect_params(), *worker.EXACT_OPT, **worker.EXACT)
    for step in range(len(worker.EXACT_SPLITS)):
        worker.one_step(block, trainer, *worker.exact_batch(step))
    moved = 0.0
    for number, param in enumerate(block.collect_params().values()):
        np.testing.assert_allclose(final[0][str(number)], param.data().asnumpy(), atol=1e-5)
        moved = max(moved, np.abs(param.data().asnumpy() - init[0][str(number)]).max())
    assert moved > 1e-2  # the steps did move the weights


# -- noise once -----------------------------------------------------------------------
def chi_square_bounds(n):
    law = stats.chi2(n)
    return law.ppf(ALPHA / 2), law.isf(ALPHA / 2)


def power_against(n, ratio):
    """P(reject) when the true variance is ``ratio`` times sigma^2 C^2."""
    low, high = chi_square_bounds(n)
    law = stats.chi2(n)
    return law.cdf(low / ratio) + law.sf(high / ratio)


def test_aggregated_noise_has_std_sigma_c_once(noise_job):
    """Zero gradients: each pulled gradient is the summed noise of the two workers, the
    same on both. sum(g^2) / (sigma C)^2 over 20,000 coordinates must be chi-square(20000)
    (two-sided level 1e-6 per step). Power: the wrong hypotheses sqrt(W) sigma C and
    sigma C / sqrt(W) (variance ratio 2 or 1/2) are each rejected with probability
    above 1 - 1e-12 (asserted from the chi-square law). Steps: both workers with rows, rank 1 empty, both empty. Both
    workers use the same noise_seed: it is combined with the rank, else the two shares
    would be equal and the sum's std sqrt(2) sigma C. Mutation checked: every worker
    adding the full sigma C fails; ranks sharing a seeded stream fails."""
    _, reports, pulled = noise_job
    std = worker.NOISE["noise_multiplier"] * worker.NOISE["max_grad_norm"]
    n = worker.NOISE_UNITS * worker.NOISE_INPUTS
    low, high = chi_square_bounds(n)
    for ratio in (2.0, 0.5):
        assert power_against(n, ratio) > 1 - 1e-12
    for step in pulled[0]:
        np.testing.assert_array_equal(pulled[0][step], pulled[1][step])
        grads = pulled[0][step].astype(np.float64).ravel()
        assert grads.size == n
        statistic = float(np.sum(grads ** 2) / std ** 2)
        assert low < statistic < high, (step, statistic / n)


def test_empty_local_batches_take_part_in_the_step(noise_job):
    """Rank 1 stepped on an empty batch while rank 0 had 4 rows (and both on empty ones):
    the steps completed with the noise once (previous test); the loader epoch stepped on
    its empty local batches (q N / W = 1 expected: empty with probability 0.36) and
    every worker took the same number of steps."""
    _, reports, _ = noise_job
    batches = int(np.ceil(worker.NOISE["dataset_size"] / worker.NOISE["expected_batch_size"]))
    for report in reports:
        assert report["steps"] == len(worker.NOISE_LOCAL) + batches + 1
        assert report["num_workers"] == 2
    assert reports[0]["empty_batches"] + reports[1]["empty_batches"] > 0
    shards = [reports[0]["shard"], reports[1]["shard"]]
    assert sorted(shards[0] + shards[1]) == list(range(worker.NOISE["dataset_size"]))


def one_machine_epsilon(steps):
    block = worker.noise_net()
    trainer = allow_fixed_batches(DPTrainer(block.collect_params(), "sgd",
                                            {"learning_rate": 1e-3}, **worker.NOISE))
    for _ in range(steps):
        trainer.step(0)
    return trainer.epsilon(1e-5), trainer.accountant.state_dict()


def test_epsilon_is_identical_on_every_worker_and_equals_one_machine(noise_job):
    _, reports, _ = noise_job
    assert reports[0]["ledger"] == reports[1]["ledger"]
    assert reports[0]["epsilon"] == reports[1]["epsilon"]
    epsilon, ledger = one_machine_epsilon(reports[0]["steps"])
    assert reports[0]["ledger"] == ledger
    assert reports[0]["epsilon"] == pytest.approx(epsilon, rel=1e-12)
    assert reports[0]["worker_counts"] == reports[1]["worker_counts"] == [[2, reports[0]["steps"]]]
    q, sigma = worker.NOISE["expected_batch_size"] / worker.NOISE["dataset_size"], \
        worker.NOISE["noise_multiplier"]
    server = RDPAccountant().compose(PoissonSampledEvent(q, GaussianEvent(sigma / np.sqrt(2))),
                                     reports[0]["steps"]).get_epsilon(1e-5)
    assert reports[0]["server_epsilon"] == reports[1]["server_epsilon"]
    assert reports[0]["server_epsilon"] == pytest.approx(server, rel=1e-12)
    assert server > 2 * epsilon


def test_checkpoint_is_written_by_rank_0_only_and_loads_everywhere(noise_job):
    """Rank 1's save_states wrote nothing; the file loads into a single-machine trainer
    with the ledger saved; after one more step both workers loaded it (an older
    checkpoint of the same run: they keep their longer ledger), and they share rank 0's
    run id, so both took the same decision."""
    out, reports, _ = noise_job
    assert (out / "ckpt-0").exists() and not (out / "ckpt-1").exists()
    block = worker.noise_net()
    trainer = DPTrainer(block.collect_params(), "sgd", {"learning_rate": 1e-3}, **worker.NOISE)
    trainer.load_states(str(out / "ckpt-0"))
    saved = reports[0]["saved"]
    assert trainer.accountant.state_dict() == saved["ledger"] == reports[1]["saved"]["ledger"]
    assert trainer.epsilon(1e-5) == pytest.approx(saved["epsilon"], rel=1e-12)
    assert reports[0]["run_id"] == reports[1]["run_id"] == trainer.run_id
    assert reports[0]["ledger"]["ledger"][0]["count"] == reports[0]["steps"]


# -- misuse ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mismatch_job(tmp_path_factory):
    out = tmp_path_factory.mktemp("mismatch")
    code, seconds = run_job("mismatch", out)
    return out, code, seconds


@pytest.mark.parametrize("what, setting", [("sigma", "noise_multiplier"), ("lr", "optimizer")])
def test_workers_that_disagree_stop_at_the_first_step(mismatch_job, what, setting):
    """One worker with another sigma, then (sigma fixed) another learning rate: both
    raise WorkerMismatchError naming that setting alone before any gradient is pushed,
    and the job exits non-zero. Mutation checked: without the agreement check both
    workers step."""
    out, code, seconds = mismatch_job
    assert code != 0 and seconds < 45
    for rank in (0, 1):
        message = json.load(open(out / f"error-{what}-{rank}.txt"))
        assert f"disagree on {setting} (worker rank {rank}" in message
        assert not (out / f"stepped-{rank}.txt").exists()


def make_dist(**kwargs):
    block = worker.exact_net()
    options = dict(worker.EXACT, kvstore="dist_sync")
    options.update(kwargs)
    return DPTrainer(block.collect_params(), "sgd", {"learning_rate": 0.1}, **options)


def test_update_on_kvstore_with_a_dist_kvstore_is_refused_with_the_reason():
    with pytest.raises(InvalidParameterError, match="parameter server would apply"):
        make_dist(update_on_kvstore=True)


@pytest.mark.parametrize("kwargs, match", [
    (dict(kvstore="dist_async"), "each worker's push on its own"),
    (dict(kvstore="dist_device_async"), "each worker's push on its own"),
    (dict(sampling="fixed"), "not B records drawn uniformly"),
    (dict(clipping="adaptive", max_grad_norm=1.0), "bounds would drift apart"),
    (dict(dist_timeout=0), "dist_timeout must be a number"),
])
def test_what_the_distributed_mechanism_cannot_do_is_refused(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        make_dist(**kwargs)


def test_a_dist_kvstore_outside_a_launched_job_says_how_to_launch(monkeypatch):
    monkeypatch.delenv("DMLC_NUM_WORKER", raising=False)
    with pytest.raises(InvalidParameterError, match="mxprivacy launch"):
        make_dist()
    with pytest.raises(InvalidParameterError, match="only applies to a dist_sync"):
        DPTrainer(worker.exact_net().collect_params(), "sgd", dist_timeout=5,
                  **worker.EXACT)


@pytest.fixture
def fresh_process(monkeypatch):
    """This test's distributed DPTrainer is the process's first (one per process)."""
    monkeypatch.setattr(dist_kvstore, "_PROCESS", dist_kvstore._Process())


def one_worker_dist_kvstore():
    """A local kvstore presented as dist_sync: a one-worker job, in this process."""
    class OneWorker(mx.kvstore.KVStore):
        type = "dist_sync"

    store = mx.kv.create("local")
    store.__class__ = OneWorker
    return store


def test_deferred_shapes_are_refused_because_rank_0_weights_are_broadcast_at_build(
        fresh_process):
    net = gluon.nn.Dense(3)
    net.initialize()
    with pytest.raises(InvalidParameterError, match="deferred initialization"):
        DPTrainer(PrivateBlock(net).collect_params(), "sgd", kvstore=one_worker_dist_kvstore(),
                  **worker.EXACT)


# -- the agreement check, by hand ------------------------------------------------------
def pushed_sums(digests):
    return np.concatenate([sum(digests), sum(d * d for d in digests)]).astype(np.float32)


def test_disagreements_finds_exactly_the_settings_that_differ():
    base = {"noise_multiplier": "1.0", "optimizer": "sgd", "sample_rate": "0.01"}
    other = dict(base, optimizer="adam")
    same = [settings_digest(base)] * 3
    assert disagreements(pushed_sums(same), 3, list(base)) == []
    mixed = [settings_digest(base), settings_digest(other), settings_digest(base)]
    assert disagreements(pushed_sums(mixed), 3, list(base)) == ["optimizer"]
    # a worker whose digits are the mean of the others' is still caught (1, 2, 3)
    digits = [np.full(1 + 8 * 3, value, dtype=np.float32) for value in (1.0, 2.0, 3.0)]
    for d in digits:
        d[0] = 1.0
    assert disagreements(pushed_sums(digits), 3, list(base)) == list(base)
    assert disagreements(pushed_sums(same[:2]), 3, list(base)) == [SUMS]


# -- bounded waits --------------------------------------------------------------------
@pytest.mark.parametrize("how", ["stuck", "killed"])
def test_a_dead_or_hung_peer_ends_the_job_and_the_checkpoint_loads(tmp_path, capfd, how):
    """After one step and rank 0's checkpoint, rank 1 hangs (rank 0, dist_timeout=3, exits
    with code 75 and one line; the launcher stops the rest) or is killed with SIGKILL (the
    launcher stops the job: 128 + 9). The checkpoint loads with the epsilon it had."""
    code, seconds = run_job(how, tmp_path)
    assert seconds < 30
    if how == "stuck":
        assert code == TIMEOUT_EXIT_CODE
        assert "waited more than 3 s for the other workers' settings" in capfd.readouterr().err
    else:
        assert code == 128 + 9
    block = worker.exact_net()
    trainer = DPTrainer(block.collect_params(), *worker.EXACT_OPT,
                        **dict(worker.EXACT, noise_multiplier=1.0))
    trainer.load_states(str(tmp_path / "ckpt"))
    assert trainer.steps == 1
    assert trainer.epsilon(1e-5) >= json.load(open(tmp_path / "epsilon-0.json")) > 0


def test_watchdog_exits_after_the_timeout_and_not_before():
    calls = []
    dog = Watchdog(0.3, "worker rank 0 of 2", exit=calls.append)
    with dog.watch("quick"):
        time.sleep(0.05)
    time.sleep(0.5)
    assert calls == []
    with dog.watch("slow"):
        time.sleep(0.8)
    assert calls == [TIMEOUT_EXIT_CODE]


def test_an_uncaught_error_skips_the_shutdown_barrier_but_a_mismatch_does_not(monkeypatch):
    exits = []
    monkeypatch.setattr(watchdog_module.os, "_exit", exits.append)
    monkeypatch.setattr(sys, "last_value", RuntimeError("boom"), raising=False)
    watchdog_module._exit_after_uncaught_error()
    monkeypatch.setattr(sys, "last_value", WorkerMismatchError("differ"), raising=False)
    watchdog_module._exit_after_uncaught_error()
    assert exits == [1]


# -- sharding by record ----------------------------------------------------------------
def distinct_records(size=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(size, 3)).astype("float32"), np.arange(size, dtype="float32")


def shard_records(data, workers, rank):
    loader = DPDataLoader(data, sample_rate=1.0, num_workers=workers, rank=rank)
    return set(data[1][loader.shard].tolist())


@pytest.mark.parametrize("workers", [2, 3])
def test_adding_a_record_moves_no_other_record_between_workers(workers):
    """A record's worker is a function of its own bytes: the shards partition the data,
    and adding a record (at the front, where positional blocks would shift every
    boundary) changes its owner's shard only. With one-hot clipped gradients C e_i, the
    tuple of pushes a server sees moves by exactly C (positional blocks: sqrt(3) C at
    W = 2, measured by the review). Mutation checked: positional blocks fail it."""
    x, y = distinct_records()
    bigger = (np.concatenate([np.full((1, 3), 7.0, "float32"), x]),
              np.concatenate([np.float32([99.0]), y]))
    before = [shard_records((x, y), workers, rank) for rank in range(workers)]
    after = [shard_records(bigger, workers, rank) for rank in range(workers)]
    assert set().union(*before) == set(y.tolist()) and sum(map(len, before)) == len(y)
    assert all(shard - {99.0} == old for shard, old in zip(after, before))
    assert sum(99.0 in shard for shard in after) == 1

    def pushes(shards):
        return np.concatenate([np.isin(np.arange(100), list(shard)) for shard in shards])

    assert np.linalg.norm(pushes(after) - pushes(before).astype(float)) == 1.0


def test_loader_samples_only_its_shard_at_the_global_rate():
    x = np.arange(30, dtype="float32").reshape(30, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaders = [DPDataLoader((x, x[:, 0]), expected_batch_size=6, num_workers=3,
                                rank=rank, seed=5) for rank in range(3)]
    mine = owners(record_digests(30, [x, x[:, 0]]), 3)
    assert sorted(np.concatenate([loader.shard for loader in loaders])) == list(range(30))
    seen = []
    for rank, loader in enumerate(loaders):
        np.testing.assert_array_equal(loader.shard, np.flatnonzero(mine == rank))
        assert loader.sample_rate == pytest.approx(0.2) and len(loader) == 5
        drawn = [indices for indices in loader.sampler if indices]
        assert drawn and all(max(indices) < len(loader.shard) for indices in drawn)
        rows = loader._batch(drawn[0])[0].asnumpy()[:, 0]  # the shard's records
        np.testing.assert_array_equal(rows, loader.shard[drawn[0]])
        seen.append([np.flatnonzero(loader.sampler._mask()).tolist() for _ in range(20)])
    assert seen[0] != seen[1]  # one seed, but each rank its own stream


def test_loader_refuses_a_shard_that_contradicts_the_trainer_or_fixed_sampling():
    x = np.zeros((20, 5), dtype="float32")
    trainer = DPTrainer(worker.exact_net().collect_params(), "sgd", noise_multiplier=1.0,
                        max_grad_norm=1.0, expected_batch_size=4, dataset_size=20)
    with pytest.raises(InvalidParameterError, match="the trainer is worker 0 of 1"):
        DPDataLoader((x,), expected_batch_size=4, trainer=trainer, num_workers=2, rank=1)
    with pytest.raises(InvalidParameterError, match="cannot be sharded"):
        DPDataLoader((x,), expected_batch_size=4, sampling="fixed", num_workers=2, rank=0)
    with pytest.raises(InvalidParameterError, match="rank must lie in"):
        DPDataLoader((x,), expected_batch_size=4, num_workers=2, rank=2)


def dist_stub(dataset_size=None, rank=0):
    """What DPDataLoader reads from a dist trainer (rank of 2 workers), and what the loader
    registered with it."""
    registered = []
    stub = types.SimpleNamespace(
        num_workers=2, rank=rank, sampling="poisson", sample_rate=0.25, secure_mode=False,
        distributed=True, dataset_size=dataset_size, expect_examples=lambda count: None,
        _register_loader=lambda digest, size: registered.append((digest, size)))
    return stub, registered


def test_the_loader_registers_n_and_digests_the_records_whatever_their_order():
    """The trainer gets N (compared by every worker at every step) and the shard's size;
    loader.data_digest (for out-of-band checks, never pushed to the server) is a SHA-256
    of the multiset of records: equal for another order, different for one changed
    record or a shorter copy. Mutation checked: a constant digest fails."""
    x, y = distinct_records(20)
    other = x.copy()
    other[3, 0] += 1.0
    copies = {"same": (x, y), "reversed": (x[::-1], y[::-1]), "one other": (other, y),
              "shorter": (x[:-1], y[:-1])}
    digests = {}
    for name, data in copies.items():
        stub, registered = dist_stub()
        loader = DPDataLoader(data, sample_rate=0.25, trainer=stub)
        assert registered == [(len(data[0]), len(loader.shard))]
        digests[name] = loader.data_digest
    assert digests["same"] == digests["reversed"]
    assert len({digests["same"], digests["one other"], digests["shorter"]}) == 3
    assert digests["shorter"].startswith("N=19;") and digests["same"].startswith("N=20;")


def test_workers_with_different_copies_never_sample_one_record_twice():
    """Rank 1's copy is in another order and has two other records: every record (by
    content) is kept by one worker at most, and each common record by exactly one, so
    the guarantee holds for the records trained on although the copies differ.
    Mutation checked: positional blocks keep records twice."""
    x, y = distinct_records(40)
    other = x.copy()
    other[[3, 7]] += 1.0
    copies = [(x, y), (other[::-1].copy(), y[::-1].copy())]
    kept = []
    for rank, (cx, cy) in enumerate(copies):
        loader = DPDataLoader((cx, cy), sample_rate=1.0, num_workers=2, rank=rank)
        kept += [cx[i].tobytes() + cy[i].tobytes() for i in loader.shard]
    assert len(kept) == len(set(kept))
    common = {x[i].tobytes() + y[i].tobytes() for i in range(40) if i not in (3, 7)}
    assert common <= set(kept)


def test_a_dist_loader_needs_the_whole_data_set_when_the_trainer_knows_n():
    """Mutation checked: without the length check the shorter copy is accepted."""
    x, y = distinct_records(20)
    stub, _ = dist_stub(dataset_size=20)
    DPDataLoader((x, y), sample_rate=0.25, trainer=stub)
    with pytest.raises(InvalidParameterError, match="dataset_size=20, the size of the whole"):
        DPDataLoader((x[:18], y[:18]), sample_rate=0.25, trainer=stub)


def test_a_dataset_or_record_ids_shard_like_the_arrays():
    """A gluon Dataset is hashed item by item; record_ids replace the contents."""
    x, y = distinct_records(20)
    arrays = DPDataLoader((x, y), sample_rate=0.5, num_workers=2, rank=1)
    dataset = DPDataLoader(gluon.data.ArrayDataset(x, y), sample_rate=0.5, num_workers=2,
                           rank=1)
    assert 0 < len(dataset.shard) < 20
    ids = [f"record-{i}" for i in range(20)]
    by_id = [DPDataLoader((x, y), sample_rate=0.5, num_workers=2, rank=rank,
                          record_ids=ids).shard for rank in (0, 1)]
    assert sorted(np.concatenate(by_id)) == list(range(20))
    assert len(arrays.shard) > 0
    with pytest.raises(InvalidParameterError, match="record_ids has 3 entries"):
        DPDataLoader((x, y), sample_rate=0.5, num_workers=2, rank=0, record_ids=ids[:3])


def test_in_a_worker_of_a_multi_worker_job_a_loader_needs_trainer_or_shard(
        monkeypatch, fresh_process):
    """Without trainer= (and without num_workers/rank) each worker would sample the whole
    data set: every record W times per step. Mutation checked: without the refusal the
    loader is built."""
    x, _ = distinct_records(20)
    monkeypatch.setenv("DMLC_ROLE", "worker")
    monkeypatch.setenv("DMLC_NUM_WORKER", "2")
    with pytest.raises(InvalidParameterError, match="without trainer="):
        DPDataLoader((x,), expected_batch_size=4)
    assert len(DPDataLoader((x,), expected_batch_size=4, num_workers=2, rank=1).shard) < 20
    monkeypatch.setenv("DMLC_NUM_WORKER", "1")  # a one-worker job
    assert len(DPDataLoader((x,), expected_batch_size=4).shard) == 20
    monkeypatch.delenv("DMLC_ROLE")
    dist_kvstore._PROCESS.started = (0, 2)  # a started trainer of 2 workers, no variables
    with pytest.raises(InvalidParameterError, match="without trainer="):
        DPDataLoader((x,), expected_batch_size=4)


# -- steps on a dist trainer: announced, one trainer per process (one-worker kvstore) ---
def dist_data_64():
    rng = np.random.default_rng(3)
    return (rng.normal(size=(64, 5)).astype("float32"),
            rng.integers(0, 3, size=64).astype("float32"))


def test_a_dist_step_must_be_announced_by_a_sharded_loader_unless_opted_out(
        monkeypatch, fresh_process):
    """A step by hand is refused after the agreement check (on every worker), before any
    gradient is pushed; the loader's steps pass; dist_own_sampler=True opts out.
    Mutation checked: without the refusal the hand-made step is taken."""
    block = worker.exact_net()
    trainer = DPTrainer(block.collect_params(), "sgd", {"learning_rate": 0.1},
                        kvstore=one_worker_dist_kvstore(), **worker.EXACT)
    x, y = dist_data_64()
    with pytest.raises(SamplingError, match="were not announced"):
        worker.one_step(block, trainer, x[:8], y[:8])
    assert trainer.steps == 0
    block.discard_capture()
    for xb, yb in DPDataLoader((x, y), expected_batch_size=8, trainer=trainer, num_batches=2):
        worker.one_step(block, trainer, xb.asnumpy(), yb.asnumpy())
    assert trainer.steps == 2 and trainer.worker_counts == [[1, 2]]
    with pytest.raises(InvalidParameterError, match="already started a distributed DPTrainer"):
        DPTrainer(worker.exact_net().collect_params(), "sgd",
                  kvstore=one_worker_dist_kvstore(), **worker.EXACT)
    monkeypatch.setattr(dist_kvstore, "_PROCESS", dist_kvstore._Process())
    block = worker.exact_net()
    own = DPTrainer(block.collect_params(), "sgd", {"learning_rate": 0.1},
                    kvstore=one_worker_dist_kvstore(), dist_own_sampler=True, **worker.EXACT)
    worker.one_step(block, own, x[:8], y[:8])
    assert own.steps == 1
    with pytest.raises(InvalidParameterError, match="dist_own_sampler= only applies"):
        DPTrainer(worker.exact_net().collect_params(), "sgd", dist_own_sampler=True,
                  **worker.EXACT)


def test_the_agreement_covers_the_ledger_the_data_and_the_batch_source(fresh_process):
    """Steps, run id, a SHA-256 of the ledger (with the worker counts), the loader's N
    and the batch source are settings every worker must share."""
    block = worker.exact_net()
    trainer = DPTrainer(block.collect_params(), "sgd", {"learning_rate": 0.1},
                        kvstore=one_worker_dist_kvstore(), **worker.EXACT)
    before = dist_settings(trainer)
    trainer._worker_counts = [[2, 0]]  # the same ledger, another worker history
    assert dist_settings(trainer)["ledger"] != before["ledger"]
    trainer._worker_counts = []
    trainer.accountant.compose(trainer.step_event())
    after = dist_settings(trainer)
    assert after["ledger"] != before["ledger"] and after["steps"] == before["steps"]
    trainer._register_loader(64, 30)
    assert dist_settings(trainer)["data"] == "N=64"
    trainer.expect_examples(3)
    assert dist_settings(trainer)["batches"] != before["batches"]


# -- worker counts: server_epsilon composes each step at its own W -------------------------
def test_server_epsilon_composes_every_stretch_at_its_own_number_of_workers(noise_job,
                                                                             tmp_path):
    """The noise job's checkpoint (2 workers) resumed on one machine for 3 steps: the
    counts are [[2, n], [1, 3]] and server_epsilon composes n steps at sigma / sqrt(2)
    and 3 at sigma (hand-computed). The counts survive a save and load. Mutation
    checked: counting every step at the current W reports the smaller as_if_one."""
    out, reports, _ = noise_job
    block = worker.noise_net()
    trainer = allow_fixed_batches(DPTrainer(block.collect_params(), "sgd",
                                            {"learning_rate": 1e-3}, **worker.NOISE))
    trainer.load_states(str(out / "ckpt-0"))
    saved = trainer.steps
    assert saved == reports[0]["saved"]["ledger"]["ledger"][0]["count"]
    assert trainer.worker_counts == [[2, saved]]
    for _ in range(3):
        trainer.step(0)
    assert trainer.worker_counts == [[2, saved], [1, 3]]
    q = worker.NOISE["expected_batch_size"] / worker.NOISE["dataset_size"]
    sigma = worker.NOISE["noise_multiplier"]

    def event(noise):
        return PoissonSampledEvent(q, GaussianEvent(noise))

    expected = RDPAccountant().compose(event(sigma / np.sqrt(2)), saved).compose(
        event(sigma), 3).get_epsilon(1e-5)
    as_if_one = RDPAccountant().compose(event(sigma), saved + 3).get_epsilon(1e-5)
    assert trainer.server_epsilon(1e-5) == pytest.approx(expected, rel=1e-12)
    assert expected > 1.5 * as_if_one
    trainer.save_states(str(tmp_path / "again"))
    _, fresh = worker.noise_net(), DPTrainer(worker.noise_net().collect_params(), "sgd",
                                             {"learning_rate": 1e-3}, **worker.NOISE)
    fresh.load_states(str(tmp_path / "again"))
    assert fresh.worker_counts == [[2, saved], [1, 3]]
    assert fresh.server_epsilon(1e-5) == pytest.approx(expected, rel=1e-12)


def saved_single_machine(tmp_path, steps=3):
    from tests.gluon.ckpt_helpers import build, step
    block, trainer = build("sgd")
    for seed in range(steps):
        step(block, trainer, seed)
    path = str(tmp_path / "ckpt")
    trainer.save_states(path)
    return path


def test_a_previous_format_checkpoint_counts_single_machine_steps(tmp_path):
    from tests.gluon.ckpt_helpers import build
    path = saved_single_machine(tmp_path)
    meta, arrays = read_meta(path)
    assert meta["format"] == "mxprivacy-dptrainer-3" and meta["workers"] == [[1, 3]]
    del meta["workers"]
    meta["format"] = "mxprivacy-dptrainer-2"
    write_meta(path, meta, arrays)
    _, trainer = build("sgd")
    trainer.load_states(path)
    assert trainer.worker_counts == [[1, 3]]
    assert trainer.server_epsilon(1e-5) == trainer.epsilon(1e-5)


@pytest.mark.parametrize("workers", [[[2, 2]], [[0, 3]], [[2, 3.0]], [[2, 1], [1]], "2",
                                     [[2, 4]], [[True, 3]]])
def test_worker_counts_that_do_not_cover_the_ledger_are_refused(tmp_path, workers):
    from tests.gluon.ckpt_helpers import build
    path = saved_single_machine(tmp_path)
    meta, arrays = read_meta(path)
    meta["workers"] = workers
    write_meta(path, meta, arrays)
    _, trainer = build("sgd")
    with pytest.raises(CheckpointError):
        trainer.load_states(path)
    assert trainer.steps == 0 and trainer.worker_counts == []


# -- misuse on a real job ----------------------------------------------------------------
@pytest.fixture(scope="module")
def misuse_job(tmp_path_factory):
    out = tmp_path_factory.mktemp("misuse")
    assert run_job("misuse", out)[0] == 0
    return [json.load(open(out / f"misuse-{rank}.json")) for rank in (0, 1)]


def test_in_a_dist_job_a_loader_without_trainer_is_refused(misuse_job):
    for report in misuse_job:
        assert "built without trainer=" in report["errors"]["no trainer"]


def test_a_second_dist_trainer_is_refused_and_the_first_still_steps(misuse_job):
    """By name (ps-lite would block: the review saw a dist_timeout blaming a dead peer)
    and sharing the first one's kvstore (colliding keys crashed): both refused at once."""
    for report in misuse_job:
        for name in ("second by name", "second, shared"):
            assert "already started a distributed DPTrainer" in report["errors"][name]
        assert report["steps"] == 1  # the reversed copy steps; "other" stops (owners)


def test_a_step_not_announced_by_a_sharded_loader_is_refused_on_every_worker(misuse_job):
    for report in misuse_job:
        assert "were not announced" in report["errors"]["by hand"]


def test_workers_holding_data_sets_of_another_size_stop_at_the_first_step(misuse_job):
    """Rank 1 holds two records fewer (the trainer has no dataset_size here): every
    worker raises WorkerMismatchError naming the data, before any gradient is pushed.
    A copy with one other record stops too: its owner changes, and the owner counts are
    in the agreement. Mutation checked: without the loader's N in the agreement both
    step."""
    for rank, report in enumerate(misuse_job):
        assert f"disagree on data (worker rank {rank}" in report["errors"]["shorter"]
        assert "disagree on data" in report["errors"]["other"]
        assert report["steps"] == 1
    assert "data=N=10" in misuse_job[1]["errors"]["shorter"]


def test_shards_partition_the_data_set_whatever_each_workers_order(misuse_job):
    """Rank 1 holds the records in reverse order. q = 1, sigma = 0, C = 1, only the
    canary has a gradient: the pulled gradient has norm C (the canary counted once; the
    review measured 2 C with positional blocks), and the workers' records are disjoint
    and cover the data set. Mutation checked: positional blocks fail it."""
    records = [report["records"] for report in misuse_job]
    assert sorted(records[0] + records[1]) == list(range(worker.MISUSE_N))
    for report in misuse_job:
        assert report["pulled_norm"] == pytest.approx(1.0, abs=1e-5)


def test_a_kvstore_with_its_own_optimizer_is_refused_with_the_reason(tmp_path):
    """The review saw 'disagree on the number of workers'. A probe push when the trainer
    is built finds that the server does not sum. Mutation checked: without the probe the
    message is the agreement check's."""
    assert run_job("server-optimizer", tmp_path)[0] == 0
    for rank in (0, 1):
        message = json.load(open(tmp_path / f"server-optimizer-{rank}.json"))
        assert "does not sum the workers' pushes" in message["server optimizer"]
        assert "set_optimizer" in message["server optimizer"]


def test_a_checkpoint_loaded_on_one_worker_only_stops_every_worker(noise_job, tmp_path):
    """Rank 0 loads the noise job's checkpoint, rank 1 does not (the review saw their
    epsilons diverge, exit 0): both raise at the first step, naming the steps, the run id
    and the ledger, and no step is taken. Mutation checked: without those three
    settings both step."""
    out, reports, _ = noise_job
    code, _ = run_job(f"partial-resume={out / 'ckpt-0'}", tmp_path)
    assert code == 0
    saved = reports[0]["saved"]["ledger"]["ledger"][0]["count"]
    results = [json.load(open(tmp_path / f"resume-{rank}.json")) for rank in (0, 1)]
    assert [result["steps"] for result in results] == [saved, 0]
    for result in results:
        assert "disagree on steps, run_id, ledger" in result["errors"]["step"]
        assert "load_states on the same file" in result["errors"]["step"]


def test_gradient_compression_on_the_kvstore_is_refused_with_the_reason(fresh_process):
    """MXNet refuses push-pull under compression with an internal message (the review's
    job crashed with it): the probe says what is wrong. Simulated on a one-worker store
    whose push-pull raises MXNet's error."""
    from mxnet.base import MXNetError

    store = one_worker_dist_kvstore()

    def compressed_pushpull(key, value, out=None, priority=0):
        raise MXNetError("Check failed: gradient_compression_->get_type() == "
                         "CompressionType::kNone: Compression not supported with PushPull")

    store.pushpull = compressed_pushpull
    with pytest.raises(InvalidParameterError, match="without compression"):
        DPTrainer(worker.exact_net().collect_params(), "sgd", kvstore=store, **worker.EXACT)


# -- any forward mode before the trainer ------------------------------------------------
def test_a_predict_mode_forward_before_the_trainer_is_broadcast_and_trains(tmp_path, capfd):
    """A CNN run once in predict mode (MKL-DNN reorders its convolution weight: checked,
    so the test is not vacuous), then the trainer: rank 0's weights reach rank 1 exactly,
    and two loader steps with predict-mode evaluations between them keep both ranks
    identical. Before the fix the server aborted ("init 1 first"); mutation checked:
    broadcasting the parameter arrays themselves (Gluon's _init_params) fails it."""
    code, _ = run_job("predict-first", tmp_path)
    assert code == 0
    arrays = {(name, rank): np.load(tmp_path / f"{name}-{rank}.npz")
              for name in ("before", "start", "final") for rank in (0, 1)}
    for rank in (0, 1):
        report = json.load(open(tmp_path / f"report-{rank}.json"))
        assert report["layouts"][0] and report["steps"] == 2
    assert not np.array_equal(arrays["before", 0]["0"], arrays["before", 1]["0"])
    for key in arrays["before", 0]:
        for rank in (0, 1):
            np.testing.assert_array_equal(arrays["start", rank][key],
                                          arrays["before", 0][key])
        np.testing.assert_array_equal(arrays["final", 0][key], arrays["final", 1][key])
        assert not np.array_equal(arrays["final", 0][key], arrays["start", 0][key])
    assert "ended its process" not in capfd.readouterr().err  # both left after step 2


# -- leaving the loop ------------------------------------------------------------------
def test_a_worker_ahead_of_one_that_left_raises_at_once_and_says_why(tmp_path, capfd):
    """Loops left with break after 2 iterations: with no empty batch both took 2 steps
    and went on. Then rank 1's batches are all empty: its loader stepped by itself
    (steps 3, 4) and began step 5 as rank 0 ended its process after step 4. Rank 1
    raised WorkersOutOfStepError at once (not after dist_timeout = 60 s), naming the
    steps and the cure, with its state equal to rank 0's; rank 0 printed one line.
    Mutation checked: without the leaving round at exit rank 1 waits 60 s (the job is
    stopped at 40 s); without its mark rank 1 raises a plain mismatch."""
    code, seconds = run_job("break", tmp_path, timeout=40)
    assert code == 0 and seconds < 30
    reports = [json.load(open(tmp_path / f"break-{rank}.json")) for rank in (0, 1)]
    for report in reports:
        assert report["equal"] == {"steps": 2, "empty_batches": 0}
        assert report["ahead"]["steps"] == 4
    assert "error" not in reports[0] and reports[0]["ahead"]["empty_batches"] == 0
    kind, message = reports[1]["error"]
    assert kind == "WorkersOutOfStepError" and reports[1]["ahead"]["empty_batches"] == 3
    for part in ("rank 1 of 2 began step 5", "1 of the 2 workers ended their process after "
                 "step 4", "took 3 such steps, this one included", "num_batches=STEPS"):
        assert part in message
    final = [np.load(tmp_path / f"final-{rank}.npz") for rank in (0, 1)]
    for key in final[0]:
        np.testing.assert_array_equal(final[0][key], final[1][key])
    assert ("worker rank 0 of 2 ended its process, but 1 other worker(s) began one more "
            "step") in capfd.readouterr().err


class Peer:
    """What the other worker of :func:`two_worker_dist_kvstore` pushes: the same as this
    one (agreeing, stepping), or under the agreement key its leaving round."""

    def __init__(self):
        self.leaving, self.rounds = False, 0

    def __call__(self, key, pushed):
        if key != SETTINGS_KEY:
            return pushed
        self.rounds += 1
        if not self.leaving:  # this worker's settings, stepping
            stepping = pushed.asnumpy().copy()
            stepping[-1] = 0.0
            return nd.array(stepping)
        digest = np.zeros((len(pushed) - 1) // 2, dtype=np.float32)
        digest[0] = 1.0
        return nd.array(round_vector(digest, leaving=True))


def two_worker_dist_kvstore(peer):
    """A local kvstore presented as rank 0 of a 2-worker dist_sync job: every push-pull
    returns this worker's push plus ``peer(key, push)``."""
    class TwoWorkers(mx.kvstore.KVStore):
        type, rank, num_workers = "dist_sync", 0, 2

        def pushpull(self, key, value, out=None, priority=0):
            values = value if isinstance(value, list) else [value]
            outs = values if out is None else (out if isinstance(out, list) else [out])
            for source, target in zip(values, outs):
                target[:] = source + peer(key, source)

    store = mx.kv.create("local")
    store.__class__ = TwoWorkers
    return store


def test_the_leaving_round_stops_a_worker_ahead_and_warns_one_that_leaves(
        fresh_process, monkeypatch, capsys):
    """In one process, the peer simulated: a step while the peer leaves raises (step 2,
    after step 1) and takes no step; a later step raises without a round (the peer is
    gone). Leaving while the peer steps prints one line; leaving together says nothing."""
    monkeypatch.setattr(watchdog_module, "_AT_NORMAL_EXIT", [])
    peer = Peer()
    block = worker.exact_net()
    trainer = DPTrainer(block.collect_params(), "sgd", {"learning_rate": 0.1},
                        kvstore=two_worker_dist_kvstore(peer), dist_own_sampler=True,
                        **worker.EXACT)
    assert len(watchdog_module._AT_NORMAL_EXIT) == 1  # the leaving round, at exit
    x, y = dist_data_64()
    worker.one_step(block, trainer, x[:4], y[:4])
    assert trainer.steps == 1 and peer.rounds == 1
    job = trainer._dist
    farewell(job, SETTINGS_KEY, job.round_size)  # the peer steps (pushes its settings)
    assert "rank 0 of 2 ended its process, but 1 other worker(s)" in capsys.readouterr().err
    peer.leaving = True
    farewell(job, SETTINGS_KEY, job.round_size)  # both leave: nothing to say
    assert capsys.readouterr().err == ""
    block.discard_capture()
    with pytest.raises(WorkersOutOfStepError, match="began step 2, but 1 of the 2 workers "
                       "ended their process after step 1"):
        worker.one_step(block, trainer, x[:4], y[:4])
    assert trainer.steps == 1 and peer.rounds == 4
    with pytest.raises(WorkersOutOfStepError, match="began step 2"):
        trainer.step(4)  # the batch is still captured
    assert trainer.steps == 1 and peer.rounds == 4
    watchdog_module._AT_NORMAL_EXIT.pop()()  # at exit: no round, the peer is gone
    assert peer.rounds == 4
