"""Atomic writes: old or new file whole, the mode kept, fsync, no temporary build-up."""
import os
import subprocess
import sys

import pytest

from mxprivacy import CheckpointError
from mxprivacy import _io
from mxprivacy._io import atomic_path, atomic_write, read_sealed, seal, unseal


def _mode(path):
    return os.stat(path).st_mode & 0o7777


def test_an_existing_files_mode_is_kept(tmp_path):
    target = tmp_path / "f"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    atomic_write(str(target), b"new")
    assert target.read_bytes() == b"new" and _mode(target) == 0o640
    os.chmod(target, 0o604)
    with atomic_path(str(target)) as tmp:
        with open(tmp, "wb") as out:
            out.write(b"newer")
    assert target.read_bytes() == b"newer" and _mode(target) == 0o604


def test_a_new_file_gets_the_umask_default(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(str(tmp_path / "f"), b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "f") == 0o640  # 0o666 & ~0o027, not mkstemp's 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(str(target)) as tmp:
            with open(tmp, "wb") as out:
                out.write(b"half")
            raise RuntimeError("crash")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f"]


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".f.tmp-{dead}-deadbeef"
    live = tmp_path / f".f.tmp-{os.getppid()}-cafe0001"  # a live process's write
    other = tmp_path / f".g.tmp-{dead}-deadbeef"  # another target's: not ours to judge
    for path in (stale, live, other):
        path.write_bytes(b"partial")
    atomic_write(str(tmp_path / "f"), b"data")
    assert sorted(os.listdir(tmp_path)) == sorted(["f", live.name, other.name])


def test_the_file_and_the_directory_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(_io.os, "fsync", spy)
    atomic_write(str(tmp_path / "f"), b"data")
    assert str(tmp_path) in synced  # the directory, after the rename
    assert any(".f.tmp-" in name for name in synced)  # the data, before it


def test_a_symlink_is_written_through(tmp_path):
    (tmp_path / "real").write_bytes(b"old")
    os.symlink("real", tmp_path / "link")
    atomic_write(str(tmp_path / "link"), b"new")
    assert os.path.islink(tmp_path / "link") and (tmp_path / "real").read_bytes() == b"new"


def test_sealed_content_is_checked_before_use(tmp_path):
    data = seal("kind-a", b"payload")
    assert unseal("kind-a", data) == b"payload"
    for bad in (data[:-1], data + b"x", data.replace(b"payload", b"paylaod"), b"",
                seal("kind-b", b"payload")):
        with pytest.raises(CheckpointError):
            unseal("kind-a", bad)
    with pytest.raises(CheckpointError, match="Cannot read"):
        read_sealed("kind-a", str(tmp_path / "missing"))
