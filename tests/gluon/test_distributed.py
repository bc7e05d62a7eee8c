"""DP-SGD on MXNet's parameter server (mxprivacy.gluon.distributed), on loopback.

Each job runs a scheduler, a server and two workers (tests/gluon/dist_worker.py) under
``launch_local`` with a wall-time bound; the workers write their results to files and
the tests compare them with single-machine references computed here.
"""
import json
import os
import sys
import time
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon, nd
from scipy import stats

from mxprivacy import (DPDataLoader, DPTrainer, InvalidParameterError, PrivateBlock,
                       WorkerMismatchError)
from mxprivacy.accounting import RDPAccountant
from mxprivacy.accounting.events import GaussianEvent, PoissonSampledEvent
from mxprivacy.distributed.launch import launch_local
from mxprivacy.gluon import watchdog as watchdog_module
from mxprivacy.gluon.distributed import disagreements, settings_digest, shard_bounds
from mxprivacy.gluon.watchdog import TIMEOUT_EXIT_CODE, Watchdog
from tests.gluon import dist_worker as worker
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
    assert [reports[0]["shard"], reports[1]["shard"]] == [[0, 32], [32, 64]]


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
@pytest.mark.parametrize("what, setting", [("sigma", "noise_multiplier"), ("lr", "optimizer")])
def test_workers_that_disagree_stop_at_the_first_step(tmp_path, what, setting):
    """One worker with another sigma (or learning rate): both raise WorkerMismatchError
    naming the setting before any gradient is pushed, and the job exits non-zero.
    Mutation checked: without the agreement check both workers step."""
    code, seconds = run_job(f"mismatch-{what}", tmp_path)
    assert code != 0 and seconds < 45
    for rank in (0, 1):
        message = json.load(open(tmp_path / f"error-{rank}.txt"))
        assert "disagree on " + setting in message and f"rank {rank}" in message
        assert not (tmp_path / f"stepped-{rank}.txt").exists()


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


def one_worker_dist_kvstore():
    """A local kvstore presented as dist_sync: a one-worker job, in this process."""
    class OneWorker(mx.kvstore.KVStore):
        type = "dist_sync"

    store = mx.kv.create("local")
    store.__class__ = OneWorker
    return store


def test_deferred_shapes_are_refused_because_rank_0_weights_are_broadcast_at_build():
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
    assert disagreements(pushed_sums(same[:2]), 3, list(base)) == ["the number of workers"]


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


# -- sharding -------------------------------------------------------------------------
@pytest.mark.parametrize("size, workers", [(10, 3), (64, 2), (7, 7), (1000, 6)])
def test_shards_partition_the_data_set(size, workers):
    bounds = [shard_bounds(size, workers, rank) for rank in range(workers)]
    assert bounds[0][0] == 0 and bounds[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    lengths = [stop - start for start, stop in bounds]
    assert max(lengths) - min(lengths) <= 1


def test_loader_samples_only_its_shard_at_the_global_rate():
    x = np.arange(30, dtype="float32").reshape(30, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaders = [DPDataLoader((x, x[:, 0]), expected_batch_size=6, num_workers=3,
                                rank=rank, seed=5) for rank in range(3)]
    seen = []
    for rank, loader in enumerate(loaders):
        assert loader.shard == (10 * rank, 10 * rank + 10)
        assert loader.sample_rate == pytest.approx(0.2) and len(loader) == 5
        drawn = [indices for indices in loader.sampler if indices]
        assert drawn and all(max(indices) < 10 for indices in drawn)
        rows = loader._batch(drawn[0])[0].asnumpy()[:, 0]  # the shard's rows
        np.testing.assert_array_equal(rows, 10 * rank + np.asarray(drawn[0]))
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
