"""Crash-safe file writes and checksummed ("sealed") files.

Atomic writes
    Every file the library writes goes through :func:`atomic_write` (bytes) or
    :func:`atomic_path` (for writers that need a path, such as MXNet's
    ``save_parameters``). The data goes to a temporary file in the target's directory,
    named ``.<name>.tmp-<pid>-<random>``; it is fsynced, renamed over the target, and the
    directory is fsynced. A reader, or a process restarted after ``kill -9``, sees the old
    file or the new one, complete. The new file keeps the target's mode (or gets the
    umask default, ``0o666 & ~umask``, when it is new). Temporary files left by an earlier
    crashed write to the same target (their process is dead) are removed by the next write.

Stale temporaries and shared directories
    "Their process is dead" is judged from the PID in the temporary's name, looked up
    among the *local* processes (``kill(pid, 0)``). A directory shared between hosts or
    containers (NFS, a bind mount seen from several PID namespaces) defeats that test: a
    live writer on another host can look dead here, so its temporary may be removed
    under it and its write then fails (the target is never left half-written, but the
    other writer's save raises). Such a directory needs one writer per target file; the
    NoisyOutput write-ahead ledger's ``flock`` is likewise only as good as the file
    system's locking across hosts.

Sealed files
    :func:`seal` prefixes content with a header line holding its kind and a SHA-256 over
    the whole content; :func:`unseal` checks both before anything is parsed and raises
    :class:`~mxprivacy.CheckpointError` otherwise. The checksum catches accidents (bit
    rot, a truncated copy, a half-synced disk) and casual edits (changing a number in a
    text editor). It is not a signature: an owner determined to cheat can recompute it.
    Whoever controls the files controls what the ledger says, so keep checkpoints and
    ledgers where only the party accountable for the privacy budget can write.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from typing import Iterator

from .errors import CheckpointError

__all__ = ["atomic_write", "atomic_path", "seal", "unseal", "read_sealed"]

_MAGIC = b"MXPRIVACY-SEALED-1 "


def _temp_name(target: str) -> str:
    directory, name = os.path.split(target)
    return os.path.join(directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_temps(target: str) -> int:
    """Remove temporary files of earlier writes to ``target`` whose process is dead."""
    directory, name = os.path.split(os.path.abspath(target))
    pattern = re.compile(r"\." + re.escape(name) + r"\.tmp-(\d+)-[0-9a-f]+\Z")
    removed = 0
    try:
        entries = os.listdir(directory)
    except OSError:
        return 0
    for entry in entries:
        match = pattern.match(entry)
        if match and not _pid_alive(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, entry))
                removed += 1
    return removed


def _resolve(fname: str) -> str:
    """The real path (a symlinked target is written through, the link is kept)."""
    return os.path.realpath(os.fspath(fname))


def _existing_mode(target: str):
    try:
        return os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        return None


def _fsync_dir(directory: str) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _commit(tmp: str, target: str, mode) -> None:
    """fsync ``tmp``, give it ``mode``, rename it over ``target``, fsync the directory."""
    handle = os.open(tmp, os.O_RDONLY)
    try:
        if mode is not None:
            os.fchmod(handle, mode)
        os.fsync(handle)
    finally:
        os.close(handle)
    os.replace(tmp, target)
    _fsync_dir(os.path.dirname(target))


@contextlib.contextmanager
def atomic_path(fname: str) -> Iterator[str]:
    """Yield a temporary path next to ``fname``; on success it atomically becomes ``fname``.

    For writers that need a path: ``with atomic_path(f) as tmp: block.save_parameters(tmp)``.
    On an exception the temporary file is removed and ``fname`` is untouched.
    """
    target = _resolve(fname)
    clean_stale_temps(target)
    mode = _existing_mode(target)
    tmp = _temp_name(target)
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise OSError(f"The writer did not create {tmp}; {fname} is unchanged.")
        _commit(tmp, target, mode)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(fname: str, data: bytes) -> None:
    """Write ``data`` to ``fname`` so that readers see the old file or the new one, whole."""
    with atomic_path(fname) as tmp:
        # 0o666 is reduced by the umask, as for any new file; _commit restores an
        # existing target's mode.
        handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(handle, "wb") as out:
            out.write(data)


def seal(kind: str, body: bytes) -> bytes:
    """``body`` with a header line: its kind and the SHA-256 of the body."""
    if not re.fullmatch(r"[a-z0-9-]+", kind):
        raise ValueError(f"bad kind {kind!r}")
    digest = hashlib.sha256(body).hexdigest()
    return _MAGIC + kind.encode("ascii") + b" sha256=" + digest.encode("ascii") + b"\n" + body


def unseal(kind: str, data: bytes, fname: str = "the file") -> bytes:
    """The body of a sealed file; :class:`CheckpointError` unless kind and checksum match."""
    header, sep, body = data.partition(b"\n")
    expected = _MAGIC + kind.encode("ascii") + b" sha256="
    if not sep or not header.startswith(expected):
        raise CheckpointError(
            f"{fname} is not a {kind} file written by this version of mxprivacy (bad "
            "header): it is truncated, corrupt or of another kind. Nothing was loaded; "
            "use an intact copy.")
    digest = header[len(expected):]
    if digest != hashlib.sha256(body).hexdigest().encode("ascii"):
        raise CheckpointError(
            f"{fname} fails its SHA-256 checksum: the file was corrupted or edited after it "
            "was written. Nothing was loaded; use an intact copy.")
    return body


def read_sealed(kind: str, fname: str) -> bytes:
    """Read ``fname`` and return its verified body (see :func:`unseal`)."""
    try:
        with open(fname, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise CheckpointError(f"Cannot read {fname} ({exc}). Nothing was loaded.") from exc
    return unseal(kind, data, fname)
