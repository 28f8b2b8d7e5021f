"""A minimal progress bar on stderr (no third-party dependency)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``with Progress(enabled) as p: p.stage("distances", 3, 10)``: one updating line per stage."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None, width: int = 24):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.width = width
        self._t0 = time.perf_counter()
        self._last = ""

    def stage(self, name: str, done: int = 0, total: int = 0) -> None:
        if not self.enabled:
            return
        if total:
            k = int(self.width * done / total)
            bar = "#" * k + "." * (self.width - k)
            msg = f"simprune: {name:<12} [{bar}] {done}/{total}"
        else:
            msg = f"simprune: {name}"
        msg += f"  {time.perf_counter() - self._t0:6.1f}s"
        end = "\n" if (total and done == total) or not total else ""
        self.stream.write("\r" + msg.ljust(len(self._last)) + end)
        self.stream.flush()
        self._last = "" if end else msg

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled and self._last:
            self.stream.write("\n")
            self.stream.flush()
