"""Atomic file writes: a temporary file in the same directory, fsync, then rename."""
from __future__ import annotations

import os
import tempfile

__all__ = ["atomic_write"]


def atomic_write(fname: str, data: bytes) -> None:
    """Write ``data`` to ``fname`` so that readers see the old file or the new one, whole."""
    directory = os.path.dirname(os.path.abspath(fname))
    handle, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, fname)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
