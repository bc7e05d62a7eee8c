"""DPTrainer checkpoints: no pickle, exact resume, strict validation, ledger never decreases."""
import base64
import io
import json
import os
import pathlib
import pickle
import re

import numpy as np
import pytest

from mxprivacy import CheckpointError, PrivacyWarning
from mxprivacy._io import seal

from .ckpt_helpers import (build, params_np, read_meta, same, snapshot, step, write_meta)

ROOT = pathlib.Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling it creates a file: the shape of a code-execution exploit."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resume_is_bit_identical(tmp_path, optimizer):
    block, trainer = build(optimizer, sigma=0.0)
    for seed in range(4):
        step(block, trainer, seed)
    block.save_parameters(str(tmp_path / "p"))
    trainer.save_states(str(tmp_path / "s"))
    step(block, trainer, 99)
    fresh_block, fresh = build(optimizer, sigma=0.0, seed=5)
    fresh_block.load_parameters(str(tmp_path / "p"))
    fresh.load_states(str(tmp_path / "s"))
    step(fresh_block, fresh, 99)
    for mine, theirs in zip(params_np(fresh_block), params_np(block)):
        np.testing.assert_array_equal(mine, theirs)
    assert fresh._optimizer.num_update == trainer._optimizer.num_update


def test_learning_rate_set_before_saving_is_restored(tmp_path):
    block, trainer = build("sgd")
    step(block, trainer)
    trainer.set_learning_rate(0.025)
    trainer.save_states(str(tmp_path / "s"))
    _, fresh = build("sgd")
    fresh.load_states(str(tmp_path / "s"))
    assert fresh.learning_rate == 0.025


def test_a_pickle_payload_is_refused_and_never_runs(tmp_path):
    block, trainer = build("sgd")
    step(block, trainer)
    before = snapshot(block, trainer)
    marker = tmp_path / "pwned"
    # The old format: JSON with a base64 pickle that Updater.set_states would unpickle.
    old = {"format": "mxprivacy-dptrainer-1", "privacy": trainer.accountant.state_dict(),
           "updater": base64.b64encode(pickle.dumps(_Payload(str(marker)))).decode(),
           "steps": 1, "nonfinite_count": 0, "config": {}}
    (tmp_path / "old").write_text(json.dumps(old))
    # The new format with a valid checksum around an object (pickled) array.
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.frombuffer(b"{}", dtype=np.uint8),
             a0=np.array([_Payload(str(marker))], dtype=object))
    (tmp_path / "new").write_bytes(seal("dptrainer-checkpoint", buffer.getvalue()))
    for name in ("old", "new"):
        with pytest.raises(CheckpointError):
            trainer.load_states(str(tmp_path / name))
    assert not marker.exists()
    assert same(snapshot(block, trainer), before)


def test_the_library_never_unpickles():
    pattern = re.compile(r"pickle\.loads?\(|set_states\(|allow_pickle\s*=\s*True|"
                         r"import dill|cloudpickle")
    hits = [f"{path}:{n}" for path in (ROOT / "mxprivacy").rglob("*.py")
            for n, line in enumerate(path.read_text().splitlines(), 1)
            if pattern.search(line)]
    assert hits == []


def _saved(tmp_path, steps=3, optimizer="adam"):
    block, trainer = build(optimizer)
    for seed in range(steps):
        step(block, trainer, seed)
    path = str(tmp_path / "ckpt")
    trainer.save_states(path)
    return path


EDITS = {
    "steps do not match the events": lambda m: m.update(steps=m["steps"] - 1),
    "count 7.5": lambda m: m["privacy"]["ledger"][0].update(count=7.5),
    "count '7'": lambda m: m["privacy"]["ledger"][0].update(count="7"),
    "count true": lambda m: m["privacy"]["ledger"][0].update(count=True),
    "negative count": lambda m: m["privacy"]["ledger"][0].update(count=-3),
    "unknown top field": lambda m: m.update(bonus=1),
    "unknown ledger field": lambda m: m["privacy"].update(discount=0.5),
    "unknown entry field": lambda m: m["privacy"]["ledger"][0].update(note="x"),
    "unknown event field": lambda m: m["privacy"]["ledger"][0]["event"].update(extra=1),
    "sigma as text": lambda m: m["privacy"]["ledger"][0]["event"]["event"].update(
        noise_multiplier="1.0"),
    "steps as float": lambda m: m.update(steps=float(m["steps"])),
    "optimizer type": lambda m: m["optimizer"].update(type="sgd"),
    "unknown optimizer setting": lambda m: m["optimizer"]["hyper"].update(evil=1),
    "nan setting": lambda m: m["optimizer"]["hyper"].update(lr=float("nan")),
    "state index": lambda m: m["optimizer"]["states"].update({"7": None}),
    "update count": lambda m: m["optimizer"]["index_update_counts"]["0"].update({"0": 2.5}),
    # Ledgers a DPTrainer cannot have written (review r4): each would load with eps ~ 0.
    "q 0": lambda m: _event(m).update(sample_rate=0.0),
    "epsilon_delta event": lambda m: m["privacy"]["ledger"][0].update(
        event={"type": "epsilon_delta", "epsilon": 0.0, "delta": 0.0}),
    "self_composed count 0": lambda m: m["privacy"]["ledger"][0].update(
        event={"type": "self_composed", "count": 0, "event": _event(m)}),
    "composed []": lambda m: m["privacy"]["ledger"][0].update(
        event={"type": "composed", "events": []}),
    "plain gaussian event": lambda m: m["privacy"]["ledger"][0].update(
        event=_event(m)["event"]),
    "poisson laplace": lambda m: _event(m).update(
        event={"type": "laplace", "noise_multiplier": 1.0}),
    "an earlier entry with q 0": lambda m: (m["privacy"]["ledger"].insert(
        0, {"event": {**_event(m), "sample_rate": 0.0}, "count": 5}),
        m.update(steps=m["steps"] + 5)) and None,
    "zero-count entry": lambda m: m["privacy"]["ledger"].insert(
        0, {"event": {**_event(m), "sample_rate": 0.5}, "count": 0}),
    "config sample_rate true": lambda m: m["config"].update(sample_rate=True),
    # Huge counts (review r5): no raw OverflowError, the trainer unchanged.
    "count = steps = 10**400": lambda m: (m["privacy"]["ledger"][0].update(count=10**400),
                                         m.update(steps=10**400)) and None,
    "count = steps = 2**53 + 1": lambda m: (m["privacy"]["ledger"][0].update(count=2**53 + 1),
                                           m.update(steps=2**53 + 1)) and None,
    "nonfinite_count 10**400": lambda m: m.update(nonfinite_count=10**400),
    "num_update 10**400": lambda m: m["optimizer"].update(num_update=10**400),
    "update count 10**400": lambda m: m["optimizer"]["index_update_counts"]["0"].update(
        {"0": 10**400}),
    "setting 10**400": lambda m: m["optimizer"]["hyper"].update(beta1=10**400),
}


def _event(meta):
    return meta["privacy"]["ledger"][0]["event"]


@pytest.mark.parametrize("name", sorted(EDITS))
def test_inconsistent_fields_are_refused(tmp_path, name):
    path = _saved(tmp_path)
    meta, arrays = read_meta(path)
    EDITS[name](meta)
    write_meta(path, meta, arrays)
    block, trainer = build("adam", seed=2)
    step(block, trainer, 4)
    before = snapshot(block, trainer)
    with pytest.raises(CheckpointError):
        trainer.load_states(path)
    assert same(snapshot(block, trainer), before)


def test_an_edited_array_shape_is_refused(tmp_path):
    path = _saved(tmp_path)
    meta, arrays = read_meta(path)
    arrays["a0"] = arrays["a0"][:1]
    write_meta(path, meta, arrays)
    _, trainer = build("adam")
    with pytest.raises(CheckpointError, match="state of"):
        trainer.load_states(path)


def test_a_checkpoint_must_match_the_trainer(tmp_path):
    path = _saved(tmp_path, optimizer="adam")
    _, sgd = build("sgd")
    with pytest.raises(CheckpointError, match="'adam' optimizer states"):
        sgd.load_states(path)
    _, wider = build("adam", units=5)
    with pytest.raises(CheckpointError, match="shape"):
        wider.load_states(path)
    assert sgd.steps == wider.steps == 0


def test_a_plain_edit_fails_the_checksum(tmp_path):
    path = _saved(tmp_path)
    data = bytearray(open(path, "rb").read())
    data[-10] ^= 0x01
    open(path, "wb").write(bytes(data))
    _, trainer = build("adam")
    with pytest.raises(CheckpointError, match="checksum"):
        trainer.load_states(path)


def test_the_accountant_refuses_inconsistent_ledgers():
    from mxprivacy import InvalidParameterError
    _, trainer = build("sgd")
    good = {"accountant": "rdp", "ledger": [{"event": {"type": "gaussian",
                                                      "noise_multiplier": 1.0}, "count": 7}]}
    trainer.accountant.load_state_dict(good)
    for bad_count in (7.5, "7", True, -1):
        bad = json.loads(json.dumps(good))
        bad["ledger"][0]["count"] = bad_count
        with pytest.raises(InvalidParameterError):
            trainer.accountant.load_state_dict(bad)
    for edit in ({"extra": 1}, ):
        with pytest.raises(InvalidParameterError, match="Unknown fields"):
            trainer.accountant.load_state_dict({**good, **edit})
    event_extra = json.loads(json.dumps(good))
    event_extra["ledger"][0]["event"]["bonus"] = 0
    with pytest.raises(InvalidParameterError, match="unknown fields"):
        trainer.accountant.load_state_dict(event_extra)
    assert trainer.accountant.state_dict() == good


# -- path 7: the ledger never decreases ---------------------------------------------------
def test_loading_an_older_checkpoint_keeps_the_longer_ledger(tmp_path):
    block, trainer = build("sgd")
    for seed in range(4):
        step(block, trainer, seed)
    trainer.save_states(str(tmp_path / "early"))
    for seed in range(4, 20):
        step(block, trainer, seed)
    eps = trainer.epsilon(1e-5)
    trainer.load_states(str(tmp_path / "early"))
    assert trainer.steps == 20 and trainer.epsilon(1e-5) == eps


def test_resume_takes_the_saved_ledger(tmp_path):
    block, trainer = build("sgd")
    for seed in range(5):
        step(block, trainer, seed)
    trainer.save_states(str(tmp_path / "s"))
    fresh_block, fresh = build("sgd")
    fresh.load_states(str(tmp_path / "s"))
    assert fresh.steps == 5 and fresh.epsilon(1e-5) == trainer.epsilon(1e-5)
    assert fresh.run_id == trainer.run_id  # the resume continues the saved lineage
    step(fresh_block, fresh, 5)
    fresh.load_states(str(tmp_path / "s"))  # its own older checkpoint: keeps 6
    assert fresh.steps == 6


def test_another_run_with_the_same_settings_is_composed(tmp_path):
    # Equal event lists, different runs: the one step this trainer took on the data
    # before loading is not part of the saved history, so both are counted.
    block, trainer = build("sgd")
    for seed in range(5):
        step(block, trainer, seed)
    trainer.save_states(str(tmp_path / "s"))
    other_block, other = build("sgd")
    step(other_block, other, 0)  # looks like a prefix of the saved history
    with pytest.warns(PrivacyWarning, match="another run"):
        other.load_states(str(tmp_path / "s"))
    assert other.steps == 6 and other.epsilon(1e-5) > trainer.epsilon(1e-5)


def test_divergent_histories_are_composed_with_a_warning(tmp_path):
    block, trainer = build("sgd", sigma=2.0)
    for seed in range(6):
        step(block, trainer, seed)
    trainer.save_states(str(tmp_path / "other"))
    mine_block, mine = build("sgd", sigma=1.0)
    for seed in range(3):
        step(mine_block, mine, seed)
    before = mine.epsilon(1e-5)
    with pytest.warns(PrivacyWarning, match="composed"):
        mine.load_states(str(tmp_path / "other"))
    assert mine.steps == 9
    assert mine.epsilon(1e-5) > max(before, trainer.epsilon(1e-5))


def test_a_failed_load_leaves_no_temporary_and_keeps_the_mode(tmp_path):
    path = _saved(tmp_path)
    os.chmod(path, 0o640)
    block, trainer = build("adam")
    step(block, trainer)
    trainer.save_states(path)
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


# -- a step waiting for update() -----------------------------------------------------------
def test_load_states_between_allreduce_and_update_is_refused(tmp_path):
    from mxnet import autograd

    from .ckpt_helpers import LOSS, data
    block, trainer = build("sgd")
    for seed in range(3):
        step(block, trainer, seed)
    trainer.save_states(str(tmp_path / "s"))
    for seed in range(3, 6):
        step(block, trainer, seed)
    trainer.save_states(str(tmp_path / "later"))
    fresh_block, fresh = build("sgd")
    fresh.load_states(str(tmp_path / "s"))  # resume at 3
    x, y = data(3, 99)
    with autograd.record():
        loss = LOSS(fresh_block(x), y)
    loss.backward()
    fresh.allreduce_grads(3)  # step 4 is in the ledger, waiting for update()
    before = snapshot(fresh_block, fresh)
    with pytest.raises(CheckpointError, match=r"update\(\) \(or step\(\)\) first"):
        fresh.load_states(str(tmp_path / "later"))
    assert same(snapshot(fresh_block, fresh), before) and fresh._privatized_batch == 3
    fresh.update(3)
    assert fresh.steps == 4 == sum(count for _, count in fresh.accountant.ledger)
    fresh.load_states(str(tmp_path / "later"))  # allowed again; a prefix-free history
    assert fresh.steps >= 6


# -- bounded reading of the archive --------------------------------------------------------
def _rewrite(path, meta, arrays, compressed=False):
    buffer = io.BytesIO()
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    (np.savez_compressed if compressed else np.savez)(buffer, meta=blob, **arrays)
    with open(path, "wb") as handle:
        handle.write(seal("dptrainer-checkpoint", buffer.getvalue()))


def test_a_compressed_archive_is_refused_before_any_member_is_read(tmp_path, monkeypatch):
    import zipfile
    path = _saved(tmp_path)
    meta, arrays = read_meta(path)
    _rewrite(path, meta, arrays, compressed=True)  # same content, deflated members
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open",
                        lambda self, *a, **k: opened.append(a[0]) or real_open(self, *a, **k))
    block, trainer = build("adam")
    before = snapshot(block, trainer)
    with pytest.raises(CheckpointError, match="member .* is compressed"):
        trainer.load_states(path)
    assert opened == [] and same(snapshot(block, trainer), before)


def test_a_decompression_bomb_is_refused_without_expanding_it(tmp_path):
    import resource
    import zipfile
    path = _saved(tmp_path)
    meta, _ = read_meta(path)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("meta.npy", "w") as handle:
            np.lib.format.write_array(handle, np.frombuffer(json.dumps(meta).encode(),
                                                            np.uint8))
        with archive.open("a0.npy", "w", force_zip64=True) as handle:
            count = 1 << 27  # 512 MB of float32 zeros in a few hundred kB
            np.lib.format.write_array_header_1_0(
                handle, {"descr": "<f4", "fortran_order": False, "shape": (count,)})
            zero = bytes(1 << 22)
            for _ in range(4 * count // len(zero)):
                handle.write(zero)
    with open(path, "wb") as handle:
        handle.write(seal("dptrainer-checkpoint", buffer.getvalue()))
    assert os.path.getsize(path) < 5 << 20
    _, trainer = build("adam")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="member .* is compressed"):
        trainer.load_states(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100 << 10  # kB


def test_an_array_header_larger_than_its_member_is_refused(tmp_path):
    import zipfile
    path = _saved(tmp_path)
    meta, arrays = read_meta(path)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        with archive.open("meta.npy", "w") as handle:
            np.lib.format.write_array(handle, np.frombuffer(json.dumps(meta).encode(),
                                                            np.uint8))
        for name, value in arrays.items():
            with archive.open(name + ".npy", "w") as handle:
                header = {"descr": np.lib.format.dtype_to_descr(value.dtype),
                          "fortran_order": False, "shape": (1 << 40,)}
                np.lib.format.write_array_header_1_0(handle, header)
                handle.write(value.tobytes())
    with open(path, "wb") as handle:
        handle.write(seal("dptrainer-checkpoint", buffer.getvalue()))
    _, trainer = build("adam")
    with pytest.raises(CheckpointError, match="declares"):
        trainer.load_states(path)


def test_a_stored_npz_checkpoint_still_loads(tmp_path):
    path = _saved(tmp_path)
    meta, arrays = read_meta(path)
    _rewrite(path, meta, arrays)  # np.savez, as save_states writes it
    _, trainer = build("adam")
    trainer.load_states(path)
    assert trainer.steps == 3


def test_members_claiming_more_than_the_file_are_refused_before_reading(tmp_path, monkeypatch):
    import struct
    import zipfile
    path = _saved(tmp_path)
    meta, arrays = read_meta(path)
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    data = bytearray(buffer.getvalue())
    central = data.index(b"PK\x01\x02")  # the first central-directory entry: sizes at +20
    data[central + 20:central + 28] = struct.pack("<II", 0x7FFFFFF0, 0x7FFFFFF0)
    with open(path, "wb") as handle:
        handle.write(seal("dptrainer-checkpoint", bytes(data)))
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open",
                        lambda self, *a, **k: opened.append(a[0]) or real_open(self, *a, **k))
    _, trainer = build("adam")
    with pytest.raises(CheckpointError, match="members claim"):
        trainer.load_states(path)
    assert opened == []


def test_a_trainer_can_reload_its_own_checkpoint_after_taking_another_settings_ledger(tmp_path):
    """Found by the ledger property test: a trainer (sigma 1.0) that took a checkpoint
    of another trainer (sigma 1.5) must be able to load its own next checkpoint."""
    other_block, other = build("sgd", sigma=1.5)
    step(other_block, other, 0)
    other.save_states(str(tmp_path / "other"))
    block, trainer = build("sgd", sigma=1.0)
    trainer.load_states(str(tmp_path / "other"))
    trainer.save_states(str(tmp_path / "mine"))
    trainer.load_states(str(tmp_path / "mine"))
    assert trainer.steps == 1 and trainer.epsilon(1e-5) == other.epsilon(1e-5)


# -- fixed-size sampling: the ledger keeps its relation -------------------------------------
def _fixed(accountant="rdp", seed=0, sampling="fixed"):
    import warnings

    import mxnet as mx
    from mxnet import gluon

    from mxprivacy import DPTrainer, PrivateBlock
    mx.random.seed(seed)
    net = gluon.nn.Dense(3, in_units=4)
    net.initialize(mx.init.Xavier())
    block = PrivateBlock(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DPTrainer(block.collect_params(), "sgd", {"learning_rate": 0.1},
                            noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=4,
                            dataset_size=20, sampling=sampling, accountant=accountant)
    return block, trainer


def _fixed_steps(block, trainer, steps):
    from mxnet import autograd

    from mxprivacy import DPDataLoader
    from .ckpt_helpers import LOSS, data
    x, y = data(20, 11)
    for xb, yb in DPDataLoader((x, y), expected_batch_size=4, trainer=trainer,
                               num_batches=steps):
        with autograd.record():
            loss = LOSS(block(xb), yb)
        loss.backward()
        trainer.step(xb.shape[0])


def test_a_fixed_size_checkpoint_round_trip_keeps_the_relation(tmp_path):
    from mxprivacy.accounting import GaussianEvent, SampledWithoutReplacementEvent
    block, trainer = _fixed()
    _fixed_steps(block, trainer, 3)
    trainer.save_states(str(tmp_path / "s"))
    meta, _ = read_meta(str(tmp_path / "s"))
    assert meta["privacy"]["neighboring"] == "replace_one"
    assert meta["privacy"]["ledger"][0]["event"]["type"] == "sampled_without_replacement"
    fresh_block, fresh = _fixed(seed=4)
    fresh.load_states(str(tmp_path / "s"))
    event = SampledWithoutReplacementEvent(20, 4, GaussianEvent(1.0))
    assert fresh.accountant.neighboring == "replace_one"
    assert fresh.accountant.ledger == [(event, 3)] and fresh.steps == 3
    assert fresh.epsilon(1e-5) == trainer.epsilon(1e-5)
    _fixed_steps(fresh_block, fresh, 1)
    assert fresh.accountant.ledger == [(event, 4)]


@pytest.mark.parametrize("saved,loading", [("poisson", "fixed"), ("fixed", "poisson")])
def test_a_checkpoint_of_the_other_sampling_is_refused(tmp_path, saved, loading):
    block, trainer = _fixed(sampling=saved)
    if saved == "fixed":
        _fixed_steps(block, trainer, 2)
    else:
        for seed in range(2):
            step(block, trainer, seed)
    trainer.save_states(str(tmp_path / "s"))
    other_block, other = _fixed(sampling=loading, seed=1)
    before = snapshot(other_block, other)
    with pytest.raises(CheckpointError, match=f"sampling='{saved}'.*sampling='{loading}'"):
        other.load_states(str(tmp_path / "s"))
    assert same(snapshot(other_block, other), before)


@pytest.mark.parametrize("event", [
    {"type": "poisson_sampled", "sample_rate": 0.2,  # a Poisson step in a replace-one ledger
     "event": {"type": "gaussian", "noise_multiplier": 1.0}},
    {"type": "sampled_without_replacement", "dataset_size": 20, "sample_size": 0,
     "event": {"type": "gaussian", "noise_multiplier": 1.0}},  # B = 0 counts nothing
    {"type": "gaussian", "noise_multiplier": 1e6},  # not sampled: not a DP-SGD step
])
def test_a_fixed_size_ledger_holds_only_its_dp_sgd_steps(tmp_path, event):
    """PLD counts each of these under replace-one; the DP-SGD check refuses them."""
    block, trainer = _fixed("pld")
    _fixed_steps(block, trainer, 2)
    trainer.save_states(str(tmp_path / "s"))
    meta, arrays = read_meta(str(tmp_path / "s"))
    meta["privacy"]["ledger"][0]["event"] = event
    write_meta(str(tmp_path / "s"), meta, arrays)
    other_block, other = _fixed("pld", seed=1)
    with pytest.raises(CheckpointError, match="not a DP-SGD step under replace_one"):
        other.load_states(str(tmp_path / "s"))
    assert other.steps == 0
