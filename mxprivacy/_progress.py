"""Progress output of ``mxprivacy train``: a tqdm bar on a terminal, plain lines otherwise."""
from __future__ import annotations

import sys
import time
from typing import Callable, Dict

__all__ = ["_Progress"]


class _Progress:
    """A tqdm bar on a terminal; on any other stream (logs, CI, nohup) plain lines.

    Plain lines come at every tenth of the run and at least every ``interval`` seconds,
    each with the step, the epoch and ``status()`` (for example the loss and live epsilon).
    The bar shows ``status()`` once per epoch.
    """

    def __init__(self, total: int, per_epoch: int, desc: str, enabled: bool = True,
                 stream=None, interval: float = 300.0) -> None:
        self.total, self.per_epoch, self.desc, self.interval = total, per_epoch, desc, interval
        self.stream = sys.stderr if stream is None else stream
        self.bar = None
        self.enabled = enabled
        if enabled and _is_tty(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", desc=desc, file=self.stream)
        self.start = self.last = time.perf_counter()
        self.next_mark = 1

    def update(self, done: int, status: Callable[[], Dict[str, str]]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            if done % self.per_epoch == 0 or done >= self.total:
                self.bar.set_postfix(**status())
            self.bar.update(done - self.bar.n)
            return
        now = time.perf_counter()
        mark = done * 10 >= self.next_mark * self.total
        if mark or now - self.last >= self.interval or done >= self.total:
            shown = ", ".join(f"{key}={value}" for key, value in status().items())
            print(f"{self.desc}: step {done}/{self.total} ({100 * done / self.total:.0f}%), "
                  f"epoch {done / self.per_epoch:.1f}, {shown}, {now - self.start:.0f} s",
                  file=self.stream, flush=True)
            self.last = now
            self.next_mark = done * 10 // self.total + 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False
