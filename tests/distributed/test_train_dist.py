"""``mxprivacy train --kvstore dist_sync`` under the launcher, and failures of a
distributed run with checkpoints, on loopback (1 scheduler, 1 server, 2 workers).

Every job runs under ``launch_local`` with a wall-time bound; the workers are
``mxprivacy train`` itself or tests/distributed/dist_train_worker.py.
"""
import json
import math
import os
import signal
import sys
import threading
import time
import warnings

import numpy as np
import pytest

from mxprivacy.accounting import epsilon_for
from mxprivacy.cli import main
from mxprivacy.distributed.launch import DMLC_VARIABLES, launch_local
from mxprivacy.errors import InvalidParameterError
from mxprivacy.train import TrainConfig, run_training
from tests.distributed import dist_train_worker as worker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {"OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1"}
TRAIN = ["train", "--dataset", "digits", "--epochs", "2", "--batch-size", "64", "--json"]
TIMEOUT = 90


def job(command, out=None, timeout=TIMEOUT):
    """(exit code, seconds) of a 2-worker job on loopback."""
    start = time.monotonic()
    code = launch_local(command, 2, 1, env=ENV, timeout=timeout, grace=2.0, cwd=ROOT)
    return code, time.monotonic() - start


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def one_machine():
    """The single-machine ``mxprivacy train --json`` result (same q, sigma, steps)."""
    from io import StringIO
    from contextlib import redirect_stdout

    printed = StringIO()
    with redirect_stdout(printed):
        assert main(TRAIN + ["--no-progress"]) == 0
    return json_lines(printed.getvalue())[-1]


def test_two_workers_print_one_json_with_the_single_machine_epsilon(one_machine, capfd):
    """Rank 0 alone prints: one summary, one JSON object (the last stdout line), one
    progress run on stderr. Same epsilon and steps as one machine; the server's epsilon
    is that of noise multiplier sigma / sqrt(2)."""
    code, _ = job([sys.executable, "-m", "mxprivacy.cli", *TRAIN, "--kvstore", "dist_sync"])
    out, err = capfd.readouterr()
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(json_lines(out)) == 1 and lines[-1].startswith("{")
    assert sum("test accuracy" in line for line in lines) == 1
    assert err.count("step 44/44 (100%)") == 1  # rank 0 only (lines of 2 could interleave)
    result, alone = json.loads(lines[-1]), one_machine
    assert (alone["kvstore"], alone["num_workers"], alone["server_epsilon"]) == ("local", 1, None)
    assert (result["kvstore"], result["num_workers"]) == ("dist_sync", 2)
    for key in ("epsilon", "steps", "sample_rate", "noise_multiplier", "delta", "batch_size"):
        assert result[key] == alone[key], key
    assert result["steps"] == 44 and result["test_accuracy"] > 0.5
    server = epsilon_for(result["noise_multiplier"] / math.sqrt(2), result["sample_rate"],
                         result["steps"], result["delta"])
    assert result["server_epsilon"] == pytest.approx(server, rel=1e-9)
    assert result["server_epsilon"] > 1.5 * result["epsilon"]
    assert set(result) == set(alone)


def test_a_sigkilled_worker_stops_the_train_job(capfd):
    """Rank 1 is killed (SIGKILL) after its 5th step: the job exits 137 well within its
    time bound, and no result is printed."""
    code, seconds = job([sys.executable, "-m", "tests.distributed.dist_train_worker",
                         "train-killed", "5", "--", *TRAIN, "--kvstore", "dist_device_sync",
                         "--dist-timeout", "20", "--epochs", "50"])
    out, err = capfd.readouterr()
    assert code == 128 + signal.SIGKILL, err
    assert seconds < 30 and "killed by SIGKILL" in err
    assert json_lines(out) == [] and "test accuracy" not in out


def test_the_cnn_trains_on_two_workers(data_dir, tmp_path):
    """The CNN's weights are broadcast from rank 0 (its shapes come from a forward pass in
    train mode: in predict mode MKLDNN reorders conv weights, which ps-lite cannot send).
    Both ranks end with the same result, and the epsilon of 4 steps at q = 512 / 2048."""
    code, _ = job([sys.executable, "-m", "tests.distributed.dist_train_worker", "train-cnn",
                   str(tmp_path), data_dir])
    assert code == 0
    results = [json.loads((tmp_path / f"result-{rank}.json").read_text()) for rank in (0, 1)]
    for result in results:
        result.pop("seconds")
    assert results[0] == results[1]
    result = results[0]
    assert (result["model"], result["steps"], result["num_workers"]) == ("cnn", 4, 2)
    assert result["epsilon"] == pytest.approx(
        epsilon_for(result["noise_multiplier"], 0.25, 4, 1e-5), rel=1e-12)


# -- outside a launched job, options ---------------------------------------------------
@pytest.fixture
def not_launched(monkeypatch):
    for name in DMLC_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("kvstore", ["dist_sync", "dist_device_sync"])
def test_dist_kvstore_outside_a_launched_job_is_one_line_exit_2(not_launched, capsys,
                                                                 monkeypatch, kvstore):
    import mxprivacy.train as train

    def no_data(*args, **kwargs):
        raise AssertionError("the data set was loaded before the check")

    monkeypatch.setattr(train, "load_dataset", no_data)
    assert main(TRAIN + ["--kvstore", kvstore]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("mxprivacy: error:") and "mxprivacy launch -n" in line
    assert f"--kvstore {kvstore}" in line and "DMLC_NUM_WORKER" in line
    with pytest.raises(InvalidParameterError, match="mxprivacy launch"):
        run_training(TrainConfig(dataset="digits", kvstore=kvstore))


@pytest.mark.parametrize("argv, message", [
    (["--dist-timeout", "5"], "only applies"),  # with the default local kvstore
    (["--kvstore", "dist_sync", "--dist-timeout", "0"], "seconds > 0"),
    (["--kvstore", "dist_sync", "--dist-timeout", "nan"], "seconds > 0"),
    (["--kvstore", "dist_async"], "invalid choice"),
])
def test_bad_distributed_options_exit_2(not_launched, capsys, argv, message):
    assert main(TRAIN + argv) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert message in line


@pytest.mark.parametrize("bad", [dict(kvstore="dist_async"), dict(kvstore="horovod"),
                                 dict(dist_timeout=10.0),
                                 dict(kvstore="dist_sync", dist_timeout=-1.0),
                                 dict(kvstore="dist_sync", dist_timeout=math.nan)])
def test_config_refuses_other_kvstores_and_bad_timeouts(bad):
    with pytest.raises(InvalidParameterError, match="kvstore|dist_timeout"):
        TrainConfig(dataset="digits", **bad).resolved().validate()


def test_dist_options_reach_the_trainer(monkeypatch):
    """--kvstore and --dist-timeout (inf allowed) go to DPTrainer; checked with a stub
    trainer that stops the run once it has seen them."""
    import mxprivacy.gluon as mxgluon
    import mxprivacy.train as train

    seen = {}

    class Seen(Exception):
        pass

    def spy(*args, **kwargs):
        seen.update(kwargs)
        raise Seen

    monkeypatch.setattr(mxgluon, "DPTrainer", spy)
    monkeypatch.setattr(train, "_check_launched", lambda kvstore: None)
    with pytest.raises(Seen):
        main(TRAIN + ["--kvstore", "dist_device_sync", "--dist-timeout", "inf"])
    assert (seen["kvstore"], seen["dist_timeout"]) == ("dist_device_sync", math.inf)
    with pytest.raises(Seen):
        main(TRAIN)
    assert (seen["kvstore"], seen["dist_timeout"]) == ("local", None)


# -- a killed worker, the checkpoint on disk, and the resume -----------------------------
def kill_rank0_after(out, steps, killed):
    """Thread: 0.1 s after rank 0 has checkpointed ``steps`` steps, SIGKILL it, at any
    point of its loop (writing a checkpoint takes most of it when the write is slow), and
    record what had been saved just before."""
    deadline = time.monotonic() + TIMEOUT
    saved, pid = out / "saved.json", out / "pid-0"
    while time.monotonic() < deadline:
        if saved.exists() and pid.exists() and json.loads(saved.read_text())["steps"] >= steps:
            time.sleep(0.1)
            killed["before"] = json.loads(saved.read_text())
            os.kill(json.loads(pid.read_text()), signal.SIGKILL)
            return
        time.sleep(0.01)


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("killed")
    killed = {}
    killer = threading.Thread(target=kill_rank0_after, args=(out, 3, killed), daemon=True)
    killer.start()
    code, seconds = job([sys.executable, "-m", "tests.distributed.dist_train_worker", "run",
                         str(out)])
    killer.join(5)
    return out, code, seconds, killed


def load_checkpoint(path):
    """A single-machine trainer loaded from ``path`` (the mxprivacy loading API)."""
    block = worker.make_net()
    trainer = worker.make_trainer(block, "local")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.load_states(str(path))
    return trainer


def test_killed_writer_leaves_a_checkpoint_that_loads_with_no_lower_epsilon(killed_run):
    """Rank 0, which writes a checkpoint after every step, is SIGKILLed mid-run: the job
    exits 137 within its bound, and the checkpoint on disk loads, with at least the
    steps and epsilon that had been reported saved (never rolled back, never torn)."""
    out, code, seconds, killed = killed_run
    assert code == 128 + signal.SIGKILL and seconds < 40
    last = json.loads((out / "saved.json").read_text())
    trainer = load_checkpoint(out / "ckpt")
    assert trainer.steps >= last["steps"] >= killed["before"]["steps"] >= 3
    assert trainer.epsilon(1e-5) >= last["epsilon"] >= killed["before"]["epsilon"]
    q = worker.SETTINGS["expected_batch_size"] / worker.SIZE
    assert trainer.epsilon(1e-5) == pytest.approx(
        epsilon_for(worker.SETTINGS["noise_multiplier"], q, trainer.steps, 1e-5), rel=1e-9)


def test_a_new_job_resumes_from_the_checkpoint_and_continues_the_ledger(killed_run):
    """Two new workers load the weights and the checkpoint: they start from its steps and
    epsilon, take 4 more steps, and hold the same ledger: that of steps + 4 sampled
    Gaussian steps."""
    out, _, _, _ = killed_run
    saved = load_checkpoint(out / "ckpt")
    code, _ = job([sys.executable, "-m", "tests.distributed.dist_train_worker", "resume",
                   str(out)])
    assert code == 0
    reports = [json.loads((out / f"report-{rank}.json").read_text()) for rank in (0, 1)]
    assert reports[0] == reports[1]  # ledger, epsilon and weights identical on both ranks
    report = reports[0]
    last = json.loads((out / "saved.json").read_text())  # what the killed run saved last
    assert report["loaded"] == {"steps": saved.steps, "epsilon": saved.epsilon(1e-5)}
    assert report["loaded"]["steps"] >= last["steps"] >= 3
    assert report["loaded"]["epsilon"] >= last["epsilon"]
    assert report["steps"] == saved.steps + worker.RESUME_STEPS
    q = worker.SETTINGS["expected_batch_size"] / worker.SIZE
    step = {"type": "poisson_sampled", "sample_rate": q,
            "event": {"type": "gaussian",
                      "noise_multiplier": worker.SETTINGS["noise_multiplier"]}}
    assert report["ledger"]["ledger"] == [{"event": step, "count": report["steps"]}]
    assert report["epsilon"] == pytest.approx(
        epsilon_for(worker.SETTINGS["noise_multiplier"], q, report["steps"], 1e-5), rel=1e-9)
    assert report["epsilon"] > saved.epsilon(1e-5)
    assert np.isfinite(report["weights"]).all()
