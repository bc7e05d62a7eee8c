"""The README's code runs as written.

Every ```python block runs in a fresh interpreter. Every ``mxprivacy`` command of a
```bash block runs through the installed CLI, from a directory beside ``shared`` (as the
README assumes, with ``../shared/data``). The ``train`` commands run with ``--epochs``
shortened, so they check the flags and the run without the full training time.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```$", README, flags=re.S | re.M)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
DATA = Path(os.environ.get("MXPRIVACY_DATA", ROOT.parent / "shared" / "data")).resolve()
SHORT_EPOCHS = "0.02"


def _commands():
    """Each ``mxprivacy ...`` command of the bash blocks, continuation lines joined."""
    commands = []
    for lang, code in BLOCKS:
        if lang != "bash":
            continue
        for line in code.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("mxprivacy "):
                commands.append(line)
    return commands


COMMANDS = _commands()


@pytest.fixture
def beside_shared(tmp_path):
    """A working directory whose ``../shared/data`` is the test data."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(DATA, target_is_directory=True)
    work = tmp_path / "work"
    work.mkdir()
    return work


def _env():
    env = dict(os.environ, MXPRIVACY_DATA=str(DATA))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def test_the_readme_has_the_blocks_this_test_runs():
    assert len(PYTHON) >= 3 and any("DPTrainer" in code for code in PYTHON)
    assert {c.split()[1] for c in COMMANDS} >= {"train", "epsilon", "calibrate", "anonymize",
                                                  "audit"}


@pytest.mark.parametrize("code", PYTHON, ids=[f"python{i}" for i in range(len(PYTHON))])
def test_python_block_runs_as_written(code, beside_shared):
    done = subprocess.run([sys.executable, "-c", code], cwd=beside_shared, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _shortened(command: str) -> list:
    args = shlex.split(command)
    if args[1] == "train":
        if "--epochs" in args:
            args[args.index("--epochs") + 1] = SHORT_EPOCHS
        else:
            args += ["--epochs", SHORT_EPOCHS]
        args.append("--no-progress")
    return args


@pytest.mark.parametrize("command", COMMANDS, ids=[c.split()[1] + str(i)
                                                    for i, c in enumerate(COMMANDS)])
def test_cli_command_runs_as_written(command, beside_shared):
    if "--scores scores.npz" in command:  # the user's canary scores: made up here
        import numpy as np
        rng = np.random.default_rng(0)
        np.savez(beside_shared / "scores.npz", in_scores=rng.normal(1.0, 1.0, 500),
                 out_scores=rng.normal(0.0, 1.0, 500))
    done = subprocess.run(_shortened(command), cwd=beside_shared, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    if "--json" in command:
        import json
        assert isinstance(json.loads(done.stdout.strip().splitlines()[-1]), dict)
