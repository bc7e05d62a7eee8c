"""Fuzz: damaged checkpoints give CheckpointError with the trainer unchanged, never a
raw exception and never a silently different state."""
import json
import os
import warnings

import numpy as np
import pytest

from mxprivacy import CheckpointError
from mxprivacy._io import seal

from .ckpt_helpers import KIND, build, read_body, same, snapshot, step


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    block, trainer = build("adam")
    for seed in range(5):
        step(block, trainer, seed)
    path = str(tmp_path_factory.mktemp("fuzz") / "ckpt")
    trainer.save_states(path)
    return path, open(path, "rb").read()


def _victim():
    block, trainer = build("adam", seed=3)
    for seed in range(2):
        step(block, trainer, 10 + seed)
    return block, trainer


def _damage(rng, data):
    kind = rng.integers(3)
    if kind == 0:  # one flipped bit
        pos = int(rng.integers(len(data)))
        return data[:pos] + bytes([data[pos] ^ (1 << int(rng.integers(8)))]) + data[pos + 1:]
    if kind == 1:  # a few random bytes
        out = bytearray(data)
        for pos in rng.integers(len(data), size=int(rng.integers(1, 5))):
            out[pos] = (out[pos] + int(rng.integers(1, 256))) % 256
        return bytes(out)
    return data[:int(rng.integers(len(data)))]  # truncated


def test_random_damage_is_refused_and_changes_nothing(saved, tmp_path):
    path, data = saved
    rng = np.random.default_rng(2024)
    block, trainer = _victim()
    before = snapshot(block, trainer)
    target = str(tmp_path / "bad")
    for trial in range(400):
        damaged = _damage(rng, data)
        with open(target, "wb") as out:
            out.write(damaged)
        with pytest.raises(CheckpointError):
            trainer.load_states(target)
        assert same(snapshot(block, trainer), before), f"trial {trial} changed the trainer"


def test_damage_under_a_recomputed_checksum_never_escapes_as_a_raw_error(saved, tmp_path):
    """An owner who re-seals edited content: every outcome is a clean error or a load."""
    path, data = saved
    body = read_body(path)
    rng = np.random.default_rng(7)
    target = str(tmp_path / "resealed")
    outcomes = {"refused": 0, "loaded": 0}
    block, trainer = _victim()
    for trial in range(250):
        with open(target, "wb") as out:
            out.write(seal(KIND, _damage(rng, body)))
        before = snapshot(block, trainer)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer.load_states(target)
        except CheckpointError:
            outcomes["refused"] += 1
            assert same(snapshot(block, trainer), before), f"trial {trial} changed the trainer"
            continue
        outcomes["loaded"] += 1
        assert trainer.epsilon(1e-5) >= 0 and trainer.steps >= 2
        block, trainer = _victim()
    assert outcomes["refused"] > 200
    os.remove(target)


_EXTREMES = [0, -1, 1, 2, 0.0, -0.0, 1e-300, 1e308, 10**18, 2**53 + 1, 10**400, True, None,
             "1", [], {}, 0.5, 1.0000001]


def _leaves(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, path + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _leaves(value, path + (index,))
    else:
        yield path


def test_resealed_json_edits_are_refused_or_load_a_dp_sgd_ledger(saved, tmp_path):
    """Extreme values at random places of the resealed JSON (review r4/r5): a
    CheckpointError with the trainer unchanged, or a load whose ledger is still DP-SGD
    steps; never a raw error."""
    from mxprivacy.accounting import GaussianEvent, PoissonSampledEvent

    from .ckpt_helpers import read_meta, write_meta
    path, _ = saved
    meta, arrays = read_meta(path)
    leaves = [leaf for leaf in _leaves(meta) if leaf[0] != "run_id"]
    rng = np.random.default_rng(400)
    target = str(tmp_path / "edited")
    block, trainer = _victim()
    loaded = 0
    for trial in range(300):
        edited = json.loads(json.dumps(meta))
        for _ in range(int(rng.integers(1, 3))):
            leaf = leaves[int(rng.integers(len(leaves)))]
            node = edited
            for key in leaf[:-1]:
                node = node[key]
            node[leaf[-1]] = _EXTREMES[int(rng.integers(len(_EXTREMES)))]
        write_meta(target, edited, arrays)
        before = snapshot(block, trainer)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer.load_states(target)
        except CheckpointError:
            assert same(snapshot(block, trainer), before), f"trial {trial} changed the trainer"
            continue
        loaded += 1
        for event, count in trainer.accountant.ledger:
            assert type(event) is PoissonSampledEvent and 0 < event.sample_rate <= 1
            assert type(event.event) is GaussianEvent and count >= 1
        assert trainer.steps >= 2 and trainer.epsilon(1e-5) >= 0
        block, trainer = _victim()
    assert loaded < 300
