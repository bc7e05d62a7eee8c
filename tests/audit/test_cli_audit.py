"""``mxprivacy audit``: table and JSON for canary scores and model outputs, one-line
errors with exit code 2 for bad files (object arrays are never unpickled), no MXNet."""
import json
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from mxprivacy.audit.canary import CanaryScoreAuditor
from mxprivacy.cli import main


@pytest.fixture
def canary_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "canaries.npz"
    np.savez(path, in_scores=rng.normal(1.5, 1, 400), out_scores=rng.normal(0, 1, 400))
    return path


@pytest.fixture
def model_file(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 600)
    logits = rng.normal(0, 1, (600, 3))
    logits[np.arange(600), labels] += np.r_[np.full(300, 3.0), np.full(300, 1.0)]
    path = tmp_path / "model.npz"
    np.savez(path, logits_train=logits[:300], logits_test=logits[300:],
             labels_train=labels[:300], labels_test=labels[300:])
    return path


def _run(capsys, *argv):
    code = main(["audit", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_canary_scores_table_and_json(capsys, canary_file):
    code, out, err = _run(capsys, "--scores", canary_file, "--significance", "0.1",
                          "--delta", "1e-6", "--json")
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert lines[0].split()[:2] == ["Slice", "Attack"]
    assert lines[1].split()[:5] == ["Entire", "dataset", "scores", "400", "400"]
    assert not any("one-run" in line.lower() for line in lines[:-1])  # only with --one-run
    result = json.loads(lines[-1])
    with np.load(canary_file) as npz:
        auditor = CanaryScoreAuditor(npz["in_scores"], npz["out_scores"])
    assert result["mode"] == "scores" and result["epsilon_one_run"] is None
    assert result["epsilon_lower_bound"] == pytest.approx(
        auditor.epsilon_clopper_pearson(significance=0.1, delta=1e-6))
    assert result["epsilon_lower_bound"] > 0
    assert f"{result['epsilon_lower_bound']:.4f}" in out.split("Epsilon lower bound")[1]


def test_one_run_bound_only_with_the_flag(capsys, canary_file):
    code, out, err = _run(capsys, "--scores", canary_file, "--significance", "0.1",
                          "--delta", "1e-6", "--one-run", "--json")
    assert code == 0 and err == ""
    result = json.loads(out.strip().splitlines()[-1])
    with np.load(canary_file) as npz:
        auditor = CanaryScoreAuditor(npz["in_scores"], npz["out_scores"])
    expected = auditor.epsilon_one_run(significance=0.1, delta=1e-6)
    assert result["epsilon_one_run"] == pytest.approx(expected) and expected > 0.5
    assert result["epsilon_lower_bound"] is None  # no Clopper-Pearson on one-run canaries
    assert f"One-run epsilon lower bound {expected:.4f}: holds with 90 % confidence" in out
    assert "independent fair coin" in out


def test_one_run_refuses_a_split_fair_coins_would_not_give(capsys, tmp_path):
    # scores without information on a 50,000/10,000 split: before the split check the
    # one-run bound was 1.33 (f-DP 1.63) in 20 of 20 runs
    rng = np.random.default_rng(0)
    path = _write(tmp_path, "split.npz", in_scores=rng.normal(size=50_000),
                  out_scores=rng.normal(size=10_000))
    code, out, err = _run(capsys, "--scores", path, "--one-run")
    assert code == 2 and out == "" and "independent fair coin" in err
    code, out, _ = _run(capsys, "--scores", path)  # Clopper-Pearson: no claim about coins
    assert code == 0 and "One-run" not in out


def test_model_outputs_full_table(capsys, model_file):
    code, out, _ = _run(capsys, "--scores", model_file, "--attacks", "threshold, lr")
    assert code == 0
    rows = [line.split("  ")[0] for line in out.splitlines()[1:]]
    for name in ("Entire dataset", "class=0", "class=2", "Loss percentiles 0-25",
                 "Loss percentiles 75-100", "Correctly classified", "Misclassified"):
        assert name in rows
    assert "Epsilon lower bound" in out and "heuristic" in out
    assert not out.strip().splitlines()[-1].startswith("{")


def test_model_outputs_json_last_line(capsys, model_file):
    code, out, _ = _run(capsys, "--scores", model_file, "--attacks", "threshold", "--json")
    result = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and result["mode"] == "model"
    assert {r["attack"] for r in result["results"]} == {"threshold"}
    assert len(result["results"]) == 1 + 3 + 4 + 2
    # loss quartiles and correctness are chosen from the outputs: no bound, not counted
    assert result["bounds"] == 1 + 3
    for row in result["results"]:
        bounded = row["slice_feature"] in ("entire", "class")
        assert (row["epsilon_lower_bound"] is not None) == bounded
        assert row["bound_significance"] == (pytest.approx(0.05 / 4) if bounded else None)
    bounds = [r["epsilon_lower_bound"] or 0.0 for r in result["results"]]
    assert bounds == sorted(bounds, reverse=True)
    assert result["epsilon_lower_bound"] == bounds[0] > 0


def test_losses_only(capsys, tmp_path):
    path = tmp_path / "loss.npz"
    rng = np.random.default_rng(2)
    np.savez(path, loss_train=rng.exponential(0.5, 200), loss_test=rng.exponential(1, 200))
    code, out, _ = _run(capsys, "--scores", path, "--attacks", "all", "--json")
    result = json.loads(out.strip().splitlines()[-1])
    assert code == 0
    assert {r["attack"] for r in result["results"]} == {"threshold", "lr", "rf", "knn"}
    assert "class=" not in out


class _Trap:
    """Unpickling this creates the file ``path``: proof that something was unpickled."""
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _write(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _bytes(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def _damaged(tmp_path):
    path = _write(tmp_path, "d.npz", in_scores=np.arange(100.0), out_scores=np.zeros(100))
    content = bytearray(path.read_bytes())
    content[60:70] = b"z" * 10                  # inside the first array: bad CRC
    path.write_bytes(bytes(content))
    return path


def _npy(tmp_path):
    path = tmp_path / "one.npy"
    np.save(path, np.zeros(3))
    return path


def _npy_header(shape, version=1, pad_to=64):
    """The bytes of an .npy header of float64 ``shape`` (format ``version`` 1 or 2)."""
    text = repr({"descr": "<f8", "fortran_order": False, "shape": shape}).encode()
    text += b" " * (-(len(text) + 12 + 1) % pad_to) + b"\n"
    size = struct.pack("<H" if version == 1 else "<I", len(text))
    return b"\x93NUMPY" + bytes([version, 0]) + size + text


def _zip(tmp_path, name, members):
    """A .npz written by hand: ``members`` maps member names to their bytes."""
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for member, content in members.items():
            archive.writestr(member, content)
    return path


def _huge_header(tmp_path):
    # claims 10^9 scores but holds 24 bytes: refused from the header, never read
    return _zip(tmp_path, "huge.npz", {"in_scores.npy": _npy_header((10 ** 9,)) + b"\0" * 24,
                                       "out_scores.npy": _npy_header((3,)) + b"\0" * 24})


def _long_header(tmp_path):
    # a version-2 header of 2 MB (deflated to a few KB): numpy 1.23 would parse all of it
    header = _npy_header((3,), version=2, pad_to=2 ** 21)
    return _zip(tmp_path, "long.npz", {"in_scores.npy": header + b"\0" * 24,
                                       "out_scores.npy": _npy_header((3,)) + b"\0" * 24})


def _twice(tmp_path):
    one = _npy_header((1,)) + b"\0" * 8
    return _zip(tmp_path, "twice.npz", {"in_scores.npy": one, "in_scores": one,
                                        "out_scores.npy": one})


BAD_FILES = {
    "missing": (lambda d: d / "nowhere.npz", "Cannot read"),
    "directory": (lambda d: d, "Cannot read"),
    "empty": (lambda d: _bytes(d, "e.npz", b""), "not a .npz file"),
    "garbage": (lambda d: _bytes(d, "g.npz", b"\x93NUMPY garbage" * 9), "not a .npz file"),
    "truncated": (lambda d: _bytes(d, "z.npz", b"PK\x03\x04" + b"\0" * 40), "not a .npz file"),
    "npy": (_npy, "single array"),
    "damaged": (_damaged, "array 'in_scores' is damaged"),
    "unknown key": (lambda d: _write(d, "u.npz", in_scores=[1.0], out_scores=[0.0],
                                     canary=[1.0]), "unknown arrays ['canary']"),
    "typo": (lambda d: _write(d, "t.npz", loss_train=[1.0], loss_tst=[0.0]),
             "unknown arrays ['loss_tst']"),
    "mixed": (lambda d: _write(d, "m.npz", in_scores=[1.0], out_scores=[0.0],
                               loss_train=[1.0], loss_test=[1.0]), "mixes"),
    "half": (lambda d: _write(d, "h.npz", in_scores=[1.0]), "both in_scores"),
    "no arrays": (lambda d: _write(d, "n.npz"), "no arrays"),
    "strings": (lambda d: _write(d, "s.npz", in_scores=["1.0"], out_scores=["0"]),
                "dtype <U3"),
    "nan": (lambda d: _write(d, "nan.npz", in_scores=[1.0, np.nan], out_scores=[0.0]),
            "non-finite"),
    "empty array": (lambda d: _write(d, "ea.npz", loss_train=[], loss_test=[1.0]),
                    "empty"),
    "lengths": (lambda d: _write(d, "l.npz", loss_train=[1.0, 2.0], loss_test=[1.0],
                                 labels_train=[0], labels_test=[0]), "lengths differ"),
    "huge": (_huge_header, "holds 1,000,000,000 numbers"),
    "long header": (_long_header, "header is 2097140 bytes long (at most 10000)"),
    "twice": (_twice, "array 'in_scores' twice"),
    "bool": (lambda d: _write(d, "b.npz", in_scores=[True], out_scores=[False]),
             "dtype bool"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_exit_2_with_one_line(capsys, tmp_path, case):
    make, words = BAD_FILES[case]
    code, out, err = _run(capsys, "--scores", make(tmp_path))
    assert code == 2 and out == ""
    assert err.startswith("mxprivacy: error: ") and err.count("\n") == 1
    assert words in err


def test_pickled_object_arrays_are_never_unpickled(capsys, tmp_path):
    marker = tmp_path / "unpickled"
    trap = np.empty(1, dtype=object)
    trap[0] = _Trap(str(marker))
    path = _write(tmp_path, "trap.npz", in_scores=trap, out_scores=np.zeros(1))
    code, _, err = _run(capsys, "--scores", path)
    assert code == 2 and "never unpickled" in err
    assert not marker.exists()


def test_arrays_above_max_scores_are_refused_before_loading(capsys, canary_file, tmp_path):
    code, _, err = _run(capsys, "--scores", canary_file, "--max-scores", "399")
    assert code == 2 and "holds 400 numbers" in err and "--max-scores 399" in err
    assert _run(capsys, "--scores", canary_file, "--max-scores", "400")[0] == 0
    start = time.perf_counter()
    code, _, err = _run(capsys, "--scores", _huge_header(tmp_path))
    assert code == 2 and "more than --max-scores 10,000,000" in err
    assert time.perf_counter() - start < 1.0  # 8 GB were never allocated


@pytest.mark.parametrize("argv, words", [
    (["--significance", "1.5"], "significance must be in (0, 1)"),
    (["--significance", "x"], "invalid float value"),
    (["--delta", "1"], "delta must be in (0, 1)"),
    (["--delta", "0"], "delta must be in (0, 1)"),
    (["--delta", "nan"], "delta must be in (0, 1)"),
    (["--one-run"], "--one-run needs in_scores and out_scores"),
    (["--max-scores", "0"], "max_scores must be a whole number >= 1"),
    (["--max-scores", "1e3"], "invalid int value"),
    (["--attacks", "svm"], "Unknown attack 'svm'"),
    (["--seed", "-1"], "random_state"),
])
def test_bad_options_exit_2(capsys, model_file, argv, words):
    code, _, err = _run(capsys, "--scores", model_file, "--attacks", "threshold", *argv)
    assert code == 2 and words in err and err.count("\n") == 1


def test_audit_does_not_import_mxnet(model_file):
    code = ("import sys; from mxprivacy.cli import main; "
            f"rc = main(['audit', '--scores', {str(model_file)!r}, '--attacks', "
            "'threshold,lr']); assert rc == 0, rc; "
            "assert 'mxnet' not in sys.modules, 'mxnet imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_epsilon_imports_neither_mxnet_nor_scikit_learn():
    code = ("import sys; from mxprivacy.cli import main; "
            "main(['epsilon', '--noise-multiplier', '1', '--sample-rate', '0.01', "
            "'--steps', '10', '--delta', '1e-5']); "
            "assert 'mxnet' not in sys.modules and 'sklearn' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
