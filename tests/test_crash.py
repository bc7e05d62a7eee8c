"""kill -9 during saves: files always load (old or new, complete), spent privacy never
decreases, and temporary files do not pile up. Bounded: about 10 kills, under a minute."""
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from tests.crash_worker import noisy_output
from tests.gluon.ckpt_helpers import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = ("trainer.states", "net.params", "wal", "model.params", "model.params.ledger.json")


def _start(directory):
    env = dict(os.environ, MXNET_ENGINE_TYPE="NaiveEngine", PYTHONPATH=ROOT)
    child = subprocess.Popen([sys.executable, "-m", "tests.crash_worker", directory],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    line = child.stdout.readline()
    if line.strip() != "ready":
        child.kill()
        pytest.fail(f"worker did not start: {line!r} {child.stderr.read()[-2000:]}")
    return child


def _check(directory):
    """(epsilon of the trainer checkpoint, rows in the write-ahead ledger)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        block, trainer = build("adam")
        trainer.load_states(os.path.join(directory, "trainer.states"))
        block.load_parameters(os.path.join(directory, "net.params"))
        out = noisy_output(directory)
        out.load_parameters(os.path.join(directory, "model.params"))
    return trainer.epsilon(1e-5), out.queries


def test_kill_9_never_corrupts_files_or_lowers_spent_privacy(tmp_path):
    directory = str(tmp_path)
    rng = np.random.default_rng(11)
    child = _start(directory)  # first run: let it write every file once
    time.sleep(0.5)
    child.kill()
    child.wait()
    last_eps, last_rows = _check(directory)
    deadline, kills = time.monotonic() + 45, 0
    while kills < 10 and time.monotonic() < deadline:
        child = _start(directory)
        time.sleep(float(rng.uniform(0.0, 0.4)))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        kills += 1
        eps, rows = _check(directory)
        assert eps >= last_eps and rows >= last_rows, f"kill {kills} lowered spent privacy"
        last_eps, last_rows = eps, rows
        temps = [n for n in os.listdir(directory) if ".tmp-" in n]
        assert len(temps) <= len(TARGETS), temps  # at most the killed process's own
        # the write-ahead ledger's flock file, wal.lock, is created once and kept
        assert set(os.listdir(directory)) - set(temps) == set(TARGETS) | {"wal.lock"}
    assert kills >= 4 and last_rows > 0
